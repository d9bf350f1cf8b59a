/**
 * OCI image → converted image in the store (the library API behind
 * `kata-ts image convert`): resolve and verify the source, apply its layers
 * into a tree, chunk the files into content-addressed blobs, write the chunk
 * table and the EROFS metadata, register atomically.
 *
 * A source whose manifest digest is already registered is a cache hit: the
 * id is returned and nothing is written. On any error the temp directory
 * (with its partial blobs) is removed and nothing is registered.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { KataError } from '../common/errors';
import { checkChunkSize, DEFAULT_CHUNK_SIZE, encodeChunkTable } from './chunk-table';
import { Chunker } from './chunker';
import { CompressPool } from './compress-pool';
import { DEFAULT_INLINE_MAX, fileIsInline, writeErofs } from './erofs-writer';
import { LayerTree, type Inode } from './layers';
import { layerCompression, OciSourceError, openSource, toShared, type ContainerdOptions, type ResolvedImage } from './oci-source';
import { Progress } from './progress';
import {
  abortImage, appendChunkIndex, beginImage, blobPath, commitBlob, commitImage, DEFAULT_STORE_DIR, imageDir, imageIdHex,
  IMAGE_RECORD_VERSION, loadChunkIndex, readImage, withStoreLock, writeFileSynced, type ImageRecord,
} from './store';
import { parseTar } from './tar';

export class ConvertError extends KataError<'layer' | 'options' | 'unsupported'> {}

/** Largest chunk the converter takes (its LZ4 buffers are sized by it). */
export const MAX_CONVERT_CHUNK = 16 << 20;
/** Largest uncompressed layer (one Node Buffer; see README limits). */
export const MAX_LAYER_BYTES = 2 ** 31;

export interface ConvertOptions {
  store?: string;
  chunkSize?: number;
  /** LZ4-compress chunks when it saves space (default true). */
  compress?: boolean;
  inlineMax?: number;
  containerd?: ContainerdOptions;
  /**
   * Worker threads compressing chunks and checking layer digests while this
   * thread parses and hashes (default: cores − 1, at least 1, at most 4;
   * 0: everything on this thread).
   */
  workers?: number;
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
 * tree: read layers + parse tar + apply; chunk: sha256 per chunk, handing
 * new ones to the workers, and what pump() did meanwhile (writes, and
 * compressing here when the workers are behind);
 * drain: waiting for the last compressions and writing them; verify:
 * waiting for the layer digest checks; meta: chunk table + EROFS metadata;
 * commit: fsync of blobs and metadata, renames, chunk index.
 */
export interface ConvertTimings { tree: number; chunk: number; drain: number; verify: number; meta: number; commit: number }

/**
 * Decompresses a layer by its media type and checks it against its diff_id.
 * `verifiedDigest`: the digest `raw` was already checked against; an
 * uncompressed layer whose diff_id is that digest is not hashed again.
 */
export function layerTar(raw: Buffer, mediaType: string, diffId: string | undefined, what: string, verifiedDigest?: string): Buffer {
  const c = layerCompression(mediaType);
  let tar: Buffer;
  if (c === 'zstd') throw new ConvertError('unsupported', `${what}: zstd layers are not supported (Node 20's zlib has no zstd decoder)`);
  if (c === 'gzip') tar = gunzipLayer(raw, what);
  else tar = raw;
  if (c === 'none' && diffId !== undefined && diffId === verifiedDigest) return tar;
  const got = `sha256:${crypto.createHash('sha256').update(tar).digest('hex')}`;
  if (diffId !== undefined && got !== diffId) throw new ConvertError('layer', `${what}: uncompressed content is ${got}, the config's diff_id says ${diffId}`);
  return tar;
}

/** Applies every layer of a resolved image into a tree. */
export function buildTree(img: ResolvedImage, onLayer: (bytes: number) => void = () => undefined): LayerTree {
  const tree = new LayerTree();
  img.layers.forEach((l, i) => {
    const what = `layer ${i} (${l.digest.slice(0, 19)})`;
    const tar = layerTar(img.readLayer(i), l.mediaType, img.config.rootfs?.diff_ids?.[i], what, l.digest);
    tree.apply(parseTar(tar, what), i, what);
    onLayer(l.size);
  });
  return tree;
}

/** Default worker count: this thread is busy too (tar, sha256, writes). */
export function defaultWorkers(): number {
  return Math.max(1, Math.min(4, os.cpus().length - 1));
}

function gunzipLayer(raw: Buffer, what: string): Buffer {
  try { return zlib.gunzipSync(raw, { maxOutputLength: MAX_LAYER_BYTES }); } catch (e) {
    throw new ConvertError('layer', `${what}: gzip stream is corrupt or over ${MAX_LAYER_BYTES} bytes (${(e as Error).message})`, { cause: e });
  }
}

/**
 * buildTree with the digest checks in the pool's workers: each layer's
 * sha256 is computed by a worker slice by slice as this thread reads it
 * (and a gzip layer's diff_id while this thread parses the tar). The returned promise settles
 * when every check has passed; the caller must await it before
 * registering anything. A parse error is reported as the digest error
 * when the bytes were not the layer's (the root cause).
 */
export function buildTreeChecked(img: ResolvedImage, pool: CompressPool, onLayer: (bytes: number) => void = () => undefined): { tree: LayerTree; checked: Promise<void> } {
  const tree = new LayerTree();
  const checks: Promise<void>[] = [];
  const expect = (sha: Promise<string>, want: string, fail: (got: string) => Error): void => {
    const p = sha.then((hex) => { if (`sha256:${hex}` !== want) throw fail(`sha256:${hex}`); });
    p.catch(() => undefined);
    checks.push(p);
  };
  const checked = (): Promise<void> => Promise.all(checks).then(() => undefined);
  try {
    img.layers.forEach((l, i) => {
      const what = `layer ${i} (${l.digest.slice(0, 19)})`;
      const diffId = img.config.rootfs?.diff_ids?.[i];
      const c = layerCompression(l.mediaType);
      if (c === 'zstd') throw new ConvertError('unsupported', `${what}: zstd layers are not supported (Node 20's zlib has no zstd decoder)`);
      // Hashed by a worker slice by slice while this thread reads the rest.
      let stream: ReturnType<CompressPool['sha256Stream']> | null = null;
      const raw = img.readLayerUnverified(i, { begin: (b) => { stream = pool.sha256Stream(b); }, read: (o, n) => stream!.update(o, n) });
      const rawSha = stream ? (stream as ReturnType<CompressPool['sha256Stream']>).digest() : pool.sha256(raw);
      expect(rawSha, l.digest, (got) => new OciSourceError('digest', `${what}: blob content is ${got}, expected ${l.digest}`));
      let tar = raw;
      let tarSha = rawSha;
      if (c === 'gzip') {
        tar = toShared(gunzipLayer(raw, what));
        if (diffId !== undefined) tarSha = pool.sha256(tar);
      }
      if (diffId !== undefined && (c === 'gzip' || diffId !== l.digest)) {
        expect(tarSha, diffId, (got) => new ConvertError('layer', `${what}: uncompressed content is ${got}, the config's diff_id says ${diffId}`));
      }
      tree.apply(parseTar(tar, what), i, what);
      onLayer(l.size);
    });
  } catch (e) {
    // Bytes that are not the layer's explain any parse error they cause.
    const failed = checked().then(() => { throw e; });
    failed.catch(() => undefined);
    return { tree, checked: failed };
  }
  return { tree, checked: checked() };
}

/** Unique chunk-based files in the writer's order (breadth-first, byte-sorted names). */
function chunkedFiles(root: Inode, inlineMax: number): Inode[] {
  const out: Inode[] = [];
  const seen = new Set<Inode>();
  const queue = [root];
  for (let i = 0; i < queue.length; i++) {
    const kids = [...queue[i].children!].sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0])));
    for (const [, { inode }] of kids) {
      if (seen.has(inode)) continue;
      seen.add(inode);
      if (inode.kind === 'dir') queue.push(inode);
      else if (inode.kind === 'file' && !fileIsInline(inode, inlineMax)) out.push(inode);
    }
  }
  return out;
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
    const pool = workers > 0 ? new CompressPool(workers, chunkSize) : null;
    const chunker = new Chunker(chunkSize, index, tmp, opts.compress ?? true, pool);
    const showProgress = opts.progress ?? true;
    let mark = performance.now();
    const lap = (): number => { const now = performance.now(); const d = now - mark; mark = now; return Math.round(d); };
    try {
      const layerBytes = img.layers.reduce((a, l) => a + l.size, 0);
      const p1 = showProgress ? new Progress('unpacking layers', layerBytes) : null;
      let done = 0;
      const onLayer = (n: number): void => { done += n; p1?.update(done); };
      let tree: LayerTree;
      let checked: Promise<void> = Promise.resolve();
      if (pool) ({ tree, checked } = buildTreeChecked(img, pool, onLayer)); else tree = buildTree(img, onLayer);
      p1?.done();
      const tTree = lap();
      const files = chunkedFiles(tree.root, inlineMax);
      const total = files.reduce((a, f) => a + f.data.length, 0);
      const p2 = showProgress ? new Progress('chunking and compressing', total) : null;
      const slots = new Map<Inode, number[]>();
      for (const f of files) {
        slots.set(f, await chunker.addFilePumped(f));
        p2?.update(chunker.bytesDone);
      }
      p2?.done();
      const tChunk = lap();
      const newBytes = chunker.pendingBytes();
      const p3 = showProgress && newBytes > 0 ? new Progress('writing new chunks', newBytes) : null;
      const before = chunker.bytesStored;
      await chunker.store((n) => p3?.update(n - before));
      p3?.done();
      const tDrain = lap();
      await checked;
      const tVerify = lap();
      const res = chunker.finish((d) => fs.statSync(blobPath(store, d)).size);
      const table = encodeChunkTable(res.table);
      const deviceTag = crypto.createHash('sha256').update(table).digest('hex');
      const links = tree.linkCounts();
      const meta = writeErofs(tree.root, links, {
        chunkSize, inlineMax, fileSlots: (n) => slots.get(n)!,
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
      const timings = { tree: tTree, chunk: tChunk, drain: tDrain, verify: tVerify, meta: tMeta, commit: lap() };
      return { id: img.id, cached: false, record, metaPath: path.join('images', hex, 'meta.erofs'), timings };
    } catch (e) {
      chunker.close();
      abortImage(tmp);
      throw e;
    } finally {
      await pool?.close();
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
      if (inode.kind === 'dir') walk(inode); else if (inode.kind === 'file') n += inode.data.length;
    }
  };
  walk(root);
  return n;
}
