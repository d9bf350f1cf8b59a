/**
 * OCI image → converted image in the store (the library API behind
 * `kata-ts image convert`): resolve and verify the source, stream its
 * layers (layer-stream.ts: the tree is metadata, file data is cut into
 * content-addressed chunks as it is read, layers are never held whole),
 * write the chunk table and the EROFS metadata, register atomically.
 *
 * A source whose manifest digest is already registered is a cache hit: the
 * id is returned and nothing is written. On any error the temp directory
 * (with its partial blobs) is removed and nothing is registered.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { checkChunkSize, DEFAULT_CHUNK_SIZE, encodeChunkTable } from './chunk-table';
import { Chunker } from './chunker';
import { acquirePool } from './compress-pool';
import { DEFAULT_INLINE_MAX, writeErofs } from './erofs-writer';
import { ConvertError, RING_SLICES, SLICE_BYTES, SliceRing, streamLayers } from './layer-stream';
import { LayerTree, type Inode } from './layers';
import { openSource, type ContainerdOptions, type ResolvedImage } from './oci-source';
import { Progress } from './progress';
import {
  abortImage, appendChunkIndex, beginImage, blobPath, commitBlob, commitImage, DEFAULT_STORE_DIR, imageDir, imageIdHex,
  IMAGE_RECORD_VERSION, loadChunkIndex, readImage, withStoreLock, writeFileSynced, type ImageRecord,
} from './store';

export { ConvertError };

/** Largest chunk the converter takes (its LZ4 buffers are sized by it). */
export const MAX_CONVERT_CHUNK = 16 << 20;

export interface ConvertOptions {
  store?: string;
  chunkSize?: number;
  /** LZ4-compress chunks when it saves space (default true). */
  compress?: boolean;
  inlineMax?: number;
  containerd?: ContainerdOptions;
  /**
   * Worker threads hashing and compressing chunks (plus one checking layer
   * and blob digests) while this thread reads, parses, decides dedup and
   * writes (default: cores − 1, at least 1, at most 4; 0: everything on
   * this thread). Started once per process and count (compress-pool.ts
   * acquirePool), not per conversion.
   */
  workers?: number;
  /** Bytes read from a layer file at a time (layer-stream.ts SLICE_BYTES; tests use odd small ones). */
  readSlice?: number;
  /** Show a progress line on a terminal (default true). */
  progress?: boolean;
}

export interface ConvertResult {
  id: string;
  cached: boolean;
  record: ImageRecord;
  /** Store-relative paths of what this conversion wrote. */
  metaPath: string;
  /** Wall milliseconds per stage (absent on a cache hit); bench/image-convert.ts prints them. */
  timings?: ConvertTimings;
}

/**
 * layers: stream the layers (read, parse tar, apply, hand each chunk to
 * the workers for sha256 + LZ4, and what the chunker did meanwhile: dedup
 * decisions in order, writes, and hashing and compressing here when the
 * workers are behind); drain: waiting for the last chunks and writing them; verify: waiting for
 * the layer digest checks; meta: chunk table + EROFS metadata; commit:
 * fsync of blobs and metadata, renames, chunk index.
 */
export interface ConvertTimings { layers: number; drain: number; verify: number; meta: number; commit: number }

/** Default worker count: this thread is busy too (tar, sha256, writes). */
export function defaultWorkers(): number {
  return Math.max(1, Math.min(4, os.cpus().length - 1));
}

function runConfig(img: ResolvedImage): ImageRecord['config'] {
  const c = img.config.config ?? {};
  return { entrypoint: c.Entrypoint ?? [], cmd: c.Cmd ?? [], env: c.Env ?? [], cwd: c.WorkingDir || '/', user: c.User ?? '' };
}

/** Converts SOURCE into the store; see the module header. */
export async function convertImage(source: string, opts: ConvertOptions = {}): Promise<ConvertResult> {
  const store = opts.store ?? DEFAULT_STORE_DIR;
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  checkChunkSize(chunkSize);
  if (chunkSize > MAX_CONVERT_CHUNK) throw new ConvertError('options', `chunk size ${chunkSize} exceeds the converter's ${MAX_CONVERT_CHUNK}`);
  const inlineMax = opts.inlineMax ?? DEFAULT_INLINE_MAX;
  const img = openSource(source, opts.containerd);
  const hex = imageIdHex(img.id);
  const hit = (): ConvertResult | null => (fs.existsSync(imageDir(store, hex))
    ? { id: img.id, cached: true, record: readImage(store, hex), metaPath: path.join('images', hex, 'meta.erofs') } : null);
  const early = hit();
  if (early) return early;
  return withStoreLock(store, async () => {
    const again = hit();
    if (again) return again;
    const tmp = beginImage(store);
    const index = loadChunkIndex(store);
    const workers = opts.workers ?? defaultWorkers();
    const lease = workers > 0 ? acquirePool(workers, chunkSize) : null;
    const pool = lease?.pool ?? null;
    const ring = new SliceRing(RING_SLICES, opts.readSlice ?? SLICE_BYTES);
    const chunker = new Chunker(chunkSize, index, tmp, opts.compress ?? true, pool);
    const showProgress = opts.progress ?? true;
    let mark = performance.now();
    const lap = (): number => { const now = performance.now(); const d = now - mark; mark = now; return Math.round(d); };
    try {
      const layerBytes = img.layers.reduce((a, l) => a + l.size, 0);
      const p1 = showProgress ? new Progress('unpacking and chunking layers', layerBytes) : null;
      let done = 0;
      const tree = new LayerTree();
      const { checked } = await streamLayers(img, tree, chunker, pool, {
        ring, chunkSize, inlineMax, onBytes: (n) => { done += n; p1?.update(done); },
      });
      p1?.done();
      const tLayers = lap();
      const newBytes = chunker.pendingBytes();
      const p3 = showProgress && newBytes > 0 ? new Progress('writing new chunks', newBytes) : null;
      const before = chunker.bytesStored;
      await chunker.store((n) => p3?.update(n - before));
      p3?.done();
      const tDrain = lap();
      await checked;
      const tVerify = lap();
      const res = await chunker.finish((d) => fs.statSync(blobPath(store, d)).size);
      const table = encodeChunkTable(res.table);
      const deviceTag = crypto.createHash('sha256').update(table).digest('hex');
      const links = tree.linkCounts();
      const meta = writeErofs(tree.root, links, {
        chunkSize, inlineMax, fileSlots: (n) => n.slots!.map((o) => chunker.slotOfChunk(o)),
        deviceBlocks: (res.table.slots.length * chunkSize) / 4096, deviceTag,
        uuid: Buffer.from(hex.slice(0, 32), 'hex'),
      });
      const tMeta = lap();
      writeFileSynced(path.join(tmp, 'chunks.bin'), table);
      writeFileSynced(path.join(tmp, 'meta.erofs'), meta.image);
      const record: ImageRecord = {
        version: IMAGE_RECORD_VERSION, id: img.id, references: img.references, created: new Date().toISOString(),
        config: runConfig(img),
        layers: img.layers.map((l) => ({ digest: l.digest, size: l.size, mediaType: l.mediaType })),
        blobs: res.table.blobs, chunkSize, metaSize: meta.image.length,
        totals: { files: meta.files, dirs: meta.dirs, fileBytes: fileBytes(tree.root), chunks: res.table.slots.length, newChunks: res.newChunks, newBlobBytes: res.newBlobBytes },
      };
      writeFileSynced(path.join(tmp, 'image.json'), JSON.stringify(record, null, 2) + '\n');
      for (const b of res.newBlobs) commitBlob(store, b.tmp, b.digest);
      commitImage(store, tmp, hex);
      appendChunkIndex(store, res.newIndex);
      const timings = { layers: tLayers, drain: tDrain, verify: tVerify, meta: tMeta, commit: lap() };
      return { id: img.id, cached: false, record, metaPath: path.join('images', hex, 'meta.erofs'), timings };
    } catch (e) {
      chunker.close();
      abortImage(tmp);
      throw e;
    } finally {
      // Jobs already sent still run (a worker reads its messages in order); later ones may not use the ring.
      if (pool) ring.unshare(pool);
      lease?.release();
    }
  });
}

function fileBytes(root: Inode): number {
  let n = 0;
  const seen = new Set<Inode>();
  const walk = (d: Inode): void => {
    for (const { inode } of d.children!.values()) {
      if (seen.has(inode)) continue;
      seen.add(inode);
      if (inode.kind === 'dir') walk(inode); else if (inode.kind === 'file') n += inode.size;
    }
  };
  walk(root);
  return n;
}
