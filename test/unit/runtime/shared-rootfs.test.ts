/**
 * Container roots through the sandbox share (src/runtime/volumes.ts
 * planRootfs / SandboxVolumes.addRootfs, Kata's shared directory): the plan
 * and its refusals, then — with real mounts, as root — a containerd-like
 * snapshot (its own tmpfs) bound writable into `mounts/<id>/rootfs` and seen
 * writable in the read-only `shared` view next to the container's volumes,
 * writes landing in the snapshot, removal unmounting everything and naming
 * the snapshot's device as the rootfs's own, and a failure leaving nothing
 * mounted.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { SHARED_GUEST_DIR, sharedRootfsGuestPath } from '../../../src/protocols/guest-paths';
import { mountsUnder, planRootfs, planVolumes, removeTreeSafely, SandboxVolumes, VolumeError } from '../../../src/runtime/volumes';
import { skipOrFail } from '../../helpers/skip';

async function rejection(p: Promise<unknown>): Promise<Error> {
  const err = await p.then(() => undefined, (e: Error) => e);
  if (!err) expect.fail('expected a rejection');
  return err;
}

describe('unit: container rootfs through the sandbox share', () => {
  let tmp: string;
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shrootfs-'));
  });
  afterEach(() => {
    removeTreeSafely(tmp);
  });

  it('plans <mounts>/<id>/rootfs, its view in <shared>, and the guest path under the shared guest dir', () => {
    fs.mkdirSync(path.join(tmp, 'snap'));
    expect(planRootfs('ctr1', path.join(tmp, 'snap'), '/sb/shared')).to.deep.equal({
      source: path.join(tmp, 'snap'), kind: 'dir', hostTarget: '/sb/mounts/ctr1/rootfs', sharedTarget: '/sb/shared/ctr1/rootfs',
      guestSource: `${SHARED_GUEST_DIR}/ctr1/rootfs`, readonly: false, recursive: true,
    });
    expect(sharedRootfsGuestPath('ctr1')).to.equal(`${SHARED_GUEST_DIR}/ctr1/rootfs`);
  });

  it('refuses a missing or non-directory rootfs, relative or .. paths and bad ids, with the path in the message', () => {
    fs.writeFileSync(path.join(tmp, 'file'), '');
    const bad: [() => unknown, RegExp][] = [
      [() => planRootfs('c', path.join(tmp, 'nope'), '/s'), /rootfs .*nope is not a directory/],
      [() => planRootfs('c', path.join(tmp, 'file'), '/s'), /rootfs .*file is not a directory/],
      [() => planRootfs('c', 'rel/dir', '/s'), /must be an absolute host path/],
      [() => planRootfs('c', `${tmp}/../x`, '/s'), /without "\.\."/],
      [() => planRootfs('../c', tmp, '/s'), /invalid container id/],
    ];
    for (const [fn, re] of bad) {
      expect(fn).to.throw(VolumeError, re);
    }
  });

  describe('host mounts (root)', function () {
    const mounted: string[] = [];
    before(function () {
      if (process.getuid?.() !== 0) skipOrFail(this, 'bind mounts need root');
    });
    afterEach(() => {
      while (mounted.length) execFileSync('umount', ['-l', mounted.pop()!]);
    });

    /** A containerd-like snapshot: a filesystem of its own, mounted at <bundle>/rootfs. */
    const snapshot = (name: string): string => {
      const root = path.join(tmp, name, 'rootfs');
      fs.mkdirSync(root, { recursive: true });
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', root]);
      mounted.push(root);
      fs.mkdirSync(path.join(root, 'etc'));
      fs.writeFileSync(path.join(root, 'etc', 'os-release'), 'ID=test\n');
      return root;
    };

    it('binds a rootfs writable beside read-only volumes; writes land in the snapshot; removal leaves no mount and names its device', async () => {
      const root = snapshot('bundle');
      fs.writeFileSync(path.join(tmp, 'hosts'), '127.0.0.1 localhost\n');
      const sharedDir = path.join(tmp, 'sandbox', 'shared');
      const vols = new SandboxVolumes(sharedDir);
      try {
        // Volumes first (as createContainer does), then the rootfs.
        const plan = planVolumes('app', [{ destination: '/etc/hosts', type: 'bind', source: path.join(tmp, 'hosts'), options: ['rbind', 'ro'] }], sharedDir);
        await vols.add('app', plan.volumes);
        const r = planRootfs('app', root, sharedDir);
        await vols.addRootfs('app', r);
        expect(vols.hasRootfs('app')).to.equal(true);
        // What the FUSE server serves: the view. The rootfs is writable there, the view's own tree is not.
        expect(fs.readFileSync(path.join(r.sharedTarget, 'etc', 'os-release'), 'utf8')).to.equal('ID=test\n');
        fs.writeFileSync(path.join(r.sharedTarget, 'written-by-container'), 'x');
        expect(fs.readFileSync(path.join(root, 'written-by-container'), 'utf8'), 'the write is in the snapshot').to.equal('x');
        expect(() => fs.writeFileSync(plan.volumes[0]!.sharedTarget, 'x')).to.throw(/EROFS/);
        expect(() => fs.mkdirSync(path.join(sharedDir, 'app', 'planted'))).to.throw(/EROFS/);
        const view = mountsUnder(path.join(sharedDir, 'app'));
        expect(view.find((m) => m.target === fs.realpathSync(r.sharedTarget))?.readonly, 'rootfs view rw').to.equal(false);
        expect((await rejection(vols.addRootfs('app', r))).message).to.match(/already shared/);
        const dev = await vols.remove('app');
        expect(dev, 'the snapshot is the rootfs\'s own filesystem').to.equal(fs.statSync(root, { bigint: true }).dev);
        expect(vols.hasRootfs('app')).to.equal(false);
        expect(mountsUnder(path.join(vols.mountsDir, 'app'))).to.deep.equal([]);
        expect(mountsUnder(path.join(sharedDir, 'app'))).to.deep.equal([]);
        expect(fs.existsSync(path.join(vols.mountsDir, 'app'))).to.equal(false);
        expect(fs.readFileSync(path.join(root, 'etc', 'os-release'), 'utf8'), 'the snapshot is intact').to.equal('ID=test\n');
      } finally {
        await vols.close();
      }
      const sb = fs.realpathSync(path.join(tmp, 'sandbox'));
      expect(mountsUnder(sb)).to.deep.equal([]);
    });

    it('a boot container: rootfs first, volumes after; a plain directory on the share\'s filesystem is not named as its own device', async () => {
      const plain = path.join(tmp, 'plain-rootfs');
      fs.mkdirSync(plain);
      fs.writeFileSync(path.join(tmp, 'cfg'), 'v');
      const sharedDir = path.join(tmp, 'sandbox', 'shared');
      const vols = new SandboxVolumes(sharedDir);
      try {
        await vols.addRootfs('boot', planRootfs('boot', plain, sharedDir));
        await vols.add('boot', planVolumes('boot', [{ destination: '/cfg', type: 'bind', source: path.join(tmp, 'cfg') }], sharedDir).volumes);
        expect(mountsUnder(path.join(vols.mountsDir, 'boot')).length).to.equal(2);
        expect(await vols.remove('boot'), 'same filesystem as the share: nothing to forget by device').to.equal(undefined);
        expect(mountsUnder(path.join(vols.mountsDir, 'boot'))).to.deep.equal([]);
      } finally {
        await vols.close();
      }
    });

    it('a rootfs that disappears before it is bound leaves nothing mounted; close() unbinds a rootfs never removed', async () => {
      const sharedDir = path.join(tmp, 'sandbox', 'shared');
      const vols = new SandboxVolumes(sharedDir);
      try {
        fs.mkdirSync(path.join(tmp, 'gone'));
        const r = planRootfs('c1', path.join(tmp, 'gone'), sharedDir);
        fs.rmdirSync(path.join(tmp, 'gone'));
        expect(await rejection(vols.addRootfs('c1', r))).to.be.instanceOf(VolumeError);
        expect(vols.hasRootfs('c1')).to.equal(false);
        expect(mountsUnder(path.join(vols.mountsDir, 'c1'))).to.deep.equal([]);
        expect(fs.existsSync(r.hostTarget)).to.equal(false);
        await vols.addRootfs('c2', planRootfs('c2', snapshot('b2'), sharedDir));
      } finally {
        await vols.close();
      }
      expect(mountsUnder(fs.realpathSync(path.join(tmp, 'sandbox')))).to.deep.equal([]);
    });
  });
});
