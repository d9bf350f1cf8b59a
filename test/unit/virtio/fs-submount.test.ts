/**
 * The passthrough server across host mounts below its shared directory —
 * the sandbox share, where each container's rootfs (and each volume) is a
 * bind mount of its own (src/runtime/volumes.ts). With two tmpfs mounts
 * under the share (real mounts: needs root):
 * - a LOOKUP crosses into a mount, and the entry is flagged
 *   FUSE_ATTR_SUBMOUNT when the guest negotiated FUSE_SUBMOUNTS (only then),
 *   so the guest gives that tree its own st_dev;
 * - inode identity includes the device: the same st_ino on two mounts is
 *   two nodeids;
 * - READDIRPLUS through a mount point and inside the mount;
 * - rename and link across mounts fail with EXDEV, as on the host;
 * - forgetDevice lets go of every inode of one mount (fds closed, nodeids
 *   EBADF from then on) and of nothing else.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { configureLogging } from '../../../src/common/log';
import { PassthroughFs } from '../../../src/virtio/fs/passthrough';
import { FuseServer } from '../../../src/virtio/fs/server';
import { FsError } from '../../../src/virtio/fs/constants';
import { cstr, FuseClient, parseEntry } from './fs-client';
import { skipOrFail } from '../../helpers/skip';

const LOOKUP = 1, FUSE_SUBMOUNTS = 1 << 27, FUSE_ATTR_SUBMOUNT = 1;
/** fuse_entry_out: attr at 40, fuse_attr.flags at attr + 84. */
const ATTR_FLAGS_AT = 40 + 84;

function errnoOf(fn: () => unknown): number {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(FsError);
    return (err as FsError).errno;
  }
  return 0;
}

describe('unit: virtio-fs across mounts below the shared directory', function () {
  let dir = '';
  let pfs: PassthroughFs | undefined;
  const mounted: string[] = [];

  before(function () {
    if (process.getuid?.() !== 0) skipOrFail(this, 'mounting tmpfs below the shared directory needs root');
    configureLogging({ level: 'error' });
  });

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-fs-submount-'));
    for (const c of ['c1', 'c2']) {
      const root = path.join(dir, c, 'rootfs');
      fs.mkdirSync(root, { recursive: true });
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', root]);
      mounted.push(root);
      // Fresh tmpfs instances number their inodes alike: the same st_ino on two devices.
      fs.writeFileSync(path.join(root, 'same'), c);
      fs.mkdirSync(path.join(root, 'etc'));
    }
    fs.writeFileSync(path.join(dir, 'c1', 'hosts'), 'on the share root fs');
    pfs = new PassthroughFs(dir);
  });

  afterEach(() => {
    pfs?.close();
    pfs = undefined;
    while (mounted.length) execFileSync('umount', [mounted.pop()!]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('LOOKUP crosses into a mount and flags it FUSE_ATTR_SUBMOUNT when negotiated (only then)', async () => {
    for (const negotiated of [true, false]) {
      const c = new FuseClient(new FuseServer(pfs!));
      const init = await c.init(38, negotiated ? FUSE_SUBMOUNTS : 0);
      expect(init.readUInt32LE(12) & FUSE_SUBMOUNTS, 'INIT answers FUSE_SUBMOUNTS when offered').to.equal(negotiated ? FUSE_SUBMOUNTS : 0);
      const c1 = await c.lookup(1, 'c1');
      const look = async (parent: bigint, name: string) => c.ok(LOOKUP, parent, cstr(name));
      const rootfs = await look(c1.nodeid, 'rootfs');
      expect(rootfs.readUInt32LE(ATTR_FLAGS_AT), `rootfs (negotiated: ${negotiated})`).to.equal(negotiated ? FUSE_ATTR_SUBMOUNT : 0);
      // Same filesystem as its parent: no flag, neither inside the mount nor on the share's own fs.
      expect((await look(parseEntry(rootfs).nodeid, 'etc')).readUInt32LE(ATTR_FLAGS_AT)).to.equal(0);
      expect((await look(1n, 'c1')).readUInt32LE(ATTR_FLAGS_AT)).to.equal(0);
      const hostSt = fs.statSync(path.join(dir, 'c1', 'rootfs'));
      expect(parseEntry(rootfs).attr.ino).to.equal(BigInt(hostSt.ino));
      // READDIRPLUS through the mount point carries the same entry (and the flag).
      const fh = await c.opendir(c1.nodeid);
      const list = await c.readdir(fh, 0n, 4096, true);
      await c.release(fh, true);
      const plus = list.find((e) => e.name === 'rootfs')?.entry;
      expect(plus?.nodeid).to.equal(parseEntry(rootfs).nodeid);
      expect(plus?.attrFlags, 'READDIRPLUS flags it as LOOKUP does').to.equal(negotiated ? FUSE_ATTR_SUBMOUNT : 0);
      expect(list.find((e) => e.name === 'hosts')?.entry?.attrFlags).to.equal(0);
    }
  });

  it('keys inodes by (st_dev, st_ino): the same inode number on two mounts is two nodeids', () => {
    const p = pfs!;
    const files = ['c1', 'c2'].map((c) => {
      const cd = p.lookup(1, Buffer.from(c));
      const root = p.lookup(cd.inode.id, Buffer.from('rootfs'));
      return p.lookup(root.inode.id, Buffer.from('same'));
    });
    const [a, b] = files.map((e) => fs.statSync(path.join(dir, e === files[0] ? 'c1' : 'c2', 'rootfs', 'same'), { bigint: true }));
    expect(a!.dev).to.not.equal(b!.dev);
    expect(files[0]!.inode.id).to.not.equal(files[1]!.inode.id);
    expect(files[0]!.inode.key).to.not.equal(files[1]!.inode.key);
    // Looked up again: the same nodeid (one inode per host inode).
    const again = p.lookup(p.lookup(p.lookup(1, Buffer.from('c1')).inode.id, Buffer.from('rootfs')).inode.id, Buffer.from('same'));
    expect(again.inode.id).to.equal(files[0]!.inode.id);
  });

  it('rename and link across mounts are EXDEV; within a mount they work', () => {
    const p = pfs!;
    const c1 = p.lookup(1, Buffer.from('c1'));
    const r1 = p.lookup(c1.inode.id, Buffer.from('rootfs'));
    const r2 = p.lookup(p.lookup(1, Buffer.from('c2')).inode.id, Buffer.from('rootfs'));
    const file = p.lookup(r1.inode.id, Buffer.from('same'));
    const exdev = os.constants.errno.EXDEV;
    expect(errnoOf(() => p.rename(BigInt(r1.inode.id), Buffer.from('same'), BigInt(r2.inode.id), Buffer.from('moved'), 0))).to.equal(exdev);
    expect(errnoOf(() => p.rename(BigInt(c1.inode.id), Buffer.from('hosts'), BigInt(r1.inode.id), Buffer.from('hosts'), 0))).to.equal(exdev);
    expect(errnoOf(() => p.link(BigInt(file.inode.id), BigInt(r2.inode.id), Buffer.from('linked')))).to.equal(exdev);
    p.rename(BigInt(r1.inode.id), Buffer.from('same'), BigInt(r1.inode.id), Buffer.from('renamed'), 0);
    expect(fs.readFileSync(path.join(dir, 'c1', 'rootfs', 'renamed'), 'utf8')).to.equal('c1');
    expect(fs.existsSync(path.join(dir, 'c2', 'rootfs', 'moved'))).to.equal(false);
  });

  it('forgetDevice lets go of one mount\'s inodes (their fds closed, nodeids EBADF) and of nothing else', () => {
    const p = pfs!;
    const c1 = p.lookup(1, Buffer.from('c1'));
    const r1 = p.lookup(c1.inode.id, Buffer.from('rootfs'));
    const in1 = p.lookup(r1.inode.id, Buffer.from('etc'));
    const r2 = p.lookup(p.lookup(1, Buffer.from('c2')).inode.id, Buffer.from('rootfs'));
    const in2 = p.lookup(r2.inode.id, Buffer.from('same'));
    const hosts = p.lookup(c1.inode.id, Buffer.from('hosts'));
    const fdsBefore = fs.readdirSync('/proc/self/fd').length;
    const dev1 = fs.statSync(path.join(dir, 'c1', 'rootfs'), { bigint: true }).dev;
    expect(p.forgetDevice(dev1)).to.equal(2);
    expect(fs.readdirSync('/proc/self/fd').length, 'their O_PATH fds are closed').to.equal(fdsBefore - 2);
    const ebadf = os.constants.errno.EBADF;
    for (const gone of [r1, in1]) expect(errnoOf(() => p.getattr(BigInt(gone.inode.id)))).to.equal(ebadf);
    // A late FORGET of a dropped nodeid is ignored.
    p.forget(BigInt(in1.inode.id), 1n);
    for (const kept of [c1, r2, in2, hosts]) expect(p.getattr(BigInt(kept.inode.id))).to.have.length.above(0);
    // The mount can go now: the server holds nothing in it (a plain umount, not lazy, succeeds).
    execFileSync('umount', [path.join(dir, 'c1', 'rootfs')]);
    mounted.splice(mounted.indexOf(path.join(dir, 'c1', 'rootfs')), 1);
    // A new lookup there reaches the share's own directory again, as a new nodeid.
    const under = p.lookup(c1.inode.id, Buffer.from('rootfs'));
    expect(under.inode.id).to.not.equal(r1.inode.id);
    expect(under.crossesMount ?? false).to.equal(false);
  });
});
