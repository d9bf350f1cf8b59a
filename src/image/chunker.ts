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
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
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
    let bytes: Buffer = chunk;
    let flags = 0;
    if (this.compress) {
      const c = this.lz4.compressBlock(chunk);
      if (c.length < chunk.length) { bytes = c; flags = CHUNK_FLAG_LZ4; }
    }
    const b = this.blobFor(layer);
    fs.writeSync(b.fd, bytes);
    b.hash.update(bytes);
    this.slots.push({ sha256: sha, where: { layer }, offset: b.size, storedSize: bytes.length, size: chunk.length, flags });
    b.size += bytes.length;
    this.newChunks++;
    return k;
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
