/**
 * An image's layers streamed into the tree and the chunker, never held
 * whole (the converter's first stage, convert.ts).
 *
 * A layer blob is read in SLICE_BYTES slices into a small ring of reused
 * SharedArrayBuffers (RING_SLICES of them): the pool's hashing worker
 * hashes each slice in place for the layer digest (compress-pool
 * sha256Slices; here when there is no pool), this thread
 * parses the tar incrementally (tar.ts TarReader) and applies each header
 * to the tree (layers.ts — the tree is metadata only), and a file's data
 * is cut into chunks as it streams by: a chunk lying whole in one slice is
 * queued as a view of it (the workers compress it in place, no copy), one
 * straddling two slices is copied into its own buffer. A slice is reused
 * only when its hash, its parse and every chunk queued from it are done
 * (reference counts), so memory stays at the ring plus the chunker's queue
 * whatever the layer's size. A gzip layer's compressed slices go the same
 * way through a streaming gunzip; its diff_id is hashed on this thread as
 * the tar comes out.
 *
 * Files of at most inlineMax bytes are copied into the tree (they live in
 * the EROFS metadata). Chunks are assigned slots in archive order, so the
 * output is the same for any number of workers; a file that a later entry
 * or layer removes has still been chunked (its chunks are stored, unused).
 *
 * Digests: every layer's sha256 (and diff_id) is checked; the returned
 * `checked` promise settles when all have passed, and the caller must
 * await it before registering anything. A parse error is reported as the
 * digest error when the bytes were not the layer's (the root cause): the
 * rest of the layer is then still read and hashed, not parsed.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { finished } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import { KataError } from '../common/errors';
import type { Chunker } from './chunker';
import type { CompressPool } from './compress-pool';
import type { Inode, LayerTree } from './layers';
import { layerCompression, OciSourceError, type ResolvedImage } from './oci-source';
import { TarReader, type TarEntry, type TarSink } from './tar';

/** The converter's errors (re-exported by convert.ts). */
export class ConvertError extends KataError<'layer' | 'options' | 'unsupported'> {}

/** Bytes read from a layer blob at a time. */
export const SLICE_BYTES = 8 << 20;
/** Read slices in the ring (memory: RING_SLICES × SLICE_BYTES). */
export const RING_SLICES = 6;
/** Queued chunk bytes outside the ring (gzip, straddling chunks) above which reading waits. */
const MAX_QUEUED_BYTES = 64 << 20;
/** Output piece of the streaming gunzip. */
const GUNZIP_PIECE = 256 << 10;

interface Slice { buf: Buffer; refs: number }

/** Reused read buffers with reference counts (see the module header). */
export class SliceRing {
  private readonly slices: Slice[];
  private waiters: (() => void)[] = [];

  constructor(count = RING_SLICES, size = SLICE_BYTES) {
    this.slices = Array.from({ length: count }, () => ({ buf: Buffer.from(new SharedArrayBuffer(size)), refs: 0 }));
  }

  /** A free slice, now held once by the caller; null when all are in use. */
  tryAcquire(): Slice | null {
    const s = this.slices.find((x) => x.refs === 0);
    if (s) s.refs = 1;
    return s ?? null;
  }

  /** One more hold on `s`; the returned function lets go of it (once). */
  hold(s: Slice): () => void {
    s.refs++;
    let done = false;
    return () => { if (!done) { done = true; this.release(s); } };
  }

  release(s: Slice): void {
    if (--s.refs === 0) {
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    }
  }

  /** The pool's workers no longer need the slices (every chunk in them is written). */
  unshare(pool: CompressPool): void {
    for (const s of this.slices) pool.forget(s.buf.buffer as SharedArrayBuffer);
  }

  /** Settles at the next release that frees a slice. */
  released(): Promise<void> { return new Promise((resolve) => this.waiters.push(resolve)); }
}

/** Tar entries into the tree; file data into inline copies or chunks. */
class LayerSink implements TarSink {
  /** Hold on the memory the pieces being pushed lie in (null: not reused memory). */
  hold: (() => () => void) | undefined = undefined;
  private file: Inode | null = null;
  private inline = false;
  private fill = 0;
  private fileLeft = 0;
  private part: Buffer | null = null;
  private partFill = 0;

  constructor(private readonly tree: LayerTree, private readonly chunker: Chunker, private readonly layer: number, private readonly what: string,
    private readonly chunkSize: number, private readonly inlineMax: number) {}

  entry(e: TarEntry): void {
    const inode = this.tree.applyEntry(e, this.layer, `${this.what}: ${JSON.stringify(e.path.slice(0, 200))}`);
    this.file = null;
    if (!inode || e.size === 0) return;
    this.file = inode;
    this.fileLeft = e.size;
    this.inline = e.size <= this.inlineMax;
    if (this.inline) { inode.data = Buffer.allocUnsafe(e.size); this.fill = 0; } else inode.slots = [];
    this.part = null;
    this.partFill = 0;
  }

  data(piece: Buffer): void {
    const f = this.file!;
    if (this.inline) {
      piece.copy(f.data, this.fill);
      this.fill += piece.length;
      return;
    }
    let p = 0;
    while (p < piece.length) {
      const want = Math.min(this.chunkSize, this.fileLeft);
      if (this.partFill === 0 && piece.length - p >= want) {
        // Whole in this piece: queued as a view of it.
        f.slots!.push(this.chunker.addChunk(piece.subarray(p, p + want), this.layer, this.hold));
        p += want;
        this.fileLeft -= want;
        continue;
      }
      this.part ??= Buffer.allocUnsafe(want);
      const n = Math.min(this.part.length - this.partFill, piece.length - p);
      piece.copy(this.part, this.partFill, p, p + n);
      this.partFill += n;
      p += n;
      if (this.partFill === this.part.length) {
        // Given away: the chunker may move its buffer to a worker (it reads 0 bytes long here then).
        this.fileLeft -= this.part.length;
        f.slots!.push(this.chunker.addChunk(this.part, this.layer, undefined, true));
        this.part = null;
        this.partFill = 0;
      }
    }
  }
}

/** A sha256 fed slice by slice: in a worker when there is a pool, else here. */
function rawHasher(pool: CompressPool | null): { update(b: Buffer): Promise<void>; digest(): Promise<string> } {
  if (pool) return pool.sha256Slices();
  const h = crypto.createHash('sha256');
  return { update: (b) => { h.update(b); return Promise.resolve(); }, digest: () => Promise.resolve(h.digest('hex')) };
}

/** zlib's streaming gunzip, driven one input slice at a time. */
class Gunzip {
  private readonly gz = zlib.createGunzip({ chunkSize: GUNZIP_PIECE });
  private readonly done: Promise<void>;
  /** Settles on the stream's first error (a write in progress may never call back then). */
  private readonly failed: Promise<void>;
  error: Error | null = null;

  constructor(onData: (piece: Buffer) => void) {
    this.gz.on('data', onData);
    this.failed = new Promise((resolve) => this.gz.on('error', (e) => { this.error ??= e; resolve(); }));
    this.done = finished(this.gz).catch((e: Error) => { this.error ??= e; });
  }

  /** Settles when `b` has been consumed (its output delivered) or the stream failed; b may then be reused. */
  write(b: Buffer): Promise<void> {
    if (this.error) return Promise.resolve();
    return Promise.race([new Promise<void>((resolve) => { this.gz.write(b, () => resolve()); }), this.failed]);
  }

  async end(): Promise<void> {
    if (!this.error) this.gz.end();
    else this.gz.destroy();
    await this.done;
  }
}

export interface StreamOptions {
  /** The read buffers (the caller makes them, and unshares them from the pool once its chunks are written). */
  ring: SliceRing;
  chunkSize: number;
  inlineMax: number;
  /** Told of each slice of layer bytes read (progress). */
  onBytes?: (n: number) => void;
}

/**
 * Applies every layer of `img` to `tree`, chunking file data into
 * `chunker` as it goes. Resolves when all layers are read and parsed;
 * `checked` settles when every digest check has passed (see the header).
 */
export async function streamLayers(img: ResolvedImage, tree: LayerTree, chunker: Chunker, pool: CompressPool | null, opts: StreamOptions): Promise<{ checked: Promise<void> }> {
  const ring = opts.ring;
  const checks: Promise<void>[] = [];
  const expect = (sha: Promise<string>, want: string, fail: (got: string) => Error): void => {
    const p = sha.then((hex) => { if (`sha256:${hex}` !== want) throw fail(`sha256:${hex}`); });
    p.catch(() => undefined);
    checks.push(p);
  };
  try {
    for (let i = 0; i < img.layers.length; i++) await streamLayer(img, i, tree, chunker, pool, ring, opts, expect);
  } catch (e) {
    // Bytes that are not an earlier layer's explain any error they cause.
    const failed = Promise.all(checks).then(() => { throw e; });
    failed.catch(() => undefined);
    await failed;
  }
  const checked = Promise.all(checks).then(() => undefined);
  checked.catch(() => undefined);
  return { checked };
}

type Expect = (sha: Promise<string>, want: string, fail: (got: string) => Error) => void;

async function streamLayer(img: ResolvedImage, i: number, tree: LayerTree, chunker: Chunker, pool: CompressPool | null, ring: SliceRing,
  opts: StreamOptions, expect: Expect): Promise<void> {
  const l = img.layers[i];
  const what = `layer ${i} (${l.digest.slice(0, 19)})`;
  const diffId = img.config.rootfs?.diff_ids?.[i];
  const c = layerCompression(l.mediaType);
  if (c === 'zstd') throw new ConvertError('unsupported', `${what}: zstd layers are not supported (Node 20's zlib has no zstd decoder)`);
  const sink = new LayerSink(tree, chunker, i, what, opts.chunkSize, opts.inlineMax);
  const reader = new TarReader(what, sink);
  let failure: unknown = null;
  const feed = (piece: Buffer): void => {
    if (failure !== null) return;
    try { reader.push(piece); } catch (e) { failure = e; }
  };
  const tarHash = c === 'gzip' && diffId !== undefined ? crypto.createHash('sha256') : null;
  const gz = c === 'gzip' ? new Gunzip((piece) => { tarHash?.update(piece); sink.hold = undefined; feed(piece); }) : null;
  const raw = rawHasher(pool);

  /** One slice of raw layer bytes: hashed, gunzipped or parsed, then the chunker is let to catch up. */
  const take = async (bytes: Buffer, slice: Slice | null): Promise<void> => {
    const hashed = raw.update(bytes);
    if (slice) { const letGo = ring.hold(slice); void hashed.then(letGo); }
    if (gz) {
      if (failure === null) await gz.write(bytes);
      if (gz.error && failure === null) failure = new ConvertError('layer', `${what}: gzip stream is corrupt (${gz.error.message})`, { cause: gz.error });
    } else {
      sink.hold = slice ? () => ring.hold(slice) : undefined;
      feed(bytes);
      sink.hold = undefined;
    }
    opts.onBytes?.(bytes.length);
    await chunker.pump();
    while (chunker.pendingBytes() > MAX_QUEUED_BYTES) await chunker.advance();
  };

  const file = img.layerFile?.(i);
  try {
    if (file !== undefined) {
      let fd: number;
      try { fd = fs.openSync(file.path, 'r'); } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new OciSourceError('not-found', `${file.what}: blob ${l.digest} is missing`);
        throw e;
      }
      try {
        const size = fs.fstatSync(fd).size;
        if (size !== l.size) throw new OciSourceError('digest', `${file.what}: blob ${l.digest} is ${size} bytes, its descriptor says ${l.size}`);
        for (let o = 0; o < size;) {
          let s = ring.tryAcquire();
          while (!s) {
            // Every slice still holds queued chunks or a pending hash: let them finish.
            if (!(await chunker.advance())) await ring.released();
            s = ring.tryAcquire();
          }
          try {
            const n = fs.readSync(fd, s.buf, 0, Math.min(s.buf.length, size - o), o);
            if (n === 0) throw new OciSourceError('digest', `${file.path}: file shrank while being read (${o} of ${size} bytes)`);
            o += n;
            await take(s.buf.subarray(0, n), s);
          } finally { ring.release(s); }
        }
      } finally { fs.closeSync(fd); }
    } else {
      // Held in memory already (a layer inside an archive file): one slice.
      await take(img.readLayerUnverified(i), null);
    }
    if (gz) {
      await gz.end();
      if (gz.error && failure === null) failure = new ConvertError('layer', `${what}: gzip stream is corrupt (${gz.error.message})`, { cause: gz.error });
    }
  } catch (e) {
    // End the layer's hash (it may be on the pool's long-lived hashing worker).
    raw.digest().catch(() => undefined);
    throw e;
  }
  if (failure === null) {
    try { reader.end(); } catch (e) { failure = e; }
  }
  const rawSha = raw.digest();
  const digestError = (got: string): Error => new OciSourceError('digest', `${what}: blob content is ${got}, expected ${l.digest}`);
  if (failure !== null) {
    const got = `sha256:${await rawSha}`;
    if (got !== l.digest) throw digestError(got);
    throw failure;
  }
  expect(rawSha, l.digest, digestError);
  if (diffId === undefined) return;
  const diffError = (got: string): Error => new ConvertError('layer', `${what}: uncompressed content is ${got}, the config's diff_id says ${diffId}`);
  if (tarHash) {
    const got = `sha256:${tarHash.digest('hex')}`;
    if (got !== diffId) {
      // The raw digest first: a wrong blob explains a wrong diff_id.
      const gotRaw = `sha256:${await rawSha}`;
      if (gotRaw !== l.digest) throw digestError(gotRaw);
      throw diffError(got);
    }
  } else if (diffId !== l.digest) expect(rawSha, diffId, diffError);
}
