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
 * the image's temp directory and named by their sha256 when finished.
 *
 * addFile() hashes (Node's native sha256, once per chunk) and assigns slots
 * at once (dedup decisions are sequential) and hands each new chunk to the
 * compression pool (compress-pool.ts) straight away, so the workers
 * compress while this thread goes on parsing and hashing; pump() and
 * store() write the finished chunks in slot order, so the blobs do not
 * depend on which worker finished first. Without a pool (or with
 * compression off) chunks are compressed on this thread when written.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Lz4 } from '../hot/lz4';
import { CHUNK_FLAG_LZ4, type ChunkSlot, type ChunkTable } from './chunk-table';
import type { CompressPool } from './compress-pool';
import type { Inode } from './layers';
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
  hash: crypto.Hash;
  size: number;
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

/** A new chunk on its way to its blob: slot, bytes, layer, compression job. */
interface Queued { k: number; chunk: Buffer; layer: number; job: Promise<Uint8Array | null> | null }

/** Jobs in flight per worker before addFile's caller must pump(). */
const WINDOW_PER_WORKER = 6;

export class Chunker {
  private readonly slots: PendingSlot[] = [];
  private readonly slotOf = new Map<string, number>();
  private readonly blobs = new Map<number, LayerBlob>();
  private lz4: Lz4 | null = null;
  /** New chunks not yet written, in slot order. */
  private readonly queue: Queued[] = [];
  private head = 0;
  private newChunks = 0;
  /** Uncompressed bytes chunked so far (progress). */
  bytesDone = 0;
  /** Uncompressed bytes of new chunks written so far (progress). */
  bytesStored = 0;

  constructor(private readonly chunkSize: number, private readonly index: Map<string, StoredChunk>, private readonly tmpDir: string,
    private readonly compress = true, private readonly pool: CompressPool | null = null) {}

  /** Chunks one file; returns the device-1 slot of each of its chunks. */
  addFile(n: Inode): number[] {
    const out: number[] = [];
    for (let off = 0; off < n.data.length; off += this.chunkSize) {
      const chunk = n.data.subarray(off, Math.min(n.data.length, off + this.chunkSize));
      out.push(this.addChunk(chunk, n.layer));
      this.bytesDone += chunk.length;
    }
    return out;
  }

  private addChunk(chunk: Buffer, layer: number): number {
    const sha = crypto.createHash('sha256').update(chunk).digest('hex');
    const have = this.slotOf.get(sha);
    if (have !== undefined) return have;
    const k = this.slots.length;
    this.slotOf.set(sha, k);
    const stored = this.index.get(sha);
    if (stored && stored.size === chunk.length) {
      this.slots.push({ sha256: sha, where: { blob: stored.blob }, offset: stored.offset, storedSize: stored.storedSize, size: stored.size, flags: stored.flags });
      return k;
    }
    this.slots.push({ sha256: sha, where: { layer }, offset: 0, storedSize: chunk.length, size: chunk.length, flags: 0 });
    const job = this.compress && this.pool ? this.pool.compress(chunk) : null;
    this.queue.push({ k, chunk, layer, job });
    this.newChunks++;
    return k;
  }

  /** Uncompressed bytes of the new chunks not written yet. */
  pendingBytes(): number {
    let n = 0;
    for (let i = this.head; i < this.queue.length; i++) n += this.queue[i].chunk.length;
    return n;
  }

  /** Appends slot k's stored bytes to its layer's blob. */
  private write(k: number, chunk: Buffer, compressed: Uint8Array | null, layer: number): void {
    const bytes = compressed ?? chunk;
    const b = this.blobFor(layer);
    fs.writeSync(b.fd, bytes);
    b.hash.update(bytes);
    const s = this.slots[k];
    s.offset = b.size;
    s.storedSize = bytes.length;
    s.flags = compressed ? CHUNK_FLAG_LZ4 : 0;
    b.size += bytes.length;
  }

  /** Compresses a chunk on this thread (no pool); null when it does not shrink. */
  private compressHere(chunk: Buffer): Uint8Array | null {
    if (!this.compress) return null;
    this.lz4 ??= new Lz4({ maxBlockBytes: this.chunkSize });
    const c = this.lz4.compressBlock(chunk);
    return c.length < chunk.length ? c : null;
  }

  /** Writes the next queued chunk (waiting for its compression). */
  private async writeNext(): Promise<void> {
    const q = this.queue[this.head];
    const c = q.job ? await q.job : this.compressHere(q.chunk);
    this.write(q.k, q.chunk, c, q.layer);
    this.queue[this.head++] = undefined as unknown as Queued; // let the bytes go
    this.bytesStored += q.chunk.length;
  }

  /**
   * Writes finished chunks while more than the pool's window are in flight,
   * so the workers never run dry and results do not pile up. Cheap to call
   * after every file; a no-op without a pool.
   */
  async pump(): Promise<void> {
    if (!this.pool) return;
    const window = WINDOW_PER_WORKER * this.pool.size;
    while (this.queue.length - this.head > window) await this.writeNext();
  }

  /** Compresses (when enabled) and writes every remaining new chunk, in slot order. */
  async store(onChunk: (bytes: number) => void = () => undefined): Promise<void> {
    while (this.head < this.queue.length) {
      await this.writeNext();
      onChunk(this.bytesStored);
    }
  }

  private blobFor(layer: number): LayerBlob {
    let b = this.blobs.get(layer);
    if (!b) {
      const tmp = path.join(this.tmpDir, `blob-layer-${layer}`);
      b = { tmp, fd: fs.openSync(tmp, 'w', 0o644), hash: crypto.createHash('sha256'), size: 0 };
      this.blobs.set(layer, b);
    }
    return b;
  }

  /** Closes blob files; call on failure too (idempotent). */
  close(): void {
    for (const b of this.blobs.values()) if (b.fd >= 0) { fs.closeSync(b.fd); b.fd = -1; }
  }

  /** Finishes the blobs and builds the chunk table (blob list sorted by digest). */
  finish(blobSize: (digest: string) => number): ChunkerResult {
    const layerDigest = new Map<number, NewBlob>();
    for (const [layer, b] of [...this.blobs].sort((x, y) => x[0] - y[0])) {
      if (b.fd >= 0) { fs.fsyncSync(b.fd); fs.closeSync(b.fd); b.fd = -1; }
      layerDigest.set(layer, { tmp: b.tmp, digest: b.hash.digest('hex'), size: b.size });
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
