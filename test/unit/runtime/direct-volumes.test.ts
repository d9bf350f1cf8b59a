/**
 * planDirectMounts (src/runtime/direct-volumes.ts): only bind mounts whose
 * source is a registered direct volume are taken out of the shared-fs path;
 * each becomes a disk (id from the volume path, read-only when the mount or
 * mountInfo says so) and a bind of its guest mount point.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DirectVolumeStore, encodeVolumePath, volumeDeviceBytes } from '../../../src/resource/volumes/direct-volume';
import { planDirectMounts, directVolumeDiskId, SandboxDirectVolumes } from '../../../src/runtime/direct-volumes';
import type { DeviceManager } from '../../../src/resource/devices/device-manager';
import { DIRECT_VOLUME_GUEST_DIR, isDirectVolumeGuestPath } from '../../../src/protocols/guest-paths';

describe('unit: direct-volume mounts plan', () => {
  let dir: string;
  let store: DirectVolumeStore;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dvplan-'));
    fs.writeFileSync(path.join(dir, 'a.img'), Buffer.alloc(4096));
    store = new DirectVolumeStore(path.join(dir, 'root'));
    store.add('/vol/a', JSON.stringify({ device: path.join(dir, 'a.img'), fstype: 'ext4' }));
    store.add('/vol/ro', JSON.stringify({ device: path.join(dir, 'a.img'), fstype: 'erofs', options: ['ro'] }));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('splits direct volumes from ordinary mounts', () => {
    const mounts = [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/data', type: 'bind', source: '/vol/a', options: ['rbind', 'nosuid'] },
      { destination: '/other', type: 'bind', source: '/vol/other', options: ['rbind'] },
      { destination: '/img', source: '/vol/ro', options: ['bind'] },
      { destination: '/notbind', type: 'tmpfs', source: '/vol/a' },
      { destination: '/data-ro', type: 'bind', source: '/vol/a', options: ['rbind', 'ro'] },
    ];
    const { rest, direct } = planDirectMounts(mounts, store);
    expect(rest!.map((m) => m.destination)).to.deep.equal(['/proc', '/other', '/notbind']);
    expect(direct).to.have.length(3);
    const [a, ro, aRo] = direct;
    // A container's own ro is its bind's: the shared disk stays as the volume is.
    expect(aRo.disk).to.deep.equal(a.disk);
    expect(aRo.mount.options).to.deep.equal(['rbind', 'ro']);
    expect(a.disk).to.deep.equal({ kind: 'blk', id: directVolumeDiskId('/vol/a'), path: path.join(dir, 'a.img'), readonly: false });
    expect(a.disk.id).to.have.length(20);
    expect(a.guestPath).to.equal(`${DIRECT_VOLUME_GUEST_DIR}/${encodeVolumePath('/vol/a')}`);
    expect(isDirectVolumeGuestPath(a.guestPath)).to.equal(true);
    expect(a.mount).to.deep.equal({ destination: '/data', type: 'bind', source: a.guestPath, options: ['rbind', 'rw', 'nosuid'] });
    expect(ro.disk.readonly).to.equal(true);
    expect(ro.mount.options).to.deep.equal(['rbind', 'ro']);
  });

  it('no mounts, or none direct: unchanged', () => {
    expect(planDirectMounts(undefined, store)).to.deep.equal({ rest: undefined, direct: [] });
    const m = [{ destination: '/x', type: 'bind', source: '/elsewhere' }];
    expect(planDirectMounts(m, store)).to.deep.equal({ rest: m, direct: [] });
  });

  it('resize target: a size below the device is refused before anything changes; same or larger names the disk', async () => {
    const devices = { attach: async () => ({ pciPath: '06' }), detach: async () => undefined } as unknown as DeviceManager;
    const sv = new SandboxDirectVolumes('sb1', store, devices);
    const spec = { ociVersion: '1.0.2', mounts: [{ destination: '/data', type: 'bind', source: '/vol/a', options: ['rbind'] }] };
    const { storages } = await sv.attach('c1', spec as never);
    const gp = storages[0].mount_point;
    expect(volumeDeviceBytes(path.join(dir, 'a.img'))).to.equal(4096);
    expect(() => sv.diskOf(gp, 2048)).to.throw(/2048 bytes is smaller than its device \(4096 bytes\); direct volumes only grow/);
    expect(fs.statSync(path.join(dir, 'a.img')).size).to.equal(4096);
    expect(sv.diskOf(gp, 4096)).to.equal(directVolumeDiskId('/vol/a'));
    expect(sv.diskOf(gp, 1 << 20)).to.equal(directVolumeDiskId('/vol/a'));
    expect(() => sv.diskOf('/run/elsewhere', 1 << 20)).to.throw(/no direct volume of sandbox sb1 is mounted at/);
    expect(() => volumeDeviceBytes(path.join(dir, 'gone.img'))).to.throw(/does not exist/);
    await sv.releaseAll();
  });
});
