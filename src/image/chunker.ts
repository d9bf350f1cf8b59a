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
 * addFile() hashes and assigns slots at once (dedup decisions are
 * sequential); the new chunks are compressed afterwards by store(), in a
 * pool of worker threads (lz4-worker.ts), and written in slot order, so the
 * blobs do not depend on which worker finished first.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { Lz4 } from '../hot/lz4';
import { CHUNK_FLAG_LZ4, type ChunkSlot, type ChunkTable } from './chunk-table';
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

export class Chunker {
  private readonly slots: PendingSlot[] = [];
  private readonly slotOf = new Map<string, number>();
  private readonly blobs = new Map<number, LayerBlob>();
  private readonly lz4: Lz4;
  /** New chunks waiting for store(): slot index, bytes, layer. */
  private readonly pending: { k: number; chunk: Buffer; layer: number }[] = [];
  private newChunks = 0;
  /** Uncompressed bytes chunked so far (progress). */
  bytesDone = 0;

  constructor(private readonly chunkSize: number, private readonly index: Map<string, StoredChunk>, private readonly tmpDir: string, private readonly compress = true) {
    this.lz4 = new Lz4({ maxBlockBytes: chunkSize });
  }

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
    this.pending.push({ k, chunk, layer });
    this.newChunks++;
    return k;
  }

  /** Uncompressed bytes of the new chunks store() will write. */
  pendingBytes(): number {
    return this.pending.reduce((a, p) => a + p.chunk.length, 0);
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

  /**
   * Compresses (when enabled) and writes every new chunk, in slot order.
   * `workers`: threads to compress in (default: one per core, at most 4;
   * 0 compresses on this thread). `onChunk` reports progress.
   */
  async store(workers = Math.min(4, os.cpus().length), onChunk: (bytes: number) => void = () => undefined): Promise<void> {
    const list = this.pending.splice(0);
    if (!this.compress || workers <= 1 || list.length < 4) {
      for (const p of list) {
        let c: Buffer | null = null;
        if (this.compress) { const x = this.lz4.compressBlock(p.chunk); if (x.length < p.chunk.length) c = x; }
        this.write(p.k, p.chunk, c, p.layer);
        onChunk(p.chunk.length);
      }
      return;
    }
    const pool = Array.from({ length: workers }, () => new Worker(path.join(__dirname, 'lz4-worker.js'), { workerData: { chunkSize: this.chunkSize } }));
    try {
      await new Promise<void>((resolve, reject) => {
        const done = new Map<number, Uint8Array | null>();
        let next = 0; let sent = 0; let failed = false;
        const window = workers * 3;
        const fail = (e: unknown): void => { if (!failed) { failed = true; reject(e); } };
        const flush = (): void => {
          while (next < list.length && done.has(next)) {
            const p = list[next];
            try { this.write(p.k, p.chunk, done.get(next)!, p.layer); } catch (e) { fail(e); return; }
            done.delete(next);
            onChunk(p.chunk.length);
            next++;
          }
          if (next === list.length) resolve();
        };
        const send = (w: Worker): void => {
          if (failed || sent >= list.length || sent - next >= window) return;
          const id = sent++;
          const copy = new Uint8Array(list[id].chunk); // own buffer: transfer only this chunk
          w.postMessage({ id, chunk: copy }, [copy.buffer]);
        };
        for (const w of pool) {
          w.on('message', (m: { id: number; data: Uint8Array | null }) => {
            done.set(m.id, m.data ? Buffer.from(m.data.buffer, m.data.byteOffset, m.data.length) : null);
            flush();
            for (const x of pool) send(x);
          });
          w.on('error', fail);
          w.on('exit', (code) => { if (code !== 0) fail(new Error(`lz4 worker exited with ${code}`)); });
        }
        for (let i = 0; i < window; i++) send(pool[i % workers]);
        flush();
      });
    } finally {
      await Promise.all(pool.map((w) => w.terminate()));
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
