/**
 * The converter's worker threads (lz4-worker.ts): LZ4 compression of new
 * chunks, and (one extra thread) sha256 of layers as they stream by, while
 * the main thread reads, parses tar, hashes chunks and writes blobs — on a
 * 2-core host the main thread and one compressing worker already keep both
 * cores busy.
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
  private failed: Error | null = null;

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
        if (m.error !== undefined) j.reject(new Error(`compression worker: ${m.error}`));
        else j.resolve(m);
      });
      const die = (e: Error): void => {
        this.failed ??= e;
        for (const [id, j] of this.jobs) if (j.worker === i) { this.jobs.delete(id); j.reject(e); }
      };
      w.on('error', die);
      w.on('exit', (code) => { if (code !== 0) die(new Error(`compression worker exited with ${code}`)); });
    });
  }

  get size(): number { return this.count; }

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
    this.inFlight[w]++;
    return { w, id, p };
  }

  /** The workers' number for a SharedArrayBuffer, shared with all of them the first time. */
  private layerOf(sab: SharedArrayBuffer): number {
    let layer = this.layers.get(sab);
    if (layer === undefined) {
      layer = this.layers.size;
      this.layers.set(sab, layer);
      for (const x of this.workers) x.postMessage({ t: 'layer', layer, sab } satisfies PoolRequest);
    }
    return layer;
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
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
