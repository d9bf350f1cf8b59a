/**
 * The builtin VMM's snapshot state file (Firecracker's snapshot model: a
 * state file plus a guest-memory file). Pure encode/decode, no KVM, so the
 * fuzz harness (test/fuzz/targets/vmm-snapshot.ts) can feed it anything.
 *
 * Layout, little-endian:
 *   0   8  magic "KTSVMSNP"
 *   8   4  format version (FORMAT_VERSION)
 *   12  4  body length
 *   16 32  SHA-256 of the body
 *   48  …  body: records [u16 name length][name][u32 data length][data]
 *
 * Records: "meta" (JSON, SnapshotMeta: machine shape, VMM version, device
 * state, MSRs, CPUID), "vm.<kind>" (KVM VM blobs: pic0, pic1, ioapic, pit2,
 * clock) and "vcpu<N>.<kind>" (KVM vCPU blobs: regs, sregs, fpu, xcrs,
 * lapic, mpstate, events, debugregs, and xsave where KVM gives it — PVM
 * hosts refuse KVM_GET_XSAVE, so fpu (x87/SSE/MXCSR) is always kept too). Blobs are KVM's own structs; their
 * sizes are fixed by the x86-64 KVM ABI and checked here, so a file from
 * another build, truncated or altered, is one SnapshotError and never a
 * half-applied VM. The checksum covers the body; the version in `meta.vmm`
 * must equal ours (device state shapes change between VMM versions).
 */
import { createHash } from 'node:crypto';
import { KataError } from '../../common/errors';

export type SnapshotErrorKind = 'format' | 'checksum' | 'version' | 'mismatch' | 'io' | 'refused';
export class SnapshotError extends KataError<SnapshotErrorKind> {}

export const MAGIC = Buffer.from('KTSVMSNP', 'latin1');
export const FORMAT_VERSION = 1;
/** Device-state shapes of this VMM; bump when any saved device state changes. */
export const VMM_STATE_VERSION = 'kata-ts-builtin-vmm/1';
export const HEADER_BYTES = 48;
/** A state file is small (a few KiB per vCPU); refuse anything absurd before hashing it. */
export const MAX_BODY_BYTES = 16 << 20;
export const STATE_FILE = 'state.bin';
export const MEMORY_FILE = 'memory.bin';

/** Byte sizes of the KVM structs (x86-64 ABI), checked on decode. */
export const VCPU_BLOBS: Record<string, number> = {
  regs: 144, sregs: 312, fpu: 416, xcrs: 392, lapic: 1024, mpstate: 4, events: 64, debugregs: 128,
};
/** Optional vCPU blob: XSAVE area, struct kvm_xsave (4 KiB) or KVM_CAP_XSAVE2's larger size. */
export const XSAVE_MIN = 4096, XSAVE_MAX = 1 << 20;
export const VM_BLOBS: Record<string, number> = { pic0: 520, pic1: 520, ioapic: 520, pit2: 112, clock: 48 };

export interface SerialState { ier: number; lcr: number; mcr: number; scr: number; fcr: number; dll: number; dlm: number; thrPending: boolean; rx: number[] }
export interface RtcState { index: number; nvram: string /* base64, 128 bytes */ }
export interface QueueState { num: number; ready: boolean; desc: string; driver: string; device: string; lastAvail: number; nextUsed: number }
export interface TransportState {
  deviceType: number; status: number; devFeatSel: number; drvFeatSel: number; driverFeatures: string;
  queueSel: number; interruptStatus: number; configGeneration: number; active: boolean; queues: QueueState[];
}
export interface CpuidEntryState { function: number; index: number; flags: number; eax: number; ebx: number; ecx: number; edx: number }
export interface VcpuMeta { msrs: Array<[number, string]>; cpuid: CpuidEntryState[] }

export interface SnapshotMeta {
  vmm: string;
  memoryBytes: number;
  /** Bytes of the memory file (the guest-RAM area, all regions back to back). */
  memoryFileBytes: number;
  vcpus: number;
  cmdline: string;
  createdAt: string;
  vcpu: VcpuMeta[];
  serial: SerialState;
  rtc: RtcState;
  transports: TransportState[];
}

export interface SnapshotState {
  meta: SnapshotMeta;
  vm: Record<string, Buffer>;
  vcpu: Array<Record<string, Buffer>>;
}

export function encodeState(s: SnapshotState): Buffer {
  const recs: Buffer[] = [];
  const rec = (name: string, data: Buffer) => {
    const n = Buffer.from(name, 'latin1');
    const h = Buffer.alloc(2 + n.length + 4);
    h.writeUInt16LE(n.length, 0); n.copy(h, 2); h.writeUInt32LE(data.length, 2 + n.length);
    recs.push(h, data);
  };
  rec('meta', Buffer.from(JSON.stringify(s.meta), 'utf8'));
  for (const [k, v] of Object.entries(s.vm)) rec(`vm.${k}`, v);
  s.vcpu.forEach((blobs, i) => { for (const [k, v] of Object.entries(blobs)) rec(`vcpu${i}.${k}`, v); });
  const body = Buffer.concat(recs);
  const head = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(head, 0);
  head.writeUInt32LE(FORMAT_VERSION, 8);
  head.writeUInt32LE(body.length, 12);
  createHash('sha256').update(body).digest().copy(head, 16);
  return Buffer.concat([head, body]);
}

/** Parses and validates a state file; throws SnapshotError naming what is wrong. */
export function decodeState(buf: Buffer): SnapshotState {
  if (buf.length < HEADER_BYTES) throw new SnapshotError('format', `state file is ${buf.length} bytes, shorter than its ${HEADER_BYTES}-byte header (truncated)`);
  if (!buf.subarray(0, 8).equals(MAGIC)) throw new SnapshotError('format', 'not a builtin-VMM snapshot state file (bad magic)');
  const version = buf.readUInt32LE(8);
  if (version !== FORMAT_VERSION) throw new SnapshotError('version', `state file format ${version}; this VMM reads format ${FORMAT_VERSION}`);
  const len = buf.readUInt32LE(12);
  if (len > MAX_BODY_BYTES) throw new SnapshotError('format', `state body of ${len} bytes exceeds ${MAX_BODY_BYTES}`);
  if (buf.length !== HEADER_BYTES + len) throw new SnapshotError('format', `state file is ${buf.length} bytes; its header says ${HEADER_BYTES + len} (truncated or extended)`);
  const body = buf.subarray(HEADER_BYTES);
  if (!createHash('sha256').update(body).digest().equals(buf.subarray(16, 48))) throw new SnapshotError('checksum', 'state file checksum mismatch (corrupt)');
  const recs = new Map<string, Buffer>();
  for (let off = 0; off < body.length;) {
    if (off + 2 > body.length) throw new SnapshotError('format', 'record header cut short');
    const nl = body.readUInt16LE(off);
    if (off + 2 + nl + 4 > body.length) throw new SnapshotError('format', 'record header cut short');
    const name = body.toString('latin1', off + 2, off + 2 + nl);
    const dl = body.readUInt32LE(off + 2 + nl);
    const start = off + 2 + nl + 4;
    if (start + dl > body.length) throw new SnapshotError('format', `record ${show(name)} runs past the end`);
    if (recs.has(name)) throw new SnapshotError('format', `record ${show(name)} appears twice`);
    recs.set(name, body.subarray(start, start + dl));
    off = start + dl;
  }
  const metaRaw = recs.get('meta');
  if (!metaRaw) throw new SnapshotError('format', 'no meta record');
  let metaJson: unknown;
  try { metaJson = JSON.parse(metaRaw.toString('utf8')); } catch { throw new SnapshotError('format', 'meta record is not JSON'); }
  const meta = checkMeta(metaJson);
  const vm: Record<string, Buffer> = {};
  for (const [k, size] of Object.entries(VM_BLOBS)) vm[k] = blob(recs, `vm.${k}`, size);
  const vcpu: Array<Record<string, Buffer>> = [];
  let xsaves = 0;
  for (let i = 0; i < meta.vcpus; i++) {
    const b: Record<string, Buffer> = {};
    for (const [k, size] of Object.entries(VCPU_BLOBS)) b[k] = blob(recs, `vcpu${i}.${k}`, size);
    const x = recs.get(`vcpu${i}.xsave`);
    if (x) {
      if (x.length < XSAVE_MIN || x.length > XSAVE_MAX || x.length % 64 !== 0) throw new SnapshotError('format', `record vcpu${i}.xsave is ${x.length} bytes; an XSAVE area is ${XSAVE_MIN}..${XSAVE_MAX}, a multiple of 64`);
      b.xsave = Buffer.from(x);
      xsaves++;
    }
    vcpu.push(b);
  }
  const known = 1 + Object.keys(VM_BLOBS).length + meta.vcpus * Object.keys(VCPU_BLOBS).length + xsaves;
  if (recs.size !== known) throw new SnapshotError('format', `${recs.size - known} unknown record(s) in the state file`);
  return { meta, vm, vcpu };
}

/** A record name from the file, made safe and short for an error message. */
function show(name: string): string {
  return `"${name.slice(0, 40).replace(/[^\x20-\x7e]|"/g, '?')}${name.length > 40 ? '…' : ''}"`;
}

function blob(recs: Map<string, Buffer>, name: string, size: number): Buffer {
  const b = recs.get(name);
  if (!b) throw new SnapshotError('format', `record ${name} missing`);
  if (b.length !== size) throw new SnapshotError('format', `record ${name} is ${b.length} bytes; KVM's struct is ${size}`);
  return Buffer.from(b);
}

// ---- meta validation: every field typed and in range ----

const bad = (what: string): never => { throw new SnapshotError('format', `meta: ${what}`); };
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
function int(o: Record<string, unknown>, k: string, max: number, min = 0): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) bad(`${k} must be an integer in ${min}..${max}`);
  return v as number;
}
function bool(o: Record<string, unknown>, k: string): boolean {
  if (typeof o[k] !== 'boolean') bad(`${k} must be a boolean`);
  return o[k] as boolean;
}
function hex64(o: Record<string, unknown>, k: string): string {
  const v = o[k];
  if (typeof v !== 'string' || !/^0x[0-9a-f]{1,16}$/.test(v)) bad(`${k} must be a 64-bit hex string`);
  return v as string;
}
function str(o: Record<string, unknown>, k: string, max: number): string {
  const v = o[k];
  if (typeof v !== 'string' || v.length > max) bad(`${k} must be a string of at most ${max} characters`);
  return v as string;
}
function arr(o: Record<string, unknown>, k: string, max: number): unknown[] {
  const v = o[k];
  if (!Array.isArray(v) || v.length > max) bad(`${k} must be an array of at most ${max} entries`);
  return v as unknown[];
}
function obj(v: unknown, what: string): Record<string, unknown> {
  if (!isObj(v)) bad(`${what} must be an object`);
  return v as Record<string, unknown>;
}

const U32 = 0xffff_ffff;

function checkMeta(v: unknown): SnapshotMeta {
  const m = obj(v, 'meta');
  const vmm = str(m, 'vmm', 100);
  if (vmm !== VMM_STATE_VERSION) throw new SnapshotError('version', `state file was written by ${show(vmm)}; this VMM restores ${VMM_STATE_VERSION}`);
  const memoryBytes = int(m, 'memoryBytes', 2 ** 40, 16 << 20);
  if (memoryBytes % 4096 !== 0) bad('memoryBytes must be a multiple of 4096');
  const memoryFileBytes = int(m, 'memoryFileBytes', 2 ** 40, 4096);
  const vcpus = int(m, 'vcpus', 64, 1);
  const cmdline = str(m, 'cmdline', 4096);
  const createdAt = str(m, 'createdAt', 64);
  const vcpuArr = arr(m, 'vcpu', 64);
  if (vcpuArr.length !== vcpus) bad(`vcpu has ${vcpuArr.length} entries for ${vcpus} vCPUs`);
  const vcpu = vcpuArr.map((x, i): VcpuMeta => {
    const o = obj(x, `vcpu[${i}]`);
    const msrs = arr(o, 'msrs', 1024).map((e): [number, string] => {
      if (!Array.isArray(e) || e.length !== 2) bad(`vcpu[${i}].msrs entries must be [index, value]`);
      const [idx, val] = e as unknown[];
      const idxOk = typeof idx === 'number' && Number.isInteger(idx) && idx >= 0 && idx <= U32;
      if (!idxOk || typeof val !== 'string' || !/^0x[0-9a-f]{1,16}$/.test(val)) bad(`vcpu[${i}].msrs entry malformed`);
      return [idx as number, val as string];
    });
    const cpuid = arr(o, 'cpuid', 512).map((e): CpuidEntryState => {
      const c = obj(e, `vcpu[${i}].cpuid entry`);
      return { function: int(c, 'function', U32), index: int(c, 'index', U32), flags: int(c, 'flags', U32), eax: int(c, 'eax', U32), ebx: int(c, 'ebx', U32), ecx: int(c, 'ecx', U32), edx: int(c, 'edx', U32) };
    });
    return { msrs, cpuid };
  });
  const so = obj(m.serial, 'serial');
  const serial: SerialState = {
    ier: int(so, 'ier', 255), lcr: int(so, 'lcr', 255), mcr: int(so, 'mcr', 255), scr: int(so, 'scr', 255), fcr: int(so, 'fcr', 255),
    dll: int(so, 'dll', 255), dlm: int(so, 'dlm', 255), thrPending: bool(so, 'thrPending'),
    rx: arr(so, 'rx', 65536).map((b) => { if (typeof b !== 'number' || !Number.isInteger(b) || b < 0 || b > 255) bad('serial.rx must hold bytes'); return b as number; }),
  };
  const ro = obj(m.rtc, 'rtc');
  const nvram = str(ro, 'nvram', 200);
  if (Buffer.from(nvram, 'base64').length !== 128) bad('rtc.nvram must be 128 bytes');
  const rtc: RtcState = { index: int(ro, 'index', 127), nvram };
  const transports = arr(m, 'transports', 8).map((x, i): TransportState => {
    const t = obj(x, `transports[${i}]`);
    const queues = arr(t, 'queues', 64).map((q, j): QueueState => {
      const qo = obj(q, `transports[${i}].queues[${j}]`);
      return {
        num: int(qo, 'num', 32768), ready: bool(qo, 'ready'), desc: hex64(qo, 'desc'), driver: hex64(qo, 'driver'), device: hex64(qo, 'device'),
        lastAvail: int(qo, 'lastAvail', 0xffff), nextUsed: int(qo, 'nextUsed', 0xffff),
      };
    });
    return {
      deviceType: int(t, 'deviceType', 255), status: int(t, 'status', 255), devFeatSel: int(t, 'devFeatSel', U32), drvFeatSel: int(t, 'drvFeatSel', U32),
      driverFeatures: hex64(t, 'driverFeatures'), queueSel: int(t, 'queueSel', U32), interruptStatus: int(t, 'interruptStatus', 3),
      configGeneration: int(t, 'configGeneration', U32), active: bool(t, 'active'), queues,
    };
  });
  return { vmm, memoryBytes, memoryFileBytes, vcpus, cmdline, createdAt, vcpu, serial, rtc, transports };
}
