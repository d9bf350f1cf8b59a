/**
 * Typed wrapper over assembly/hash: XXH64 fingerprints of 4 KiB pages, zero
 * page flags and duplicate grouping, for memory dedup (balloon free-page
 * reporting, KSM-like merging, VM templating).
 *
 * Pages are addressed by their offset inside the shared HotMemory — usually
 * guest RAM (HotMemory.guestBase / gpaToOffset), so hashing reads the guest's
 * pages in place. Results live in this hasher's scratch and are exposed as
 * typed-array views that stay valid until the next call (no copies).
 */
import { KataError } from '../common/errors';
import { HotMemory } from './memory';
import { instantiate } from './loader';

export const PAGE_SIZE = 4096;

export type PageHashErrorKind = 'range' | 'config';
export class PageHashError extends KataError<PageHashErrorKind> {}

/** The raw exports of build/wasm/hash.wasm (ABI in assembly/hash/index.ts). */
export interface HashExports {
  xxh64(ptr: number, len: number, seed: bigint): bigint;
  hash_pages(src: number, npages: number, hashes: number, flags: number, seed: bigint): number;
  group_pages(src: number, hashes: number, npages: number, table: number, cap: number, verify: number, groups: number): number;
  pages_equal(a: number, b: number): number;
}

export interface PageHashResult {
  /** XXH64 of each page (same value `xxhsum -H64` prints for its bytes). */
  hashes: BigUint64Array;
  /** 1 for an all-zero page. */
  zero: Uint8Array;
  zeroPages: number;
}

export interface PageGroupResult {
  /** groupOf[i] = first page with the same content (i itself if first). */
  groupOf: Uint32Array;
  /** Distinct contents among the pages. */
  unique: number;
}

export class PageHasher {
  readonly wasm: HashExports;
  readonly maxPages: number;
  private readonly hashesOff: number;
  private readonly flagsOff: number;
  private readonly groupsOff: number;
  private readonly tableOff: number;
  private readonly tableCap: number;
  private readonly stagingOff: number;
  private readonly stagingBytes: number;
  private lastSrc = -1;
  private lastPages = 0;

  /**
   * Reserves scratch for up to `maxPages` pages per call (~ 29 bytes/page:
   * fingerprint, flag, group, and a 2×-sized index table) plus a staging area
   * for hashing JS buffers (`stagingBytes`, default 64 KiB).
   */
  constructor(readonly mem: HotMemory, opts: { maxPages?: number; stagingBytes?: number; name?: string } = {}) {
    this.maxPages = opts.maxPages ?? 65536;
    if (!Number.isInteger(this.maxPages) || this.maxPages < 1) throw new PageHashError('config', `maxPages ${this.maxPages}`);
    let cap = 1;
    while (cap < 2 * this.maxPages) cap *= 2;
    this.tableCap = cap;
    this.stagingBytes = opts.stagingBytes ?? 65536;
    const name = opts.name ?? 'hash';
    this.wasm = instantiate<HashExports>('hash', mem);
    this.hashesOff = mem.reserve(`${name}.hashes`, this.maxPages * 8, 16);
    this.flagsOff = mem.reserve(`${name}.flags`, this.maxPages, 16);
    this.groupsOff = mem.reserve(`${name}.groups`, this.maxPages * 4, 16);
    this.tableOff = mem.reserve(`${name}.table`, cap * 4, 16);
    this.stagingOff = mem.reserve(`${name}.staging`, this.stagingBytes, 16);
  }

  /** Fingerprints `npages` pages starting at Memory offset `src`. */
  hashPages(src: number, npages: number, seed = 0n): PageHashResult {
    if (!Number.isInteger(npages) || npages < 0 || npages > this.maxPages) {
      throw new PageHashError('range', `npages ${npages} out of 0..${this.maxPages}`);
    }
    this.mem.check(src, npages * PAGE_SIZE);
    const zeroPages = this.wasm.hash_pages(src, npages, this.hashesOff, this.flagsOff, BigInt.asUintN(64, seed));
    if (zeroPages < 0) throw new PageHashError('range', `pages ${src}+${npages} outside the Memory`);
    this.lastSrc = src;
    this.lastPages = npages;
    const buf = this.mem.memory.buffer;
    return {
      hashes: new BigUint64Array(buf, this.hashesOff, npages),
      zero: new Uint8Array(buf, this.flagsOff, npages),
      zeroPages,
    };
  }

  /**
   * Groups the pages of the last hashPages() call by content. With `verify`
   * (default true) a fingerprint match is confirmed byte for byte, so a
   * 64-bit collision can never make dedup merge different pages.
   */
  groupLast(opts: { verify?: boolean } = {}): PageGroupResult {
    if (this.lastSrc < 0) throw new PageHashError('config', 'groupLast() before hashPages()');
    const verify = opts.verify ?? true;
    const unique = this.wasm.group_pages(this.lastSrc, this.hashesOff, this.lastPages, this.tableOff, this.tableCap, verify ? 1 : 0, this.groupsOff);
    if (unique < 0) throw new PageHashError('range', 'group_pages refused its arguments');
    return { groupOf: new Uint32Array(this.mem.memory.buffer, this.groupsOff, this.lastPages), unique };
  }

  /** XXH64 of bytes already in the Memory. */
  xxh64At(offset: number, len: number, seed = 0n): bigint {
    this.mem.check(offset, len);
    return BigInt.asUintN(64, this.wasm.xxh64(offset, len, BigInt.asUintN(64, seed)));
  }

  /** XXH64 of a JS buffer (copied through the staging area if it is not in the Memory). */
  xxh64(data: Uint8Array, seed = 0n): bigint {
    if (data.buffer === this.mem.memory.buffer) return this.xxh64At(data.byteOffset, data.byteLength, seed);
    if (data.byteLength > this.stagingBytes) {
      throw new PageHashError('range', `${data.byteLength} bytes exceed the ${this.stagingBytes}-byte staging area`);
    }
    this.mem.u8.set(data, this.stagingOff);
    return this.xxh64At(this.stagingOff, data.byteLength, seed);
  }

  pagesEqual(a: number, b: number): boolean {
    this.mem.check(a, PAGE_SIZE);
    this.mem.check(b, PAGE_SIZE);
    return this.wasm.pages_equal(a, b) === 1;
  }
}
