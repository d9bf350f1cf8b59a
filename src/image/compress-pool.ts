/**
 * The converter's worker threads (lz4-worker.ts): sha256 + LZ4 of chunks
 * (one job per chunk, one pass over its bytes while they are in cache),
 * and (one extra thread) sha256 of layers as they stream by and of blobs
 * as they are written, while the main thread reads, parses tar, decides
 * dedup in order and writes blobs.
 *
 * acquirePool() starts a pool lazily, once per process and worker count,
 * and keeps it while conversions come: a conversion does not pay for
 * starting threads and loading their modules (~0.1-0.3 s). Its workers are
 * unref'd while no job is in flight, so an idle pool never keeps the
 * process alive, and stopped after POOL_IDLE_MS unused; a pool whose
 * worker died is replaced on the next call.
 *
 * A SharedArrayBuffer (the converter's read ring, layer-stream.ts, or a
 * layer held whole) is shared with the workers once; a chunk is then sent
 * as (buffer number, offset, length) and never copied on the way in. A
 * buffer that is not shared is copied into a transferred ArrayBuffer.
 * Each compression job goes to the worker with the fewest jobs in flight.
 */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { PoolReply, PoolRequest } from './lz4-worker';

/** Marks a promise as handled (its rejection still reaches whoever awaits it). */
function quiet<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

interface Job { resolve: (r: PoolReply) => void; reject: (e: Error) => void; worker: number }

export class CompressPool {
  private readonly workers: Worker[];
  private readonly inFlight: number[];
  private readonly jobs = new Map<number, Job>();
  private readonly layers = new Map<SharedArrayBuffer, number>();
  private nextId = 0;
  private nextSession = 0;
  private nextLayer = 0;
  private failed: Error | null = null;
  private refd = true;

  /**
   * count compressing workers, plus one more (the last) that only hashes
   * streamed layers: a read slice is acked as soon as it is hashed, not
   * after the compression jobs queued before it (the reader waits for
   * those acks to reuse its slices).
   */
  constructor(private readonly count: number, chunkSize: number) {
    this.workers = Array.from({ length: count + 1 }, () => new Worker(path.join(__dirname, 'lz4-worker.js'), { workerData: { chunkSize } }));
    this.inFlight = this.workers.map(() => 0);
    this.workers.forEach((w, i) => {
      w.on('message', (m: PoolReply) => {
        const j = this.jobs.get(m.id);
        if (!j) return;
        this.jobs.delete(m.id);
        this.inFlight[i]--;
        if (this.jobs.size === 0) this.setRef(false);
        if (m.error !== undefined) j.reject(new Error(`compression worker: ${m.error}`));
        else j.resolve(m);
      });
      const die = (e: Error): void => {
        this.failed ??= e;
        for (const [id, j] of this.jobs) if (j.worker === i) { this.jobs.delete(id); j.reject(e); }
        if (this.jobs.size === 0) this.setRef(false);
      };
      w.on('error', die);
      w.on('exit', (code) => { if (code !== 0) die(new Error(`compression worker exited with ${code}`)); });
    });
    this.setRef(false);
  }

  get size(): number { return this.count; }

  /** The workers' thread ids (tests: a pool is reused, or replaced). */
  get threadIds(): number[] { return this.workers.map((w) => w.threadId); }

  /** False once a worker has died (acquirePool() then makes a new pool). */
  get healthy(): boolean { return this.failed === null; }

  /** Workers keep the process alive only while jobs are in flight. */
  private setRef(on: boolean): void {
    if (on === this.refd) return;
    this.refd = on;
    for (const w of this.workers) if (on) w.ref(); else w.unref();
  }

  /** Jobs submitted and not yet answered. */
  get pending(): number { return this.jobs.size; }

  /** The least busy worker, and a job on it whose reply settles the returned promise. */
  private job(on?: number): { w: number; id: number; p: Promise<PoolReply> } {
    let w = on ?? 0;
    if (on === undefined) for (let i = 1; i < this.count; i++) if (this.inFlight[i] < this.inFlight[w]) w = i;
    const id = this.nextId++;
    const p = quiet(new Promise<PoolReply>((resolve, reject) => {
      if (this.failed) reject(this.failed); else this.jobs.set(id, { resolve, reject, worker: w });
    }));
    if (this.jobs.size > 0) this.setRef(true);
    this.inFlight[w]++;
    return { w, id, p };
  }

  /** The workers' number for a SharedArrayBuffer, shared with all of them the first time. */
  private layerOf(sab: SharedArrayBuffer): number {
    let layer = this.layers.get(sab);
    if (layer === undefined) {
      // Never reused: a number forgotten by one conversion may still be queued behind another's.
      layer = this.nextLayer++;
      this.layers.set(sab, layer);
      for (const x of this.workers) x.postMessage({ t: 'layer', layer, sab } satisfies PoolRequest);
    }
    return layer;
  }

  /** Stops sharing `sab` with the workers (the converter's ring, when a conversion ends). */
  forget(sab: SharedArrayBuffer): void {
    const layer = this.layers.get(sab);
    if (layer === undefined) return;
    this.layers.delete(sab);
    for (const x of this.workers) x.postMessage({ t: 'drop', layer } satisfies PoolRequest);
  }

  /**
   * Opens a session (one conversion): the workers skip compressing chunks
   * whose sha256 is in `known` (the store's chunk index) or that they
   * hashed before in it. end() forgets it.
   */
  session(known: Iterable<string>): { sid: number; end(): void } {
    const sid = this.nextSession++;
    const list = [...known];
    for (const x of this.workers.slice(0, this.count)) x.postMessage({ t: 'session', sid, known: list } satisfies PoolRequest);
    return { sid, end: () => { for (const x of this.workers.slice(0, this.count)) x.postMessage({ t: 'session-end', sid } satisfies PoolRequest); } };
  }

  /**
   * sha256 of a chunk and, when `lz4` and the session does not know that
   * sha256, its LZ4 block (see lz4-worker.ts for the reply). A chunk in a
   * SharedArrayBuffer is read in place; `give`: the chunk is a whole
   * ArrayBuffer the caller hands over (moved, not copied; it comes back in
   * the reply's `raw` when not compressed); else it is copied.
   */
  chunk(bytes: Uint8Array, sid: number, lz4: boolean, give = false): Promise<PoolReply> {
    if (this.failed) return quiet(Promise.reject(this.failed));
    const { w, id, p } = this.job();
    if (bytes.buffer instanceof SharedArrayBuffer) {
      const layer = this.layerOf(bytes.buffer);
      this.workers[w].postMessage({ t: 'chunk', id, sid, lz4, layer, off: bytes.byteOffset, len: bytes.length } satisfies PoolRequest);
    } else {
      const whole = give && bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
      const buf = whole ? bytes.buffer as ArrayBuffer : new Uint8Array(bytes).buffer;
      this.workers[w].postMessage({ t: 'chunk', id, sid, lz4, buf, off: 0, len: bytes.length } satisfies PoolRequest, [buf]);
    }
    return p;
  }

  private submit(t: 'lz4' | 'sha', bytes: Uint8Array): Promise<PoolReply> {
    if (this.failed) return Promise.reject(this.failed);
    const { w, id, p } = this.job();
    if (bytes.buffer instanceof SharedArrayBuffer) {
      const layer = this.layerOf(bytes.buffer);
      this.workers[w].postMessage({ t, id, layer, off: bytes.byteOffset, len: bytes.length } satisfies PoolRequest);
    } else {
      const copy = new Uint8Array(bytes);
      this.workers[w].postMessage({ t, id, buf: copy.buffer, off: 0, len: copy.length } satisfies PoolRequest, [copy.buffer]);
    }
    return p;
  }

  /**
   * LZ4 block of `chunk` (read in place when it lies in a
   * SharedArrayBuffer, else copied), or null when it would not be smaller. The promise
   * may be awaited long after it settles: a failure is never "unhandled".
   */
  compress(chunk: Uint8Array): Promise<Uint8Array | null> {
    return quiet(this.submit('lz4', chunk).then((r) => r.data ?? null));
  }

  /** sha256 (hex) of `bytes`, computed in a worker (same promise rule). */
  sha256(bytes: Uint8Array): Promise<string> {
    return quiet(this.submit('sha', bytes).then((r) => r.hex!));
  }

  /**
   * A sha256 of `buf` (in a SharedArrayBuffer) fed while it is being
   * filled: update(off, len) after each read, digest() at the end. One
   * worker does it all, in order, while this thread goes on reading.
   */
  sha256Stream(buf: Uint8Array): { update(off: number, len: number): void; digest(): Promise<string> } {
    if (!(buf.buffer instanceof SharedArrayBuffer)) throw new Error('sha256Stream needs a buffer in a SharedArrayBuffer');
    const layer = this.layerOf(buf.buffer);
    const { w, id, p } = this.job();
    const hid = id;
    this.workers[w].postMessage({ t: 'hash-begin', hid } satisfies PoolRequest);
    return {
      update: (off, len) => this.workers[w].postMessage({ t: 'hash-update', hid, layer, off: buf.byteOffset + off, len } satisfies PoolRequest),
      digest: () => {
        this.workers[w].postMessage({ t: 'hash-end', id, hid } satisfies PoolRequest);
        return quiet(p.then((r) => r.hex!));
      },
    };
  }

  /**
   * A sha256 fed in order on the hashing worker (a layer as it is read, a
   * blob as it is written): update(bytes) posts a view of a
   * SharedArrayBuffer (never copied) and resolves once the worker has
   * hashed it, so the caller knows when it may overwrite the buffer; other
   * bytes are copied, or moved when `give` says the caller is done with a
   * whole buffer (it is detached then). The promise never rejects (a
   * failure is digest()'s). digest() ends the hash.
   */
  sha256Slices(): { update(bytes: Uint8Array, give?: boolean): Promise<void>; digest(): Promise<string> } {
    const { w, id: hid, p } = this.job(this.count);
    this.workers[w].postMessage({ t: 'hash-begin', hid } satisfies PoolRequest);
    return {
      update: (bytes, give = false) => {
        const { id, p: ack } = this.job(w);
        if (bytes.buffer instanceof SharedArrayBuffer) {
          const layer = this.layerOf(bytes.buffer);
          this.workers[w].postMessage({ t: 'hash-update', hid, layer, off: bytes.byteOffset, len: bytes.length, id } satisfies PoolRequest);
        } else {
          // Not shared: moved when the caller gives up a whole buffer, else copied.
          const whole = give && bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
          const buf = whole ? bytes.buffer as ArrayBuffer : new Uint8Array(bytes).buffer;
          this.workers[w].postMessage({ t: 'hash-update', hid, buf, off: 0, len: bytes.length, id } satisfies PoolRequest, [buf]);
        }
        return ack.then(() => undefined, () => undefined);
      },
      digest: () => {
        this.workers[w].postMessage({ t: 'hash-end', id: hid, hid } satisfies PoolRequest);
        return quiet(p.then((r) => r.hex!));
      },
    };
  }

  /** Stops the workers; jobs still in flight are rejected. */
  async close(): Promise<void> {
    const e = new Error('compression pool closed');
    for (const j of this.jobs.values()) j.reject(e);
    this.jobs.clear();
    this.failed ??= e;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** A shared pool unused this long is stopped (a long-lived shim does not keep idle threads). */
export const POOL_IDLE_MS = 30_000;

interface SharedEntry { pool: CompressPool; users: number; timer: NodeJS.Timeout | null }
const shared = new Map<number, SharedEntry>();

/**
 * The process's pool with `workers` compressing workers, started on first
 * use and kept while conversions come (see the header); release() when the
 * conversion is over. A pool nobody has used for POOL_IDLE_MS is stopped.
 */
export function acquirePool(workers: number, chunkSize: number): { pool: CompressPool; release(): void } {
  let e = shared.get(workers);
  if (e && !e.pool.healthy) {
    void e.pool.close();
    shared.delete(workers);
    e = undefined;
  }
  if (!e) {
    e = { pool: new CompressPool(workers, chunkSize), users: 0, timer: null };
    shared.set(workers, e);
  }
  const entry = e;
  if (entry.timer) { clearTimeout(entry.timer); entry.timer = null; }
  entry.users++;
  let released = false;
  return {
    pool: entry.pool,
    release: () => {
      if (released) return;
      released = true;
      if (--entry.users > 0) return;
      entry.timer = setTimeout(() => {
        if (shared.get(workers) === entry) shared.delete(workers);
        void entry.pool.close();
      }, POOL_IDLE_MS);
      entry.timer.unref();
    },
  };
}
