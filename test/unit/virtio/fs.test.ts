/**
 * src/virtio/fs FUSE server + passthrough filesystem, driven with real FUSE
 * request bytes (fs-client.ts) over a temp directory: every supported opcode,
 * and passthrough semantics checked against the host's own view (ownership,
 * modes, timestamps, hard links, sparse files, xattrs, rename flags).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configureLogging } from '../../../src/common/log';
import { PassthroughFs } from '../../../src/virtio/fs/passthrough';
import { FuseServer } from '../../../src/virtio/fs/server';
import { cstr, FuseClient, u32s, u64s } from './fs-client';
import { skipOrFail } from '../../helpers/skip';

const ROOT = 1;
const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_APPEND = 0o2000, O_TRUNC = 0o1000;
const FATTR_MODE = 1, FATTR_UID = 2, FATTR_GID = 4, FATTR_SIZE = 8, FATTR_ATIME = 16, FATTR_MTIME = 32,
  FATTR_FH = 64, FATTR_MTIME_NOW = 256;
const isRoot = process.getuid?.() === 0;

export function fixture(): { dir: string; pfs: PassthroughFs; server: FuseServer; c: FuseClient; done(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-virtiofs-'));
  const pfs = new PassthroughFs(dir);
  const server = new FuseServer(pfs);
  const c = new FuseClient(server);
  return { dir, pfs, server, c, done() { pfs.close(); fs.rmSync(dir, { recursive: true, force: true }); } };
}

describe('virtio-fs FUSE server (passthrough)', function () {
  let f: ReturnType<typeof fixture>;
  before(() => configureLogging({ level: 'error' }));
  beforeEach(async () => { f = fixture(); await f.c.init(); });
  afterEach(() => f.done());

  it('INIT negotiates 7.x, max_write and only flags the guest offered', async () => {
    const g = fixture();
    try {
      const out = await g.c.init(36, (1 << 0) | (1 << 13) | (1 << 22) | (1 << 16));
      expect(out.length).to.equal(64);
      expect(out.readUInt32LE(0)).to.equal(7);
      expect(out.readUInt32LE(4)).to.equal(36);
      const flags = out.readUInt32LE(12);
      expect(flags & 1).to.equal(1); // ASYNC_READ
      expect(flags & (1 << 13)).to.not.equal(0); // DO_READDIRPLUS
      expect(flags & (1 << 16)).to.equal(0); // WRITEBACK_CACHE offered but not taken
      expect(out.readUInt32LE(20)).to.equal(1 << 20); // max_write
      expect(out.readUInt16LE(28)).to.equal(256); // max_pages
      // Major 8: answer carries our major only.
      const m = await g.c.ok(26, 0, Buffer.concat([u32s(8, 0, 0, 0), Buffer.alloc(48)]));
      expect(m.length).to.equal(8);
      expect(m.readUInt32LE(0)).to.equal(7);
      // Too old a minor: EPROTO.
      expect(await g.c.errno(26, 0, Buffer.concat([u32s(7, 20, 0, 0), Buffer.alloc(48)]))).to.equal(os.constants.errno.EPROTO);
    } finally { g.done(); }
  });

  it('refuses requests before INIT with EIO', async () => {
    const g = fixture();
    try {
      expect(await g.c.errno(3, ROOT, Buffer.alloc(16))).to.equal(os.constants.errno.EIO);
    } finally { g.done(); }
  });

  it('LOOKUP/GETATTR report the host inode; unknown names are negative entries', async () => {
    fs.writeFileSync(path.join(f.dir, 'a'), 'hello');
    const e = await f.c.lookup(ROOT, 'a');
    const st = fs.lstatSync(path.join(f.dir, 'a'), { bigint: true });
    expect(e.attr.ino).to.equal(st.ino);
    expect(e.attr.size).to.equal(5n);
    expect(e.attr.mode).to.equal(Number(st.mode));
    expect((await f.c.getattr(e.nodeid)).ino).to.equal(st.ino);
    expect((await f.c.getattr(ROOT)).mode & 0o170000).to.equal(0o040000);
    // A missing name is a cacheable negative entry (nodeid 0, entry timeout)…
    const neg = await f.c.ok(1, ROOT, cstr('nope'));
    expect(neg.readBigUInt64LE(0)).to.equal(0n);
    expect(neg.readBigUInt64LE(16)).to.equal(1n);
    // …or plain ENOENT when the server is configured not to cache.
    const g = new FuseClient(new FuseServer(f.pfs, { cacheTimeoutSec: 0 }));
    await g.init();
    expect(await g.errno(1, ROOT, cstr('nope'))).to.equal(os.constants.errno.ENOENT);
    // Same inode twice → same nodeid.
    expect((await f.c.lookup(ROOT, 'a')).nodeid).to.equal(e.nodeid);
  });

  it('CREATE/WRITE/READ/RELEASE round-trip, scattered over 7-byte segments', async () => {
    f.c.segment = 7;
    const e = await f.c.create(ROOT, 'file', 0o640);
    const data = Buffer.from('The quick brown fox jumps over the lazy dog');
    expect(await f.c.write(e.fh, 0, data)).to.equal(data.length);
    expect(fs.readFileSync(path.join(f.dir, 'file'))).to.deep.equal(data);
    expect(fs.statSync(path.join(f.dir, 'file')).mode & 0o777).to.equal(0o640);
    expect(await f.c.read(e.fh, 4, 5)).to.deep.equal(Buffer.from('quick'));
    expect((await f.c.read(e.fh, 40, 100)).toString()).to.equal('dog'); // short read at EOF
    expect((await f.c.read(e.fh, 1000, 10)).length).to.equal(0);
    await f.c.release(e.fh);
    expect(await f.c.errno(18, 0, Buffer.concat([u64s(e.fh), u32s(0, 0), u64s(0)]))).to.equal(os.constants.errno.EBADF);
  });

  it('large WRITE/READ (1 MiB) over page-sized segments', async () => {
    const e = await f.c.create(ROOT, 'big');
    const data = Buffer.alloc(1 << 20);
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i * 2654435761 >>> 0, i);
    expect(await f.c.write(e.fh, 0, data, { segment: 4096 })).to.equal(data.length);
    const back = await f.c.read(e.fh, 0, data.length, { segment: 4096 });
    expect(back.equals(data)).to.equal(true);
    expect(fs.readFileSync(path.join(f.dir, 'big')).equals(data)).to.equal(true);
  });

  it('OPEN with O_APPEND appends; O_TRUNC truncates; read-only open refuses writes', async () => {
    fs.writeFileSync(path.join(f.dir, 'log'), 'one\n');
    const e = await f.c.lookup(ROOT, 'log');
    const fh = await f.c.open(e.nodeid, O_WRONLY | O_APPEND);
    await f.c.write(fh, 0, Buffer.from('two\n'));
    expect(fs.readFileSync(path.join(f.dir, 'log'), 'utf8')).to.equal('one\ntwo\n');
    await f.c.release(fh);
    const ro = await f.c.open(e.nodeid, O_RDONLY);
    expect(await f.c.errno(16, 0, Buffer.concat([u64s(ro, 0), u32s(1, 0), u64s(0), u32s(0, 0), Buffer.from('x')]))).to.equal(os.constants.errno.EBADF);
    await f.c.release(ro);
    const tr = await f.c.open(e.nodeid, O_RDWR | O_TRUNC);
    expect(fs.statSync(path.join(f.dir, 'log')).size).to.equal(0);
    await f.c.release(tr);
  });

  it('MKDIR/RMDIR/UNLINK/MKNOD (fifo) and ENOTEMPTY', async () => {
    const d = await f.c.mkdir(ROOT, 'd', 0o750);
    expect(fs.statSync(path.join(f.dir, 'd')).mode & 0o777).to.equal(0o750);
    const sub = await f.c.create(d.nodeid, 'x');
    await f.c.release(sub.fh);
    expect(await f.c.errno(11, ROOT, cstr('d'))).to.equal(os.constants.errno.ENOTEMPTY);
    await f.c.ok(10, d.nodeid, cstr('x'));
    await f.c.ok(11, ROOT, cstr('d'));
    expect(fs.existsSync(path.join(f.dir, 'd'))).to.equal(false);
    const p = await f.c.ok(8, ROOT, Buffer.concat([u32s(0o010644, 0, 0o022, 0), cstr('fifo')]));
    expect(p.length).to.equal(128);
    expect(fs.statSync(path.join(f.dir, 'fifo')).isFIFO()).to.equal(true);
    expect(await f.c.errno(10, ROOT, cstr('missing'))).to.equal(os.constants.errno.ENOENT);
  });

  it('SYMLINK/READLINK store targets verbatim (absolute and relative)', async () => {
    const s = await f.c.ok(6, ROOT, Buffer.concat([cstr('abs'), cstr('/etc/passwd')]));
    expect(s.readUInt32LE(40 + 60) & 0o170000).to.equal(0o120000);
    expect(fs.readlinkSync(path.join(f.dir, 'abs'))).to.equal('/etc/passwd');
    const r = await f.c.lookup(ROOT, 'abs');
    expect((await f.c.ok(5, r.nodeid, Buffer.alloc(0))).toString()).to.equal('/etc/passwd');
    await f.c.ok(6, ROOT, Buffer.concat([cstr('rel'), cstr('../../x')]));
    expect(fs.readlinkSync(path.join(f.dir, 'rel'))).to.equal('../../x');
    fs.writeFileSync(path.join(f.dir, 'plain'), '');
    const pl = await f.c.lookup(ROOT, 'plain');
    expect(await f.c.errno(5, pl.nodeid, Buffer.alloc(0))).to.equal(os.constants.errno.EINVAL);
  });

  it('RENAME, RENAME2 NOREPLACE/EXCHANGE, bad flags EINVAL', async () => {
    fs.writeFileSync(path.join(f.dir, 'a'), 'A');
    fs.writeFileSync(path.join(f.dir, 'b'), 'B');
    const d = await f.c.mkdir(ROOT, 'dir');
    await f.c.ok(12, ROOT, Buffer.concat([u64s(d.nodeid), cstr('a'), cstr('a2')]));
    expect(fs.readFileSync(path.join(f.dir, 'dir', 'a2'), 'utf8')).to.equal('A');
    const r2 = (flags: number, from: string, to: string, dir = ROOT) =>
      f.c.errno(45, dir, Buffer.concat([u64s(ROOT), u32s(flags, 0), cstr(from), cstr(to)]));
    fs.writeFileSync(path.join(f.dir, 'c'), 'C');
    expect(await r2(1, 'b', 'c')).to.equal(os.constants.errno.EEXIST);
    expect(await r2(2, 'b', 'c')).to.equal(0);
    expect(fs.readFileSync(path.join(f.dir, 'b'), 'utf8')).to.equal('C');
    expect(fs.readFileSync(path.join(f.dir, 'c'), 'utf8')).to.equal('B');
    expect(await r2(1 << 8, 'b', 'z')).to.equal(os.constants.errno.EINVAL);
  });

  it('LINK makes hard links that share the nodeid and count nlink', async () => {
    fs.writeFileSync(path.join(f.dir, 'orig'), 'data');
    const o = await f.c.lookup(ROOT, 'orig');
    const l = await f.c.ok(13, ROOT, Buffer.concat([u64s(o.nodeid), cstr('hard')]));
    expect(l.readBigUInt64LE(0)).to.equal(o.nodeid);
    expect(l.readUInt32LE(40 + 64)).to.equal(2);
    expect(fs.statSync(path.join(f.dir, 'hard')).ino).to.equal(fs.statSync(path.join(f.dir, 'orig')).ino);
    // A hard link to a symlink links the symlink itself, not its target.
    fs.symlinkSync('/etc/passwd', path.join(f.dir, 'sl'));
    const s = await f.c.lookup(ROOT, 'sl');
    await f.c.ok(13, ROOT, Buffer.concat([u64s(s.nodeid), cstr('sl2')]));
    expect(fs.readlinkSync(path.join(f.dir, 'sl2'))).to.equal('/etc/passwd');
    const d = await f.c.mkdir(ROOT, 'dd');
    expect(await f.c.errno(13, ROOT, Buffer.concat([u64s(d.nodeid), cstr('dd2')]))).to.equal(os.constants.errno.EPERM);
  });

  it('creates as the caller (fsuid/fsgid) and chowns; setgid dirs pass their group', async function () {
    if (!isRoot) skipOrFail(this, 'not root (creating as another uid needs CAP_SETUID and CAP_CHOWN)');
    fs.chmodSync(f.dir, 0o777);
    const e = await f.c.create(ROOT, 'mine', 0o600, O_RDWR, { uid: 1234, gid: 5678 });
    await f.c.release(e.fh);
    let st = fs.statSync(path.join(f.dir, 'mine'));
    expect([st.uid, st.gid]).to.deep.equal([1234, 5678]);
    expect([e.attr.uid, e.attr.gid]).to.deep.equal([1234, 5678]);
    const d = await f.c.mkdir(ROOT, 'sg', 0o777, { uid: 10, gid: 4242 });
    await f.c.setattr(d.nodeid, { valid: FATTR_MODE, mode: 0o2777 }); // mkdir(2) never sets S_ISGID itself
    expect(fs.statSync(path.join(f.dir, 'sg')).mode & 0o2000).to.equal(0o2000);
    await f.c.mkdir(d.nodeid, 'inner', 0o755, { uid: 11, gid: 99 });
    st = fs.statSync(path.join(f.dir, 'sg', 'inner'));
    expect([st.uid, st.gid]).to.deep.equal([11, 4242]);
    const a = await f.c.setattr(e.nodeid, { valid: FATTR_UID | FATTR_GID, uid: 42, gid: 43 });
    expect([a.uid, a.gid]).to.deep.equal([42, 43]);
    st = fs.statSync(path.join(f.dir, 'mine'));
    expect([st.uid, st.gid]).to.deep.equal([42, 43]);
    // Symlink ownership changes the link, not its target.
    fs.symlinkSync('mine', path.join(f.dir, 'lnk'));
    const l = await f.c.lookup(ROOT, 'lnk');
    await f.c.setattr(l.nodeid, { valid: FATTR_UID, uid: 7 });
    expect(fs.lstatSync(path.join(f.dir, 'lnk')).uid).to.equal(7);
    expect(fs.statSync(path.join(f.dir, 'mine')).uid).to.equal(42);
  });

  it('SETATTR mode, size (with and without fh), atime/mtime, mtime=now', async () => {
    const e = await f.c.create(ROOT, 's');
    await f.c.write(e.fh, 0, Buffer.from('0123456789'));
    let a = await f.c.setattr(e.nodeid, { valid: FATTR_MODE, mode: 0o4711 });
    expect(a.mode & 0o7777).to.equal(0o4711);
    expect(fs.statSync(path.join(f.dir, 's')).mode & 0o7777).to.equal(0o4711);
    a = await f.c.setattr(e.nodeid, { valid: FATTR_SIZE, size: 3n });
    expect(a.size).to.equal(3n);
    a = await f.c.setattr(e.nodeid, { valid: FATTR_SIZE | FATTR_FH, fh: e.fh, size: 5n });
    expect(fs.readFileSync(path.join(f.dir, 's'))).to.deep.equal(Buffer.from('012\0\0'));
    a = await f.c.setattr(e.nodeid, { valid: FATTR_ATIME | FATTR_MTIME, atime: 1000000000n, atimensec: 123456789, mtime: 1234567890n, mtimensec: 5 });
    expect([a.atime, a.atimensec, a.mtime, a.mtimensec]).to.deep.equal([1000000000n, 123456789, 1234567890n, 5]);
    const st = fs.statSync(path.join(f.dir, 's'), { bigint: true });
    expect(st.mtimeNs).to.equal(1234567890n * 1000000000n + 5n);
    expect(st.atimeNs).to.equal(1000000000n * 1000000000n + 123456789n);
    // Pre-epoch times are signed.
    a = await f.c.setattr(e.nodeid, { valid: FATTR_MTIME, mtime: -86400n, mtimensec: 0 });
    expect(BigInt.asIntN(64, a.mtime)).to.equal(-86400n);
    a = await f.c.setattr(e.nodeid, { valid: FATTR_MTIME_NOW });
    expect(Math.abs(Number(a.mtime) - Date.now() / 1000)).to.be.lessThan(5);
    // Bad nanoseconds.
    expect(await f.c.errno(4, e.nodeid, (() => { const b = Buffer.alloc(88); b.writeUInt32LE(FATTR_ATIME, 0); b.writeUInt32LE(2e9, 56); return b; })())).to.equal(os.constants.errno.EINVAL);
    // Truncating a directory.
    expect(await f.c.errno(4, ROOT, (() => { const b = Buffer.alloc(88); b.writeUInt32LE(FATTR_SIZE, 0); return b; })())).to.equal(os.constants.errno.EISDIR);
  });

  it('symlink SETATTR times change the link, never the target', async () => {
    const target = path.join(f.dir, 't');
    fs.writeFileSync(target, 'x');
    fs.utimesSync(target, 100, 100);
    fs.symlinkSync('t', path.join(f.dir, 'l'));
    const l = await f.c.lookup(ROOT, 'l');
    await f.c.setattr(l.nodeid, { valid: FATTR_MTIME, mtime: 5000n });
    expect(fs.lstatSync(path.join(f.dir, 'l')).mtimeMs).to.equal(5000000);
    expect(fs.statSync(target).mtimeMs).to.equal(100000);
    expect(await f.c.errno(4, l.nodeid, (() => { const b = Buffer.alloc(88); b.writeUInt32LE(FATTR_MODE, 0); b.writeUInt32LE(0o777, 68); return b; })())).to.equal(os.constants.errno.ENOTSUP);
  });

  it('sparse files: FALLOCATE punch hole, LSEEK SEEK_DATA/SEEK_HOLE, truncate-extend keeps holes', async () => {
    const e = await f.c.create(ROOT, 'sparse');
    const MiB = 1 << 20;
    await f.c.write(e.fh, 4 * MiB, Buffer.alloc(4096, 1));
    const st = fs.statSync(path.join(f.dir, 'sparse'));
    expect(st.size).to.equal(4 * MiB + 4096);
    expect(st.blocks * 512).to.be.lessThan(1 * MiB);
    const lseek = async (off: number, whence: number) => {
      const r = await f.c.raw(46, e.nodeid, Buffer.concat([u64s(e.fh, off), u32s(whence, 0)]));
      return r.error !== 0 ? r.error : Number(r.body.readBigUInt64LE(0));
    };
    expect(await lseek(0, 3)).to.equal(4 * MiB); // SEEK_DATA
    expect(await lseek(4 * MiB, 4)).to.equal(4 * MiB + 4096); // SEEK_HOLE
    // fallocate keep-size preallocation then punch it out.
    await f.c.ok(43, e.nodeid, Buffer.concat([u64s(e.fh, 0, MiB), u32s(0, 0)]));
    expect(fs.statSync(path.join(f.dir, 'sparse')).blocks * 512).to.be.greaterThanOrEqual(MiB);
    await f.c.ok(43, e.nodeid, Buffer.concat([u64s(e.fh, 0, MiB), u32s(0x01 | 0x02, 0)])); // KEEP_SIZE|PUNCH_HOLE
    expect(fs.statSync(path.join(f.dir, 'sparse')).blocks * 512).to.be.lessThan(MiB);
    await f.c.setattr(e.nodeid, { valid: FATTR_SIZE, size: BigInt(64 * MiB) });
    const s2 = fs.statSync(path.join(f.dir, 'sparse'));
    expect(s2.size).to.equal(64 * MiB);
    expect(s2.blocks * 512).to.be.lessThan(MiB);
    expect((await f.c.read(e.fh, 10 * MiB, 16)).equals(Buffer.alloc(16))).to.equal(true);
  });

  it('OPENDIR/READDIR/READDIRPLUS list every entry across small buffers; RELEASEDIR', async () => {
    const names: string[] = [];
    for (let i = 0; i < 150; i++) {
      const n = `entry-${i}-${'x'.repeat(i % 40)}`;
      names.push(n);
      fs.writeFileSync(path.join(f.dir, n), '');
    }
    fs.mkdirSync(path.join(f.dir, 'subdir'));
    names.push('subdir');
    expect(await f.c.list(ROOT, false, 300)).to.deep.equal(['.', '..', ...names].sort());
    expect(await f.c.list(ROOT, true, 1024)).to.deep.equal(['.', '..', ...names].sort());
    const fh = await f.c.opendir(ROOT);
    const plus = await f.c.readdir(fh, 0n, 65536, true);
    const sub = plus.find((e) => e.name === 'subdir');
    expect(sub?.type).to.equal(4); // DT_DIR
    expect(sub?.entry?.nodeid).to.not.equal(0n);
    expect(sub?.entry?.attr.mode && sub.entry.attr.mode & 0o170000).to.equal(0o040000);
    // READDIRPLUS counted a lookup: the nodeid resolves.
    expect((await f.c.getattr(sub!.entry!.nodeid)).ino).to.equal(sub!.ino);
    expect(plus.find((e) => e.name === '..')?.entry?.nodeid).to.equal(0n);
    await f.c.ok(30, 0, Buffer.concat([u64s(fh), u32s(0, 0)])); // FSYNCDIR
    await f.c.release(fh, true);
    // A file handle is not a directory handle.
    const file = await f.c.create(ROOT, 'zz');
    expect(await f.c.errno(28, 0, Buffer.concat([u64s(file.fh, 0), u32s(4096, 0), u64s(0), u32s(0, 0)]))).to.equal(os.constants.errno.EBADF);
    expect(await f.c.errno(27, file.nodeid, u32s(0, 0))).to.equal(os.constants.errno.ENOTDIR);
  });

  it('STATFS, FSYNC (data and full), FLUSH, ACCESS', async () => {
    const s = await f.c.ok(17, ROOT, Buffer.alloc(0));
    expect(s.length).to.equal(80);
    expect(s.readUInt32LE(44)).to.equal(255); // namelen
    expect(s.readBigUInt64LE(0) > 0n).to.equal(true);
    const e = await f.c.create(ROOT, 'f', 0o640);
    await f.c.ok(20, 0, Buffer.concat([u64s(e.fh), u32s(1, 0)]));
    await f.c.ok(20, 0, Buffer.concat([u64s(e.fh), u32s(0, 0)]));
    await f.c.ok(25, 0, Buffer.concat([u64s(e.fh), u32s(0, 0), u64s(0)]));
    const acc = (mask: number, uid: number, gid: number) => f.c.errno(34, e.nodeid, u32s(mask, 0), { uid, gid });
    expect(await acc(4, 0, 0)).to.equal(0);
    expect(await acc(1, 0, 0)).to.equal(os.constants.errno.EACCES); // no x bit anywhere
    const owner = fs.statSync(path.join(f.dir, 'f'));
    expect(await acc(6, owner.uid, owner.gid)).to.equal(0);
    expect(await acc(4, 999, owner.gid)).to.equal(0);
    expect(await acc(2, 999, owner.gid)).to.equal(os.constants.errno.EACCES);
    expect(await acc(4, 999, 999)).to.equal(os.constants.errno.EACCES);
    expect(await acc(0, 999, 999)).to.equal(0);
  });

  it('xattrs: SET/GET (size probe and value)/LIST/REMOVE', async () => {
    const e = await f.c.create(ROOT, 'x');
    const set = (name: string, value: string, flags = 0) =>
      f.c.errno(21, e.nodeid, Buffer.concat([u32s(value.length, flags), cstr(name), Buffer.from(value)]));
    expect(await set('user.colour', 'blue')).to.equal(0);
    expect(await set('user.colour', 'red', 1 /* XATTR_CREATE */)).to.equal(os.constants.errno.EEXIST);
    const probe = await f.c.ok(22, e.nodeid, Buffer.concat([u32s(0, 0), cstr('user.colour')]));
    expect(probe.readUInt32LE(0)).to.equal(4);
    expect((await f.c.ok(22, e.nodeid, Buffer.concat([u32s(64, 0), cstr('user.colour')]))).toString()).to.equal('blue');
    expect(await f.c.errno(22, e.nodeid, Buffer.concat([u32s(2, 0), cstr('user.colour')]))).to.equal(os.constants.errno.ERANGE);
    expect(await f.c.errno(22, e.nodeid, Buffer.concat([u32s(64, 0), cstr('user.none')]))).to.equal(os.constants.errno.ENODATA);
    const list = await f.c.ok(23, e.nodeid, u32s(4096, 0));
    expect(list.toString().split('\0')).to.include('user.colour');
    expect((await f.c.ok(23, e.nodeid, u32s(0, 0))).readUInt32LE(0)).to.equal(list.length);
    await f.c.ok(24, e.nodeid, cstr('user.colour'));
    expect(await f.c.errno(22, e.nodeid, Buffer.concat([u32s(64, 0), cstr('user.colour')]))).to.equal(os.constants.errno.ENODATA);
  });

  it('FORGET/BATCH_FORGET drop nodeids (no reply); DESTROY forgets all but root', async () => {
    fs.writeFileSync(path.join(f.dir, 'a'), '');
    fs.writeFileSync(path.join(f.dir, 'b'), '');
    const a = await f.c.lookup(ROOT, 'a');
    await f.c.lookup(ROOT, 'a');
    const b = await f.c.lookup(ROOT, 'b');
    const before = f.pfs.inodes.size;
    const r = await f.c.raw(2, a.nodeid, u64s(1));
    expect(r.len).to.equal(0);
    expect((await f.c.getattr(a.nodeid)).size).to.equal(0n); // still one lookup left
    await f.c.raw(42, 0, Buffer.concat([u32s(2, 0), u64s(a.nodeid, 1), u64s(b.nodeid, 1)]));
    expect(f.pfs.inodes.size).to.equal(before - 2);
    expect(await f.c.errno(3, a.nodeid, Buffer.alloc(16))).to.equal(os.constants.errno.EBADF);
    // FORGET of the root or an unknown node is ignored.
    await f.c.raw(2, ROOT, u64s(100));
    await f.c.raw(2, 9999, u64s(1));
    expect((await f.c.getattr(ROOT)).mode & 0o170000).to.equal(0o040000);
    await f.c.lookup(ROOT, 'a');
    await f.c.ok(38, 0, Buffer.alloc(0));
    expect(f.pfs.inodes.size).to.equal(1);
    await f.c.init();
    expect((await f.c.lookup(ROOT, 'b')).attr.size).to.equal(0n);
  });

  it('answers ENOSYS for opcodes outside the supported set', async () => {
    for (const op of [31, 32, 33, 37, 39, 40, 47, 48, 49, 50, 51, 4096, 12345]) {
      expect(await f.c.errno(op, ROOT, Buffer.alloc(64)), `opcode ${op}`).to.equal(os.constants.errno.ENOSYS);
    }
    // INTERRUPT has no reply.
    expect((await f.c.raw(36, 0, u64s(1))).len).to.equal(0);
  });

  it('CREATE over an existing file opens it unless O_EXCL; over a FIFO/symlink refuses without blocking', async () => {
    fs.writeFileSync(path.join(f.dir, 'e'), 'keep');
    const e = await f.c.create(ROOT, 'e', 0o644, O_RDWR);
    expect((await f.c.read(e.fh, 0, 10)).toString()).to.equal('keep');
    expect(await f.c.errno(35, ROOT, Buffer.concat([u32s(O_RDWR | 0o200, 0o644, 0, 0), cstr('e')]))).to.equal(os.constants.errno.EEXIST);
    fs.mkdirSync(path.join(f.dir, 'fdir'));
    require('node:child_process').execFileSync('mkfifo', [path.join(f.dir, 'fifo')]);
    expect(await f.c.errno(35, ROOT, Buffer.concat([u32s(O_WRONLY, 0o644, 0, 0), cstr('fifo')]))).to.equal(os.constants.errno.EEXIST);
    const fifo = await f.c.lookup(ROOT, 'fifo');
    expect(await f.c.errno(14, fifo.nodeid, u32s(O_WRONLY, 0))).to.equal(os.constants.errno.EACCES);
    expect(await f.c.errno(35, ROOT, Buffer.concat([u32s(O_WRONLY, 0o644, 0, 0), cstr('fdir')]))).to.equal(os.constants.errno.EISDIR);
  });
});
