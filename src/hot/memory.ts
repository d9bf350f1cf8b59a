/**
 * The one WebAssembly.Memory every hot-path module shares, and its layout.
 *
 * ARCHITECTURE.md decision 1: guest RAM lives inside WebAssembly memory. The
 * Memory is sized once (initial = maximum) and never grown, because
 * `memory.grow` silently drops a MAP_FIXED overlay of the guest memfd. The
 * layout, low to high:
 *
 *   [0, STATIC_END)            module static data (AssemblyScript data
 *                              segments) — the loader checks every module's
 *                              segments fit here and do not overlap. Offset 0
 *                              is never handed out, so a null pointer is
 *                              always a bug, never a valid buffer.
 *   [STATIC_END, scratchEnd)   scratch: queue structs, iovec tables, hash
 *                              tables … handed out once by reserve() at
 *                              set-up; never freed (modules do not allocate).
 *   [guestBase, end)           guest RAM, 64 KiB aligned so the addon can map
 *                              the memfd over it. Guest-physical regions are
 *                              laid out back to back (e.g. below and above
 *                              the PCI hole on x86).
 *
 * wasm32 bounds the whole Memory at 4 GiB, so a guest gets at most ~3.5 GiB.
 */
import { KataError } from '../common/errors';

export type HotMemoryErrorKind = 'layout' | 'exhausted' | 'range';
export class HotMemoryError extends KataError<HotMemoryErrorKind> {}

export const WASM_PAGE = 65536;
/** Bytes kept for module static data; see the loader's data-segment check. */
export const STATIC_END = WASM_PAGE;
/** wasm32: 65536 pages of 64 KiB. */
export const MAX_MEMORY_BYTES = 65536 * WASM_PAGE;

/** One guest-physical range backed by a slice of the guest RAM area. */
export interface GuestRegion {
  /** Guest-physical start address. */
  gpa: bigint;
  /** Bytes. */
  size: number;
  /** Offset of the first byte inside the WebAssembly.Memory. */
  offset: number;
}

export interface HotMemoryOptions {
  /** Bytes of scratch for module structs/tables (rounded up to 64 KiB). */
  scratchBytes: number;
  /**
   * Guest RAM as guest-physical regions, in order; each size a multiple of
   * 4 KiB. Default: none (a Memory for image decoding or tests only).
   */
  guestRegions?: ReadonlyArray<{ gpa: bigint; size: number }>;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

export class HotMemory {
  readonly memory: WebAssembly.Memory;
  /** First byte past scratch; guest RAM starts at guestBase ≥ scratchEnd. */
  readonly scratchEnd: number;
  readonly guestBase: number;
  readonly guestBytes: number;
  readonly guestRegions: ReadonlyArray<GuestRegion>;
  readonly byteLength: number;
  /** Views stay valid forever: the Memory is never grown. */
  readonly u8: Uint8Array;
  readonly view: DataView;
  private next: number = STATIC_END;
  private readonly reservations = new Map<string, { offset: number; bytes: number }>();

  constructor(opts: HotMemoryOptions) {
    if (!Number.isSafeInteger(opts.scratchBytes) || opts.scratchBytes < 0) {
      throw new HotMemoryError('layout', `scratchBytes must be a non-negative integer, got ${opts.scratchBytes}`);
    }
    this.scratchEnd = alignUp(STATIC_END + opts.scratchBytes, WASM_PAGE);
    this.guestBase = this.scratchEnd;
    const regions: GuestRegion[] = [];
    let off = this.guestBase;
    for (const r of opts.guestRegions ?? []) {
      if (!Number.isSafeInteger(r.size) || r.size <= 0 || r.size % 4096 !== 0) {
        throw new HotMemoryError('layout', `guest region size must be a positive multiple of 4096, got ${r.size}`);
      }
      if (r.gpa < 0n || r.gpa % 4096n !== 0n || r.gpa + BigInt(r.size) > 0xffff_ffff_ffff_ffffn) {
        throw new HotMemoryError('layout', `guest region gpa 0x${r.gpa.toString(16)} is not page aligned or wraps`);
      }
      for (const o of regions) {
        if (r.gpa < o.gpa + BigInt(o.size) && o.gpa < r.gpa + BigInt(r.size)) {
          throw new HotMemoryError('layout', `guest regions at 0x${o.gpa.toString(16)} and 0x${r.gpa.toString(16)} overlap`);
        }
      }
      regions.push({ gpa: r.gpa, size: r.size, offset: off });
      off += r.size;
    }
    this.guestBytes = off - this.guestBase;
    this.guestRegions = regions;
    const total = alignUp(off, WASM_PAGE);
    if (total > MAX_MEMORY_BYTES) {
      throw new HotMemoryError('layout', `layout needs ${total} bytes; wasm32 allows at most ${MAX_MEMORY_BYTES} (guest RAM ≲ 3.5 GiB)`);
    }
    const pages = total / WASM_PAGE;
    // Decision 1: initial = maximum, never grown.
    this.memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
    this.byteLength = this.memory.buffer.byteLength;
    this.u8 = new Uint8Array(this.memory.buffer);
    this.view = new DataView(this.memory.buffer);
  }

  /**
   * Hands out `bytes` of scratch aligned to `align` under a unique name, once,
   * at set-up. Reserving the same name again returns the same range if it is
   * large enough (a module re-instantiated over the same Memory).
   */
  reserve(name: string, bytes: number, align = 16): number {
    const prev = this.reservations.get(name);
    if (prev) {
      if (prev.bytes < bytes) throw new HotMemoryError('layout', `scratch "${name}" already reserved with ${prev.bytes} < ${bytes} bytes`);
      return prev.offset;
    }
    if (!Number.isSafeInteger(bytes) || bytes <= 0 || align <= 0 || (align & (align - 1)) !== 0) {
      throw new HotMemoryError('layout', `bad reservation ${name}: ${bytes} bytes, align ${align}`);
    }
    const offset = alignUp(this.next, align);
    if (offset + bytes > this.scratchEnd) {
      throw new HotMemoryError('exhausted', `scratch exhausted reserving ${bytes} bytes for "${name}" (${this.scratchEnd - offset} left)`);
    }
    this.next = offset + bytes;
    this.reservations.set(name, { offset, bytes });
    return offset;
  }

  /** Bytes of scratch not yet reserved. */
  get scratchFree(): number {
    return this.scratchEnd - this.next;
  }

  /** A Buffer aliasing [offset, offset+len) of the Memory (no copy). */
  buffer(offset: number, len: number): Buffer {
    this.check(offset, len);
    return Buffer.from(this.memory.buffer, offset, len);
  }

  /** Memory offset of guest-physical [gpa, gpa+len), or throws 'range'. */
  gpaToOffset(gpa: bigint, len: number): number {
    for (const r of this.guestRegions) {
      if (gpa >= r.gpa && gpa - r.gpa + BigInt(len) <= BigInt(r.size)) return r.offset + Number(gpa - r.gpa);
    }
    throw new HotMemoryError('range', `guest range 0x${gpa.toString(16)}+${len} is not in guest RAM`);
  }

  check(offset: number, len: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(len) || offset < 0 || len < 0 || offset + len > this.byteLength) {
      throw new HotMemoryError('range', `range ${offset}+${len} is outside the ${this.byteLength}-byte Memory`);
    }
  }
}
