/**
 * vCPU and VM state for a snapshot, KVM side: which blobs and MSRs are
 * saved, and the order they go back in (Firecracker's vstate/vcpu: CPUID
 * first — it decides which MSRs and XSAVE features exist —, then MP state,
 * registers, system registers, FPU/XSAVE, XCRs, debug registers, LAPIC,
 * MSRs, and the pending events last, because setting other state can clear
 * them). KVM_GET_XSAVE fails (EINVAL) on PVM hosts: there the FPU blob
 * (x87, SSE registers, MXCSR) is what carries the floating-point state, and
 * AVX upper halves are not saved — said in README's limits.
 */
import { kvmNative, type NativeVcpu } from '../kvm/native';
import type { CpuidEntryState, VcpuMeta } from './format';
import { SnapshotError } from './format';

/** Save order; restore applies RESTORE_ORDER. */
export const VCPU_KINDS = ['regs', 'sregs', 'fpu', 'xcrs', 'lapic', 'mpstate', 'events', 'debugregs'] as const;
const RESTORE_ORDER = ['mpstate', 'regs', 'sregs', 'fpu', 'xsave', 'xcrs', 'debugregs', 'lapic'] as const;
const KVM_CAP_XSAVE2 = 208;

/** Bytes of the XSAVE area KVM hands out for this VM (KVM_CAP_XSAVE2, else struct kvm_xsave). */
export function xsaveSize(vmFd: number): number {
  try { return Math.max(4096, kvmNative().kvmCheckExtension(vmFd, KVM_CAP_XSAVE2)); } catch { return 4096; }
}
export const VM_KINDS = ['pic0', 'pic1', 'ioapic', 'pit2', 'clock'] as const;

/**
 * MSRs a guest of ours can depend on (boot MSRs of builder.rs plus what
 * Linux programs): TSC, SYSENTER, SYSCALL (STAR/LSTAR/CSTAR/FMASK),
 * KERNEL_GS_BASE, TSC_AUX, MISC_ENABLE, PAT, TSC_DEADLINE, TSC_ADJUST,
 * MTRRs, kvmclock/async-PF/steal/PV-EOI. Saved when KVM lists and reads them.
 */
export const SNAPSHOT_MSRS: number[] = [
  0x10, 0x3b, 0x174, 0x175, 0x176, 0x1a0, 0x277, 0x2ff, 0x6e0,
  ...Array.from({ length: 16 }, (_, i) => 0x200 + i), 0x250, 0x258, 0x259, ...Array.from({ length: 8 }, (_, i) => 0x268 + i),
  0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, 0xc0000102, 0xc0000103,
  0x4b564d00, 0x4b564d01, 0x4b564d02, 0x4b564d03, 0x4b564d04,
];

/** The MSRs of SNAPSHOT_MSRS that this KVM lists and that `probe` can read. */
export function savableMsrs(kvmFd: number, probe: NativeVcpu): number[] {
  const listed = new Set(kvmNative().kvmGetMsrIndexList(kvmFd));
  return SNAPSHOT_MSRS.filter((m) => {
    if (!listed.has(m)) return false;
    try { probe.getMsrs([m]); return true; } catch { return false; }
  });
}

export function captureVcpu(v: NativeVcpu, msrs: number[], cpuid: CpuidEntryState[], xsaveBytes: number): { blobs: Record<string, Buffer>; meta: VcpuMeta } {
  const blobs: Record<string, Buffer> = {};
  for (const k of VCPU_KINDS) blobs[k] = v.getState(k);
  try { blobs.xsave = v.getState('xsave', xsaveBytes); } catch { /* PVM: EINVAL; the fpu blob stands in */ }
  const values = v.getMsrs(msrs);
  return { blobs, meta: { msrs: msrs.map((m, i) => [m, '0x' + values[i].toString(16)]), cpuid } };
}

export function applyVcpu(v: NativeVcpu, index: number, blobs: Record<string, Buffer>, meta: VcpuMeta): void {
  const step = (what: string, f: () => void) => {
    try { f(); } catch (cause) { throw new SnapshotError('mismatch', `vCPU ${index}: restoring ${what} failed: ${(cause as Error).message}`, { cause }); }
  };
  step('CPUID', () => v.setCpuid2(meta.cpuid));
  for (const k of RESTORE_ORDER) if (blobs[k]) step(k, () => v.setState(k, blobs[k]));
  step('MSRs', () => v.setMsrs(meta.msrs.map(([i, val]) => [i, BigInt(val)])));
  step('events', () => v.setState('events', blobs.events));
}

export function captureVm(vmFd: number): Record<string, Buffer> {
  const n = kvmNative();
  const out: Record<string, Buffer> = {};
  for (const k of VM_KINDS) out[k] = n.vmGetState(vmFd, k);
  return out;
}

export function applyVm(vmFd: number, blobs: Record<string, Buffer>): void {
  const n = kvmNative();
  for (const k of VM_KINDS) {
    try { n.vmSetState(vmFd, k, blobs[k]); } catch (cause) { throw new SnapshotError('mismatch', `restoring VM ${k} failed: ${(cause as Error).message}`, { cause }); }
  }
}
