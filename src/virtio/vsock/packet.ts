/**
 * virtio-vsock constants, errors and packet (de)serialisation over a popped
 * chain's iovecs (virtio 1.2 §5.10.6 "Device Operation").
 *
 * struct virtio_vsock_hdr (§5.10.6), 44 bytes, little-endian:
 *   le64 src_cid, le64 dst_cid, le32 src_port, le32 dst_port, le32 len,
 *   le16 type, le16 op, le32 flags, le32 buf_alloc, le32 fwd_cnt
 * The header and payload may be split over any number of descriptors (Linux
 * 6.1 puts the header and a 4 KiB payload buffer in separate descriptors),
 * so reads and writes scatter/gather over the chain's iovecs.
 */
import { KataError } from '../../common/errors';

export type VsockErrorKind = 'config' | 'malformed' | 'io';
export class VsockError extends KataError<VsockErrorKind> {}

export const HDR_SIZE = 44;
/** §5.10.4: the host's well-known CID. */
export const VSOCK_HOST_CID = 2n;
/** §5.10.6 type */
export const VIRTIO_VSOCK_TYPE_STREAM = 1;
/** §5.10.6 op */
export const OP_INVALID = 0;
export const OP_REQUEST = 1;
export const OP_RESPONSE = 2;
export const OP_RST = 3;
export const OP_SHUTDOWN = 4;
export const OP_RW = 5;
export const OP_CREDIT_UPDATE = 6;
export const OP_CREDIT_REQUEST = 7;
/** §5.10.6.4 shutdown flags */
export const SHUTDOWN_RCV = 1;
export const SHUTDOWN_SEND = 2;
/** Queue indices (§5.10.2). */
export const RX_Q = 0;
export const TX_Q = 1;
export const EVENT_Q = 2;

export const OP_NAMES = ['INVALID', 'REQUEST', 'RESPONSE', 'RST', 'SHUTDOWN', 'RW', 'CREDIT_UPDATE', 'CREDIT_REQUEST'];

export interface VsockHdr {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

export function decodeHdr(b: Uint8Array): VsockHdr {
  const v = new DataView(b.buffer, b.byteOffset, HDR_SIZE);
  return {
    srcCid: v.getBigUint64(0, true),
    dstCid: v.getBigUint64(8, true),
    srcPort: v.getUint32(16, true),
    dstPort: v.getUint32(20, true),
    len: v.getUint32(24, true),
    type: v.getUint16(28, true),
    op: v.getUint16(30, true),
    flags: v.getUint32(32, true),
    bufAlloc: v.getUint32(36, true),
    fwdCnt: v.getUint32(40, true),
  };
}

export function encodeHdr(h: VsockHdr, out: Uint8Array = new Uint8Array(HDR_SIZE)): Uint8Array {
  const v = new DataView(out.buffer, out.byteOffset, HDR_SIZE);
  v.setBigUint64(0, BigInt.asUintN(64, h.srcCid), true);
  v.setBigUint64(8, BigInt.asUintN(64, h.dstCid), true);
  v.setUint32(16, h.srcPort >>> 0, true);
  v.setUint32(20, h.dstPort >>> 0, true);
  v.setUint32(24, h.len >>> 0, true);
  v.setUint16(28, h.type, true);
  v.setUint16(30, h.op, true);
  v.setUint32(32, h.flags >>> 0, true);
  v.setUint32(36, h.bufAlloc >>> 0, true);
  v.setUint32(40, h.fwdCnt >>> 0, true);
  return out;
}

/** An iovec list: [memory offset, length] pairs inside the hot Memory. */
export type Iovs = Array<[number, number]>;

/** Copies `len` bytes starting `skip` bytes into the iovecs out of `mem`. */
export function gather(mem: Uint8Array, iovs: Iovs, skip: number, len: number, out: Uint8Array = new Uint8Array(len)): Uint8Array {
  let o = 0;
  for (const [off, l] of iovs) {
    if (o >= len) break;
    if (skip >= l) { skip -= l; continue; }
    const n = Math.min(l - skip, len - o);
    out.set(mem.subarray(off + skip, off + skip + n), o);
    o += n;
    skip = 0;
  }
  return out;
}

/** Copies `src` into the iovecs starting `skip` bytes in; returns bytes written. */
export function scatter(mem: Uint8Array, iovs: Iovs, skip: number, src: Uint8Array): number {
  let o = 0;
  for (const [off, l] of iovs) {
    if (o >= src.length) break;
    if (skip >= l) { skip -= l; continue; }
    const n = Math.min(l - skip, src.length - o);
    mem.set(src.subarray(o, o + n), off + skip);
    o += n;
    skip = 0;
  }
  return o;
}
