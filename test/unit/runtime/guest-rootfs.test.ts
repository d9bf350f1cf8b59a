/**
 * The guest image's copy of the default container rootfs
 * (src/runtime/guest-rootfs.ts): used only for the default rootfs
 * directory, only when the marker beside the image names a path under
 * /opt/kata-ts/rootfs; anything else (another rootfs, no marker, a marker
 * naming another place) means the disk, as before.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { expect } from 'chai';
import { defaultConfig } from '../../../src/runtime/config';
import { defaultRootfsDir, guestCopyOfRootfs, GUEST_ROOTFS_MARKER } from '../../../src/runtime/guest-rootfs';

describe('runtime: the default rootfs inside the guest image', () => {
  let tmp: string;
  let cfg: ReturnType<typeof defaultConfig>;
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-guest-rootfs-'));
    cfg = defaultConfig();
    cfg.runtime.cache_dir = tmp;
    cfg['hypervisor.qemu'].image = '';
    fs.mkdirSync(path.join(tmp, 'image'));
    fs.mkdirSync(defaultRootfsDir(cfg), { recursive: true });
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const mark = (text: string) => fs.writeFileSync(path.join(tmp, 'image', GUEST_ROOTFS_MARKER), text);

  it('names the guest copy for the default rootfs when the image has the marker', () => {
    mark('/opt/kata-ts/rootfs/busybox\n');
    expect(guestCopyOfRootfs(cfg, 'qemu', defaultRootfsDir(cfg))).to.equal('/opt/kata-ts/rootfs/busybox');
    expect(guestCopyOfRootfs(cfg, 'qemu', `${defaultRootfsDir(cfg)}/`)).to.equal('/opt/kata-ts/rootfs/busybox');
  });

  it('is undefined for another rootfs, without the marker, or with a marker naming another place', () => {
    expect(guestCopyOfRootfs(cfg, 'qemu', defaultRootfsDir(cfg))).to.equal(undefined);
    mark('/opt/kata-ts/rootfs/busybox\n');
    expect(guestCopyOfRootfs(cfg, 'qemu', path.join(tmp, 'other'))).to.equal(undefined);
    expect(guestCopyOfRootfs(cfg, 'qemu', '')).to.equal(undefined);
    for (const bad of ['/', '/etc', '/opt/kata-ts/rootfs/../../etc', 'relative', '/opt/kata-ts/rootfs/a b']) {
      mark(bad);
      expect(guestCopyOfRootfs(cfg, 'qemu', defaultRootfsDir(cfg)), bad).to.equal(undefined);
    }
  });

  it('follows the image the hypervisor boots (an explicit image without a marker: the disk)', () => {
    mark('/opt/kata-ts/rootfs/busybox\n');
    fs.mkdirSync(path.join(tmp, 'other-image'));
    cfg['hypervisor.qemu'].image = path.join(tmp, 'other-image', 'rootfs.erofs');
    expect(guestCopyOfRootfs(cfg, 'qemu', defaultRootfsDir(cfg))).to.equal(undefined);
    expect(guestCopyOfRootfs(cfg, 'builtin', defaultRootfsDir(cfg))).to.equal('/opt/kata-ts/rootfs/busybox');
  });
});
