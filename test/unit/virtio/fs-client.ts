/**
 * Driver-side FUSE client for tests: builds real FUSE request bytes
 * (include/uapi/linux/fuse.h layouts, written independently of
 * src/virtio/fs/wire.ts) the way the Linux virtio-fs driver lays them out,
 * hands them to a FuseServer as guest buffers (optionally scattered over
 * several small segments, as a chain of descriptors would), and decodes the
 * replies.
 */
import { FuseServer } from '../../../src/virtio/fs/server';

export interface Attr {
  ino: bigint; size: bigint; blocks: bigint;
  atime: bigint; mtime: bigint; ctime: bigint;
  atimensec: number; mtimensec: number; ctimensec: number;
  mode: number; nlink: number; uid: number; gid: number; rdev: number; blksize: number;
}
/** attrFlags: fuse_attr.flags (FUSE_ATTR_SUBMOUNT = 1). */
export interface EntryOut { nodeid: bigint; attr: Attr; attrFlags: number }
export interface Reply { len: number; error: number; unique: bigint; body: Buffer }

export function parseAttr(b: Buffer, o: number): Attr {
  return {
    ino: b.readBigUInt64LE(o), size: b.readBigUInt64LE(o + 8), blocks: b.readBigUInt64LE(o + 16),
    atime: b.readBigUInt64LE(o + 24), mtime: b.readBigUInt64LE(o + 32), ctime: b.readBigUInt64LE(o + 40),
    atimensec: b.readUInt32LE(o + 48), mtimensec: b.readUInt32LE(o + 52), ctimensec: b.readUInt32LE(o + 56),
    mode: b.readUInt32LE(o + 60), nlink: b.readUInt32LE(o + 64), uid: b.readUInt32LE(o + 68),
    gid: b.readUInt32LE(o + 72), rdev: b.readUInt32LE(o + 76), blksize: b.readUInt32LE(o + 80),
  };
}

export function parseEntry(b: Buffer, o = 0): EntryOut {
  return { nodeid: b.readBigUInt64LE(o), attr: parseAttr(b, o + 40), attrFlags: b.readUInt32LE(o + 40 + 84) };
}

export function cstr(s: string | Buffer): Buffer {
  return Buffer.concat([Buffer.isBuffer(s) ? s : Buffer.from(s), Buffer.alloc(1)]);
}

export function u32s(...v: number[]): Buffer {
  const b = Buffer.alloc(4 * v.length);
  v.forEach((x, i) => b.writeUInt32LE(x >>> 0, 4 * i));
  return b;
}
export function u64s(...v: Array<bigint | number>): Buffer {
  const b = Buffer.alloc(8 * v.length);
  v.forEach((x, i) => b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(x)), 8 * i));
  return b;
}

/** Splits a buffer into pieces of at most `n` bytes (a scattered chain). */
export function scatter(b: Buffer, n: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < b.length; i += n) out.push(b.subarray(i, Math.min(b.length, i + n)));
  if (out.length === 0) out.push(b);
  return out;
}

export interface CallOptions {
  uid?: number; gid?: number; pid?: number;
  /** Writable bytes offered for the reply (default 64 KiB + header). */
  outSize?: number;
  /** Split readable/writable buffers into pieces of this many bytes. */
  segment?: number;
  /** Override fuse_in_header.len (hostile tests). */
  len?: number;
}

export class FuseClient {
  private unique = 1n;
  uid = 0;
  gid = 0;

  constructor(readonly server: FuseServer, public segment = 0) {}

  async raw(opcode: number, nodeid: bigint | number, body: Buffer, o: CallOptions = {}): Promise<Reply> {
    const hdr = Buffer.alloc(40);
    const len = 40 + body.length;
    const unique = this.unique++;
    hdr.writeUInt32LE(o.len ?? len, 0);
    hdr.writeUInt32LE(opcode, 4);
    hdr.writeBigUInt64LE(unique, 8);
    hdr.writeBigUInt64LE(BigInt(nodeid), 16);
    hdr.writeUInt32LE(o.uid ?? this.uid, 24);
    hdr.writeUInt32LE(o.gid ?? this.gid, 28);
    hdr.writeUInt32LE(o.pid ?? 1, 32);
    const req = Buffer.concat([hdr, body]);
    const out = Buffer.alloc(o.outSize ?? 65536 + 16);
    const seg = o.segment ?? this.segment;
    const readable = seg > 0 ? scatter(req, seg) : [req];
    const writable = seg > 0 ? scatter(out, seg) : [out];
    const used = await this.server.handle(readable, writable);
    if (used === 0) return { len: 0, error: 0, unique, body: Buffer.alloc(0) };
    const rlen = out.readUInt32LE(0);
    if (rlen !== used) throw new Error(`reply header len ${rlen} != used ${used}`);
    return { len: used, error: out.readInt32LE(4), unique: out.readBigUInt64LE(8), body: out.subarray(16, used) };
  }

  /** Like raw() but throws on error replies; returns the payload. */
  async ok(opcode: number, nodeid: bigint | number, body: Buffer, o: CallOptions = {}): Promise<Buffer> {
    const r = await this.raw(opcode, nodeid, body, o);
    if (r.error !== 0) throw Object.assign(new Error(`opcode ${opcode} failed: errno ${-r.error}`), { errno: -r.error });
    return r.body;
  }

  /** Error number (positive) of a call, 0 on success. */
  async errno(opcode: number, nodeid: bigint | number, body: Buffer, o: CallOptions = {}): Promise<number> {
    return -(await this.raw(opcode, nodeid, body, o)).error;
  }

  async init(minor = 38, flags = 0x7fffffff): Promise<Buffer> {
    return this.ok(26, 0, Buffer.concat([u32s(7, minor, 128 * 1024, flags, 0), Buffer.alloc(44)]));
  }
  async lookup(parent: bigint | number, name: string | Buffer): Promise<EntryOut> {
    return parseEntry(await this.ok(1, parent, cstr(name)));
  }
  async getattr(node: bigint | number): Promise<Attr> {
    return parseAttr(await this.ok(3, node, Buffer.alloc(16)), 16);
  }
  async mkdir(parent: bigint | number, name: string, mode = 0o755, o: CallOptions = {}): Promise<EntryOut> {
    return parseEntry(await this.ok(9, parent, Buffer.concat([u32s(mode, 0o022), cstr(name)]), o));
  }
  async create(parent: bigint | number, name: string, mode = 0o644, flags = 2 /* O_RDWR */, o: CallOptions = {}): Promise<EntryOut & { fh: bigint }> {
    const b = await this.ok(35, parent, Buffer.concat([u32s(flags, mode, 0o022, 0), cstr(name)]), o);
    return { ...parseEntry(b), fh: b.readBigUInt64LE(128) };
  }
  async open(node: bigint | number, flags = 2): Promise<bigint> {
    return (await this.ok(14, node, u32s(flags, 0))).readBigUInt64LE(0);
  }
  async opendir(node: bigint | number): Promise<bigint> {
    return (await this.ok(27, node, u32s(0, 0))).readBigUInt64LE(0);
  }
  async write(fh: bigint, offset: number | bigint, data: Buffer, o: CallOptions = {}): Promise<number> {
    const body = Buffer.concat([u64s(fh, offset), u32s(data.length, 0), u64s(0), u32s(0, 0), data]);
    return (await this.ok(16, 0, body, o)).readUInt32LE(0);
  }
  async read(fh: bigint, offset: number | bigint, size: number, o: CallOptions = {}): Promise<Buffer> {
    const body = Buffer.concat([u64s(fh, offset), u32s(size, 0), u64s(0), u32s(0, 0)]);
    return this.ok(15, 0, body, { outSize: 16 + size, ...o });
  }
  async release(fh: bigint, dir = false): Promise<void> {
    await this.ok(dir ? 29 : 18, 0, Buffer.concat([u64s(fh), u32s(0, 0), u64s(0)]));
  }
  async setattr(node: bigint | number, f: {
    valid: number; fh?: bigint; size?: bigint; atime?: bigint; mtime?: bigint; atimensec?: number; mtimensec?: number;
    mode?: number; uid?: number; gid?: number;
  }): Promise<Attr> {
    const b = Buffer.alloc(88);
    b.writeUInt32LE(f.valid, 0);
    b.writeBigUInt64LE(f.fh ?? 0n, 8);
    b.writeBigUInt64LE(f.size ?? 0n, 16);
    b.writeBigUInt64LE(BigInt.asUintN(64, f.atime ?? 0n), 32);
    b.writeBigUInt64LE(BigInt.asUintN(64, f.mtime ?? 0n), 40);
    b.writeUInt32LE(f.atimensec ?? 0, 56);
    b.writeUInt32LE(f.mtimensec ?? 0, 60);
    b.writeUInt32LE(f.mode ?? 0, 68);
    b.writeUInt32LE(f.uid ?? 0, 76);
    b.writeUInt32LE(f.gid ?? 0, 80);
    return parseAttr(await this.ok(4, node, b), 16);
  }
  async readdir(fh: bigint, offset: bigint, size = 4096, plus = false): Promise<Array<{ ino: bigint; off: bigint; type: number; name: string; entry?: EntryOut }>> {
    const b = await this.ok(plus ? 44 : 28, 0, Buffer.concat([u64s(fh, offset), u32s(size, 0), u64s(0), u32s(0, 0)]));
    const out: Array<{ ino: bigint; off: bigint; type: number; name: string; entry?: EntryOut }> = [];
    for (let p = 0; p < b.length;) {
      const entry = plus ? parseEntry(b, p) : undefined;
      const d = plus ? p + 128 : p;
      const namelen = b.readUInt32LE(d + 16);
      out.push({ ino: b.readBigUInt64LE(d), off: b.readBigUInt64LE(d + 8), type: b.readUInt32LE(d + 20), name: b.subarray(d + 24, d + 24 + namelen).toString(), entry });
      p = d + ((24 + namelen + 7) & ~7);
    }
    return out;
  }
  /** All names of a directory via READDIR(PLUS) with small buffers (exercises offsets). */
  async list(node: bigint | number, plus = false, size = 512): Promise<string[]> {
    const fh = await this.opendir(node);
    const names: string[] = [];
    let off = 0n;
    for (;;) {
      const ents = await this.readdir(fh, off, size, plus);
      if (ents.length === 0) break;
      for (const e of ents) names.push(e.name);
      off = ents[ents.length - 1].off;
    }
    await this.release(fh, true);
    return names.sort();
  }
}
