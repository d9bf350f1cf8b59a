/**
 * The builtin VMM's snapshot state file parser (src/vmm/snapshot/format.ts
 * decodeState). Seeds are made by encodeState from machine-shaped states
 * (1 and 2 vCPUs, with and without an XSAVE record, a virtio transport).
 * The structure-aware mutator usually re-seals the header (length +
 * SHA-256) after mutating, so mutations reach the record walk and the meta
 * validation instead of stopping at the checksum.
 * Oracle: decodeState either throws SnapshotError or returns a state whose
 * blobs have KVM's struct sizes, whose vCPU count matches its records, and
 * which re-encodes and decodes to the same state.
 */
import { createHash } from 'node:crypto';
import {
  decodeState, encodeState, HEADER_BYTES, SnapshotError, VCPU_BLOBS, VM_BLOBS, VMM_STATE_VERSION, type SnapshotState,
} from '../../../src/vmm/snapshot/format';
import { bucket, invariant, mutate, type Rng, type Target } from '../engine';

function seedState(vcpus: number, xsave: boolean, transports: number): SnapshotState {
  const blobs = (sizes: Record<string, number>, fill: number) => Object.fromEntries(Object.entries(sizes).map(([k, n]) => [k, Buffer.alloc(n, fill)]));
  return {
    meta: {
      vmm: VMM_STATE_VERSION, memoryBytes: 64 << 20, memoryFileBytes: 64 << 20, vcpus, cmdline: 'test=count n=5', createdAt: '2026-11-30T00:00:00.000Z',
      vcpu: Array.from({ length: vcpus }, () => ({ msrs: [[0x10, '0x1234'], [0xc0000082, '0xffffffff81000000']] as Array<[number, string]>, cpuid: [{ function: 1, index: 0, flags: 0, eax: 1, ebx: 2, ecx: 3, edx: 4 }] })),
      serial: { ier: 0, lcr: 3, mcr: 8, scr: 0, fcr: 0, dll: 12, dlm: 0, thrPending: false, rx: [97] },
      rtc: { index: 0, nvram: Buffer.alloc(128).toString('base64') },
      transports: Array.from({ length: transports }, () => ({
        deviceType: 2, status: 15, devFeatSel: 0, drvFeatSel: 1, driverFeatures: '0x100000000', queueSel: 0, interruptStatus: 1, configGeneration: 0, active: true,
        queues: [{ num: 128, ready: true, desc: '0x400000', driver: '0x401000', device: '0x402000', lastAvail: 3, nextUsed: 3 }],
      })),
    },
    vm: blobs(VM_BLOBS, 1),
    vcpu: Array.from({ length: vcpus }, (_, i) => ({ ...blobs(VCPU_BLOBS, i + 2), ...(xsave ? { xsave: Buffer.alloc(4096, 9) } : {}) })),
  };
}

/** Recomputes the header's length and checksum over whatever body follows it. */
function reseal(b: Buffer): Buffer {
  if (b.length < HEADER_BYTES) return b;
  const out = Buffer.from(b);
  out.writeUInt32LE(out.length - HEADER_BYTES, 12);
  createHash('sha256').update(out.subarray(HEADER_BYTES)).digest().copy(out, 16);
  return out;
}

const MAX_LEN = 64 << 10;
const DICTIONARY = ['KTSVMSNP', 'meta', 'vm.pic0', 'vm.clock', 'vcpu0.regs', 'vcpu0.xsave', 'vcpu1.lapic', '"vcpus":', '"memoryBytes":', VMM_STATE_VERSION, '"0x', 'null', '-1', '4294967296', '1e400', '__proto__']
  .map((s) => Buffer.from(s, 'latin1'));

export const vmmSnapshot: Target = {
  name: 'vmm-snapshot',
  describe: 'builtin VMM snapshot state files (src/vmm/snapshot/format.ts decodeState), header re-sealed after most mutations',
  maxLen: MAX_LEN,
  dictionary: DICTIONARY,
  seeds: () => [encodeState(seedState(1, false, 0)), encodeState(seedState(2, true, 1))],
  mutate(rng: Rng, input: Buffer, other: Buffer | undefined): Buffer {
    const m = mutate(rng, input, other, { maxLen: MAX_LEN, dictionary: DICTIONARY });
    return rng.chance(0.9) ? reseal(m) : m;
  },
  run(input) {
    const s = decodeState(input);
    invariant(s.vcpu.length === s.meta.vcpus && s.meta.vcpu.length === s.meta.vcpus, 'vCPU count disagrees with its records');
    for (const [k, n] of Object.entries(VM_BLOBS)) invariant(s.vm[k]?.length === n, `vm.${k} has the wrong size`);
    for (const v of s.vcpu) for (const [k, n] of Object.entries(VCPU_BLOBS)) invariant(v[k]?.length === n, `vcpu blob ${k} has the wrong size`);
    const again = decodeState(encodeState(s));
    invariant(JSON.stringify(again.meta) === JSON.stringify(s.meta), 'meta does not survive re-encoding');
    return `ok:v${s.meta.vcpus}:t${bucket(s.meta.transports.length)}`;
  },
  expected: (err) => err instanceof SnapshotError,
};
