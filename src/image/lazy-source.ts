/**
 * Lazy source: the bytes of a blob that is not (yet) in the local store,
 * fetched on first use from an OCI-distribution-like HTTP server and kept in
 * a partial local blob.
 *
 *   GET <base>/v2/<name>/blobs/sha256:<hex>   Range: bytes=<first>-<last>
 *
 * (distribution-spec "Pulling blobs", range requests.) The answer must be
 * 206 with `Content-Range: bytes <first>-<last>/<blob size>` naming exactly
 * the range asked for and the blob size the image's chunk table records, and
 * a body of exactly that length: a server that lies about the size, returns
 * another range or a short/long body is an error for that read.
 *
 * Retry policy: connection errors (also a body cut short by a closed
 * connection), stalls (no byte for `stallMs`) and 5xx answers are retried up to `attempts` times in all, with 100 ms · 2^n
 * backoff; 4xx answers and malformed answers are not (retrying a liar does
 * not help). Bytes that arrive intact but hash wrong are the blob device's
 * business (blob-device.ts verifies each chunk by sha256 after decoding and
 * never stores or serves them): that read fails, and the next read of the
 * chunk fetches it again.
 *
 * The partial blob (store.ts paths): `blobs/sha256/<hex>.partial`, a sparse
 * file of the blob's size holding fetched ranges at their own offsets, and
 * `<hex>.present`, an append-only log of the ranges present (16-byte records:
 * u64 offset, u64 length; a torn last record from a crash is ignored). Only
 * verified chunks are written, and every chunk is verified again when read
 * back, so a lost or torn write can cost a refetch, never wrong bytes. When
 * the ranges cover the whole blob and its sha256 matches, the partial blob
 * is promoted to `blobs/sha256/<hex>` (store.commitBlob).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { KataError, errorMessage } from '../common/errors';
import { logger } from '../common/log';
import { blobPartialPath, blobPath, blobPresencePath, commitBlob, ensureStore } from './store';

export type LazyErrorKind = 'config' | 'http' | 'status' | 'timeout' | 'size' | 'range' | 'io';
export class LazyError extends KataError<LazyErrorKind> {}

export interface LazySourceOptions {
  /** Registry base URL, e.g. http://127.0.0.1:5000 (http or https). */
  baseUrl: string;
  /** Repository name in /v2/<name>/blobs/… */
  name: string;
  /** A response that sends no byte for this long is abandoned (default 10 s). */
  stallMs?: number;
  /** Tries per range, the first included (default 3). */
  attempts?: number;
}

const NAME_RE = /^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$/;
const HEX64 = /^[0-9a-f]{64}$/;

/** Bytes fetched so far, for the cold-start benchmark and `kata-ctl` metrics. */
export interface LazyMetrics { requests: number; retries: number; bytes: number; errors: number }

export class LazySource {
  readonly metrics: LazyMetrics = { requests: 0, retries: 0, bytes: 0, errors: 0 };
  private readonly base: URL;
  private readonly stallMs: number;
  private readonly attempts: number;
  private readonly log = logger('image.lazy');

  constructor(readonly opts: LazySourceOptions) {
    try {
      this.base = new URL(opts.baseUrl);
    } catch {
      throw new LazyError('config', `lazy source URL "${opts.baseUrl}" is not a URL`);
    }
    if (this.base.protocol !== 'http:' && this.base.protocol !== 'https:') throw new LazyError('config', `lazy source URL "${opts.baseUrl}" must be http or https`);
    if (!NAME_RE.test(opts.name)) throw new LazyError('config', `repository name "${opts.name}" is not a distribution-spec name`);
    this.stallMs = opts.stallMs ?? 10_000;
    this.attempts = Math.max(1, opts.attempts ?? 3);
  }

  /** Blob URL (exported for the README's and tests' sake). */
  blobUrl(hex: string): URL {
    if (!HEX64.test(hex)) throw new LazyError('config', `"${hex}" is not a sha256 hex digest`);
    const u = new URL(this.base.toString());
    u.pathname = `${u.pathname.replace(/\/$/, '')}/v2/${this.opts.name}/blobs/sha256:${hex}`;
    return u;
  }

  /** Fetches bytes [offset, offset+length) of blob `hex` whose size is `blobSize`, retrying as documented. */
  async fetchRange(hex: string, blobSize: number, offset: number, length: number): Promise<Buffer> {
    if (length <= 0 || offset < 0 || offset + length > blobSize) throw new LazyError('range', `range [${offset}, ${offset + length}) outside blob ${hex.slice(0, 12)} of ${blobSize} bytes`);
    let last: unknown;
    for (let i = 0; i < this.attempts; i++) {
      if (i > 0) {
        this.metrics.retries++;
        await new Promise((r) => setTimeout(r, 100 * 2 ** (i - 1)));
      }
      try {
        const buf = await this.once(hex, blobSize, offset, length);
        this.metrics.bytes += buf.length;
        return buf;
      } catch (err) {
        last = err;
        const retriable = err instanceof LazyError && (err.kind === 'timeout' || err.kind === 'http' || (err.kind === 'status' && /HTTP 5\d\d/.test(err.message)));
        this.log.warn('range fetch failed', { blob: hex.slice(0, 12), offset, length, attempt: i + 1, retriable, err: errorMessage(err) });
        if (!retriable) break;
      }
    }
    this.metrics.errors++;
    throw last;
  }

  private once(hex: string, blobSize: number, offset: number, length: number): Promise<Buffer> {
    const url = this.blobUrl(hex);
    const last = offset + length - 1;
    this.metrics.requests++;
    const get = url.protocol === 'https:' ? https.get : http.get;
    return new Promise<Buffer>((resolve, reject) => {
      let settled = false;
      const fail = (err: LazyError) => {
        if (settled) return;
        settled = true;
        req.destroy();
        reject(err);
      };
      const req = get(url, { headers: { Range: `bytes=${offset}-${last}`, Accept: '*/*' }, agent: false }, (res) => {
        const status = res.statusCode ?? 0;
        if (status === 200) {
          res.resume();
          fail(new LazyError('range', `GET ${url.pathname} bytes=${offset}-${last}: HTTP 200, the server ignored the range`));
          return;
        }
        if (status !== 206) {
          res.resume();
          fail(new LazyError('status', `GET ${url.pathname} bytes=${offset}-${last}: HTTP ${status}`));
          return;
        }
        const cr = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
        if (!cr) { fail(new LazyError('range', `GET ${url.pathname}: 206 without a usable Content-Range ("${res.headers['content-range'] ?? ''}")`)); return; }
        if (cr[3] !== String(blobSize)) { fail(new LazyError('size', `blob ${hex.slice(0, 12)}: server says ${cr[3]} bytes, the image records ${blobSize}`)); return; }
        if (Number(cr[1]) !== offset || Number(cr[2]) !== last) { fail(new LazyError('range', `blob ${hex.slice(0, 12)}: asked bytes ${offset}-${last}, server sent ${cr[1]}-${cr[2]}`)); return; }
        const cl = res.headers['content-length'];
        if (cl !== undefined && Number(cl) !== length) { fail(new LazyError('size', `blob ${hex.slice(0, 12)}: Content-Length ${cl} for a ${length}-byte range`)); return; }
        const parts: Buffer[] = [];
        let got = 0;
        res.on('data', (d: Buffer) => {
          got += d.length;
          if (got > length) { fail(new LazyError('size', `blob ${hex.slice(0, 12)}: more than the ${length} bytes asked for`)); return; }
          parts.push(d);
        });
        res.on('end', () => {
          if (settled) return;
          if (got !== length) { fail(new LazyError('size', `blob ${hex.slice(0, 12)}: ${got} of ${length} bytes, then the server ended the response`)); return; }
          settled = true;
          resolve(Buffer.concat(parts, length));
        });
        res.on('error', (err) => fail(new LazyError('http', `GET ${url.pathname}: ${err.message}`)));
        res.on('aborted', () => fail(new LazyError('http', `GET ${url.pathname}: connection closed mid-body`)));
      });
      // setTimeout on the request is an idle timer: reset by every byte.
      req.setTimeout(this.stallMs, () => fail(new LazyError('timeout', `GET ${url.pathname} bytes=${offset}-${last}: no data for ${this.stallMs} ms`)));
      req.on('error', (err) => fail(new LazyError('http', `GET ${url.host}${url.pathname}: ${err.message}`)));
    });
  }
}

const PRESENT_RECORD = 16;

/**
 * A blob present only in part: the sparse `.partial` file and its `.present`
 * range log. One instance per blob per process; writes are serialised by the
 * caller's single event loop (pwrite then append), and other processes may
 * append to the same log (each record is one O_APPEND write).
 */
export class PartialBlob {
  private readonly ranges: Array<[number, number]> = [];
  private fd: number;
  private logFd: number;
  private logSeen = 0;
  private promoted = false;

  constructor(readonly root: string, readonly hex: string, readonly size: number) {
    ensureStore(root);
    this.fd = fs.openSync(blobPartialPath(root, hex), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
    if (fs.fstatSync(this.fd).size !== size) fs.ftruncateSync(this.fd, size);
    this.logFd = fs.openSync(blobPresencePath(root, hex), fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_APPEND, 0o644);
    this.reload();
  }

  /** Picks up records appended since the last look (another process fetching the same blob). */
  private reload(): void {
    const st = fs.fstatSync(this.logFd);
    const end = st.size - (st.size % PRESENT_RECORD);
    if (end <= this.logSeen) return;
    const buf = Buffer.alloc(end - this.logSeen);
    fs.readSync(this.logFd, buf, 0, buf.length, this.logSeen);
    for (let o = 0; o < buf.length; o += PRESENT_RECORD) {
      const off = Number(buf.readBigUInt64LE(o)), len = Number(buf.readBigUInt64LE(o + 8));
      if (len > 0 && off + len <= this.size) this.ranges.push([off, off + len]);
    }
    this.logSeen = end;
  }

  has(offset: number, length: number): boolean {
    if (this.promoted) return true;
    const covered = (): boolean => this.ranges.some(([a, b]) => a <= offset && offset + length <= b);
    if (covered()) return true;
    this.reload();
    return covered();
  }

  read(offset: number, length: number): Buffer {
    const buf = Buffer.alloc(length);
    const n = fs.readSync(this.fd, buf, 0, length, offset);
    if (n !== length) throw new LazyError('io', `partial blob ${this.hex.slice(0, 12)}: short read at ${offset}`);
    return buf;
  }

  /** Stores verified bytes at their offset and records them present. */
  write(offset: number, data: Buffer): void {
    if (offset < 0 || offset + data.length > this.size) throw new LazyError('range', `write [${offset}, ${offset + data.length}) outside blob of ${this.size}`);
    fs.writeSync(this.fd, data, 0, data.length, offset);
    const rec = Buffer.alloc(PRESENT_RECORD);
    rec.writeBigUInt64LE(BigInt(offset), 0);
    rec.writeBigUInt64LE(BigInt(data.length), 8);
    fs.writeSync(this.logFd, rec);
    this.ranges.push([offset, offset + data.length]);
  }

  /** Bytes known present (ranges merged). */
  presentBytes(): number {
    const sorted = [...this.ranges].sort((x, y) => x[0] - y[0]);
    let total = 0, end = 0;
    for (const [a, b] of sorted) {
      if (b <= end) continue;
      total += b - Math.max(a, end);
      end = b;
    }
    return total;
  }

  /**
   * When every byte is present and the whole blob hashes to its digest,
   * moves it to blobs/sha256/<hex> and drops the log. Returns whether it did.
   */
  promoteIfComplete(): boolean {
    if (this.promoted) return true;
    if (this.presentBytes() < this.size) return false;
    const h = crypto.createHash('sha256');
    const buf = Buffer.alloc(1 << 20);
    for (let o = 0; o < this.size; ) {
      const n = fs.readSync(this.fd, buf, 0, Math.min(buf.length, this.size - o), o);
      if (n <= 0) return false;
      h.update(buf.subarray(0, n));
      o += n;
    }
    if (h.digest('hex') !== this.hex) return false;
    commitBlob(this.root, blobPartialPath(this.root, this.hex), this.hex);
    fs.rmSync(blobPresencePath(this.root, this.hex), { force: true });
    this.promoted = true;
    return true;
  }

  close(): void {
    if (this.fd >= 0) { fs.closeSync(this.fd); this.fd = -1; }
    if (this.logFd >= 0) { fs.closeSync(this.logFd); this.logFd = -1; }
  }
}

/** True when the complete blob is in the store. */
export function blobIsLocal(root: string, hex: string): boolean {
  return fs.existsSync(blobPath(root, hex));
}
