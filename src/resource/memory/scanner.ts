/**
 * The page scanner: fingerprints every resident 4 KiB page of a running
 * sandbox's guest RAM, in place, with the WASM page hasher (assembly/hash
 * through src/hot/pagehash.ts), and counts zero pages and duplicate pages —
 * what KSM-style merging could give back.
 *
 * Where it reads: the guest RAM our vhost-user backend already maps into its
 * hot-path WebAssembly.Memory (VhostUserBackend.guestMemoryRegions, the
 * regions of QEMU's last SET_MEM_TABLE), or, for the builtin VMM, the
 * machine's own guest RAM in the same kind of Memory (shared memfd, private
 * anonymous with KSM, or a snapshot mapped MAP_PRIVATE; mincore answers for
 * all three) — nothing is copied.
 *
 * Why mincore first: guest RAM is a shared memfd. Reading a hole of a shmem
 * mapping allocates the page, so a naive pass would make every VM's whole
 * RAM resident. Each slice asks mincore(2) (native residentPages) which
 * pages exist and hashes only those; holes count as "not resident" (they read
 * as zeros, but cost the host nothing). A page the guest frees (balloon free
 * page reporting punches it out) between mincore and the read is the only
 * race: it is read once as zeros and allocated again — bounded by one slice.
 *
 * Cost is bounded: the pass runs in slices (default 1 MiB) and yields to the
 * event loop between slices, pacing itself to `rateBytesPerSec` of guest RAM
 * (the devices' virtqueues are served on the same loop; a slice of 256 pages
 * hashes in ~0.1 ms at ~10 GB/s). The guest keeps running, so a pass over a
 * running VM is a moving picture; paused (tests), it is an exact snapshot.
 *
 * Results: counts, and the sorted distinct fingerprints of non-zero pages
 * with their page counts — the summary kata-ctl merges across sandboxes
 * (crossSandbox below) to find duplicates between VMs.
 */
import { KataError } from '../../common/errors';
import { native } from '../../common/native';
import type { HotMemory } from '../../hot/memory';
import { PageHasher, PAGE_SIZE } from '../../hot/pagehash';

export class ScannerError extends KataError<'config' | 'busy' | 'stopped'> {}

export interface ScanRegion {
  gpa: bigint;
  size: number;
  /** Offset of the region's first byte in `hot`. */
  offset: number;
}

export interface ScanSource {
  hot: HotMemory;
  /** The guest RAM mapped right now (may change between passes; read per pass). */
  regions(): ReadonlyArray<ScanRegion>;
}

export interface ScanOptions {
  /** Guest RAM bytes per second the pass may read (pacing; default 256 MiB/s). */
  rateBytesPerSec?: number;
  /** Bytes per slice between yields (multiple of 4 KiB; default 1 MiB). */
  sliceBytes?: number;
}

export interface ScanResult {
  /** Guest RAM bytes the regions cover. */
  ramBytes: number;
  /** Pages present in the host (allocated in the memfd); only these were read. */
  residentPages: number;
  /** Resident pages that are all zeros. */
  zeroPages: number;
  /** Resident non-zero pages whose content another page of this sandbox already has. */
  duplicatePages: number;
  /** Distinct non-zero contents. */
  distinctPages: number;
  /** Bytes merging would give back within this sandbox: (zero + duplicate) pages (KSM maps zero pages to one page). */
  savingBytes: number;
  durationMs: number;
  slices: number;
  /** Longest time one slice kept the event loop (ms). */
  maxSliceMs: number;
  /** Time spent in slices (mincore + hashing), without the pacing sleeps: the pass's CPU cost. */
  busyMs: number;
  /** Sorted distinct XXH64 fingerprints of the non-zero pages … */
  fingerprints: BigUint64Array;
  /** … and how many pages have each. */
  counts: Uint32Array;
}

const DEFAULT_RATE = 256 * 1024 * 1024;
const DEFAULT_SLICE = 1024 * 1024;

export class PageScanner {
  private readonly hasher: PageHasher;
  private readonly slicePages: number;
  private readonly rate: number;
  private readonly resident: Uint8Array;
  private running = false;
  private stopped = false;

  constructor(private readonly source: ScanSource, opts: ScanOptions = {}) {
    const slice = opts.sliceBytes ?? DEFAULT_SLICE;
    if (!Number.isInteger(slice) || slice <= 0 || slice % PAGE_SIZE !== 0) throw new ScannerError('config', `slice of ${slice} bytes: must be a positive multiple of 4096`);
    this.rate = opts.rateBytesPerSec ?? DEFAULT_RATE;
    if (!(this.rate > 0)) throw new ScannerError('config', `scan rate ${this.rate} bytes/s must be positive`);
    this.slicePages = slice / PAGE_SIZE;
    // One hasher per Memory: its scratch is a few KiB per slice of 256 pages.
    this.hasher = new PageHasher(source.hot, { maxPages: this.slicePages, stagingBytes: 16, name: 'scanner' });
    this.resident = new Uint8Array(this.slicePages);
  }

  /** Ends a pass in progress at its next slice (it rejects with 'stopped'). */
  stop(): void {
    this.stopped = true;
  }

  /** One full pass over the guest RAM, paced; one pass at a time. */
  async scan(): Promise<ScanResult> {
    if (this.running) throw new ScannerError('busy', 'a scan is already running');
    this.running = true;
    try {
      return await this.pass();
    } finally {
      this.running = false;
    }
  }

  private async pass(): Promise<ScanResult> {
    const n = native();
    const hot = this.source.hot;
    const regions = this.source.regions();
    const ramBytes = regions.reduce((a, r) => a + r.size, 0);
    const hashes = new BigUint64Array(ramBytes / PAGE_SIZE);
    let nonZero = 0;
    let residentPages = 0;
    let zeroPages = 0;
    let slices = 0;
    let maxSliceMs = 0;
    let busyMs = 0;
    let done = 0;
    const t0 = performance.now();
    for (const r of regions) {
      for (let off = 0; off < r.size; off += this.slicePages * PAGE_SIZE) {
        if (this.stopped) throw new ScannerError('stopped', 'scanner stopped');
        const s0 = performance.now();
        const len = Math.min(this.slicePages * PAGE_SIZE, r.size - off);
        const pages = len / PAGE_SIZE;
        const base = r.offset + off;
        residentPages += n.residentPages(hot.memory.buffer, base, len, this.resident);
        // Hash runs of resident pages only (see the header: holes stay holes).
        for (let i = 0; i < pages;) {
          if (!this.resident[i]) { i++; continue; }
          let j = i;
          while (j < pages && this.resident[j]) j++;
          const res = this.hasher.hashPages(base + i * PAGE_SIZE, j - i);
          zeroPages += res.zeroPages;
          for (let k = 0; k < j - i; k++) if (!res.zero[k]) hashes[nonZero++] = res.hashes[k];
          i = j;
        }
        slices++;
        done += len;
        const sliceMs = performance.now() - s0;
        if (sliceMs > maxSliceMs) maxSliceMs = sliceMs;
        busyMs += sliceMs;
        // Pace to the rate; always yield so device I/O on this loop runs between slices.
        const ahead = (done / this.rate) * 1000 - (performance.now() - t0);
        await new Promise<void>((res) => (ahead >= 1 ? setTimeout(res, ahead) : setImmediate(res)));
      }
    }
    const { fingerprints, counts } = distinct(hashes.subarray(0, nonZero));
    const duplicatePages = nonZero - fingerprints.length;
    return {
      ramBytes, residentPages, zeroPages, duplicatePages, distinctPages: fingerprints.length,
      savingBytes: (zeroPages + duplicatePages) * PAGE_SIZE,
      durationMs: performance.now() - t0, slices, maxSliceMs, busyMs, fingerprints, counts,
    };
  }
}

/** Sorts `hashes` in place and returns its distinct values with their multiplicities. */
export function distinct(hashes: BigUint64Array): { fingerprints: BigUint64Array; counts: Uint32Array } {
  hashes.sort();
  let d = 0;
  for (let i = 0; i < hashes.length; i++) if (i === 0 || hashes[i] !== hashes[i - 1]) d++;
  const fingerprints = new BigUint64Array(d);
  const counts = new Uint32Array(d);
  let k = -1;
  for (let i = 0; i < hashes.length; i++) {
    if (i === 0 || hashes[i] !== hashes[i - 1]) fingerprints[++k] = hashes[i];
    counts[k]++;
  }
  return { fingerprints, counts };
}

export interface SandboxPages {
  id: string;
  zeroPages: number;
  fingerprints: BigUint64Array;
  counts: Uint32Array;
}

export interface CrossSandboxResult {
  /** Per sandbox: its non-zero pages whose content some other sandbox also holds. */
  sharedPages: Map<string, number>;
  /** Pages host-wide merging would give back: every zero page, every duplicate copy, within and across sandboxes (= Σ per-sandbox saving + crossSavingPages). */
  savingPages: number;
  /** Of those, pages only cross-sandbox merging finds (not a duplicate inside its own sandbox). */
  crossSavingPages: number;
}

/**
 * Merges per-sandbox summaries (sorted fingerprints + counts) by a k-way walk
 * of the sorted lists: no table of all pages is built.
 */
export function crossSandbox(all: SandboxPages[]): CrossSandboxResult {
  const sharedPages = new Map<string, number>(all.map((s) => [s.id, 0]));
  const pos = all.map(() => 0);
  let savingPages = 0;
  let crossSavingPages = 0;
  let zeros = 0;
  for (const s of all) zeros += s.zeroPages;
  // Zero pages count whole, as in ScanResult.savingBytes (KSM's use_zero_pages maps them to the zero page).
  savingPages += zeros;
  for (;;) {
    let min: bigint | undefined;
    for (let i = 0; i < all.length; i++) {
      if (pos[i] < all[i].fingerprints.length) {
        const v = all[i].fingerprints[pos[i]];
        if (min === undefined || v < min) min = v;
      }
    }
    if (min === undefined) break;
    let holders = 0;
    let total = 0;
    const at: number[] = [];
    for (let i = 0; i < all.length; i++) {
      if (pos[i] < all[i].fingerprints.length && all[i].fingerprints[pos[i]] === min) {
        holders++;
        total += all[i].counts[pos[i]];
        at.push(i);
      }
    }
    savingPages += total - 1;
    if (holders > 1) {
      crossSavingPages += holders - 1;
      for (const i of at) sharedPages.set(all[i].id, sharedPages.get(all[i].id)! + all[i].counts[pos[i]]);
    }
    for (const i of at) pos[i]++;
  }
  return { sharedPages, savingPages, crossSavingPages };
}
