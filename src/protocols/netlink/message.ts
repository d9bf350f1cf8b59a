/**
 * Netlink wire format (Linux uapi linux/netlink.h, linux/rtnetlink.h,
 * Documentation/userspace-api/netlink/intro.rst): a message is a 16-byte
 * nlmsghdr (len, type, flags, seq, pid; host byte order) followed by a
 * fixed family header and a run of attributes, each a 4-byte rtattr (len,
 * type) plus payload padded to 4 bytes. Attributes nest: the payload of a
 * nested attribute is itself a run of attributes.
 *
 * Used by the host (pod netns: links, addresses, routes, neighbours, tc) and
 * by the guest agent (interfaces, routes, ARP): shared here in protocols.
 * Every length read from the kernel is checked before use — a short or
 * overlong record is a NetlinkError, never an out-of-range read.
 */
import { KataError } from '../../common/errors';

export class NetlinkError extends KataError<'malformed' | 'kernel' | 'io' | 'invalid'> {
  /** errno from an NLMSG_ERROR answer (positive), for kind 'kernel'. */
  errno = 0;
}

export const NLMSG_HDRLEN = 16;
export const NLA_HDRLEN = 4;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;

export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP = 0x300;
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;

/** NLMSGERR_ATTR_MSG in an extended ack: the kernel's error text. */
const NLMSGERR_ATTR_MSG = 1;
const NLM_F_ACK_TLVS = 0x200;
const NLM_F_CAPPED = 0x100;

export const align4 = (n: number): number => (n + 3) & ~3;

/** One attribute: its type (NLA_F_NESTED / NLA_F_NET_BYTEORDER bits masked off) and payload. */
export interface Attr {
  type: number;
  data: Buffer;
}

export interface NetlinkMessage {
  type: number;
  flags: number;
  seq: number;
  pid: number;
  /** Everything after the nlmsghdr (family header + attributes). */
  payload: Buffer;
}

/** Attribute encoders: an attribute is built from a payload Buffer. */
export const attr = {
  raw(type: number, data: Buffer): Buffer {
    const len = NLA_HDRLEN + data.length;
    const b = Buffer.alloc(align4(len));
    b.writeUInt16LE(len, 0);
    b.writeUInt16LE(type, 2);
    data.copy(b, NLA_HDRLEN);
    return b;
  },
  u8(type: number, v: number): Buffer {
    return attr.raw(type, Buffer.from([v & 0xff]));
  },
  u16(type: number, v: number): Buffer {
    const d = Buffer.alloc(2);
    d.writeUInt16LE(v);
    return attr.raw(type, d);
  },
  u32(type: number, v: number): Buffer {
    const d = Buffer.alloc(4);
    d.writeUInt32LE(v >>> 0);
    return attr.raw(type, d);
  },
  /** NUL-terminated string, as the kernel's NLA_NUL_STRING / NLA_STRING expect. */
  str(type: number, s: string): Buffer {
    return attr.raw(type, Buffer.concat([Buffer.from(s, 'utf8'), Buffer.alloc(1)]));
  },
  nested(type: number, children: Buffer[]): Buffer {
    return attr.raw(type, Buffer.concat(children));
  },
};

/** Parses a run of attributes; throws on a record that overruns the buffer. */
export function parseAttrs(buf: Buffer, offset = 0, end = buf.length): Attr[] {
  const out: Attr[] = [];
  let p = offset;
  while (p + NLA_HDRLEN <= end) {
    const len = buf.readUInt16LE(p);
    const type = buf.readUInt16LE(p + 2) & 0x3fff;
    if (len < NLA_HDRLEN || p + len > end) throw new NetlinkError('malformed', `netlink attribute ${type} at ${p}: length ${len} overruns ${end}`);
    out.push({ type, data: buf.subarray(p + NLA_HDRLEN, p + len) });
    p += align4(len);
  }
  return out;
}

/** Attributes by type (the last one wins, as the kernel's nla_parse does). */
export function attrMap(attrs: Attr[]): Map<number, Buffer> {
  const m = new Map<number, Buffer>();
  for (const a of attrs) m.set(a.type, a.data);
  return m;
}

export const read = {
  str(b: Buffer | undefined): string {
    if (!b) return '';
    const z = b.indexOf(0);
    return b.subarray(0, z < 0 ? b.length : z).toString('utf8');
  },
  u32(b: Buffer | undefined): number | undefined {
    return b && b.length >= 4 ? b.readUInt32LE(0) : undefined;
  },
  u8(b: Buffer | undefined): number | undefined {
    return b && b.length >= 1 ? b[0] : undefined;
  },
};

/** Serialises one request: header + family header + attributes. */
export function encodeMessage(type: number, flags: number, seq: number, header: Buffer, attrs: Buffer[] = []): Buffer {
  const body = Buffer.concat([header, Buffer.alloc(align4(header.length) - header.length), ...attrs]);
  const b = Buffer.alloc(NLMSG_HDRLEN + body.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt16LE(type, 4);
  b.writeUInt16LE(flags, 6);
  b.writeUInt32LE(seq >>> 0, 8);
  b.writeUInt32LE(0, 12);
  body.copy(b, NLMSG_HDRLEN);
  return b;
}

/** Splits one datagram into messages; throws on a header that lies about its length. */
export function decodeMessages(buf: Buffer): NetlinkMessage[] {
  const out: NetlinkMessage[] = [];
  let p = 0;
  while (p + NLMSG_HDRLEN <= buf.length) {
    const len = buf.readUInt32LE(p);
    if (len < NLMSG_HDRLEN || p + len > buf.length) throw new NetlinkError('malformed', `netlink message at ${p}: length ${len} overruns the ${buf.length}-byte datagram`);
    out.push({
      type: buf.readUInt16LE(p + 4), flags: buf.readUInt16LE(p + 6), seq: buf.readUInt32LE(p + 8), pid: buf.readUInt32LE(p + 12),
      payload: buf.subarray(p + NLMSG_HDRLEN, p + len),
    });
    p += align4(len);
  }
  if (p < buf.length && buf.length - p >= NLMSG_HDRLEN) throw new NetlinkError('malformed', 'trailing bytes after the last netlink message');
  return out;
}

/**
 * An NLMSG_ERROR payload: int error (0 = ack, else -errno), the offending
 * request's header (and body unless capped), then extended-ack attributes.
 */
export function decodeError(m: NetlinkMessage): { errno: number; message: string } {
  if (m.payload.length < 4 + NLMSG_HDRLEN) throw new NetlinkError('malformed', `NLMSG_ERROR of ${m.payload.length} bytes`);
  const errno = -m.payload.readInt32LE(0);
  let message = '';
  if (m.flags & NLM_F_ACK_TLVS) {
    const origLen = m.payload.readUInt32LE(4);
    const skip = m.flags & NLM_F_CAPPED ? NLMSG_HDRLEN : origLen;
    const at = 4 + align4(skip);
    if (at <= m.payload.length) {
      try {
        message = read.str(attrMap(parseAttrs(m.payload, at)).get(NLMSGERR_ATTR_MSG));
      } catch {
        /* no usable extended ack: the errno alone */
      }
    }
  }
  return { errno, message };
}
