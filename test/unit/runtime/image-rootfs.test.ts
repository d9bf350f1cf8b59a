/**
 * src/runtime/image-rootfs.ts without a VM: the process an image runs
 * (docker semantics for entrypoint/cmd), the shim's choice of a converted
 * image from annotations (explicit → found or an error; CRI's image-name →
 * only with [image] containerd_images, falling back to the snapshot), the two
 * disks a container gets, and `kata-ts run --image` usage errors.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { defaultConfig, type Config } from '../../../src/runtime/config';
import { CRI_IMAGE_NAME_ANNOTATION, IMAGE_ANNOTATION, ImageRootfsError, imageDiskIds, imageForContainer, imageProcess, imageStorages, openImageDisks } from '../../../src/runtime/image-rootfs';
import { resolveImageContainer } from '../../../src/cli/run';
import { convertImage } from '../../../src/image/convert';
import { configureLogging } from '../../../src/common/log';
import { buildOciLayout } from '../../helpers/oci-layout';
import type { ImageRecord } from '../../../src/image/store';

describe('runtime/image-rootfs: containers from converted images', function () {
  this.timeout(60000);
  let dir: string;
  let cfg: Config;
  let id = '';
  before(async () => {
    configureLogging({ silent: true });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-imgroot-'));
    const layer = path.join(dir, 'layer');
    fs.mkdirSync(path.join(layer, 'bin'), { recursive: true });
    fs.writeFileSync(path.join(layer, 'bin', 'hello'), 'x'.repeat(100000));
    buildOciLayout(path.join(dir, 'oci'), { layers: [layer], tag: 't', entrypoint: ['/bin/hello'], cmd: ['--a'], env: ['A=1'], workdir: '/w' });
    cfg = defaultConfig();
    cfg.image.store_dir = path.join(dir, 'store');
    id = (await convertImage(`${path.join(dir, 'oci')}:t`, { store: cfg.image.store_dir, progress: false })).id;
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('runs entrypoint + cmd; a given command replaces cmd and keeps the entrypoint', () => {
    const rec = { id: 'sha256:x', config: { entrypoint: ['/e'], cmd: ['c1'], env: ['A=1'], cwd: '', user: '' } } as unknown as ImageRecord;
    expect(imageProcess(rec, [])).to.deep.equal({ args: ['/e', 'c1'], env: ['A=1'], cwd: '/', user: '' });
    expect(imageProcess(rec, ['x', 'y']).args).to.deep.equal(['/e', 'x', 'y']);
    const empty = { ...rec, config: { ...rec.config, entrypoint: [], cmd: [] } } as ImageRecord;
    expect(() => imageProcess(empty, [])).to.throw(ImageRootfsError, /no entrypoint or cmd/);
  });

  it('chooses the converted image from annotations as documented', async () => {
    const ctrd = { address: path.join(dir, 'no-such.sock'), namespace: 'x' };
    expect(await imageForContainer(cfg, undefined, ctrd)).to.equal(undefined);
    expect(await imageForContainer(cfg, { [IMAGE_ANNOTATION]: id }, ctrd)).to.equal(id);
    expect(await imageForContainer(cfg, { [IMAGE_ANNOTATION]: id.slice(7, 20) }, ctrd)).to.equal(id);
    // Asked for and absent (ctr cannot find it either): an error naming the annotation.
    const err = await imageForContainer(cfg, { [IMAGE_ANNOTATION]: 'docker.io/none/x:1' }, ctrd).then(() => undefined, (e: Error) => e);
    expect(err).to.be.instanceOf(ImageRootfsError);
    expect(err!.message).to.include(`${IMAGE_ANNOTATION}=docker.io/none/x:1`);
    // CRI's annotation only with containerd_images; a miss falls back to the snapshot.
    expect(await imageForContainer(cfg, { [CRI_IMAGE_NAME_ANNOTATION]: id }, ctrd)).to.equal(undefined);
    const on = { ...cfg, image: { ...cfg.image, containerd_images: true } };
    expect(await imageForContainer(on, { [CRI_IMAGE_NAME_ANNOTATION]: id }, ctrd)).to.equal(id);
    expect(await imageForContainer(on, { [CRI_IMAGE_NAME_ANNOTATION]: 'docker.io/none/x:1' }, ctrd)).to.equal(undefined);
  });

  it('gives a container two read-only disks (metadata file, computed blob device) and the EROFS + overlay storages', () => {
    const d = openImageDisks(cfg, 'a-container-id-that-is-long', id);
    try {
      const ids = imageDiskIds('a-container-id-that-is-long');
      expect(ids.meta.length).to.be.at.most(20);
      expect(d.disks.map((x) => [x.id, x.readonly, !!x.backend])).to.deep.equal([[ids.meta, true, false], [ids.blob, true, true]]);
      expect(fs.existsSync(d.disks[0].path)).to.equal(true);
      expect(d.device.size % 4096).to.equal(0);
      // On PCI (QEMU) both disks are named by where the device manager put them.
      const slots: Record<string, string> = { [ids.meta]: '0a', [ids.blob]: '0b' };
      const st = imageStorages('a-container-id-that-is-long', '/lower', '/root', (disk) => slots[disk]);
      expect(st[0]).to.deep.include({ driver: 'blk', source: '0a', fstype: 'erofs', options: ['ro', 'device-pci=0b'] });
      // virtio-mmio (builtin VMM): no PCI path, so by serial.
      const mmio = imageStorages('a-container-id-that-is-long', '/lower', '/root', () => undefined);
      expect(mmio[0]).to.deep.include({ driver: 'blk', source: ids.meta, fstype: 'erofs', options: ['ro', `device-serial=${ids.blob}`] });
      expect(st[1]).to.deep.include({ driver: 'overlay', mount_point: '/root', options: ['lowerdir=/lower'] });
    } finally { d.device.close(); }
    expect(() => openImageDisks(cfg, 'c', 'sha256:' + '0'.repeat(64))).to.throw(/not in the store/);
  });

  it('kata-ts run --image: the image config applies, flags win, bad combinations are refused', async () => {
    const base = { hypervisor: 'auto' as const, env: ['B=2'], tty: false, readonly: false, command: [] as string[], image: id };
    const { spec, imageId } = await resolveImageContainer(base, cfg);
    expect(imageId).to.equal(id);
    expect(spec.process!.args).to.deep.equal(['/bin/hello', '--a']);
    expect(spec.process!.cwd).to.equal('/w');
    expect(spec.process!.env).to.include.members(['A=1', 'B=2']);
    expect((await resolveImageContainer({ ...base, workdir: '/x', command: ['--b'] }, cfg)).spec.process!.args).to.deep.equal(['/bin/hello', '--b']);
    for (const bad of [{ rootfs: '/tmp' }, { bundle: '/tmp' }, { rootfsShare: 'erofs' as const }, { workdir: 'rel' }]) {
      const e = await resolveImageContainer({ ...base, ...bad }, cfg).then(() => undefined, (x: Error) => x);
      expect(e, JSON.stringify(bad)).to.be.instanceOf(Error);
    }
  });
});
