/**
 * FUSE requests (src/virtio/fs/wire.ts parseRequest + FuseServer's
 * per-opcode argument decoding and reply encoding) as a virtio-fs chain
 * delivers them: readable buffers scattered at hostile split points, a
 * writable area of hostile size and split.
 *
 * The filesystem behind the server is an in-memory stand-in (StubFs below)
 * that still applies the real name check (passthrough.ts checkName) and the
 * real handle table: a fuzzer must not mknod block devices or fallocate
 * terabytes on this host, and the parser, not the host filesystem, is what
 * is under test (fs-confinement.test.ts covers the real one).
 *
 * Input: a case is INIT (valid, ours) then up to 8 requests from the input,
 * each framed as [u8 readable splits][u16 writable room][u8 writable
 * splits][u16 length][bytes]. Oracle: handle() never rejects; no request
 * ends in the server's "any other exception is a bug" path (an exception
 * other than FsError while handling it, answered EIO); the used length fits the writable buffers and
 * equals fuse_out_header.len; the reply's unique matches the request's;
 * the error is 0 or a negative errno; bytes outside the writable buffers
 * (readable buffers, guard gaps) are unchanged.
 */
import { E, FsError, IN_HEADER_SIZE, Op, OUT_HEADER_SIZE, S_IFDIR, S_IFLNK, S_IFREG } from '../../../src/virtio/fs/constants';
import { HandleTable, type Handle, type Inode } from '../../../src/virtio/fs/inodes';
import { checkName, type Caller, type Entry, type PassthroughFs, type SetattrArgs } from '../../../src/virtio/fs/passthrough';
import { FuseServer } from '../../../src/virtio/fs/server';
import { newStat, ST_INO, ST_MODE, ST_NLINK, ST_SIZE, type Stat } from '../../../src/virtio/fs/wire';
import { invariant, type Target } from '../engine';

const errno = (e: number, m: string) => new FsError('errno', e, m);

/** An in-memory filesystem with the PassthroughFs surface the server uses. */
class StubFs {
  readonly handles = new HandleTable(() => { /* no fds */ });
  private readonly inodes = new Map<number, Inode & { size: number; children: Map<string, number> }>();
  private next = 2;
  readonly root: Inode;
  constructor() {
    this.root = this.add(S_IFDIR);
    const f = this.add(S_IFREG, 5000);
    this.inodes.get(1)!.children.set('file', f.id);
    const d = this.add(S_IFDIR);
    this.inodes.get(1)!.children.set('dir', d.id);
    const l = this.add(S_IFLNK, 6);
    this.inodes.get(1)!.children.set('link', l.id);
  }
  private add(fmt: number, size = 0): Inode & { size: number; children: Map<string, number> } {
    const id = this.inodes.size === 0 ? 1 : this.next++;
    const ino = { id, fd: -1, key: String(id), fmt, nlookup: 1, size, children: new Map<string, number>() };
    this.inodes.set(id, ino);
    return ino;
  }
  private get(nodeid: bigint | number): Inode & { size: number; children: Map<string, number> } {
    const n = Number(nodeid);
    const i = typeof nodeid === 'bigint' && nodeid > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : this.inodes.get(n);
    if (!i) throw errno(E.ENOENT, `no inode ${nodeid}`);
    return i;
  }
  private stat(i: Inode & { size: number }): Stat {
    const st = newStat();
    st[ST_INO] = BigInt(i.id);
    st[ST_MODE] = BigInt(i.fmt | 0o755);
    st[ST_NLINK] = 1n;
    st[ST_SIZE] = BigInt(i.size);
    return st;
  }
  private dir(parentId: bigint | number, name: Buffer) {
    checkName(name);
    const p = this.get(parentId);
    if (p.fmt !== S_IFDIR) throw errno(E.ENOTDIR, 'not a directory');
    return p;
  }
  private entry(i: Inode & { size: number }): Entry { return { inode: i, st: this.stat(i) }; }
  private create0(parentId: bigint, name: Buffer, fmt: number): Entry {
    const p = this.dir(parentId, name);
    const k = name.toString('latin1');
    if (p.children.has(k)) throw errno(E.EEXIST, 'exists');
    if (this.inodes.size > 256) throw errno(E.ENOSPC ?? 28, 'full');
    const i = this.add(fmt);
    p.children.set(k, i.id);
    return this.entry(i);
  }
  lookup(parentId: bigint | number, name: Buffer): Entry {
    const p = this.dir(parentId, name);
    const id = p.children.get(name.toString('latin1'));
    if (id === undefined) throw errno(E.ENOENT, 'no such name');
    return this.entry(this.get(id));
  }
  lookupForReaddir(dir: Inode, name: Buffer): Entry | undefined { try { return this.lookup(dir.id, name); } catch { return undefined; } }
  forget(nodeid: bigint, n: bigint): void { void nodeid; void n; }
  getattr(nodeid: bigint): Stat { return this.stat(this.get(nodeid)); }
  setattr(nodeid: bigint, a: SetattrArgs): Stat {
    const i = this.get(nodeid);
    if (a.fh !== undefined) this.handles.get(a.fh, false);
    if (a.valid & 8) { if (a.size > 1n << 40n) throw errno(E.EFBIG ?? 27, 'too big'); i.size = Number(a.size); }
    return this.stat(i);
  }
  readlink(nodeid: bigint): Buffer { const i = this.get(nodeid); if (i.fmt !== S_IFLNK) throw errno(E.EINVAL, 'not a link'); return Buffer.from('target'); }
  mkdir(p: bigint, name: Buffer, _mode: number, _c: Caller): Entry { return this.create0(p, name, S_IFDIR); }
  mknod(p: bigint, name: Buffer, mode: number, _rdev: number, _c: Caller): Entry { return this.create0(p, name, (mode & 0o170000) || S_IFREG); }
  symlink(p: bigint, name: Buffer, target: Buffer, _c: Caller): Entry {
    if (target.length === 0 || target.includes(0)) throw errno(E.EINVAL, 'symlink target');
    return this.create0(p, name, S_IFLNK);
  }
  unlink(p: bigint, name: Buffer): void { const d = this.dir(p, name); if (!d.children.delete(name.toString('latin1'))) throw errno(E.ENOENT, 'no such name'); }
  rmdir(p: bigint, name: Buffer): void { this.unlink(p, name); }
  rename(p: bigint, name: Buffer, np: bigint, newName: Buffer, flags: number): void {
    if (flags & ~7) throw errno(E.EINVAL, 'rename flags');
    const a = this.dir(p, name), b = this.dir(np, newName);
    const id = a.children.get(name.toString('latin1'));
    if (id === undefined) throw errno(E.ENOENT, 'no such name');
    a.children.delete(name.toString('latin1'));
    b.children.set(newName.toString('latin1'), id);
  }
  link(nodeid: bigint, np: bigint, newName: Buffer): Entry {
    const i = this.get(nodeid);
    if (i.fmt === S_IFDIR) throw errno(E.EPERM, 'hard link to a directory');
    const d = this.dir(np, newName);
    d.children.set(newName.toString('latin1'), i.id);
    return this.entry(i);
  }
  open(nodeid: bigint, _flags: number): Handle { return this.handles.add(-1, this.get(nodeid), false); }
  opendir(nodeid: bigint): Handle { const i = this.get(nodeid); if (i.fmt !== S_IFDIR) throw errno(E.ENOTDIR, 'not a dir'); return this.handles.add(-1, i, true); }
  create(p: bigint, name: Buffer, _mode: number, _flags: number, _c: Caller): { entry: Entry; handle: Handle } {
    const entry = this.create0(p, name, S_IFREG);
    return { entry, handle: this.handles.add(-1, entry.inode, false) };
  }
  async read(fh: bigint, off: bigint, dst: Buffer[]): Promise<number> {
    const h = this.handles.get(fh, false);
    const size = (h.inode as Inode & { size: number }).size;
    if (off >= BigInt(size)) return 0;
    let n = 0;
    for (const d of dst) { const k = Math.min(d.length, size - Number(off) - n); if (k <= 0) break; d.fill(0x61, 0, k); n += k; }
    return n;
  }
  async write(fh: bigint, off: bigint, src: Buffer[]): Promise<number> {
    const h = this.handles.get(fh, false);
    let n = 0;
    for (const s of src) n += s.length;
    const i = h.inode as Inode & { size: number };
    if (off + BigInt(n) > 1n << 40n) throw errno(E.EFBIG ?? 27, 'too big');
    i.size = Math.max(i.size, Number(off) + n);
    return n;
  }
  statfs(nodeid: bigint): BigUint64Array { this.get(nodeid); return new BigUint64Array(8).fill(4096n); }
  release(fh: bigint): void { this.handles.release(fh, false); }
  releasedir(fh: bigint): void { this.handles.release(fh, true); }
  flush(fh: bigint): void { this.handles.get(fh, false); }
  fsync(fh: bigint, _d: boolean, dir: boolean): void { this.handles.get(fh, dir); }
  getdents(h: Handle, offset: bigint, out: Buffer): number {
    // linux_dirent64 records for the directory's children, from `offset`.
    const names = ['.', '..', ...(h.inode as Inode & { children: Map<string, number> }).children.keys()];
    let p = 0;
    for (let k = Number(offset > 1000n ? 1000n : offset); k < names.length; k++) {
      const nm = Buffer.from(names[k]!, 'latin1');
      const reclen = (19 + nm.length + 1 + 7) & ~7;
      if (p + reclen > out.length) break;
      out.writeBigUInt64LE(BigInt(k + 100), p);
      out.writeBigUInt64LE(BigInt(k + 1), p + 8);
      out.writeUInt16LE(reclen, p + 16);
      out[p + 18] = 8;
      nm.copy(out, p + 19);
      out[p + 19 + nm.length] = 0;
      p += reclen;
    }
    return p;
  }
  access(nodeid: bigint, _mask: number, _c: Caller): void { this.get(nodeid); }
  fallocate(fh: bigint, _mode: number, _off: bigint, _len: bigint): void { this.handles.get(fh, false); }
  lseek(fh: bigint, off: bigint, whence: number): number {
    this.handles.get(fh, false);
    if (whence > 4) throw errno(E.EINVAL, 'whence');
    if (off > BigInt(Number.MAX_SAFE_INTEGER)) throw errno(E.EINVAL ?? 22, 'offset');
    return Number(off);
  }
  getxattr(nodeid: bigint, name: Buffer, size: number): number | Buffer {
    this.get(nodeid);
    if (name.length === 0 || name.length > 255) throw errno(E.ERANGE, 'name');
    if (size === 0) return 5;
    if (size < 5) throw errno(E.ERANGE, 'size');
    return Buffer.from('value');
  }
  setxattr(nodeid: bigint, name: Buffer, _v: Buffer, _f: number): void { this.get(nodeid); if (name.length === 0) throw errno(E.EINVAL, 'name'); }
  listxattr(nodeid: bigint, size: number): number | Buffer { this.get(nodeid); return size === 0 ? 8 : size < 8 ? Buffer.alloc(0) : Buffer.from('user.k\0\0'); }
  removexattr(nodeid: bigint, name: Buffer): void { this.get(nodeid); if (name.length === 0) throw errno(E.EINVAL, 'name'); }
  destroy(): void { /* the next INIT starts over */ }
}

// ───────────────────────────── requests ─────────────────────────────

function req(opcode: number, nodeid: bigint, body: Buffer, unique = 7n, lenDelta = 0): Buffer {
  const h = Buffer.alloc(IN_HEADER_SIZE);
  h.writeUInt32LE(IN_HEADER_SIZE + body.length + lenDelta, 0);
  h.writeUInt32LE(opcode, 4);
  h.writeBigUInt64LE(unique, 8);
  h.writeBigUInt64LE(nodeid, 16);
  h.writeUInt32LE(0, 24);
  h.writeUInt32LE(0, 28);
  h.writeUInt32LE(1234, 32);
  return Buffer.concat([h, body]);
}
const cstr = (s: string) => Buffer.from(`${s}\0`);
const u32s = (...v: number[]) => { const b = Buffer.alloc(4 * v.length); v.forEach((x, i) => b.writeUInt32LE(x >>> 0, 4 * i)); return b; };
const u64s = (...v: bigint[]) => { const b = Buffer.alloc(8 * v.length); v.forEach((x, i) => b.writeBigUInt64LE(x, 8 * i)); return b; };
function initBody(minor = 38): Buffer { return u32s(7, minor, 131072, 0x3fffffff); }
function readIn(fh: bigint, off: bigint, size: number): Buffer { return Buffer.concat([u64s(fh, off), u32s(size, 0), u64s(0n), u32s(0, 0)]); }

/** One framed request: splits, writable room, writable splits, length, bytes. */
function frame(bytes: Buffer, rSplits = 1, room = 4096, wSplits = 1): Buffer {
  const h = Buffer.alloc(6);
  h[0] = rSplits;
  h.writeUInt16LE(room, 1);
  h[3] = wSplits;
  h.writeUInt16LE(bytes.length, 4);
  return Buffer.concat([h, bytes]);
}

const INIT = req(Op.INIT, 0n, initBody(), 1n);

function fuseSeeds(): Buffer[] {
  const seeds: Buffer[][] = [
    [req(Op.LOOKUP, 1n, cstr('file')), req(Op.GETATTR, 2n, Buffer.concat([u32s(0, 0), u64s(0n)])), req(Op.OPEN, 2n, u32s(2, 0)), req(Op.READ, 2n, readIn(1n, 0n, 4096)), req(Op.RELEASE, 2n, Buffer.concat([u64s(1n), u32s(0, 0), u64s(0n)]))],
    [req(Op.CREATE, 1n, Buffer.concat([u32s(0o101, 0o644, 0o22, 0), cstr('new')])), req(Op.WRITE, 5n, Buffer.concat([readIn(1n, 10n, 11), Buffer.from('hello world')])), req(Op.FLUSH, 5n, Buffer.concat([u64s(1n), u32s(0, 0), u64s(0n)])),
      req(Op.SETATTR, 5n, Buffer.concat([u32s(8 | 64, 0), u64s(1n, 100n, 0n, 0n, 0n, 0n), u32s(0, 0, 0, 0o644, 0, 0, 0, 0)])), req(Op.FSYNC, 5n, Buffer.concat([u64s(1n), u32s(1, 0)]))],
    [req(Op.MKDIR, 1n, Buffer.concat([u32s(0o755, 0o22), cstr('d2')])), req(Op.SYMLINK, 1n, Buffer.concat([cstr('sl'), cstr('/etc/passwd')])), req(Op.MKNOD, 1n, Buffer.concat([u32s(0o10644, 0, 0o22, 0), cstr('fifo')])),
      req(Op.RENAME2, 1n, Buffer.concat([u64s(1n), u32s(1, 0), cstr('sl'), cstr('sl2')])), req(Op.RENAME, 1n, Buffer.concat([u64s(3n), cstr('fifo'), cstr('f2')])), req(Op.LINK, 1n, Buffer.concat([u64s(2n), cstr('hard')])),
      req(Op.UNLINK, 1n, cstr('hard')), req(Op.RMDIR, 1n, cstr('d2'))],
    [req(Op.OPENDIR, 1n, u32s(0, 0)), req(Op.READDIRPLUS, 1n, readIn(1n, 0n, 4096)), req(Op.READDIR, 1n, readIn(1n, 2n, 200)), req(Op.RELEASEDIR, 1n, Buffer.concat([u64s(1n), u32s(0, 0), u64s(0n)])), req(Op.READLINK, 4n, Buffer.alloc(0))],
    [req(Op.SETXATTR, 2n, Buffer.concat([u32s(5, 0), cstr('user.k'), Buffer.from('value')])), req(Op.GETXATTR, 2n, Buffer.concat([u32s(64, 0), cstr('user.k')])), req(Op.LISTXATTR, 2n, u32s(0, 0)), req(Op.REMOVEXATTR, 2n, cstr('user.k')),
      req(Op.STATFS, 1n, Buffer.alloc(0)), req(Op.ACCESS, 2n, u32s(4, 0))],
    [req(Op.OPEN, 2n, u32s(2, 0)), req(Op.FALLOCATE, 2n, Buffer.concat([u64s(1n, 0n, 4096n), u32s(0, 0)])), req(Op.LSEEK, 2n, Buffer.concat([u64s(1n, 100n), u32s(3, 0)])),
      req(Op.FORGET, 2n, u64s(1n)), req(Op.BATCH_FORGET, 0n, Buffer.concat([u32s(2, 0), u64s(2n, 1n, 3n, 1n)])), req(Op.INTERRUPT, 0n, u64s(7n))],
    [req(Op.INIT, 0n, initBody(22), 2n), req(Op.INIT, 0n, u32s(8, 0, 0, 0), 3n), req(Op.DESTROY, 0n, Buffer.alloc(0)), req(Op.LOOKUP, 1n, cstr('file')), req(999, 1n, Buffer.alloc(8)), req(Op.LOOKUP, 1n, cstr('x'), 9n, 100)],
  ];
  return seeds.map((rs, i) => Buffer.concat(rs.map((r, k) => frame(r, 1 + ((i + k) % 3), [4096, 200, 16, 4200][(i + k) % 4]!, 1 + (k % 2)))));
}

/** Splits n bytes into up to k non-empty parts at points derived from `seed`. */
function cuts(n: number, k: number, seed: number): number[] {
  const out: number[] = [];
  let left = n;
  for (let i = 0; i < k - 1 && left > 1; i++) {
    const c = 1 + ((seed * (i + 7) * 2654435761) >>> 0) % (left - 1);
    out.push(c);
    left -= c;
  }
  out.push(left);
  return out;
}

const GUARD = 16;
const ARENA = 1 << 20;

let bugs: unknown[] = [];
let server: { srv: FuseServer; arena: Buffer } | undefined;
function getServer(): { srv: FuseServer; arena: Buffer } {
  if (server) return server;
  const srv = new FuseServer(new StubFs() as unknown as PassthroughFs, { maxWrite: 128 << 10 });
  // The server answers any exception but FsError with EIO and logs it as a
  // bug: see those where they are thrown, without touching the logger.
  const s = srv as unknown as { dispatch(req: unknown, w: unknown): Promise<number> };
  const dispatch = s.dispatch.bind(srv);
  s.dispatch = async (req, w) => {
    try {
      return await dispatch(req, w);
    } catch (err) {
      if (!(err instanceof FsError)) bugs.push(err);
      throw err;
    }
  };
  server = { srv, arena: Buffer.alloc(ARENA) };
  return server;
}

async function runCase(input: Buffer): Promise<string> {
  const s = getServer();
  // A fresh filesystem and INIT per case: cases do not depend on each other.
  (s.srv as unknown as { fs: unknown }).fs = new StubFs();
  (s.srv as unknown as { initialized: boolean }).initialized = false;
  bugs = [];
  await s.srv.handle([Buffer.from(INIT)], [Buffer.alloc(256)]);
  let p = 0, n = 0;
  const outcomes: number[] = [];
  while (p + 6 <= input.length && n < 8) {
    const rSplits = 1 + (input[p]! % 4), room = input.readUInt16LE(p + 1), wSplits = 1 + (input[p + 3]! % 4);
    const len = input.readUInt16LE(p + 4);
    const bytes = input.subarray(p + 6, p + 6 + len);
    p += 6 + len;
    n++;
    // Lay the chain out in the arena: readable parts, then writable parts,
    // each followed by a guard gap.
    const arena = s.arena;
    arena.fill(0xcc, 0, Math.min(ARENA, bytes.length + room + 8 * GUARD + 64));
    const readable: Buffer[] = [], writable: Buffer[] = [];
    let at = 0;
    for (const c of bytes.length ? cuts(bytes.length, rSplits, len + room) : []) {
      readable.push(arena.subarray(at, at + c));
      at += c + GUARD;
    }
    let q = 0;
    for (const r of readable) { bytes.copy(r, 0, q, q + r.length); q += r.length; }
    for (const c of room ? cuts(room, wSplits, len) : []) {
      writable.push(arena.subarray(at, at + c));
      at += c + GUARD;
    }
    const before = Buffer.from(arena.subarray(0, at));
    const used = await s.srv.handle(readable, writable);
    if (bugs.length) throw bugs[0]; // the exception itself is the finding
    invariant(Number.isInteger(used) && used >= 0 && used <= room, `used length ${used} with ${room} writable bytes`);
    // Nothing outside the writable buffers changed.
    let pos = 0;
    for (const w of writable) {
      const off = w.byteOffset - arena.byteOffset;
      invariant(arena.compare(before, pos, off, pos, off) === 0, `bytes changed outside the writable buffers (before ${off})`);
      pos = off + w.length;
    }
    invariant(arena.compare(before, pos, at, pos, at) === 0, 'bytes changed after the writable buffers');
    if (used > 0) {
      invariant(used >= OUT_HEADER_SIZE, `reply of ${used} bytes is shorter than fuse_out_header`);
      const hdr = Buffer.concat(writable).subarray(0, used);
      invariant(hdr.readUInt32LE(0) === used, `fuse_out_header.len ${hdr.readUInt32LE(0)} != used ${used}`);
      const err = hdr.readInt32LE(4);
      invariant(err <= 0 && err > -4096, `fuse_out_header.error ${err}`);
      if (bytes.length >= IN_HEADER_SIZE) {
        const unique = bytes.readBigUInt64LE(8);
        invariant(hdr.readBigUInt64LE(8) === unique || hdr.readBigUInt64LE(8) === 0n, 'reply unique differs from the request');
      }
      outcomes.push(err === 0 ? 0 : 1);
    } else outcomes.push(2);
  }
  return `n${n}:${outcomes.join('')}`;
}

export const fuse: Target = {
  name: 'fuse',
  describe: 'FUSE requests (src/virtio/fs/wire.ts + server.ts) scattered over chain buffers; replies fit, nothing else written, no bug path',
  maxLen: 32 << 10,
  dictionary: [u32s(Op.LOOKUP), u32s(Op.WRITE), u32s(Op.READ), u32s(Op.SETXATTR), u32s(Op.GETXATTR), u32s(Op.READDIRPLUS), u32s(Op.BATCH_FORGET), u32s(Op.RENAME2), u32s(Op.INIT), u32s(Op.CREATE),
    u64s(1n), u64s(2n), u64s(0xffffffffffffffffn), Buffer.from([0]), cstr('..'), cstr('.'), Buffer.from('/'), u32s(40), u32s(80), u32s(65536), u32s(0xffffffff)],
  seeds: fuseSeeds,
  run: runCase,
  expected: () => false,
};
