/**
 * Fixed-size chunking of an image's files into content-addressed blobs.
 *
 * Every chunk-based file is cut at multiples of the chunk size; a chunk is
 * named by the sha256 of its uncompressed bytes. The first occurrence of a
 * chunk in the image gets the next device-1 slot (dedup within the image);
 * a chunk already in the store (the chunk index, dedup across layers and
 * images) is referenced where it lies; a new chunk is LZ4-block-compressed by
 * our AssemblyScript encoder when that saves space and appended to the new
 * blob of the layer its file came from. Blobs are written to temp files in
 * the image's temp directory and named by their sha256 when finished (hashed
 * as written by the pool's hashing worker, or here without a pool).
 *
 * addChunk() queues a chunk (the caller's view, no copy) and returns its
 * ordinal; the compression pool (compress-pool.ts) hashes and compresses
 * it in one job while this thread goes on reading and parsing (fewer than
 * WINDOW_PER_WORKER jobs per worker in flight). Dedup decisions stay
 * sequential: the chunks are decided in ordinal order as their hashes
 * come back (the first occurrence of a sha256 takes the next slot, a
 * chunk in the store's index a slot pointing there), the new ones written
 * in slot order, so the blobs, the slots and the image do not depend on
 * the thread count or timing; slotOfChunk() maps ordinals to slots once
 * decided. The workers skip compressing what their session already knows
 * (stored chunks, and chunks they hashed earlier, which the ordered
 * decision will find first); a chunk that turns out new without a
 * compression is compressed here. When the workers are saturated and
 * chunks wait, pump() and advance() have this thread hash and compress the
 * next waiting one itself rather than sit idle (on 2 cores: the workers
 * and this thread, all busy). A chunk's release (given by the caller) is
 * called once it is decided and, when new, written and hashed into its
 * blob, so read buffers can be reused. Without a pool chunks are hashed
 * and compressed (or not) on this thread at each pump().
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Lz4 } from '../hot/lz4';
import { CHUNK_FLAG_LZ4, type ChunkSlot, type ChunkTable } from './chunk-table';
import type { CompressPool } from './compress-pool';
import type { PoolReply } from './lz4-worker';
import type { StoredChunk } from './store';

interface PendingSlot {
  sha256: string;
  /** Existing blob digest, or the layer whose new blob holds it. */
  where: { blob: string } | { layer: number };
  offset: number;
  storedSize: number;
  size: number;
  flags: number;
}

interface LayerBlob {
  tmp: string;
  fd: number;
  /** The blob's sha256: on the pool's hashing worker, else here. */
  hash: ReturnType<CompressPool['sha256Slices']> | crypto.Hash;
  size: number;
  /** Its hash has been ended (digest asked for). */
  ended?: boolean;
  /** Bytes written since the last early flush was started, and that flush (see flushEarly). */
  unflushed: number;
  flushing: Promise<void> | null;
}

/** Blob bytes written between early flushes (flushEarly). */
const FLUSH_EVERY = 32 << 20;

/**
 * Starts writing a blob's dirty pages back while the conversion goes on:
 * fdatasync through a descriptor of its own, on libuv's thread pool, so
 * neither this thread nor the blob's descriptor waits, and the fsync at
 * the end has little left to write (mkfs.erofs, like ours before, leaves
 * it all to the end). Errors are left to that final fsync.
 */
function flushEarly(file: string): Promise<void> {
  return new Promise((resolve) => {
    fs.open(file, 'r', (e, fd) => {
      if (e) { resolve(); return; }
      fs.fdatasync(fd, () => fs.close(fd, () => resolve()));
    });
  });
}

export interface NewBlob { tmp: string; digest: string; size: number }

export interface ChunkerResult {
  table: ChunkTable;
  newBlobs: NewBlob[];
  /** Index entries for the chunks this conversion stored. */
  newIndex: [string, StoredChunk][];
  newChunks: number;
  newBlobBytes: number;
}

/** A chunk on its way to its dedup decision (and, when new, its blob). */
interface Queued {
  /** The bytes (replaced by the worker's `raw` when they were moved to it). */
  chunk: Buffer;
  size: number;
  layer: number;
  /** The chunker may move `chunk`'s buffer to a worker (nobody else holds it). */
  owned: boolean;
  /** The worker's job, once sent. */
  job: Promise<PoolReply> | null;
  /** sha256 (and compression, when tried) known on this thread. */
  done: boolean;
  sha: string;
  /** Compressed bytes, or null: store raw (when tried) or not compressed yet. */
  result: Uint8Array | null;
  tried: boolean;
  /** Lets go of the memory the chunk lies in (after its write). */
  release: (() => void) | null;
}

/**
 * Chunk jobs in flight per worker: enough queued work (~16 × 2 ms)
 * that a worker does not run dry while this thread is busy between turns
 * of its event loop (it only learns of finished jobs then).
 */
const WINDOW_PER_WORKER = 16;
/** Chunks waiting unsent before pump() hashes and compresses one on this thread. */
const HELP_AFTER = 4;

export class Chunker {
  private readonly slots: PendingSlot[] = [];
  private readonly slotOf = new Map<string, number>();
  /** Slot of each chunk added, by its ordinal (what addChunk returned). */
  private readonly ordinalSlot: number[] = [];
  private readonly blobs = new Map<number, LayerBlob>();
  private lz4: Lz4 | null = null;
  /** Chunks added, by ordinal; undefined once decided. */
  private readonly queue: Queued[] = [];
  private head = 0;
  /** First queued chunk not yet sent to a worker nor done here. */
  private unsent = 0;
  private inFlight = 0;
  private newChunks = 0;
  private queuedBytes = 0;
  private session: { sid: number; end(): void } | null;
  /** Uncompressed bytes chunked so far (progress). */
  bytesDone = 0;
  /** Uncompressed bytes decided so far (written, or found stored) (progress). */
  bytesStored = 0;

  constructor(private readonly chunkSize: number, private readonly index: Map<string, StoredChunk>, private readonly tmpDir: string,
    private readonly compress = true, private readonly pool: CompressPool | null = null) {
    this.session = pool ? pool.session(index.keys()) : null;
  }

  /**
   * Adds one chunk of a file of `layer`; returns its ordinal, which
   * slotOfChunk() turns into its device-1 slot once decided. The chunk is
   * queued as is (no copy): `hold` is called then and the returned release
   * function once the chunk is written or found a duplicate, so the caller
   * can reuse the memory it lies in (the converter's read slices). `owned`:
   * nobody else uses the chunk's buffer (it may be moved to a worker).
   */
  addChunk(chunk: Buffer, layer: number, hold?: () => () => void, owned = false): number {
    this.bytesDone += chunk.length;
    const o = this.queue.length;
    this.queue.push({ chunk, size: chunk.length, layer, owned, job: null, done: false, sha: '', result: null, tried: false, release: hold ? hold() : null });
    this.queuedBytes += chunk.length;
    this.dispatch();
    return o;
  }

  /** The device-1 slot of the chunk addChunk() numbered `ordinal` (after store()). */
  slotOfChunk(ordinal: number): number {
    const k = this.ordinalSlot[ordinal];
    if (k === undefined) throw new Error(`chunk ${ordinal} is not decided yet`);
    return k;
  }

  /** Uncompressed bytes of the chunks not decided (and written) yet. */
  pendingBytes(): number { return this.queuedBytes; }

  /**
   * Appends slot k's stored bytes to its layer's blob. Returns when the
   * bytes may be let go: at once when hashed here, else once the hashing
   * worker has them (a buffer nobody else holds is moved to it, not copied).
   */
  private write(k: number, chunk: Buffer, compressed: Uint8Array | null, layer: number, owned: boolean): Promise<void> | null {
    const bytes = compressed ?? chunk;
    const b = this.blobFor(layer);
    fs.writeSync(b.fd, bytes);
    const s = this.slots[k];
    s.offset = b.size;
    s.storedSize = bytes.length;
    s.flags = compressed ? CHUNK_FLAG_LZ4 : 0;
    b.size += bytes.length;
    b.unflushed += bytes.length;
    if (b.unflushed >= FLUSH_EVERY && !b.flushing) {
      b.unflushed = 0;
      b.flushing = flushEarly(b.tmp).then(() => { b.flushing = null; });
    }
    if (b.hash instanceof crypto.Hash) { b.hash.update(bytes); return null; }
    return b.hash.update(bytes, compressed !== null || owned);
  }

  /** Compresses a chunk on this thread; null when it does not shrink. */
  private compressHere(chunk: Buffer): Uint8Array | null {
    this.lz4 ??= new Lz4({ maxBlockBytes: this.chunkSize });
    const c = this.lz4.compressBlock(chunk);
    return c.length < chunk.length ? c : null;
  }

  /**
   * Hashes a chunk on this thread, and compresses it unless it is known to
   * be stored already or a duplicate (decide() compresses it after all if
   * that turns out wrong).
   */
  private doHere(q: Queued): void {
    q.sha = crypto.createHash('sha256').update(q.chunk).digest('hex');
    if (this.compress && !this.slotOf.has(q.sha) && !this.index.has(q.sha)) { q.result = this.compressHere(q.chunk); q.tried = true; }
    q.done = true;
  }

  /** Sends waiting chunks to the workers while they have room. */
  private dispatch(): void {
    if (!this.pool) { this.unsent = this.queue.length; return; }
    // Closed (a failed conversion): jobs still in flight end, no new ones start.
    if (!this.session) return;
    const cap = WINDOW_PER_WORKER * this.pool.size;
    while (this.unsent < this.queue.length && this.inFlight < cap) {
      const q = this.queue[this.unsent++];
      if (q.done) continue;
      this.inFlight++;
      q.job = this.pool.chunk(q.chunk, this.session.sid, this.compress, q.owned && !(q.chunk.buffer instanceof SharedArrayBuffer));
      q.job.then((r) => {
        q.sha = r.hex!;
        q.result = r.data ?? null;
        q.tried = this.compress && !r.skipped;
        if (r.raw) q.chunk = Buffer.from(r.raw);
        q.done = true;
      }, () => undefined).finally(() => { this.inFlight--; this.dispatch(); }).catch(() => undefined);
    }
  }

  /** Hashes (and compresses) the next unsent chunk on this thread. */
  private helpOne(): void {
    const q = this.queue[this.unsent++];
    if (!q.done) this.doHere(q);
  }

  /**
   * Decides the chunk at the head of the queue, in order (waiting for, or
   * doing, its hash): a duplicate takes the slot of its first occurrence, a
   * chunk in the store's index a slot pointing there, a new one the next
   * slot and is written to its layer's blob.
   */
  private async writeNext(): Promise<void> {
    const q = this.queue[this.head];
    if (!q.done) {
      if (q.job) await q.job;
      else {
        if (this.head === this.unsent) this.unsent++;
        this.doHere(q);
      }
    }
    let hashed: Promise<void> | null = null;
    let k = this.slotOf.get(q.sha);
    if (k === undefined) {
      k = this.slots.length;
      this.slotOf.set(q.sha, k);
      const stored = this.index.get(q.sha);
      if (stored && stored.size === q.size) {
        this.slots.push({ sha256: q.sha, where: { blob: stored.blob }, offset: stored.offset, storedSize: stored.storedSize, size: stored.size, flags: stored.flags });
      } else {
        this.slots.push({ sha256: q.sha, where: { layer: q.layer }, offset: 0, storedSize: q.size, size: q.size, flags: 0 });
        this.newChunks++;
        const c = this.compress && !q.tried ? this.compressHere(q.chunk) : q.result;
        hashed = this.write(k, q.chunk, c, q.layer, q.owned);
      }
    }
    this.ordinalSlot[this.head] = k;
    this.queue[this.head++] = undefined as unknown as Queued; // let the bytes go
    this.bytesStored += q.size;
    this.queuedBytes -= q.size;
    if (q.release) { if (hashed) void hashed.then(q.release); else q.release(); }
  }

  /**
   * Lets finished jobs in (one turn of the event loop), decides the chunks
   * at the head that are done, and when chunks wait unsent behind busy
   * workers does one here. Without a pool it does every queued chunk. Call
   * after every slice of a layer.
   */
  async pump(): Promise<void> {
    if (!this.pool) {
      while (this.head < this.queue.length) await this.writeNext();
      return;
    }
    if (this.inFlight > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    this.dispatch();
    while (this.head < this.queue.length && this.queue[this.head].done) await this.writeNext();
    // One chunk at a time, so finished jobs are let in (and more sent) between them.
    if (this.queue.length - this.unsent > HELP_AFTER) this.helpOne();
  }

  /**
   * Decides (and writes) every remaining chunk, in order: this thread
   * hashes and compresses waiting chunks while the workers finish theirs,
   * and waits only when every remaining chunk is with a worker.
   */
  async store(onChunk: (bytes: number) => void = () => undefined): Promise<void> {
    while (this.head < this.queue.length) {
      if (this.pool) {
        if (this.inFlight > 0) await new Promise<void>((resolve) => setImmediate(resolve));
        this.dispatch();
        while (this.head < this.queue.length && this.queue[this.head].done) await this.writeNext();
        if (this.head === this.queue.length) break;
        if (this.unsent < this.queue.length) this.helpOne();
        else await this.writeNext();
      } else await this.writeNext();
      onChunk(this.bytesStored);
    }
    onChunk(this.bytesStored);
  }

  /**
   * Makes progress on the queue: decides the done chunks at its head, else
   * does a waiting one here, else waits for the head's worker. Returns
   * false when nothing is queued. The converter calls it while it waits
   * for a read slice the queued chunks still lie in.
   */
  async advance(): Promise<boolean> {
    if (this.head >= this.queue.length) return false;
    if (this.pool) {
      if (this.inFlight > 0) await new Promise<void>((resolve) => setImmediate(resolve));
      this.dispatch();
      if (this.queue[this.head].done) {
        while (this.head < this.queue.length && this.queue[this.head].done) await this.writeNext();
        return true;
      }
      if (this.unsent < this.queue.length) { this.helpOne(); return true; }
    }
    await this.writeNext();
    return true;
  }

  private blobFor(layer: number): LayerBlob {
    let b = this.blobs.get(layer);
    if (!b) {
      const tmp = path.join(this.tmpDir, `blob-layer-${layer}`);
      b = { tmp, fd: fs.openSync(tmp, 'w', 0o644), hash: this.pool ? this.pool.sha256Slices() : crypto.createHash('sha256'), size: 0, unflushed: 0, flushing: null };
      this.blobs.set(layer, b);
    }
    return b;
  }

  /** Closes blob files and ends the workers' session; call on failure too (idempotent). */
  close(): void {
    this.session?.end();
    this.session = null;
    for (const b of this.blobs.values()) {
      if (b.fd >= 0) { fs.closeSync(b.fd); b.fd = -1; }
      // A hash left open on the (long-lived) hashing worker: ended, its result dropped.
      if (!b.ended && !(b.hash instanceof crypto.Hash)) void b.hash.digest().catch(() => undefined);
      b.ended = true;
    }
  }

  /** Finishes the blobs and builds the chunk table (blob list sorted by digest). */
  async finish(blobSize: (digest: string) => number): Promise<ChunkerResult> {
    this.session?.end();
    this.session = null;
    const layerDigest = new Map<number, NewBlob>();
    for (const [layer, b] of [...this.blobs].sort((x, y) => x[0] - y[0])) {
      await b.flushing;
      if (b.fd >= 0) { fs.fsyncSync(b.fd); fs.closeSync(b.fd); b.fd = -1; }
      b.ended = true;
      layerDigest.set(layer, { tmp: b.tmp, digest: b.hash instanceof crypto.Hash ? b.hash.digest('hex') : await b.hash.digest(), size: b.size });
    }
    const digestOf = (s: PendingSlot): string => ('blob' in s.where ? s.where.blob : layerDigest.get(s.where.layer)!.digest);
    const sizes = new Map<string, number>();
    for (const nb of layerDigest.values()) sizes.set(nb.digest, nb.size);
    for (const s of this.slots) {
      const d = digestOf(s);
      if (!sizes.has(d)) sizes.set(d, blobSize(d));
    }
    const digests = [...sizes.keys()].sort();
    const blobIndex = new Map(digests.map((d, i) => [d, i]));
    const slots: ChunkSlot[] = this.slots.map((s) => ({ sha256: s.sha256, blob: blobIndex.get(digestOf(s))!, offset: s.offset, storedSize: s.storedSize, size: s.size, flags: s.flags }));
    const newIndex: [string, StoredChunk][] = this.slots.filter((s) => 'layer' in s.where)
      .map((s) => [s.sha256, { blob: digestOf(s), offset: s.offset, storedSize: s.storedSize, size: s.size, flags: s.flags }]);
    const newBlobs = [...layerDigest.values()];
    return {
      table: { chunkSize: this.chunkSize, blobs: digests.map((d) => ({ digest: d, size: sizes.get(d)! })), slots },
      newBlobs,
      newIndex,
      newChunks: this.newChunks,
      newBlobBytes: newBlobs.reduce((a, b) => a + b.size, 0),
    };
  }
}
