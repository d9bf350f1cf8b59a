/**
 * assembly/erofs through src/hot/erofs, against images made by mkfs.erofs
 * (erofs-utils 1.5) from a generated tree with every file type, long names,
 * big, sparse-looking and sparse files, hard links, a 1500-entry directory,
 * inline and shared xattrs, odd modes, owners and nanosecond mtimes. For
 * every image variant (plain, -zlz4, -zlz4hc, big pclusters, legacy
 * indexes, ztailpacking, chunk-based block maps and chunk indexes, compact
 * and extended inodes, no inline data) each entry's bytes, mode, uid/gid,
 * size, mtime, link target, device numbers and xattrs must equal the source.
 * Then kata-ctl's extraction is compared with the tree and with
 * `fsck.erofs --extract`, and corrupted images (bad magic, unknown
 * incompatible feature, bad checksum, truncation, fuzzed metadata) must give
 * ErofsError, never another exception or a hang.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErofsError, ErofsImage, ErofsStat } from '../../../src/hot/erofs';
import { extractImage } from '../../../src/ctl/commands/erofs';
import { native } from '../../../src/common/native';
import { prng } from '../../helpers/prng';

const PY_SETUP = `
import os, stat, sys, json
root = sys.argv[1]
os.mknod(os.path.join(root, 'special/sock'), stat.S_IFSOCK | 0o755)
spec = json.loads(sys.argv[2])
for rel, attrs in spec.items():
    for k, v in attrs.items():
        os.setxattr(os.path.join(root, rel), k, v.encode(), follow_symlinks=False)
`;
const PY_XATTRS = `
import os, sys, json
root = sys.argv[1]
out = {}
for d, dirs, files in os.walk(root):
    for n in dirs + files + ['.']:
        p = os.path.join(d, n)
        if n == '.' and d != root: continue
        rel = os.path.relpath(p, root)
        try:
            names = os.listxattr(p, follow_symlinks=False)
        except OSError:
            continue
        if names:
            out['/' + rel if rel != '.' else '/'] = {k: os.getxattr(p, k, follow_symlinks=False).hex() for k in names}
print(json.dumps(out))
`;

/** Builds the source tree; returns the paths of its entries ('/'-rooted). */
export function buildTree(root: string): void {
  const r = prng(12345);
  const rand = (n: number) => {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = r() & 255;
    return b;
  };
  const text = (n: number) => Buffer.from(Array.from({ length: Math.ceil(n / 12) }, (_, i) => `text line ${i} ${'xyz'.repeat(i % 7)}\n`).join('').slice(0, n));
  const w = (rel: string, data: Buffer | string, mode = 0o644) => {
    fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    fs.writeFileSync(path.join(root, rel), data, { mode });
    fs.chmodSync(path.join(root, rel), mode);
  };
  w('empty', '');
  w('one', 'x');
  w('f4095', text(4095));
  w('f4096', text(4096));
  w('f4097', text(4097));
  w('random-300k', rand(300 << 10));
  w('text-2m', text(2 << 20));
  w('mixed-1m', Buffer.concat(Array.from({ length: 64 }, (_, i) => (i % 2 ? rand(8192) : Buffer.alloc(8192, i)))));
  w('zeros-3m', Buffer.alloc(3 << 20)); // sparse-looking
  // A real sparse file: data, a 5 MiB hole, data.
  const fd = fs.openSync(path.join(root, 'sparse'), 'w');
  fs.writeSync(fd, text(5000), 0, 5000, 0);
  fs.writeSync(fd, text(3000), 0, 3000, 5 << 20);
  fs.closeSync(fd);
  w('modes/setuid', 'su', 0o4755);
  w('modes/setgid', 'sg', 0o2711);
  w('modes/private', 'p', 0o600);
  w('modes/all', 'a', 0o777);
  w('modes/none', 'n', 0o000);
  fs.mkdirSync(path.join(root, 'modes/sticky'));
  fs.chmodSync(path.join(root, 'modes/sticky'), 0o1777);
  // 254 bytes in UTF-8: mkfs.erofs 1.5 fails on 255-byte names ("Could not
  // format the device"), though EROFS_NAME_LEN is 255.
  const long = 'L'.repeat(199) + 'é'.repeat(27) + 'z';
  w(`names/${long}`, 'long name');
  w('names/ünïcödé ✓', 'unicode');
  w('names/with space', 'space');
  for (let i = 0; i < 1500; i++) w(`many/entry-${String(i).padStart(5, '0')}-${'n'.repeat(i % 40)}`, `file ${i}\n`);
  w('deep/a/b/c/d/e/f/g/leaf', 'leaf');
  fs.symlinkSync('one', path.join(root, 'link-rel'));
  fs.symlinkSync('/deep/a/b/c/d/e/f/g/leaf', path.join(root, 'link-abs'));
  fs.symlinkSync('dangling/target', path.join(root, 'link-dangling'));
  fs.symlinkSync('d/'.repeat(1000) + 'x', path.join(root, 'link-long'));
  fs.symlinkSync('deep/a', path.join(root, 'link-dir'));
  w('hard/orig', text(10000));
  fs.linkSync(path.join(root, 'hard/orig'), path.join(root, 'hard/second'));
  fs.linkSync(path.join(root, 'hard/orig'), path.join(root, 'third-link'));
  fs.mkdirSync(path.join(root, 'special'));
  execFileSync('mknod', ['-m', '640', path.join(root, 'special/null'), 'c', '1', '3']);
  execFileSync('mknod', ['-m', '600', path.join(root, 'special/bigdev'), 'c', '300', '70000']);
  execFileSync('mknod', ['-m', '660', path.join(root, 'special/loop'), 'b', '7', '0']);
  execFileSync('mknod', ['-m', '644', path.join(root, 'special/fifo'), 'p']);
  // xattrs: "user.shared" on many files → mkfs puts it in the shared area.
  const xattrs: Record<string, Record<string, string>> = {
    one: { 'user.comment': 'hello', 'trusted.overlay.opaque': 'y', 'security.selinux': 'system_u:object_r:bin_t:s0' },
    'f4095': { 'user.empty': '' },
    'random-300k': { 'user.big': 'v'.repeat(3000) },
    deep: { 'user.dirattr': 'on a dir' },
    'special/fifo': { 'trusted.onfifo': 'f' },
  };
  for (let i = 0; i < 8; i++) xattrs[`many/entry-${String(i).padStart(5, '0')}-${'n'.repeat(i % 40)}`] = { 'user.shared': 'same value', 'user.own': `n${i}` };
  execFileSync('python3', ['-c', PY_SETUP, root, JSON.stringify(xattrs)]);
  // Owners and nanosecond mtimes, varied (uid > 65535 needs extended inodes).
  const all: string[] = [];
  const walk = (rel: string) => {
    all.push(rel);
    const st = fs.lstatSync(path.join(root, rel));
    if (st.isDirectory()) for (const n of fs.readdirSync(path.join(root, rel))) walk(path.posix.join(rel, n));
  };
  walk('.');
  all.forEach((rel, i) => {
    const p = path.join(root, rel);
    fs.lchownSync(p, i % 5 === 0 ? 70000 + i : i % 3 === 0 ? 1000 : 0, i % 7 === 0 ? 65537 : i % 2 ? 100 : 0);
  });
  // Times after all writes, deepest first so directories keep theirs.
  for (const rel of all.reverse()) {
    const t = 1600000000 + (rel.length * 7919) % 100000000 + ((rel.length * 131) % 1000) / 1000 + 0.000123;
    fs.lutimesSync(path.join(root, rel), t, t);
  }
}

interface Variant {
  name: string;
  args: string[];
  /** Every inode's mtime is the build time (compact inodes / -T). */
  fixedTime?: number;
  allRoot?: boolean;
  layouts?: string[];
}

const VARIANTS: Variant[] = [
  { name: 'plain', args: [], layouts: ['flat-inline', 'flat-plain'] },
  { name: 'lz4', args: ['-zlz4'], layouts: ['compressed'] },
  { name: 'lz4hc', args: ['-zlz4hc'], layouts: ['compressed'] },
  { name: 'lz4hc level 12, 64 KiB pclusters', args: ['-zlz4hc,12', '-C65536'], layouts: ['compressed'] },
  { name: 'lz4 legacy indexes', args: ['-zlz4', '-Elegacy-compress'], layouts: ['compressed-legacy'] },
  { name: 'lz4hc ztailpacking', args: ['-zlz4hc', '-Eztailpacking'], layouts: ['compressed'] },
  { name: 'lz4 big pcluster + ztailpacking', args: ['-zlz4', '-C16384', '-Eztailpacking'], layouts: ['compressed'] },
  { name: 'chunked 4 KiB block map', args: ['--chunksize=4096'], layouts: ['chunk-based'] },
  { name: 'chunked 64 KiB chunk indexes', args: ['--chunksize=65536', '-Eforce-chunk-indexes'], layouts: ['chunk-based'] },
  { name: 'compact inodes, fixed time, all root', args: ['-Eforce-inode-compact', '-T1234567890', '--all-root'], fixedTime: 1234567890, allRoot: true },
  { name: 'extended inodes, no inline data', args: ['-Eforce-inode-extended', '-Enoinline_data'], layouts: ['flat-plain'] },
];

function typeOf(st: fs.Stats): ErofsStat['type'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'chardev';
  if (st.isBlockDevice()) return 'blockdev';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

const major = (dev: number) => ((dev >> 8) & 0xfff) | Math.floor(dev / 2 ** 32) & ~0xfff;
const minor = (dev: number) => (dev & 0xff) | ((dev >> 12) & 0xfff00);

describe('hot/erofs: EROFS images from mkfs.erofs 1.5', function () {
  this.timeout(300000);
  let tmp: string;
  let src: string;
  let entries: string[];
  let xattrs: Record<string, Record<string, string>>;

  before(function () {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-erofs-'));
    src = path.join(tmp, 'tree');
    fs.mkdirSync(src);
    buildTree(src);
    entries = [];
    const walk = (rel: string) => {
      entries.push(rel);
      if (fs.lstatSync(path.join(src, rel)).isDirectory()) for (const n of fs.readdirSync(path.join(src, rel)).sort()) walk(rel === '/' ? `/${n}` : `${rel}/${n}`);
    };
    walk('/');
    xattrs = JSON.parse(execFileSync('python3', ['-c', PY_XATTRS, src], { encoding: 'utf8' }));
  });
  after(function () {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  function mkfs(name: string, args: string[]): string {
    const img = path.join(tmp, `${name.replace(/[^a-z0-9]+/gi, '_')}.erofs`);
    execFileSync('mkfs.erofs', ['--quiet', ...args, img, src], { stdio: ['ignore', 'ignore', 'pipe'] });
    return img;
  }

  function compareTree(img: ErofsImage, v: Variant): Set<string> {
    const layouts = new Set<string>();
    const byIno = new Map<number, number>();
    for (const rel of entries) {
      const host = fs.lstatSync(path.join(src, rel), { bigint: true });
      const st = img.lstat(rel);
      const what = `${v.name}: ${rel}`;
      expect(st.type, what).to.equal(typeOf(fs.lstatSync(path.join(src, rel))));
      expect(st.mode, what).to.equal(Number(host.mode));
      expect(st.uid, what).to.equal(v.allRoot ? 0 : Number(host.uid));
      expect(st.gid, what).to.equal(v.allRoot ? 0 : Number(host.gid));
      if (v.fixedTime !== undefined) {
        expect(st.mtime, what).to.equal(v.fixedTime);
      } else {
        expect(st.mtime, what).to.equal(Number(host.mtimeNs / 1000000000n));
        expect(st.mtimeNsec, what).to.equal(Number(host.mtimeNs % 1000000000n));
      }
      if (st.type !== 'dir') expect(st.nlink, what).to.equal(Number(host.nlink));
      const hostIno = Number(host.ino);
      if (st.type !== 'dir') {
        // Hard links share one inode; distinct files do not.
        if (byIno.has(hostIno)) expect(st.nid, what).to.equal(byIno.get(hostIno));
        byIno.set(hostIno, st.nid);
      }
      switch (st.type) {
        case 'file': {
          layouts.add(st.layout);
          expect(st.size, what).to.equal(Number(host.size));
          const data = img.readFile(rel);
          expect(data.equals(fs.readFileSync(path.join(src, rel))), what).to.equal(true);
          break;
        }
        case 'symlink':
          expect(img.readlink(rel), what).to.equal(fs.readlinkSync(path.join(src, rel)));
          expect(st.size, what).to.equal(Number(host.size));
          break;
        case 'chardev':
        case 'blockdev':
          expect([st.rdevMajor, st.rdevMinor], what).to.deep.equal([major(Number(host.rdev)), minor(Number(host.rdev))]);
          break;
        case 'dir': {
          const names = img.readdir(rel).map((e) => e.name).sort();
          expect(names, what).to.deep.equal(fs.readdirSync(path.join(src, rel)).sort());
          break;
        }
        default:
          break;
      }
      const want = xattrs[rel] ?? {};
      const got: Record<string, string> = {};
      for (const name of img.listxattr(rel)) got[name] = img.getxattr(rel, name).toString('hex');
      expect(got, `${what} xattrs`).to.deep.equal(want);
    }
    return layouts;
  }

  for (const v of VARIANTS) {
    it(`${v.name} (${v.args.join(' ') || 'no options'}): every entry equals the source tree`, function () {
      const file = mkfs(v.name, v.args);
      const img = ErofsImage.open(file);
      try {
        const layouts = compareTree(img, v);
        for (const l of v.layouts ?? []) expect([...layouts], v.name).to.include(l);
        // Random-offset reads agree with the source too.
        const r = prng(3);
        for (const rel of ['/text-2m', '/mixed-1m', '/random-300k', '/sparse', '/zeros-3m']) {
          const whole = fs.readFileSync(path.join(src, rel));
          for (let k = 0; k < 20; k++) {
            const off = r() % whole.length;
            const len = r() % 70000;
            expect(img.read(rel, off, len).equals(whole.subarray(off, off + len)), `${rel} @${off}+${len}`).to.equal(true);
          }
        }
      } finally {
        img.close();
      }
    });
  }

  it('fromBuffer gives the same answers as a file', function () {
    const file = mkfs('buffer', ['-zlz4hc']);
    const img = ErofsImage.fromBuffer(fs.readFileSync(file));
    expect(img.readFile('/text-2m').equals(fs.readFileSync(path.join(src, 'text-2m')))).to.equal(true);
    expect(img.stat('/link-dir/b/c/d/e/f/g/leaf').type).to.equal('file');
    expect(img.readFile('/link-abs').toString()).to.equal('leaf');
    expect(() => img.stat('/nope')).to.throw(ErofsError).with.property('kind', 'not-found');
    expect(() => img.stat('/one/child')).to.throw(ErofsError).with.property('kind', 'not-dir');
    expect(() => img.readlink('/one')).to.throw(ErofsError).with.property('kind', 'not-symlink');
    expect(() => img.getxattr('/one', 'user.nope')).to.throw(ErofsError).with.property('kind', 'no-xattr');
    expect(img.sb.features).to.include('0padding');
  });

  it('extents larger than the decode buffer: prefix reads work, the rest is refused', function () {
    const file = mkfs('bigextent', ['-zlz4hc', '-C65536']);
    const img = ErofsImage.open(file, { extentMaxBytes: 256 << 10 });
    try {
      const zeros = img.read('/zeros-3m', 0, 100000);
      expect(zeros.equals(Buffer.alloc(100000))).to.equal(true);
      expect(() => img.read('/zeros-3m', 2 << 20, 4096)).to.throw(ErofsError).with.property('kind', 'too-large');
    } finally {
      img.close();
    }
  });

  it('kata-ctl extraction equals the source tree and fsck.erofs --extract', function () {
    const file = mkfs('extract', ['-zlz4hc', '-Eztailpacking']);
    const ours = path.join(tmp, 'x-ours');
    const theirs = path.join(tmp, 'x-fsck');
    const img = ErofsImage.open(file);
    const warnings: string[] = [];
    let stats;
    try {
      stats = extractImage(img, '/', ours, { warn: (l) => warnings.push(l) });
    } finally {
      img.close();
    }
    expect(warnings, 'extract warnings').to.deep.equal([]);
    expect(stats.xattrsSkipped).to.equal(0);
    expect(stats.xattrs).to.equal(Object.values(xattrs).reduce((n, x) => n + Object.keys(x).length, 0));
    // Read back with l*xattr (follow_symlinks=False), as for the source tree.
    const oursX: Record<string, Record<string, string>> = JSON.parse(execFileSync('python3', ['-c', PY_XATTRS, ours], { encoding: 'utf8' }));
    execFileSync('fsck.erofs', [`--extract=${theirs}`, file], { stdio: 'ignore' });
    for (const rel of entries) {
      const a = fs.lstatSync(path.join(src, rel), { bigint: true });
      const b = fs.lstatSync(path.join(ours, rel), { bigint: true });
      const what = `extract ${rel}`;
      expect(b.mode, what).to.equal(a.mode);
      expect([b.uid, b.gid], what).to.deep.equal([a.uid, a.gid]);
      if (!b.isDirectory()) expect(b.nlink, what).to.equal(a.nlink);
      expect(b.mtimeMs === a.mtimeMs || Number(b.mtimeNs / 1000n) === Number(a.mtimeNs / 1000n), what).to.equal(true);
      if (b.isFile()) {
        const data = fs.readFileSync(path.join(ours, rel));
        expect(data.equals(fs.readFileSync(path.join(src, rel))), what).to.equal(true);
        expect(data.equals(fs.readFileSync(path.join(theirs, rel))), `${what} vs fsck`).to.equal(true);
      }
      if (b.isSymbolicLink()) expect(fs.readlinkSync(path.join(ours, rel))).to.equal(fs.readlinkSync(path.join(src, rel)));
      if (b.isCharacterDevice() || b.isBlockDevice()) expect(b.rdev, what).to.equal(a.rdev);
      expect(oursX[rel] ?? {}, `${what} xattrs`).to.deep.equal(xattrs[rel] ?? {});
    }
    expect(oursX).to.deep.equal(xattrs);
    expect(Object.keys(oursX['/one'])).to.include.members(['user.comment', 'trusted.overlay.opaque', 'security.selinux']);
    expect(fs.lstatSync(path.join(ours, 'hard/orig')).ino).to.equal(fs.lstatSync(path.join(ours, 'third-link')).ino);
    expect(fs.lstatSync(path.join(ours, 'special/sock')).isSocket()).to.equal(true);
  });

  it('kata-ctl extraction warns once per xattr namespace the destination refuses and keeps going', function () {
    const file = mkfs('extract-refused', []);
    const out = path.join(tmp, 'x-refused');
    const { EPERM, EOPNOTSUPP } = os.constants.errno;
    const calls: string[] = [];
    const addon = () => ({
      fsSetxattr: (p: string, name: Buffer, value: Buffer, flags: number, follow: boolean): number => {
        expect(follow, 'never follows symlinks').to.equal(false);
        const n = name.toString();
        calls.push(n);
        if (n.startsWith('trusted.')) return -EPERM;
        if (n.startsWith('security.')) return -EOPNOTSUPP;
        return native().fsSetxattr(p, name, value, flags, follow);
      },
    });
    const warnings: string[] = [];
    const img = ErofsImage.open(file);
    let stats;
    try {
      stats = extractImage(img, '/', out, { warn: (l) => warnings.push(l), addon });
    } finally {
      img.close();
    }
    expect(warnings).to.have.length(2);
    expect(warnings.find((w) => w.includes('trusted.*'))).to.match(/refused trusted\.\* xattrs \(EPERM/);
    expect(warnings.find((w) => w.includes('security.*'))).to.match(/refused security\.\* xattrs \((EOPNOTSUPP|ENOTSUP)/);
    expect(stats.xattrsSkipped).to.equal(calls.filter((n) => !n.startsWith('user.')).length);
    expect(stats.xattrsSkipped).to.equal(3); // trusted.overlay.opaque, security.selinux, trusted.onfifo
    const got: Record<string, Record<string, string>> = JSON.parse(execFileSync('python3', ['-c', PY_XATTRS, out], { encoding: 'utf8' }));
    const want: Record<string, Record<string, string>> = {};
    for (const [rel, x] of Object.entries(xattrs)) {
      const user = Object.fromEntries(Object.entries(x).filter(([k]) => k.startsWith('user.')));
      if (Object.keys(user).length) want[rel] = user;
    }
    expect(got).to.deep.equal(want);
    expect(fs.readFileSync(path.join(out, 'deep/a/b/c/d/e/f/g/leaf'), 'utf8')).to.equal('leaf');
  });

  describe('hostile images', function () {
    let good: Buffer;
    before(function () {
      // A small tree keeps the fuzz loop fast while covering every layout.
      const small = path.join(tmp, 'small');
      fs.mkdirSync(small);
      fs.writeFileSync(path.join(small, 'a'), 'alpha');
      fs.writeFileSync(path.join(small, 'big'), Buffer.concat(Array.from({ length: 40 }, (_, i) => Buffer.alloc(3000, i))));
      fs.mkdirSync(path.join(small, 'd'));
      for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(small, 'd', `f${i}`), `file ${i}`);
      fs.symlinkSync('a', path.join(small, 'l'));
      execFileSync('python3', ['-c', 'import os,sys; os.setxattr(sys.argv[1], "user.x", b"1")', path.join(small, 'a')]);
      const file = path.join(tmp, 'small.erofs');
      execFileSync('mkfs.erofs', ['--quiet', '-zlz4hc', '-Eztailpacking', file, small], { stdio: 'ignore' });
      good = fs.readFileSync(file);
    });

    /** Walks everything; returns 'ok' or the ErofsError kind. Anything else fails the test. */
    function walkAll(buf: Buffer): string {
      try {
        const img = ErofsImage.fromBuffer(buf);
        const seen = new Set<number>();
        const visit = (nid: number, depth: number) => {
          if (seen.has(nid) || depth > 20) return;
          seen.add(nid);
          const st = img.inode(nid);
          img.xattrsNid(nid);
          if (st.type === 'dir') {
            for (const e of img.readdirNid(nid)) if (e.name !== '.' && e.name !== '..') visit(e.nid, depth + 1);
          } else if (st.type === 'file' || st.type === 'symlink') {
            img.readNid(nid, 0, Math.min(st.size, 1 << 20));
          }
        };
        visit(img.sb.rootNid, 0);
        img.lookupNid(img.sb.rootNid, 'd');
        return 'ok';
      } catch (err) {
        if (err instanceof ErofsError) return err.kind;
        throw err;
      }
    }

    it('the pristine image walks cleanly', function () {
      expect(walkAll(good)).to.equal('ok');
    });

    it('bad magic, unknown incompatible feature, bad checksum', function () {
      const a = Buffer.from(good);
      a.writeUInt32LE(0x12345678, 1024);
      expect(walkAll(a)).to.equal('bad-magic');
      const b = Buffer.from(good);
      b.writeUInt32LE(b.readUInt32LE(1024 + 80) | 0x80, 1024 + 80);
      b.writeUInt32LE(b.readUInt32LE(1024 + 8) & ~1, 1024 + 8); // drop sb_csum so the feature check decides
      expect(walkAll(b)).to.equal('unsupported-feature');
      const c = Buffer.from(good);
      c[1024 + 64] ^= 0xff; // volume name byte: only the checksum notices
      expect(walkAll(c)).to.equal('bad-checksum');
      const d = Buffer.from(good);
      d[1024 + 12] = 20; // 1 MiB blocks
      d.writeUInt32LE(d.readUInt32LE(1024 + 8) & ~1, 1024 + 8);
      expect(walkAll(d)).to.equal('bad-blocksize');
    });

    it('every truncation gives a clean error', function () {
      const kinds = new Set<string>();
      for (let len = 0; len < good.length; len += 512) kinds.add(walkAll(good.subarray(0, len)));
      kinds.delete('ok');
      expect(kinds.size).to.be.greaterThan(0);
    });

    it('fuzzed metadata (3000 images) gives clean errors, no traps or hangs', function () {
      const r = prng(2024);
      const metaEnd = Math.min(good.length, 4096 * 4);
      const kinds = new Map<string, number>();
      for (let i = 0; i < 3000; i++) {
        const b = Buffer.from(good);
        b.writeUInt32LE(b.readUInt32LE(1024 + 8) & ~1, 1024 + 8); // no sb_csum: let the fuzz reach the inodes
        const flips = 1 + (r() % 6);
        for (let k = 0; k < flips; k++) {
          const at = i % 4 === 0 ? r() % b.length : 1024 + 128 + (r() % (metaEnd - 1152));
          b[at] = r() & 255;
        }
        const k = walkAll(b);
        kinds.set(k, (kinds.get(k) ?? 0) + 1);
      }
      expect([...kinds.keys()].filter((k) => k !== 'ok').length).to.be.greaterThan(0);
    });
  });
});
