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
import { DirectVolumeStore, encodeVolumePath } from '../../../src/resource/volumes/direct-volume';
import { planDirectMounts, directVolumeDiskId } from '../../../src/runtime/direct-volumes';
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
});
