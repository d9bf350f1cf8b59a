/**
 * Worker thread of the converter's compression pool (compress-pool.ts):
 * names chunks (sha256) and LZ4-compresses them with our AssemblyScript
 * encoder in one job, and computes layer and blob digests with Node's
 * native sha256, off the main thread.
 *
 * Chunk bytes are read in place from a layer's SharedArrayBuffer (sent once
 * per layer), or from a transferred ArrayBuffer when the layer is not
 * shared; only the compressed result is copied out of the WebAssembly
 * memory, into a buffer transferred back. The encoder is given one byte
 * less than the chunk as output room, so a chunk that does not compress
 * stops as an overflow and comes back as null (stored raw).
 *
 * A 'chunk' job hashes the chunk and, unless its session (one conversion)
 * already knows that sha256 (in the store's chunk index, or a chunk this
 * worker hashed earlier in the session, which the main thread, deciding in
 * order, will have taken first), compresses it: { id, hex, data } with
 * data null when it does not shrink, or { id, hex, skipped: true }. A
 * chunk sent in a transferred buffer comes back in `raw` when it is not
 * compressed, so the main thread never copies it.
 *
 * In:  { t: 'layer', layer, sab }
 *      { t: 'session', sid, known } { t: 'session-end', sid }
 *      { t: 'chunk', id, sid, lz4, layer | buf, off, len }
 *      { t: 'lz4', id, layer, off, len } | { t: 'lz4', id, buf, off, len }
 *      { t: 'sha', id, layer, off, len } | { t: 'sha', id, buf, off, len }
 *      { t: 'hash-begin', hid } { t: 'hash-update', hid, layer | buf, off, len }
 *      { t: 'hash-end', id, hid }   (a sha256 fed as a layer is being read;
 *      an update with an id is answered { id } once hashed)
 *      { t: 'drop', layer }
 * Out: { id, data: Uint8Array | null } | { id, hex } | { id, error }
 *      | { id, hex, data?, raw?, skipped? } (chunk)
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
  | { t: 'lz4' | 'sha'; id: number; layer?: number; buf?: ArrayBuffer; off: number; len: number }
  | { t: 'session'; sid: number; known: string[] }
  | { t: 'session-end'; sid: number }
  | { t: 'chunk'; id: number; sid: number; lz4: boolean; layer?: number; buf?: ArrayBuffer; off: number; len: number };

export type PoolReply = { id: number; data?: Uint8Array | null; hex?: string; error?: string; raw?: ArrayBuffer; skipped?: boolean };

/** Made on the first chunk (the pool's hashing worker never needs one); remade larger when a chunk needs it. */
let encoder: Lz4 | null = null;
/** Per conversion: sha256s not worth compressing (stored already, or hashed earlier here). */
const sessions = new Map<number, Set<string>>();
const layers = new Map<number, SharedArrayBuffer>();
const hashes = new Map<number, crypto.Hash>();
/** The first error of a streamed hash, reported at its end. */
const hashErrors = new Map<number, string>();

function view(m: { layer?: number; buf?: ArrayBuffer; off: number; len: number }): Uint8Array {
  const backing = m.buf ?? layers.get(m.layer!);
  if (!backing) throw new Error(`layer ${m.layer} was not shared with this worker`);
  return new Uint8Array(backing, m.off, m.len);
}

/** The encoder, large enough for `len` bytes. */
function encoderFor(len: number): Lz4 {
  if (!encoder || encoder.maxBlockBytes < len) encoder = new Lz4({ maxBlockBytes: Math.max(len, (workerData as { chunkSize: number }).chunkSize) });
  return encoder;
}

/** Compresses the `len` bytes at the encoder's source offset; null when it would not be smaller. */
function compressLoaded(lz4: Lz4, len: number): Uint8Array<ArrayBuffer> | null {
  if (len < 16) return null;
  let n: number;
  try {
    n = lz4.compressInPlace(lz4.srcOff, len, lz4.dstOff, len - 1);
  } catch (e) {
    if (e instanceof Lz4Error && e.kind === 'overflow') return null;
    throw e;
  }
  const out = new Uint8Array(new ArrayBuffer(n));
  out.set(lz4.mem.u8.subarray(lz4.dstOff, lz4.dstOff + n));
  return out;
}

function compress(src: Uint8Array): Uint8Array<ArrayBuffer> | null {
  const lz4 = encoderFor(src.length);
  lz4.mem.u8.set(src, lz4.srcOff);
  return compressLoaded(lz4, src.length);
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
  if (m.t === 'session') { sessions.set(m.sid, new Set(m.known)); return; }
  if (m.t === 'session-end') { sessions.delete(m.sid); return; }
  try {
    if (m.t === 'chunk') {
      const src = view(m);
      // Copied into the encoder's memory first and hashed there: one read of the (ring's) bytes, the second from cache.
      const lz4 = m.lz4 ? encoderFor(src.length) : null;
      if (lz4) lz4.mem.u8.set(src, lz4.srcOff);
      const hex = crypto.createHash('sha256').update(lz4 ? lz4.mem.u8.subarray(lz4.srcOff, lz4.srcOff + src.length) : src).digest('hex');
      const seen = sessions.get(m.sid);
      if (seen?.has(hex)) {
        parentPort!.postMessage({ id: m.id, hex, skipped: true, raw: m.buf } satisfies PoolReply, m.buf ? [m.buf] : []);
        return;
      }
      seen?.add(hex);
      const out = lz4 ? compressLoaded(lz4, src.length) : null;
      const give: ArrayBuffer[] = out ? [out.buffer] : m.buf ? [m.buf] : [];
      parentPort!.postMessage({ id: m.id, hex, data: out, raw: out ? undefined : m.buf } satisfies PoolReply, give);
      return;
    }
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
