/**
 * FUSE wire format on virtio-fs queues (virtio 1.2 §5.11.6; struct layouts
 * from include/uapi/linux/fuse.h): request parsing over the device-readable
 * buffers of a chain, and reply encoding into its device-writable buffers.
 *
 * A request is `fuse_in_header` + opcode arguments (+ WRITE data), spread over
 * any number of guest buffers; the reply is `fuse_out_header` + payload. The
 * guest is hostile (ARCHITECTURE.md decision 2): every length comes from the
 * chain, is checked against what the chain really holds, and a short or
 * inconsistent request is a FsError('malformed'), never an out-of-range read.
 * Buffers alias guest memory: arguments are copied only when they straddle
 * buffers; WRITE/READ data is never copied here.
 */
import {
  ENTRY_OUT_SIZE, FsError, E, IN_HEADER_SIZE, OUT_HEADER_SIZE, ATTR_OUT_SIZE, STATFS_OUT_SIZE,
} from './constants';

/** Indexes into a stat BigUint64Array (native fsFstatat layout). */
export const ST_DEV = 0, ST_INO = 1, ST_MODE = 2, ST_NLINK = 3, ST_UID = 4, ST_GID = 5, ST_RDEV = 6,
  ST_SIZE = 7, ST_BLKSIZE = 8, ST_BLOCKS = 9, ST_ATIME = 10, ST_ATIME_NS = 11, ST_MTIME = 12,
  ST_MTIME_NS = 13, ST_CTIME = 14, ST_CTIME_NS = 15;
export type Stat = BigUint64Array;
export function newStat(): Stat { return new BigUint64Array(16); }

export interface InHeader {
  len: number;
  opcode: number;
  unique: bigint;
  nodeid: bigint;
  uid: number;
  gid: number;
  pid: number;
}

export interface FuseRequest extends InHeader {
  /** Opcode arguments: bytes [40, len) (for WRITE only the fuse_write_in part). */
  body: Buffer;
  /** WRITE payload as slices of guest memory. */
  data: Buffer[];
}

/** Total bytes of a buffer list. */
export function totalLength(segs: ReadonlyArray<Buffer>): number {
  let n = 0;
  for (const s of segs) n += s.length;
  return n;
}

/** Zero-copy slices covering [start, start+len) of the concatenation of segs. */
export function slices(segs: ReadonlyArray<Buffer>, start: number, len: number): Buffer[] {
  const out: Buffer[] = [];
  let pos = 0;
  for (const s of segs) {
    if (len === 0) break;
    const end = pos + s.length;
    if (end > start) {
      const from = Math.max(0, start - pos);
      const take = Math.min(s.length - from, len);
      out.push(s.subarray(from, from + take));
      len -= take;
      start += take;
    }
    pos = end;
  }
  return out;
}

/** [start, start+len) as one Buffer: a slice when one segment holds it, else a copy. */
export function gather(segs: ReadonlyArray<Buffer>, start: number, len: number): Buffer {
  const parts = slices(segs, start, len);
  if (parts.length === 1) return parts[0];
  return Buffer.concat(parts, len);
}

/** Upper bound for non-WRITE requests: SETXATTR (64 KiB value) is the biggest. */
const MAX_ARGS = 2 * 65536;

/**
 * Parses one request from a chain's readable buffers. `writeInSize` is the
 * fuse_write_in size: for WRITE only that much is gathered and the rest is
 * left in place as data slices.
 */
export function parseRequest(readable: ReadonlyArray<Buffer>, writeOpcode: number, writeInSize: number): FuseRequest {
  const avail = totalLength(readable);
  if (avail < IN_HEADER_SIZE) throw new FsError('malformed', E.EIO, `request of ${avail} bytes is shorter than fuse_in_header`);
  const h = gather(readable, 0, IN_HEADER_SIZE);
  const len = h.readUInt32LE(0);
  const opcode = h.readUInt32LE(4);
  const hdr: InHeader = {
    len, opcode,
    unique: h.readBigUInt64LE(8),
    nodeid: h.readBigUInt64LE(16),
    uid: h.readUInt32LE(24),
    gid: h.readUInt32LE(28),
    pid: h.readUInt32LE(32),
  };
  // §5.11.6.1: the header's len covers the whole request; it must agree with
  // what the driver really made readable (less would leave us reading
  // unrelated guest bytes, more would read past the chain).
  if (len < IN_HEADER_SIZE || len > avail) {
    throw new FsError('malformed', E.EINVAL, `fuse_in_header.len ${len} disagrees with ${avail} readable bytes`, { cause: hdr });
  }
  if (opcode === writeOpcode) {
    if (len < IN_HEADER_SIZE + writeInSize) throw new FsError('malformed', E.EINVAL, 'WRITE shorter than fuse_write_in', { cause: hdr });
    const body = gather(readable, IN_HEADER_SIZE, writeInSize);
    const data = slices(readable, IN_HEADER_SIZE + writeInSize, len - IN_HEADER_SIZE - writeInSize);
    return { ...hdr, body, data };
  }
  if (len - IN_HEADER_SIZE > MAX_ARGS) throw new FsError('malformed', E.EINVAL, `request arguments of ${len} bytes are too large`, { cause: hdr });
  return { ...hdr, body: gather(readable, IN_HEADER_SIZE, len - IN_HEADER_SIZE), data: [] };
}

/** Reads a fixed-size argument struct; too short a body is malformed. */
export function need(body: Buffer, size: number, what: string): Buffer {
  if (body.length < size) throw new FsError('malformed', E.EINVAL, `${what}: ${body.length} bytes, need ${size}`);
  return body;
}

/**
 * A NUL-terminated string starting at `off`; returns the bytes (without NUL)
 * and the offset after the NUL. Missing NUL is malformed.
 */
export function cstring(body: Buffer, off: number, what: string): { s: Buffer; next: number } {
  if (off > body.length) throw new FsError('malformed', E.EINVAL, `${what}: no string at ${off}`);
  const nul = body.indexOf(0, off);
  if (nul < 0) throw new FsError('malformed', E.EINVAL, `${what}: string not NUL-terminated`);
  return { s: body.subarray(off, nul), next: nul + 1 };
}

/** Writes fuse_attr at buf[off]. */
export function writeAttr(buf: Buffer, off: number, st: Stat, flags = 0): void {
  buf.writeBigUInt64LE(st[ST_INO], off);
  buf.writeBigUInt64LE(st[ST_SIZE], off + 8);
  buf.writeBigUInt64LE(st[ST_BLOCKS], off + 16);
  buf.writeBigUInt64LE(st[ST_ATIME], off + 24);
  buf.writeBigUInt64LE(st[ST_MTIME], off + 32);
  buf.writeBigUInt64LE(st[ST_CTIME], off + 40);
  buf.writeUInt32LE(Number(st[ST_ATIME_NS]), off + 48);
  buf.writeUInt32LE(Number(st[ST_MTIME_NS]), off + 52);
  buf.writeUInt32LE(Number(st[ST_CTIME_NS]), off + 56);
  buf.writeUInt32LE(Number(st[ST_MODE]), off + 60);
  buf.writeUInt32LE(Number(st[ST_NLINK] & 0xffffffffn), off + 64);
  buf.writeUInt32LE(Number(st[ST_UID]), off + 68);
  buf.writeUInt32LE(Number(st[ST_GID]), off + 72);
  // Linux's new_encode_dev == the low 32 bits of glibc's dev_t for
  // major < 4096 and minor < 2^20, which is all a u32 can carry anyway.
  buf.writeUInt32LE(Number(st[ST_RDEV] & 0xffffffffn), off + 76);
  buf.writeUInt32LE(Number(st[ST_BLKSIZE] & 0xffffffffn), off + 80);
  buf.writeUInt32LE(flags, off + 84); // FUSE_ATTR_SUBMOUNT where given; never DAX
}

export interface Timeouts { entrySec: number; attrSec: number }

/** fuse_entry_out at buf[off] (nodeid 0 = "no entry" in READDIRPLUS). */
export function writeEntryOut(buf: Buffer, off: number, nodeid: number, st: Stat, t: Timeouts, attrFlags = 0): void {
  buf.writeBigUInt64LE(BigInt(nodeid), off);
  buf.writeBigUInt64LE(0n, off + 8); // generation: nodeids are never reused with another inode while live
  buf.writeBigUInt64LE(BigInt(t.entrySec), off + 16);
  buf.writeBigUInt64LE(BigInt(t.attrSec), off + 24);
  buf.writeUInt32LE(0, off + 32);
  buf.writeUInt32LE(0, off + 36);
  writeAttr(buf, off + 40, st, attrFlags);
}

export function entryOut(nodeid: number, st: Stat, t: Timeouts, attrFlags = 0): Buffer {
  const b = Buffer.alloc(ENTRY_OUT_SIZE);
  writeEntryOut(b, 0, nodeid, st, t, attrFlags);
  return b;
}

export function attrOut(st: Stat, t: Timeouts): Buffer {
  const b = Buffer.alloc(ATTR_OUT_SIZE);
  b.writeBigUInt64LE(BigInt(t.attrSec), 0);
  writeAttr(b, 16, st);
  return b;
}

/** fuse_statfs_out from native fsFstatfs output. */
export function statfsOut(s: BigUint64Array): Buffer {
  const b = Buffer.alloc(STATFS_OUT_SIZE);
  for (let i = 0; i < 5; i++) b.writeBigUInt64LE(s[i], i * 8);
  b.writeUInt32LE(Number(s[5] & 0xffffffffn), 40); // bsize
  b.writeUInt32LE(Number(s[6] & 0xffffffffn), 44); // namelen
  b.writeUInt32LE(Number(s[7] & 0xffffffffn), 48); // frsize
  return b;
}

/** fuse_out_header. */
export function writeOutHeader(buf: Buffer, len: number, error: number, unique: bigint): void {
  buf.writeUInt32LE(len, 0);
  buf.writeInt32LE(error, 4);
  buf.writeBigUInt64LE(unique, 8);
}

/**
 * Copies header + payload into the writable buffers; returns bytes written
 * (the used length). Returns 0 when the guest gave too little room even for
 * the header — there is nothing meaningful to say then.
 */
export function writeReply(writable: ReadonlyArray<Buffer>, unique: bigint, error: number, payload: ReadonlyArray<Buffer>): number {
  let plen = 0;
  for (const p of payload) plen += p.length;
  const room = totalLength(writable);
  if (room < OUT_HEADER_SIZE) return 0;
  if (OUT_HEADER_SIZE + plen > room) {
    // The reply does not fit: tell the guest instead of truncating silently.
    return writeReply(writable, unique, -E.ERANGE, []);
  }
  const hdr = Buffer.alloc(OUT_HEADER_SIZE);
  writeOutHeader(hdr, OUT_HEADER_SIZE + plen, error, unique);
  let pos = 0;
  for (const src of [hdr, ...payload]) {
    copyInto(writable, pos, src);
    pos += src.length;
  }
  return pos;
}

/** Copies src into the concatenation of segs at offset `at`. */
export function copyInto(segs: ReadonlyArray<Buffer>, at: number, src: Buffer): void {
  let s = 0;
  for (const dst of slices(segs, at, src.length)) {
    src.copy(dst, 0, s, s + dst.length);
    s += dst.length;
  }
}

