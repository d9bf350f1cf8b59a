/**
 * The chunk table of a converted image: `images/<id>/chunks.bin`.
 *
 * A converted image's EROFS metadata addresses file data on DEVICE 1, a
 * virtual *uncompressed* "image blob device": slot k of that device holds the
 * k-th distinct chunk of the image, at byte k * chunkSize (a short final chunk
 * of a file is zero-padded to the slot). This table says where each slot's
 * bytes really are: in which content-addressed blob, at which offset, stored
 * raw or LZ4-block-compressed. Converter (writer), blob device (reader), gc
 * and the lazy source all go through this one module, so the format lives in
 * one place.
 *
 * Layout (little-endian):
 *   header  32 B  magic "KTSCHNK1", u32 version (1), u32 chunkSize,
 *                 u32 slot count, u32 blob count, u64 device size
 *                 (= count * chunkSize)
 *   blobs   40 B each: sha256 of the blob (32 B), u64 blob size
 *   slots   56 B each: sha256 of the uncompressed chunk (32 B), u32 blob index,
 *                 u64 offset in blob, u32 stored size, u32 uncompressed size,
 *                 u32 flags (bit0 = LZ4 block)
 *
 * decode() checks every field against the others (a slot pointing outside its
 * blob or past the device is an error), so a reader never trusts a corrupt
 * table with an out-of-range read.
 */
import { KataError } from '../common/errors';

export type ChunkTableErrorKind = 'truncated' | 'magic' | 'version' | 'chunk-size' | 'bounds' | 'flags' | 'size';
export class ChunkTableError extends KataError<ChunkTableErrorKind> {}

export const CHUNK_TABLE_MAGIC = 'KTSCHNK1';
export const CHUNK_TABLE_VERSION = 1;
export const CHUNK_TABLE_HEADER = 32;
export const CHUNK_TABLE_BLOB_RECORD = 40;
export const CHUNK_TABLE_SLOT_RECORD = 56;
/** Slot flag: stored bytes are one LZ4 block (decoded size = uncompressed size). */
export const CHUNK_FLAG_LZ4 = 1;
/** EROFS blocks are 4 KiB here; chunks are a power of two from one block to 1 GiB. */
export const MIN_CHUNK_SIZE = 4096;
export const MAX_CHUNK_SIZE = 1 << 30;
/** Default chunk size: 1 MiB, as Nydus's. */
export const DEFAULT_CHUNK_SIZE = 1 << 20;

export interface BlobRef {
  /** sha256 of the blob's bytes, lowercase hex. */
  digest: string;
  size: number;
}

export interface ChunkSlot {
  /** sha256 of the uncompressed chunk, lowercase hex. */
  sha256: string;
  blob: number;
  offset: number;
  storedSize: number;
  size: number;
  flags: number;
}

export interface ChunkTable {
  chunkSize: number;
  blobs: BlobRef[];
  slots: ChunkSlot[];
}

/** Worst-case LZ4 block size of n input bytes (the compressor's bound). */
function lz4Bound(n: number): number {
  return n + Math.floor(n / 255) + 16;
}

const HEX64 = /^[0-9a-f]{64}$/;

/** Throws unless `n` is a valid chunk size. */
export function checkChunkSize(n: number): void {
  if (!Number.isInteger(n) || n < MIN_CHUNK_SIZE || n > MAX_CHUNK_SIZE || (n & (n - 1)) !== 0) {
    throw new ChunkTableError('chunk-size', `chunk size ${n} must be a power of two from ${MIN_CHUNK_SIZE} to ${MAX_CHUNK_SIZE}`);
  }
}

/** Size of the virtual uncompressed device the table describes. */
export function deviceSize(t: ChunkTable): number {
  return t.slots.length * t.chunkSize;
}

/** Checks the cross-field invariants shared by encode() and decode(). */
export function validateChunkTable(t: ChunkTable): void {
  checkChunkSize(t.chunkSize);
  t.blobs.forEach((b, i) => {
    if (!HEX64.test(b.digest)) throw new ChunkTableError('bounds', `blob ${i}: digest "${b.digest}" is not 64 lowercase hex digits`);
    if (!Number.isSafeInteger(b.size) || b.size < 0) throw new ChunkTableError('bounds', `blob ${i}: bad size ${b.size}`);
  });
  t.slots.forEach((s, k) => {
    const where = `chunk slot ${k}`;
    if (!HEX64.test(s.sha256)) throw new ChunkTableError('bounds', `${where}: chunk digest is not 64 lowercase hex digits`);
    if ((s.flags & ~CHUNK_FLAG_LZ4) !== 0) throw new ChunkTableError('flags', `${where}: unknown flags 0x${s.flags.toString(16)}`);
    if (!Number.isInteger(s.blob) || s.blob < 0 || s.blob >= t.blobs.length) {
      throw new ChunkTableError('bounds', `${where}: blob index ${s.blob} outside the ${t.blobs.length}-entry blob list`);
    }
    if (!Number.isInteger(s.size) || s.size < 1 || s.size > t.chunkSize) {
      throw new ChunkTableError('size', `${where}: uncompressed size ${s.size} not in 1..${t.chunkSize}`);
    }
    const maxStored = s.flags & CHUNK_FLAG_LZ4 ? lz4Bound(s.size) : s.size;
    if (!Number.isInteger(s.storedSize) || s.storedSize < 1 || s.storedSize > maxStored
      || (!(s.flags & CHUNK_FLAG_LZ4) && s.storedSize !== s.size)) {
      throw new ChunkTableError('size', `${where}: stored size ${s.storedSize} impossible for ${s.size} bytes (flags ${s.flags})`);
    }
    const blob = t.blobs[s.blob];
    if (!Number.isSafeInteger(s.offset) || s.offset < 0 || s.offset + s.storedSize > blob.size) {
      throw new ChunkTableError('bounds', `${where}: bytes [${s.offset}, ${s.offset + s.storedSize}) outside blob ${blob.digest.slice(0, 12)} of ${blob.size} bytes`);
    }
  });
}

/** Serializes a table (validated first). */
export function encodeChunkTable(t: ChunkTable): Buffer {
  validateChunkTable(t);
  const buf = Buffer.alloc(CHUNK_TABLE_HEADER + t.blobs.length * CHUNK_TABLE_BLOB_RECORD + t.slots.length * CHUNK_TABLE_SLOT_RECORD);
  buf.write(CHUNK_TABLE_MAGIC, 0, 'latin1');
  buf.writeUInt32LE(CHUNK_TABLE_VERSION, 8);
  buf.writeUInt32LE(t.chunkSize, 12);
  buf.writeUInt32LE(t.slots.length, 16);
  buf.writeUInt32LE(t.blobs.length, 20);
  buf.writeBigUInt64LE(BigInt(deviceSize(t)), 24);
  let o = CHUNK_TABLE_HEADER;
  for (const b of t.blobs) {
    buf.write(b.digest, o, 'hex');
    buf.writeBigUInt64LE(BigInt(b.size), o + 32);
    o += CHUNK_TABLE_BLOB_RECORD;
  }
  for (const s of t.slots) {
    buf.write(s.sha256, o, 'hex');
    buf.writeUInt32LE(s.blob, o + 32);
    buf.writeBigUInt64LE(BigInt(s.offset), o + 36);
    buf.writeUInt32LE(s.storedSize, o + 44);
    buf.writeUInt32LE(s.size, o + 48);
    buf.writeUInt32LE(s.flags, o + 52);
    o += CHUNK_TABLE_SLOT_RECORD;
  }
  return buf;
}

function u64(buf: Buffer, o: number, what: string): number {
  const v = buf.readBigUInt64LE(o);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ChunkTableError('bounds', `${what} ${v} too large`);
  return Number(v);
}

/** Parses and validates `chunks.bin`; any inconsistency is a ChunkTableError. */
export function decodeChunkTable(buf: Buffer): ChunkTable {
  if (buf.length < CHUNK_TABLE_HEADER) throw new ChunkTableError('truncated', `chunk table of ${buf.length} bytes is shorter than its ${CHUNK_TABLE_HEADER}-byte header`);
  if (buf.toString('latin1', 0, 8) !== CHUNK_TABLE_MAGIC) throw new ChunkTableError('magic', 'not a chunk table (bad magic)');
  const version = buf.readUInt32LE(8);
  if (version !== CHUNK_TABLE_VERSION) throw new ChunkTableError('version', `chunk table version ${version} unsupported (want ${CHUNK_TABLE_VERSION})`);
  const chunkSize = buf.readUInt32LE(12);
  checkChunkSize(chunkSize);
  const count = buf.readUInt32LE(16);
  const blobCount = buf.readUInt32LE(20);
  const devSize = u64(buf, 24, 'device size');
  const want = CHUNK_TABLE_HEADER + blobCount * CHUNK_TABLE_BLOB_RECORD + count * CHUNK_TABLE_SLOT_RECORD;
  if (buf.length !== want) throw new ChunkTableError('truncated', `chunk table is ${buf.length} bytes, its header says ${want}`);
  if (devSize !== count * chunkSize) throw new ChunkTableError('bounds', `device size ${devSize} != ${count} slots × ${chunkSize}`);
  const blobs: BlobRef[] = [];
  let o = CHUNK_TABLE_HEADER;
  for (let i = 0; i < blobCount; i++, o += CHUNK_TABLE_BLOB_RECORD) {
    blobs.push({ digest: buf.toString('hex', o, o + 32), size: u64(buf, o + 32, `blob ${i} size`) });
  }
  const slots: ChunkSlot[] = [];
  for (let k = 0; k < count; k++, o += CHUNK_TABLE_SLOT_RECORD) {
    slots.push({
      sha256: buf.toString('hex', o, o + 32),
      blob: buf.readUInt32LE(o + 32),
      offset: u64(buf, o + 36, `slot ${k} offset`),
      storedSize: buf.readUInt32LE(o + 44),
      size: buf.readUInt32LE(o + 48),
      flags: buf.readUInt32LE(o + 52),
    });
  }
  const t = { chunkSize, blobs, slots };
  validateChunkTable(t);
  return t;
}
