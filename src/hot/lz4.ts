/**
 * Typed wrapper over assembly/lz4 (LZ4 block format, lz4_Block_format.md):
 * block compress/decompress through buffers reserved once in a HotMemory,
 * plus the small frame helpers needed to talk to the `lz4` CLI (legacy frames
 * written, legacy and modern frames read — checksums are not verified).
 *
 * The block format has no header: the caller knows (or bounds) the
 * decompressed size. EROFS stores raw blocks; the CLI wraps them in frames.
 */
import { KataError } from '../common/errors';
import { HotMemory } from './memory';
import { instantiate } from './loader';

export type Lz4ErrorKind = 'truncated' | 'overflow' | 'bad-offset' | 'args' | 'too-large' | 'frame';
export class Lz4Error extends KataError<Lz4ErrorKind> {}

/** Raw exports of build/wasm/lz4.wasm (see the ABI in assembly/lz4/index.ts). */
export interface Lz4Exports {
  decompress(src: number, srcLen: number, dst: number, dstCap: number, partial: number): number;
  compress(src: number, srcLen: number, dst: number, dstCap: number, work: number): number;
  compressBound(n: number): number;
  workspaceSize(): number;
}

/** Maps an assembly/lz4 error code to an Lz4Error. */
export function lz4CodeError(code: number, what = 'lz4 block'): Lz4Error {
  switch (code) {
    case -1: return new Lz4Error('truncated', `${what}: input truncated or a length runs past its end`);
    case -2: return new Lz4Error('overflow', `${what}: output larger than the space given`);
    case -3: return new Lz4Error('bad-offset', `${what}: match offset 0 or before the start of the output`);
    default: return new Lz4Error('args', `${what}: invalid arguments (code ${code})`);
  }
}

export interface Lz4Options {
  /** Largest uncompressed block handled (default 4 MiB). */
  maxBlockBytes?: number;
  /** Share an existing Memory; default: a private one sized for the buffers. */
  memory?: HotMemory;
}

export class Lz4 {
  readonly exports: Lz4Exports;
  readonly mem: HotMemory;
  readonly maxBlockBytes: number;
  /** Scratch offsets: source, destination, compressor hash table. */
  readonly srcOff: number;
  readonly dstOff: number;
  private readonly workOff: number;
  private readonly boundMax: number;

  constructor(opts: Lz4Options = {}) {
    this.maxBlockBytes = opts.maxBlockBytes ?? 4 << 20;
    this.boundMax = this.maxBlockBytes + Math.floor(this.maxBlockBytes / 255) + 16;
    const work = 1 << 16;
    this.mem = opts.memory ?? new HotMemory({ scratchBytes: 2 * this.boundMax + work + 4096 });
    this.exports = instantiate<Lz4Exports>('lz4', this.mem);
    const ws = this.exports.workspaceSize();
    this.srcOff = this.mem.reserve(`lz4.src.${this.boundMax}`, this.boundMax, 64);
    this.dstOff = this.mem.reserve(`lz4.dst.${this.boundMax}`, this.boundMax, 64);
    this.workOff = this.mem.reserve('lz4.work', ws, 64);
  }

  /** Worst-case compressed size of n bytes. */
  compressBound(n: number): number {
    return n + Math.floor(n / 255) + 16;
  }

  /** Compresses one block; the result is a fresh Buffer. */
  compressBlock(src: Uint8Array): Buffer {
    if (src.length > this.maxBlockBytes) throw new Lz4Error('too-large', `block of ${src.length} bytes exceeds ${this.maxBlockBytes}`);
    this.mem.u8.set(src, this.srcOff);
    const n = this.exports.compress(this.srcOff, src.length, this.dstOff, this.boundMax, this.workOff);
    if (n < 0) throw lz4CodeError(n, 'lz4 compress');
    return Buffer.from(this.mem.u8.subarray(this.dstOff, this.dstOff + n));
  }

  /**
   * Decompresses one block of at most `maxOut` bytes. `partial`: stop after
   * exactly maxOut bytes (prefix decoding), otherwise the block must end
   * within maxOut and the actual length is returned.
   */
  decompressBlock(src: Uint8Array, maxOut: number, partial = false): Buffer {
    if (src.length > this.boundMax) throw new Lz4Error('too-large', `compressed block of ${src.length} bytes exceeds ${this.boundMax}`);
    if (maxOut > this.maxBlockBytes || maxOut < 0) throw new Lz4Error('too-large', `output of ${maxOut} bytes exceeds ${this.maxBlockBytes}`);
    this.mem.u8.set(src, this.srcOff);
    const n = this.exports.decompress(this.srcOff, src.length, this.dstOff, maxOut, partial ? 1 : 0);
    if (n < 0) throw lz4CodeError(n);
    return Buffer.from(this.mem.u8.subarray(this.dstOff, this.dstOff + n));
  }

  /** Decodes [srcOff, srcOff+srcLen) → [dstOff, …) inside the Memory; no copies. */
  decompressInPlace(srcOff: number, srcLen: number, dstOff: number, dstCap: number, partial = false): number {
    this.mem.check(srcOff, srcLen);
    this.mem.check(dstOff, dstCap);
    const n = this.exports.decompress(srcOff, srcLen, dstOff, dstCap, partial ? 1 : 0);
    if (n < 0) throw lz4CodeError(n);
    return n;
  }

  /** Compresses [srcOff, srcOff+srcLen) → [dstOff, …) inside the Memory. */
  compressInPlace(srcOff: number, srcLen: number, dstOff: number, dstCap: number): number {
    this.mem.check(srcOff, srcLen);
    this.mem.check(dstOff, dstCap);
    const n = this.exports.compress(srcOff, srcLen, dstOff, dstCap, this.workOff);
    if (n < 0) throw lz4CodeError(n, 'lz4 compress');
    return n;
  }
}

/* ---- frames (lz4_Frame_format.md), for the `lz4` CLI ---- */

export const LZ4_LEGACY_MAGIC = 0x184c2102;
export const LZ4_FRAME_MAGIC = 0x184d2204;
/** Legacy frames cut the input into 8 MiB blocks. */
export const LZ4_LEGACY_BLOCK = 8 << 20;

/** One block of a frame: compressed bytes, or stored bytes if !compressed. */
export interface FrameBlock { data: Buffer; compressed: boolean }

/** Wraps compressed blocks (each ≤ 8 MiB uncompressed) in a legacy frame (`lz4 -l`). */
export function legacyFrame(blocks: Uint8Array[]): Buffer {
  const parts: Buffer[] = [];
  const head = Buffer.alloc(4);
  head.writeUInt32LE(LZ4_LEGACY_MAGIC);
  parts.push(head);
  for (const b of blocks) {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    parts.push(len, Buffer.from(b.buffer, b.byteOffset, b.length));
  }
  return Buffer.concat(parts);
}

/**
 * Splits an LZ4 file (one or more legacy or modern frames) into its blocks.
 * Modern frames must use independent blocks; checksums are skipped.
 */
export function parseFrames(buf: Buffer): FrameBlock[] {
  const out: FrameBlock[] = [];
  let p = 0;
  const need = (n: number): void => {
    if (p + n > buf.length) throw new Lz4Error('frame', `lz4 frame truncated at byte ${p}`);
  };
  while (p < buf.length) {
    need(4);
    const magic = buf.readUInt32LE(p);
    p += 4;
    if (magic === LZ4_LEGACY_MAGIC) {
      while (p < buf.length) {
        need(4);
        const size = buf.readUInt32LE(p);
        if (size === LZ4_LEGACY_MAGIC || size === LZ4_FRAME_MAGIC) break; // next frame
        p += 4;
        need(size);
        out.push({ data: buf.subarray(p, p + size), compressed: true });
        p += size;
      }
    } else if (magic === LZ4_FRAME_MAGIC) {
      need(3);
      const flg = buf[p];
      if (flg >> 6 !== 1) throw new Lz4Error('frame', `lz4 frame version ${flg >> 6} unsupported`);
      if (!(flg & 0x20)) throw new Lz4Error('frame', 'lz4 frame uses linked blocks (lz4 -BD); only independent blocks are supported');
      const blockChecksum = !!(flg & 0x10);
      const contentSize = !!(flg & 0x08);
      const contentChecksum = !!(flg & 0x04);
      const dictId = !!(flg & 0x01);
      p += 2 + (contentSize ? 8 : 0) + (dictId ? 4 : 0) + 1;
      for (;;) {
        need(4);
        const word = buf.readUInt32LE(p);
        p += 4;
        if (word === 0) break;
        const size = word & 0x7fffffff;
        need(size + (blockChecksum ? 4 : 0));
        out.push({ data: buf.subarray(p, p + size), compressed: (word & 0x80000000) === 0 });
        p += size + (blockChecksum ? 4 : 0);
      }
      if (contentChecksum) { need(4); p += 4; }
    } else if ((magic & 0xfffffff0) === 0x184d2a50) {
      need(4);
      p += 4 + buf.readUInt32LE(p); // skippable frame
    } else {
      throw new Lz4Error('frame', `not an lz4 frame (magic 0x${magic.toString(16)})`);
    }
  }
  return out;
}
