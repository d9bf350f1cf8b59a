/**
 * Volumes on the host (src/runtime/volumes.ts): translation of a container's
 * bind mounts to guest paths under the volume share, refusal of bad sources
 * before anything is mounted, and — with real mounts, as root — read-only
 * enforced on the host, host updates seen through the share, and nothing
 * left mounted (or deleted) after removal.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import type { OciMount } from '../../../src/protocols/oci';
import { SANDBOX_SHM_GUEST_DIR, SHARED_GUEST_DIR } from '../../../src/protocols/guest-paths';
import {
  isBindMount, mountsUnder, planVolumes, removeTreeSafely, SandboxVolumes, VolumeError,
} from '../../../src/runtime/volumes';
import { StorageRegistry, StorageSet, type Mounter } from '../../../src/agent/storage';
import { parseVolume, RunError } from '../../../src/cli/run';

function expectVolumeError(fn: () => unknown, re: RegExp): void {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(VolumeError);
    expect((err as VolumeError).kind).to.equal('invalid');
    expect((err as Error).message).to.match(re);
    return;
  }
  expect.fail(`expected a VolumeError matching ${re}`);
}

describe('unit: volumes (bind mounts through the sandbox share)', () => {
  let tmp: string;
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vol-'));
  });
  afterEach(() => {
    removeTreeSafely(tmp);
  });

  describe('planVolumes: translation and validation', () => {
    it('translates file and directory binds to <shared>/<id>/<n>-<basename>, keeping type, options and propagation', () => {
      fs.mkdirSync(path.join(tmp, 'data dir'));
      fs.writeFileSync(path.join(tmp, 'hosts'), '127.0.0.1 localhost\n');
      const mounts: OciMount[] = [
        { destination: '/proc', type: 'proc', source: 'proc' },
        { destination: '/data', type: 'bind', source: path.join(tmp, 'data dir'), options: ['rbind', 'ro', 'rprivate'] },
        { destination: '/etc/hosts', source: path.join(tmp, 'hosts'), options: ['bind', 'rshared'] },
        { destination: '/plain', type: 'bind', source: path.join(tmp, 'hosts') },
      ];
      const p = planVolumes('ctr1', mounts, '/sb/shared');
      expect(p.needsShm).to.equal(false);
      expect(p.volumes).to.deep.equal([
        { source: path.join(tmp, 'data dir'), kind: 'dir', hostTarget: '/sb/mounts/ctr1/0-data_dir', sharedTarget: '/sb/shared/ctr1/0-data_dir', guestSource: `${SHARED_GUEST_DIR}/ctr1/0-data_dir`, readonly: true, recursive: true },
        { source: path.join(tmp, 'hosts'), kind: 'file', hostTarget: '/sb/mounts/ctr1/1-hosts', sharedTarget: '/sb/shared/ctr1/1-hosts', guestSource: `${SHARED_GUEST_DIR}/ctr1/1-hosts`, readonly: false, recursive: false },
        { source: path.join(tmp, 'hosts'), kind: 'file', hostTarget: '/sb/mounts/ctr1/2-hosts', sharedTarget: '/sb/shared/ctr1/2-hosts', guestSource: `${SHARED_GUEST_DIR}/ctr1/2-hosts`, readonly: false, recursive: false },
      ]);
      expect(p.mounts).to.deep.equal([
        { destination: '/proc', type: 'proc', source: 'proc' },
        { destination: '/data', type: 'bind', source: `${SHARED_GUEST_DIR}/ctr1/0-data_dir`, options: ['rbind', 'ro', 'rprivate'] },
        { destination: '/etc/hosts', type: 'bind', source: `${SHARED_GUEST_DIR}/ctr1/1-hosts`, options: ['bind', 'rshared'] },
        { destination: '/plain', type: 'bind', source: `${SHARED_GUEST_DIR}/ctr1/2-hosts`, options: ['rbind'] },
      ]);
      expect(mounts[1]!.source, 'input untouched').to.equal(path.join(tmp, 'data dir'));
    });

    it('turns the /dev/shm bind (CRI sandbox shm) into the pod tmpfs without touching the host source', () => {
      const p = planVolumes('c', [{ destination: '/dev/shm', type: 'bind', source: '/run/containerd/x/shm', options: ['rbind', 'ro'] }], '/s');
      expect(p.needsShm).to.equal(true);
      expect(p.volumes).to.deep.equal([]);
      expect(p.mounts).to.deep.equal([{ destination: '/dev/shm', type: 'bind', source: SANDBOX_SHM_GUEST_DIR, options: ['rbind', 'ro'] }]);
    });

    it('recognises bind mounts by type or by option', () => {
      expect(isBindMount({ destination: '/a', type: 'bind' })).to.equal(true);
      expect(isBindMount({ destination: '/a', type: 'none', options: ['rbind'] })).to.equal(true);
      expect(isBindMount({ destination: '/a', options: ['bind'] })).to.equal(true);
      expect(isBindMount({ destination: '/a', type: 'tmpfs', options: ['nosuid'] })).to.equal(false);
    });

    it('refuses a missing source, a socket, a FIFO, a device, .. and relative paths, with the path in the message', async () => {
      fs.mkdirSync(path.join(tmp, 'd'));
      expectVolumeError(() => planVolumes('c', [{ destination: '/x', type: 'bind', source: path.join(tmp, 'nope') }], '/s'), /nope \(for \/x\) does not exist/);
      expectVolumeError(() => planVolumes('c', [{ destination: '/x', type: 'bind', source: path.join(tmp, 'nope', 'deeper') }], '/s'), /does not exist/);
      const sock = path.join(tmp, 's.sock');
      const srv = net.createServer().listen(sock);
      await new Promise((r) => srv.once('listening', r));
      try {
        expectVolumeError(() => planVolumes('c', [{ destination: '/x', type: 'bind', source: sock }], '/s'), /is a unix socket/);
      } finally {
        srv.close();
      }
      execFileSync('mkfifo', [path.join(tmp, 'fifo')]);
      expectVolumeError(() => planVolumes('c', [{ destination: '/x', type: 'bind', source: path.join(tmp, 'fifo') }], '/s'), /is a FIFO/);
      expectVolumeError(() => planVolumes('c', [{ destination: '/x', type: 'bind', source: '/dev/null' }], '/s'), /is a device node/);
      expectVolumeError(() => planVolumes('c', [{ destination: '/x', type: 'bind', source: `${tmp}/d/../d` }], '/s'), /has a "\.\." component/);
      expectVolumeError(() => planVolumes('c', [{ destination: '/x/../etc', type: 'bind', source: `${tmp}/d` }], '/s'), /destination "\/x\/\.\.\/etc" has a "\.\." component/);
      expectVolumeError(() => planVolumes('c', [{ destination: '/x', type: 'bind', source: 'd' }], '/s'), /must be an absolute host path/);
      expectVolumeError(() => planVolumes('../c', [], '/s'), /invalid container id/);
    });
  });

  describe('SandboxVolumes: host mounts (root)', function () {
    before(function () {
      if (process.getuid?.() !== 0) this.skip();
    });

    const setup = async () => {
      const src = path.join(tmp, 'src');
      fs.mkdirSync(path.join(src, 'cfg', '..2024_01'), { recursive: true });
      fs.writeFileSync(path.join(src, 'cfg', '..2024_01', 'key'), 'v1');
      fs.symlinkSync('..2024_01', path.join(src, 'cfg', '..data'));
      fs.symlinkSync('..data/key', path.join(src, 'cfg', 'key'));
      fs.writeFileSync(path.join(src, 'file.txt'), 'hello');
      fs.mkdirSync(path.join(src, 'rw'));
      const sharedDir = path.join(tmp, 'sandbox', 'shared');
      const vols = new SandboxVolumes(sharedDir);
      const plan = planVolumes('c1', [
        { destination: '/cfg', type: 'bind', source: path.join(src, 'cfg'), options: ['rbind', 'ro'] },
        { destination: '/f', type: 'bind', source: path.join(src, 'file.txt'), options: ['rbind', 'ro'] },
        { destination: '/rw', type: 'bind', source: path.join(src, 'rw'), options: ['rbind'] },
      ], sharedDir);
      await vols.add('c1', plan.volumes);
      return { src, sharedDir, vols, plan };
    };

    it('mounts each source read-only or writable as asked; ro holds on the host (EROFS), writes to rw land in the source', async () => {
      const { src, sharedDir, vols, plan } = await setup();
      try {
        // What the FUSE server serves: the copies in the read-only `shared` view.
        const [cfg, file, rw] = plan.volumes.map((v) => v.sharedTarget);
        expect(fs.readFileSync(path.join(cfg!, 'key'), 'utf8')).to.equal('v1');
        expect(fs.readFileSync(file!, 'utf8')).to.equal('hello');
        expect(() => fs.writeFileSync(path.join(cfg!, 'new'), 'x')).to.throw(/EROFS/);
        expect(() => fs.writeFileSync(file!, 'x')).to.throw(/EROFS/);
        fs.writeFileSync(path.join(rw!, 'out'), 'from guest');
        expect(fs.readFileSync(path.join(src, 'rw', 'out'), 'utf8')).to.equal('from guest');
        const ms = mountsUnder(sharedDir);
        expect(ms[0], 'the shared view is its own read-only mount').to.deep.equal({ target: fs.realpathSync(sharedDir), readonly: true });
        expect(ms.filter((m) => m.target.startsWith(path.join(fs.realpathSync(sharedDir), 'c1') + '/')).map((m) => m.readonly).sort()).to.deep.equal([false, true, true]);
        // The guest cannot change the view's own tree: no new names, no symlink planted where a mount point will go.
        expect(() => fs.mkdirSync(path.join(sharedDir, 'c2'))).to.throw(/EROFS/);
        expect(() => fs.symlinkSync('/etc', path.join(sharedDir, 'c1', '9-x'))).to.throw(/EROFS/);
        expect(() => fs.renameSync(path.join(sharedDir, 'c1'), path.join(sharedDir, 'c9'))).to.throw(/EROFS|EBUSY/);
      } finally {
        await vols.close();
      }
    });

    it('rbind brings the source\'s submounts along, read-only too when the volume is ro', async () => {
      const src = path.join(tmp, 'tree');
      fs.mkdirSync(path.join(src, 'sub'), { recursive: true });
      execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', path.join(src, 'sub')]);
      const sharedDir = path.join(tmp, 'sb', 'shared');
      const vols = new SandboxVolumes(sharedDir);
      try {
        fs.writeFileSync(path.join(src, 'sub', 'in-submount'), 'sub');
        const plan = planVolumes('c3', [
          { destination: '/ro', type: 'bind', source: src, options: ['rbind', 'ro'] },
          { destination: '/flat', type: 'bind', source: src, options: ['bind'] },
        ], sharedDir);
        await vols.add('c3', plan.volumes);
        const [ro, flat] = plan.volumes.map((v) => v.sharedTarget);
        expect(fs.readFileSync(path.join(ro!, 'sub', 'in-submount'), 'utf8')).to.equal('sub');
        expect(() => fs.writeFileSync(path.join(ro!, 'sub', 'x'), 'x'), 'the submount is ro too').to.throw(/EROFS/);
        expect(fs.readdirSync(path.join(flat!, 'sub')), 'bind (not rbind) leaves submounts out').to.deep.equal([]);
      } finally {
        await vols.close();
        execFileSync('umount', [path.join(src, 'sub')]);
      }
      expect(mountsUnder(tmp)).to.deep.equal([]);
    });

    it('shows a configMap-style ..data swap and an in-place file update made on the host', async () => {
      const { src, vols, plan } = await setup();
      try {
        const [cfg, file] = plan.volumes.map((v) => v.sharedTarget);
        // kubelet's atomic writer: new timestamped dir, new ..data symlink renamed over the old one.
        fs.mkdirSync(path.join(src, 'cfg', '..2024_02'));
        fs.writeFileSync(path.join(src, 'cfg', '..2024_02', 'key'), 'v2');
        fs.symlinkSync('..2024_02', path.join(src, 'cfg', '..data_tmp'));
        fs.renameSync(path.join(src, 'cfg', '..data_tmp'), path.join(src, 'cfg', '..data'));
        expect(fs.readFileSync(path.join(cfg!, 'key'), 'utf8')).to.equal('v2');
        fs.writeFileSync(path.join(src, 'file.txt'), 'updated');
        expect(fs.readFileSync(file!, 'utf8')).to.equal('updated');
      } finally {
        await vols.close();
      }
    });

    it('removal unmounts everything, removes only the empty mount points and leaves the sources intact', async () => {
      const { src, sharedDir, vols } = await setup();
      await vols.remove('c1');
      expect(fs.existsSync(path.join(sharedDir, 'c1'))).to.equal(false);
      expect(fs.existsSync(path.join(vols.mountsDir, 'c1'))).to.equal(false);
      const sb = fs.realpathSync(path.dirname(sharedDir));
      expect(mountsUnder(sb).map((m) => m.target).sort()).to.deep.equal([path.join(sb, 'mounts'), path.join(sb, 'shared')]);
      await vols.close();
      expect(mountsUnder(tmp)).to.deep.equal([]);
      expect(fs.readFileSync(path.join(src, 'file.txt'), 'utf8')).to.equal('hello');
      expect(fs.readFileSync(path.join(src, 'cfg', 'key'), 'utf8')).to.equal('v1');
    });

    it('a failure half-way leaves nothing of that container mounted', async () => {
      fs.mkdirSync(path.join(tmp, 'a'));
      fs.mkdirSync(path.join(tmp, 'b'));
      const sharedDir = path.join(tmp, 'sb', 'shared');
      const vols = new SandboxVolumes(sharedDir);
      const plan = planVolumes('c2', [
        { destination: '/a', type: 'bind', source: path.join(tmp, 'a'), options: ['rbind'] },
        { destination: '/b', type: 'bind', source: path.join(tmp, 'b'), options: ['rbind'] },
      ], sharedDir);
      fs.rmdirSync(path.join(tmp, 'b')); // gone between validation and mount
      try {
        let caught: unknown;
        await vols.add('c2', plan.volumes).catch((e) => (caught = e));
        expect(caught).to.be.instanceOf(VolumeError);
        expect(mountsUnder(path.join(sharedDir, 'c2'))).to.deep.equal([]);
        expect(mountsUnder(path.join(vols.mountsDir, 'c2'))).to.deep.equal([]);
        expect(fs.existsSync(path.join(vols.mountsDir, 'c2'))).to.equal(false);
      } finally {
        await vols.close();
      }
      expect(mountsUnder(tmp)).to.deep.equal([]);
    });

    it('removeTreeSafely unmounts before deleting: the data behind a leftover volume mount survives', async () => {
      const { src, sharedDir } = await setup(); // as after a crash: nobody calls close()
      expect(mountsUnder(sharedDir).length).to.be.greaterThan(1);
      expect(removeTreeSafely(path.join(tmp, 'sandbox'))).to.equal(true);
      expect(fs.existsSync(path.join(tmp, 'sandbox'))).to.equal(false);
      expect(fs.readFileSync(path.join(src, 'file.txt'), 'utf8')).to.equal('hello');
      expect(fs.readdirSync(path.join(src, 'rw'))).to.deep.equal([]);
      expect(fs.existsSync(path.join(src, 'cfg', '..2024_01', 'key'))).to.equal(true);
    });
  });

  describe('kata-ts run --volume', () => {
    it('parses HOST:GUEST[:ro|rw] into a Docker-style bind mount and refuses the rest', () => {
      expect(parseVolume('/srv/data:/data')).to.deep.equal({ destination: '/data', type: 'bind', source: '/srv/data', options: ['rbind', 'rprivate', 'rw'] });
      expect(parseVolume('rel/dir:/d:ro')).to.deep.equal({ destination: '/d', type: 'bind', source: path.resolve('rel/dir'), options: ['rbind', 'rprivate', 'ro'] });
      for (const bad of ['/a', '/a:b', '/a:/b:rx', ':/b', '/a:/b:ro:x']) expect(() => parseVolume(bad), bad).to.throw(RunError, /invalid --volume/);
      expect(() => parseVolume('/srv/../etc:/x'), 'not normalised away').to.throw(VolumeError, /has a "\.\." component/);
    });
  });

  describe('agent storages: counted by mount point across containers', () => {
    it('mounts the share once for two containers and unmounts it with the last', async () => {
      const calls: string[] = [];
      const mounter: Mounter = {
        async mount(source, target, fstype) {
          calls.push(`mount ${fstype} ${source} ${target}`);
        },
        async umount(target) {
          calls.push(`umount ${target}`);
        },
      };
      const reg = new StorageRegistry(mounter);
      const share = { driver: 'virtiofs', source: 'kataShared', fstype: 'virtiofs', options: [], mount_point: path.join(tmp, 'shared') };
      const shm = { driver: 'ephemeral', source: 'shm', fstype: 'tmpfs', options: ['mode=1777'], mount_point: path.join(tmp, 'shm') };
      const a = new StorageSet(mounter, reg);
      const b = new StorageSet(mounter, reg);
      await Promise.all([a.add(share, tmp), b.add(share, tmp)]);
      await b.add(shm, tmp);
      expect(calls).to.deep.equal([`mount virtiofs kataShared ${share.mount_point}`, `mount tmpfs shm ${shm.mount_point}`]);
      await a.removeAll();
      expect(calls).to.have.length(2);
      await b.removeAll();
      expect(calls.slice(2)).to.deep.equal([`umount ${shm.mount_point}`, `umount ${share.mount_point}`]);
      expect(reg.mounted).to.deep.equal([]);
    });
  });
});
