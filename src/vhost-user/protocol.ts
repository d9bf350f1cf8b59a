/**
 * vhost-user wire format, backend side, as QEMU 7.2 speaks it
 * (docs/interop/vhost-user.rst in QEMU 7.2: "Message Specification",
 * "Front-end message types", "Protocol features").
 *
 * A message is a 12-byte header — u32 request, u32 flags, u32 size — then
 * `size` bytes of payload, little-endian, on an AF_UNIX stream socket; file
 * descriptors ride along as SCM_RIGHTS ancillary data. This module only
 * encodes and decodes; the state machine lives in backend.ts.
 *
 * Every payload comes from another process and is treated as hostile
 * (ARCHITECTURE.md decision 2): decoders check sizes before reading.
 */
import { KataError } from '../common/errors';

export type VhostUserErrorKind = 'protocol' | 'memory' | 'vring' | 'io' | 'config';
export class VhostUserError extends KataError<VhostUserErrorKind> {}

export const HEADER_SIZE = 12;
/** Largest payload we accept; QEMU's largest is SET_MEM_TABLE (8 + 8×32) or GET_CONFIG (12 + 256). */
export const MAX_PAYLOAD = 4096;

/** Header flags (vhost-user.rst "Header"). */
export const VHOST_USER_VERSION = 0x1;
export const VHOST_USER_VERSION_MASK = 0x3;
export const VHOST_USER_REPLY_MASK = 0x4;
export const VHOST_USER_NEED_REPLY_MASK = 0x8;

/** Front-end message types (the ones QEMU 7.2 sends to a vsock/blk/fs backend). */
export const enum Req {
  GET_FEATURES = 1,
  SET_FEATURES = 2,
  SET_OWNER = 3,
  RESET_OWNER = 4,
  SET_MEM_TABLE = 5,
  SET_LOG_BASE = 6,
  SET_LOG_FD = 7,
  SET_VRING_NUM = 8,
  SET_VRING_ADDR = 9,
  SET_VRING_BASE = 10,
  GET_VRING_BASE = 11,
  SET_VRING_KICK = 12,
  SET_VRING_CALL = 13,
  SET_VRING_ERR = 14,
  GET_PROTOCOL_FEATURES = 15,
  SET_PROTOCOL_FEATURES = 16,
  GET_QUEUE_NUM = 17,
  SET_VRING_ENABLE = 18,
  SEND_RARP = 19,
  NET_SET_MTU = 20,
  SET_BACKEND_REQ_FD = 21,
  IOTLB_MSG = 22,
  SET_VRING_ENDIAN = 23,
  GET_CONFIG = 24,
  SET_CONFIG = 25,
  GET_INFLIGHT_FD = 31,
  SET_INFLIGHT_FD = 32,
  RESET_DEVICE = 34,
  GET_MAX_MEM_SLOTS = 36,
  ADD_MEM_REG = 37,
  REM_MEM_REG = 38,
  SET_STATUS = 39,
  GET_STATUS = 40,
}

/**
 * Back-end message types: requests the backend sends on the back-end channel
 * (vhost-user.rst "Back-end message types"; QEMU 7.2: VhostUserSlaveRequest).
 * CONFIG_CHANGE_MSG has no payload: the front end re-reads the config space
 * (GET_CONFIG on the main channel) and tells the guest it changed.
 */
export const enum BackendReq {
  IOTLB_MSG = 1,
  CONFIG_CHANGE_MSG = 2,
  VRING_HOST_NOTIFIER_MSG = 3,
}

/** Message names for logs. */
export const REQ_NAMES: Record<number, string> = {
  1: 'GET_FEATURES', 2: 'SET_FEATURES', 3: 'SET_OWNER', 4: 'RESET_OWNER', 5: 'SET_MEM_TABLE',
  6: 'SET_LOG_BASE', 7: 'SET_LOG_FD', 8: 'SET_VRING_NUM', 9: 'SET_VRING_ADDR', 10: 'SET_VRING_BASE',
  11: 'GET_VRING_BASE', 12: 'SET_VRING_KICK', 13: 'SET_VRING_CALL', 14: 'SET_VRING_ERR',
  15: 'GET_PROTOCOL_FEATURES', 16: 'SET_PROTOCOL_FEATURES', 17: 'GET_QUEUE_NUM', 18: 'SET_VRING_ENABLE',
  21: 'SET_BACKEND_REQ_FD', 24: 'GET_CONFIG', 25: 'SET_CONFIG', 34: 'RESET_DEVICE', 36: 'GET_MAX_MEM_SLOTS',
  39: 'SET_STATUS', 40: 'GET_STATUS',
};

/** GET_FEATURES bit 30: the backend speaks protocol features. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 1n << 30n;

/** Protocol feature bits (vhost-user.rst "Protocol features"). */
export const PROTOCOL_F_MQ = 1n << 0n;
export const PROTOCOL_F_LOG_SHMFD = 1n << 1n;
export const PROTOCOL_F_REPLY_ACK = 1n << 3n;
/**
 * BACKEND_REQ (QEMU 7.2's name: SLAVE_REQ): the front end opens a second
 * channel (SET_BACKEND_REQ_FD) on which the backend sends requests.
 */
export const PROTOCOL_F_BACKEND_REQ = 1n << 5n;
export const PROTOCOL_F_CONFIG = 1n << 9n;
export const PROTOCOL_F_INFLIGHT_SHMFD = 1n << 12n;
export const PROTOCOL_F_RESET_DEVICE = 1n << 13n;

/** SET_VRING_KICK/CALL/ERR payload: bits 0–7 ring index, bit 8 "no fd" (polling). */
export const VRING_IDX_MASK = 0xffn;
export const VRING_NOFD_MASK = 0x100n;

/** At most this many regions in SET_MEM_TABLE (QEMU's VHOST_MEMORY_BASELINE_NREGIONS). */
export const MAX_MEM_REGIONS = 8;

export interface Header {
  request: number;
  flags: number;
  size: number;
}

export function decodeHeader(b: Buffer): Header {
  return { request: b.readUInt32LE(0), flags: b.readUInt32LE(4), size: b.readUInt32LE(8) };
}

export function encodeMessage(request: number, flags: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.alloc(HEADER_SIZE + payload.length);
  out.writeUInt32LE(request, 0);
  out.writeUInt32LE(flags, 4);
  out.writeUInt32LE(payload.length, 8);
  payload.copy(out, HEADER_SIZE);
  return out;
}

function need(p: Buffer, n: number, what: string): void {
  if (p.length < n) throw new VhostUserError('protocol', `${what}: payload is ${p.length} bytes, need ${n}`);
}

export function u64(p: Buffer, what: string): bigint {
  need(p, 8, what);
  return p.readBigUInt64LE(0);
}

export function encodeU64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, v));
  return b;
}

/** struct vhost_vring_state { unsigned int index; unsigned int num; } */
export interface VringState { index: number; num: number }
export function decodeVringState(p: Buffer, what: string): VringState {
  need(p, 8, what);
  return { index: p.readUInt32LE(0), num: p.readUInt32LE(4) };
}
export function encodeVringState(s: VringState): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(s.index >>> 0, 0);
  b.writeUInt32LE(s.num >>> 0, 4);
  return b;
}

/** struct vhost_vring_addr: user (front-end virtual) addresses of the three areas. */
export interface VringAddr {
  index: number;
  flags: number;
  descUser: bigint;
  usedUser: bigint;
  availUser: bigint;
  logGuest: bigint;
}
export function decodeVringAddr(p: Buffer): VringAddr {
  need(p, 40, 'SET_VRING_ADDR');
  return {
    index: p.readUInt32LE(0),
    flags: p.readUInt32LE(4),
    descUser: p.readBigUInt64LE(8),
    usedUser: p.readBigUInt64LE(16),
    availUser: p.readBigUInt64LE(24),
    logGuest: p.readBigUInt64LE(32),
  };
}

/** VhostUserMemoryRegion: guest-physical range, front-end address, offset in the fd. */
export interface MemRegion {
  gpa: bigint;
  size: bigint;
  uva: bigint;
  mmapOffset: bigint;
}
/** VhostUserMemory: u32 nregions, u32 padding, regions[nregions]. */
export function decodeMemTable(p: Buffer): MemRegion[] {
  need(p, 8, 'SET_MEM_TABLE');
  const n = p.readUInt32LE(0);
  if (n > MAX_MEM_REGIONS) throw new VhostUserError('memory', `SET_MEM_TABLE: ${n} regions, at most ${MAX_MEM_REGIONS}`);
  need(p, 8 + 32 * n, 'SET_MEM_TABLE');
  const out: MemRegion[] = [];
  for (let i = 0; i < n; i++) {
    const o = 8 + 32 * i;
    out.push({ gpa: p.readBigUInt64LE(o), size: p.readBigUInt64LE(o + 8), uva: p.readBigUInt64LE(o + 16), mmapOffset: p.readBigUInt64LE(o + 24) });
  }
  return out;
}

/** VhostUserConfig: u32 offset, u32 size, u32 flags, u8 payload[size]. */
export interface ConfigMsg { offset: number; size: number; flags: number; data: Buffer }
export const MAX_CONFIG_SIZE = 256;
export function decodeConfig(p: Buffer, what: string): ConfigMsg {
  need(p, 12, what);
  const offset = p.readUInt32LE(0), size = p.readUInt32LE(4), flags = p.readUInt32LE(8);
  if (size > MAX_CONFIG_SIZE) throw new VhostUserError('config', `${what}: config size ${size} > ${MAX_CONFIG_SIZE}`);
  need(p, 12 + size, what);
  return { offset, size, flags, data: p.subarray(12, 12 + size) };
}
export function encodeConfig(offset: number, data: Uint8Array, flags = 0): Buffer {
  const b = Buffer.alloc(12 + data.length);
  b.writeUInt32LE(offset >>> 0, 0);
  b.writeUInt32LE(data.length, 4);
  b.writeUInt32LE(flags >>> 0, 8);
  b.set(data, 12);
  return b;
}

/**
 * Decodes a REPLY_ACK answer the front end sent on the back-end channel for
 * `request` (a 12-byte header with REPLY set, then a u64: 0 success, else
 * failure). Anything else is a protocol error naming what was wrong.
 */
export function decodeAck(msg: Buffer, request: number): bigint {
  if (msg.length < HEADER_SIZE) throw new VhostUserError('protocol', `reply to back-end request ${request}: ${msg.length}-byte header, need ${HEADER_SIZE}`);
  const h = decodeHeader(msg);
  if ((h.flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION) throw new VhostUserError('protocol', `reply to back-end request ${request}: bad version in flags 0x${h.flags.toString(16)}`);
  if (!(h.flags & VHOST_USER_REPLY_MASK)) throw new VhostUserError('protocol', `reply to back-end request ${request}: flags 0x${h.flags.toString(16)} lack REPLY`);
  if (h.request !== request) throw new VhostUserError('protocol', `reply to back-end request ${request} names request ${h.request}`);
  if (h.size !== 8) throw new VhostUserError('protocol', `reply to back-end request ${request}: payload size ${h.size}, an ack is 8`);
  return u64(msg.subarray(HEADER_SIZE), `reply to back-end request ${request}`);
}
