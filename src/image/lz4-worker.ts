/**
 * Worker thread of the converter's compression pool (compress-pool.ts):
 * LZ4-compresses chunks with our AssemblyScript encoder and computes layer
 * digests with Node's native sha256, off the main thread.
 *
 * Chunk bytes are read in place from a layer's SharedArrayBuffer (sent once
 * per layer), or from a transferred ArrayBuffer when the layer is not
 * shared; only the compressed result is copied out of the WebAssembly
 * memory, into a buffer transferred back. The encoder is given one byte
 * less than the chunk as output room, so a chunk that does not compress
 * stops as an overflow and comes back as null (stored raw).
 *
 * In:  { t: 'layer', layer, sab }
 *      { t: 'lz4', id, layer, off, len } | { t: 'lz4', id, buf, off, len }
 *      { t: 'sha', id, layer, off, len } | { t: 'sha', id, buf, off, len }
 *      { t: 'hash-begin', hid } { t: 'hash-update', hid, layer | buf, off, len }
 *      { t: 'hash-end', id, hid }   (a sha256 fed as a layer is being read;
 *      an update with an id is answered { id } once hashed)
 *      { t: 'drop', layer }
 * Out: { id, data: Uint8Array | null } | { id, hex } | { id, error }
 */
import * as crypto from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { Lz4, Lz4Error } from '../hot/lz4';

export type PoolRequest =
  | { t: 'layer'; layer: number; sab: SharedArrayBuffer }
  | { t: 'drop'; layer: number }
  | { t: 'hash-begin'; hid: number }
  | { t: 'hash-update'; hid: number; layer?: number; buf?: ArrayBuffer; off: number; len: number; id?: number }
  | { t: 'hash-end'; id: number; hid: number }
  | { t: 'lz4' | 'sha'; id: number; layer?: number; buf?: ArrayBuffer; off: number; len: number };

export type PoolReply = { id: number; data?: Uint8Array | null; hex?: string; error?: string };

/** Made on the first chunk (the pool's hashing worker never needs one). */
let encoder: Lz4 | null = null;
const layers = new Map<number, SharedArrayBuffer>();
const hashes = new Map<number, crypto.Hash>();
/** The first error of a streamed hash, reported at its end. */
const hashErrors = new Map<number, string>();

function view(m: { layer?: number; buf?: ArrayBuffer; off: number; len: number }): Uint8Array {
  const backing = m.buf ?? layers.get(m.layer!);
  if (!backing) throw new Error(`layer ${m.layer} was not shared with this worker`);
  return new Uint8Array(backing, m.off, m.len);
}

function compress(src: Uint8Array): Uint8Array<ArrayBuffer> | null {
  if (src.length < 16) return null;
  const lz4 = encoder ??= new Lz4({ maxBlockBytes: (workerData as { chunkSize: number }).chunkSize });
  lz4.mem.u8.set(src, lz4.srcOff);
  let n: number;
  try {
    n = lz4.compressInPlace(lz4.srcOff, src.length, lz4.dstOff, src.length - 1);
  } catch (e) {
    if (e instanceof Lz4Error && e.kind === 'overflow') return null;
    throw e;
  }
  const out = new Uint8Array(new ArrayBuffer(n));
  out.set(lz4.mem.u8.subarray(lz4.dstOff, lz4.dstOff + n));
  return out;
}

parentPort!.on('message', (m: PoolRequest) => {
  if (m.t === 'layer') { layers.set(m.layer, m.sab); return; }
  if (m.t === 'drop') { layers.delete(m.layer); return; }
  if (m.t === 'hash-begin') { hashes.set(m.hid, crypto.createHash('sha256')); return; }
  if (m.t === 'hash-update') {
    try { hashes.get(m.hid)!.update(view(m)); } catch (e) { if (!hashErrors.has(m.hid)) hashErrors.set(m.hid, (e as Error).message); }
    // Acknowledged when asked: the sender may then reuse the bytes.
    if (m.id !== undefined) parentPort!.postMessage({ id: m.id } satisfies PoolReply);
    return;
  }
  if (m.t === 'hash-end') {
    const h = hashes.get(m.hid);
    const err = hashErrors.get(m.hid) ?? (h ? undefined : `hash ${m.hid} was never begun`);
    hashes.delete(m.hid);
    hashErrors.delete(m.hid);
    parentPort!.postMessage((err !== undefined ? { id: m.id, error: err } : { id: m.id, hex: h!.digest('hex') }) satisfies PoolReply);
    return;
  }
  try {
    if (m.t === 'lz4') {
      const out = compress(view(m));
      parentPort!.postMessage({ id: m.id, data: out } satisfies PoolReply, out ? [out.buffer] : []);
    } else {
      const hex = crypto.createHash('sha256').update(view(m)).digest('hex');
      parentPort!.postMessage({ id: m.id, hex } satisfies PoolReply);
    }
  } catch (e) {
    parentPort!.postMessage({ id: m.id, error: (e as Error).message } satisfies PoolReply);
  }
});
