/**
 * The "image blob device" of a converted image, served to the guest as a
 * read-only virtio-blk disk (a BlkBackend for src/virtio/blk): EROFS device 1
 * of the image's metadata (chunk-table.ts), where slot k — bytes
 * [k·chunkSize, (k+1)·chunkSize) — is the k-th distinct chunk, zero-padded.
 *
 * A read maps its sectors to slots; each slot's stored bytes come from the
 * local blob, else from the partial blob, else from the lazy source
 * (lazy-source.ts, which then keeps them); LZ4 slots are decoded by our
 * WebAssembly decoder (src/hot/lz4.ts); the decoded bytes must hash to the
 * slot's sha256 before any of them reaches the guest. A chunk that is
 * missing, undecodable or hashes wrong rejects the read, which the device
 * turns into VIRTIO_BLK_S_IOERR: the guest sees EIO, never other bytes.
 *
 * Verified decoded slots are kept in a small LRU (default 64 MiB), so the
 * kernel's repeated and neighbouring reads of a slot cost neither a decode
 * nor a hash; concurrent reads of one slot share one fetch.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { KataError, errorMessage } from '../common/errors';
import { logger } from '../common/log';
import { Lz4 } from '../hot/lz4';
import type { BlkBackend } from '../virtio/blk/device';
import { CHUNK_FLAG_LZ4, decodeChunkTable, deviceSize, type ChunkSlot, type ChunkTable } from './chunk-table';
import { LazySource, PartialBlob } from './lazy-source';
import { blobPath, chunkTablePath, imageIdHex } from './store';

export type BlobDeviceErrorKind = 'missing' | 'corrupt' | 'io';
export class BlobDeviceError extends KataError<BlobDeviceErrorKind> {}

export interface BlobDeviceOptions {
  /** Store root ([image] store_dir). */
  root: string;
  /** Image id (manifest digest, "sha256:<hex>" or hex). */
  imageId: string;
  /** Where chunks not in the store come from; absent: they are an error. */
  lazy?: LazySource;
  /** Bytes of verified decoded chunks kept in memory (default 64 MiB). */
  cacheBytes?: number;
}

export interface BlobDeviceMetrics {
  /** Slot reads that needed a decode + verify (cache misses). */
  slotLoads: number;
  cacheHits: number;
  /** Slots fetched from the lazy source, and their stored bytes. */
  fetchedSlots: number;
  fetchedBytes: number;
  /** Slots that failed verification (or decoding). */
  corrupt: number;
}

export class BlobDevice implements BlkBackend {
  readonly size: number;
  readonly table: ChunkTable;
  readonly metrics: BlobDeviceMetrics = { slotLoads: 0, cacheHits: 0, fetchedSlots: 0, fetchedBytes: 0, corrupt: 0 };
  private readonly lz4: Lz4;
  private readonly cache = new Map<number, Buffer>();
  private cached = 0;
  private readonly cacheBytes: number;
  private readonly inflight = new Map<number, Promise<Buffer>>();
  private readonly blobFds = new Map<number, number>();
  private readonly partials = new Map<number, PartialBlob>();
  private readonly log = logger('image.blob-device');
  private closed = false;

  constructor(readonly opts: BlobDeviceOptions, table?: ChunkTable) {
    const hex = imageIdHex(opts.imageId);
    this.table = table ?? BlobDevice.readTable(opts.root, hex);
    this.size = deviceSize(this.table);
    this.cacheBytes = opts.cacheBytes ?? 64 << 20;
    this.lz4 = new Lz4({ maxBlockBytes: Math.max(this.table.chunkSize, 4096) });
  }

  /** The image's chunk table; a missing or unreadable file is a BlobDeviceError (a corrupt one a ChunkTableError). */
  private static readTable(root: string, hex: string): ChunkTable {
    let buf: Buffer;
    try {
      buf = fs.readFileSync(chunkTablePath(root, hex));
    } catch (err) {
      throw new BlobDeviceError('missing', `image sha256:${hex}: cannot read its chunk table: ${errorMessage(err)}`, { cause: err });
    }
    return decodeChunkTable(buf);
  }

  async read(bufs: Buffer[], offset: number): Promise<void> {
    const cs = this.table.chunkSize;
    const total = bufs.reduce((a, b) => a + b.length, 0);
    if (offset < 0 || offset + total > this.size) throw new BlobDeviceError('io', `read [${offset}, ${offset + total}) outside the ${this.size}-byte device`);
    if (total === 0) return;
    // Every slot the request touches, loaded in parallel.
    const first = Math.floor(offset / cs), last = Math.floor((offset + total - 1) / cs);
    const slots = new Map<number, Buffer>();
    await Promise.all(Array.from({ length: last - first + 1 }, async (_, i) => { slots.set(first + i, await this.slot(first + i)); }));
    let pos = offset;
    for (const buf of bufs) {
      for (let done = 0; done < buf.length; ) {
        const k = Math.floor(pos / cs), within = pos - k * cs;
        const n = Math.min(buf.length - done, cs - within);
        const data = slots.get(k)!;
        const have = Math.max(0, Math.min(n, data.length - within));
        if (have > 0) data.copy(buf, done, within, within + have);
        if (have < n) buf.fill(0, done + have, done + n); // the slot's zero padding
        done += n;
        pos += n;
      }
    }
  }

  /** The verified decoded bytes of slot k (its `size` bytes, unpadded). */
  slot(k: number): Promise<Buffer> {
    const hit = this.cache.get(k);
    if (hit) {
      this.metrics.cacheHits++;
      this.cache.delete(k);
      this.cache.set(k, hit);
      return Promise.resolve(hit);
    }
    let p = this.inflight.get(k);
    if (!p) {
      p = this.load(k).finally(() => this.inflight.delete(k));
      this.inflight.set(k, p);
    }
    return p;
  }

  private async load(k: number): Promise<Buffer> {
    if (this.closed) throw new BlobDeviceError('io', 'blob device closed');
    const s = this.table.slots[k];
    this.metrics.slotLoads++;
    const local = this.localStored(s);
    let stored: Buffer;
    let fetched = false;
    if (local) {
      stored = await local;
    } else {
      const lazy = this.opts.lazy;
      const b = this.table.blobs[s.blob];
      if (!lazy) throw new BlobDeviceError('missing', `chunk slot ${k}: blob ${b.digest.slice(0, 12)} is not in the store and no lazy source is configured`);
      stored = await lazy.fetchRange(b.digest, b.size, s.offset, s.storedSize);
      fetched = true;
      this.metrics.fetchedSlots++;
      this.metrics.fetchedBytes += stored.length;
    }
    const data = this.verify(k, s, stored);
    if (fetched && !this.closed) this.keep(s, stored);
    this.remember(k, data);
    return data;
  }

  /** Decodes and hashes one slot's stored bytes; throws rather than return a wrong byte. */
  private verify(k: number, s: ChunkSlot, stored: Buffer): Buffer {
    let data: Buffer;
    try {
      data = s.flags & CHUNK_FLAG_LZ4 ? this.lz4.decompressBlock(stored, s.size) : stored;
    } catch (err) {
      this.metrics.corrupt++;
      throw new BlobDeviceError('corrupt', `chunk slot ${k} (${s.sha256.slice(0, 12)}): cannot decode: ${errorMessage(err)}`, { cause: err });
    }
    const digest = data.length === s.size ? crypto.createHash('sha256').update(data).digest('hex') : '';
    if (digest !== s.sha256) {
      this.metrics.corrupt++;
      this.log.error('chunk failed verification', { slot: k, want: s.sha256, got: digest || `${data.length} bytes for ${s.size}` });
      throw new BlobDeviceError('corrupt', `chunk slot ${k}: sha256 mismatch (want ${s.sha256.slice(0, 12)}, got ${digest.slice(0, 12) || `${data.length} of ${s.size} bytes`})`);
    }
    return data;
  }

  /** Stored bytes from the complete local blob or the partial one, or undefined. */
  private localStored(s: ChunkSlot): Promise<Buffer> | undefined {
    let fd = this.blobFds.get(s.blob);
    if (fd === undefined) {
      try {
        fd = fs.openSync(blobPath(this.opts.root, this.table.blobs[s.blob].digest), 'r');
        this.blobFds.set(s.blob, fd);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new BlobDeviceError('io', `blob ${this.table.blobs[s.blob].digest.slice(0, 12)}: ${errorMessage(err)}`);
      }
    }
    if (fd !== undefined) {
      const f = fd;
      return new Promise((resolve, reject) => {
        const buf = Buffer.alloc(s.storedSize);
        fs.read(f, buf, 0, buf.length, s.offset, (err, n) => {
          if (err) reject(new BlobDeviceError('io', `blob read: ${err.message}`));
          else if (n !== buf.length) reject(new BlobDeviceError('corrupt', `blob ${this.table.blobs[s.blob].digest.slice(0, 12)} is shorter than its chunk table says`));
          else resolve(buf);
        });
      });
    }
    if (!this.opts.lazy) return undefined;
    const p = this.partial(s.blob);
    return p.has(s.offset, s.storedSize) ? Promise.resolve(p.read(s.offset, s.storedSize)) : undefined;
  }

  private partial(blob: number): PartialBlob {
    let p = this.partials.get(blob);
    if (!p) {
      const b = this.table.blobs[blob];
      p = new PartialBlob(this.opts.root, b.digest, b.size);
      this.partials.set(blob, p);
    }
    return p;
  }

  /** Keeps verified fetched bytes in the partial blob (a failure only costs a refetch later). */
  private keep(s: ChunkSlot, stored: Buffer): void {
    try {
      const p = this.partial(s.blob);
      p.write(s.offset, stored);
      p.promoteIfComplete();
    } catch (err) {
      this.log.warn('cannot keep a fetched chunk locally', { blob: this.table.blobs[s.blob].digest.slice(0, 12), err: errorMessage(err) });
    }
  }

  private remember(k: number, data: Buffer): void {
    if (data.length > this.cacheBytes) return;
    this.cache.set(k, data);
    this.cached += data.length;
    for (const [key, v] of this.cache) {
      if (this.cached <= this.cacheBytes) break;
      this.cache.delete(key);
      this.cached -= v.length;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of this.blobFds.values()) fs.closeSync(fd);
    this.blobFds.clear();
    for (const p of this.partials.values()) p.close();
    this.partials.clear();
    this.cache.clear();
    this.cached = 0;
  }
}
