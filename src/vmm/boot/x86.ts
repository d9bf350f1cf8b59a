/**
 * x86-64 entry state for the Linux 64-bit boot protocol
 * (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): long mode with
 * paging on, an identity map covering the kernel, zero page and command
 * line, a GDT whose __BOOT_CS (0x10) is a 64-bit code segment and __BOOT_DS
 * (0x18) a flat data segment, interrupts off, %rsi = zero page.
 * Plus the per-vCPU pieces Linux needs before it runs: CPUID (KVM's
 * supported set, with this vCPU's APIC id), FPU control words, LAPIC LINT0
 * as ExtINT and LINT1 as NMI (Intel SDM vol. 3 §10.5.1; what a BIOS sets up
 * so the 8259 PIC reaches CPU 0), and a few MSRs.
 */
import type { CpuidEntry, NativeVcpu } from '../kvm/native';
import { BOOT_STACK, GDT_ADDR, IDT_ADDR, PD_ADDR, PDPT_ADDR, PML4_ADDR } from '../layout';

export const CR0_PE = 1n, CR0_ET = 0x10n, CR0_PG = 0x8000_0000n;
export const CR4_PAE = 0x20n;
export const EFER_LME = 0x100n, EFER_LMA = 0x400n;
export const BOOT_CS = 0x10, BOOT_DS = 0x18;

/** GDT entries: null, null, 64-bit code, data — flat (SDM vol. 3 §3.4.5). */
export function gdtEntries(): bigint[] {
  return [0n, 0n, 0x00af_9b00_0000_ffffn, 0x00cf_9300_0000_ffffn];
}

/** Writes GDT, empty IDT and an identity map of the first 4 GiB with 2 MiB pages. */
export function writeBootTables(view: DataView, gpaToOffset: (gpa: number, len: number) => number): void {
  const gdt = gpaToOffset(GDT_ADDR, 32);
  gdtEntries().forEach((e, i) => view.setBigUint64(gdt + i * 8, e, true));
  const idt = gpaToOffset(IDT_ADDR, 8);
  view.setBigUint64(idt, 0n, true);
  const pml4 = gpaToOffset(PML4_ADDR, 4096);
  const pdpt = gpaToOffset(PDPT_ADDR, 4096);
  for (let i = 0; i < 4096; i += 8) { view.setBigUint64(pml4 + i, 0n, true); view.setBigUint64(pdpt + i, 0n, true); }
  view.setBigUint64(pml4, BigInt(PDPT_ADDR) | 3n, true); // present | writable
  for (let g = 0; g < 4; g++) {
    const pdGpa = PD_ADDR + g * 4096;
    view.setBigUint64(pdpt + g * 8, BigInt(pdGpa) | 3n, true);
    const pd = gpaToOffset(pdGpa, 4096);
    for (let i = 0; i < 512; i++) {
      const phys = (BigInt(g) << 30n) | (BigInt(i) << 21n);
      view.setBigUint64(pd + i * 8, phys | 0x83n, true); // present | writable | 2 MiB page
    }
  }
}

function seg(selector: number, code: boolean) {
  return {
    base: 0n, limit: 0xffff_ffff, selector, type: code ? 11 : 3, present: 1, dpl: 0,
    db: code ? 0 : 1, s: 1, l: code ? 1 : 0, g: 1, avl: 0, unusable: 0,
  };
}

/** Long-mode sregs + regs for entry at `rip` with %rsi = zeroPage. */
export function setLongMode(v: NativeVcpu, rip: bigint, zeroPage: bigint, extra: { rdi?: bigint; rsp?: bigint } = {}): void {
  const ds = seg(BOOT_DS, false);
  v.setSregs({
    cs: seg(BOOT_CS, true), ds, es: ds, fs: ds, gs: ds, ss: ds,
    gdt: { base: BigInt(GDT_ADDR), limit: 31 }, idt: { base: BigInt(IDT_ADDR), limit: 7 },
    cr0: CR0_PE | CR0_ET | CR0_PG, cr3: BigInt(PML4_ADDR), cr4: CR4_PAE, efer: EFER_LME | EFER_LMA,
  });
  v.setRegs({
    rflags: 2n, rip, rsi: zeroPage, rsp: extra.rsp ?? BigInt(BOOT_STACK), rbp: extra.rsp ?? BigInt(BOOT_STACK),
    rdi: extra.rdi ?? 0n, rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n,
  });
  v.setFpu({ fcw: 0x37f, mxcsr: 0x1f80 });
}

/**
 * KVM's supported CPUID for vCPU `index` of `count`: APIC ids in leaves 1
 * and 0xb, the hypervisor bit set, logical CPU count in leaf 1.
 */
export function cpuidFor(supported: CpuidEntry[], index: number, count: number): CpuidEntry[] {
  return supported.map((e0) => {
    const e = { ...e0 };
    if (e.function === 1) {
      e.ebx = ((index & 0xff) << 24) | ((count & 0xff) << 16) | (e.ebx & 0xffff);
      e.ecx = (e.ecx | (1 << 31)) >>> 0; // hypervisor present
      e.ebx >>>= 0;
    } else if (e.function === 0xb) {
      e.edx = index >>> 0;
    }
    return e;
  });
}

const APIC_LVT0 = 0x350, APIC_LVT1 = 0x360;
const DM_EXTINT = 7 << 8, DM_NMI = 4 << 8;

/** LINT0 → ExtINT, LINT1 → NMI: the 8259 reaches the BSP (Firecracker's interrupts.rs does the same). */
export function setupLapic(v: NativeVcpu): void {
  const l = v.getLapic();
  const lvt0 = l.readUInt32LE(APIC_LVT0);
  const lvt1 = l.readUInt32LE(APIC_LVT1);
  l.writeUInt32LE(((lvt0 & ~0x700) | DM_EXTINT) >>> 0, APIC_LVT0);
  l.writeUInt32LE(((lvt1 & ~0x700) | DM_NMI) >>> 0, APIC_LVT1);
  v.setLapic(l);
}

/** MSRs Linux expects sane at entry (SYSENTER/STAR zeroed, fast strings on). */
export function setupMsrs(v: NativeVcpu): void {
  const IA32_SYSENTER_CS = 0x174, IA32_SYSENTER_ESP = 0x175, IA32_SYSENTER_EIP = 0x176;
  const STAR = 0xc000_0081, LSTAR = 0xc000_0082, CSTAR = 0xc000_0083, SYSCALL_MASK = 0xc000_0084, KERNEL_GS_BASE = 0xc000_0102;
  const IA32_TSC = 0x10, IA32_MISC_ENABLE = 0x1a0;
  v.setMsrs([
    [IA32_SYSENTER_CS, 0n], [IA32_SYSENTER_ESP, 0n], [IA32_SYSENTER_EIP, 0n],
    [STAR, 0n], [LSTAR, 0n], [CSTAR, 0n], [SYSCALL_MASK, 0n], [KERNEL_GS_BASE, 0n],
    [IA32_TSC, 0n], [IA32_MISC_ENABLE, 1n],
  ]);
}
