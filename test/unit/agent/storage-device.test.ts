/**
 * The agent's storage options that name a converted image's blob device
 * (EROFS device 1): `device-pci=PATH` (QEMU: the PCI path the host's device
 * manager gave it) and `device-serial=SERIAL` (the builtin VMM's
 * virtio-mmio disks, which have no PCI path) both become `device=/dev/vdX`;
 * other options are kept in order; a malformed path or serial, a disk that
 * never appears and a slot holding another kind of device are one
 * StorageError each, naming the path.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { StorageError, resolveDeviceOptions, type DeviceLookup } from '../../../src/agent/storage';

describe('agent/storage: device-pci= and device-serial= for EROFS extra devices', () => {
  let tmp: string;
  let at: DeviceLookup;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-sysdev-'));
    at = { sysPciDevices: path.join(tmp, 'pci'), sysBlock: path.join(tmp, 'block'), devDir: '/dev', timeoutMs: 150 };
    for (const [dev, serial] of [['vda', 'kata-root'], ['vdb', 'immeta'], ['vdc', 'ibblob']]) {
      fs.mkdirSync(path.join(at.sysBlock, dev), { recursive: true });
      fs.writeFileSync(path.join(at.sysBlock, dev, 'serial'), `${serial}\n`);
    }
    // Slot 0x0b: the blob disk, probed by virtio_blk as vdc; slot 0x0c: a network card.
    const blk = path.join(at.sysPciDevices, '0000:00:0b.0', 'virtio4');
    fs.mkdirSync(path.join(blk, 'block', 'vdc'), { recursive: true });
    fs.symlinkSync('../../../../bus/virtio/drivers/virtio_blk', path.join(blk, 'driver'));
    const net = path.join(at.sysPciDevices, '0000:00:0c.0', 'virtio5');
    fs.mkdirSync(net, { recursive: true });
    fs.symlinkSync('../../../../bus/virtio/drivers/virtio_net', path.join(net, 'driver'));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('resolves device-pci= by PCI path and device-serial= by serial, keeping the other options', async () => {
    expect(await resolveDeviceOptions(['ro', 'device-pci=0b', 'noatime'], at)).to.deep.equal(['ro', 'device=/dev/vdc', 'noatime']);
    expect(await resolveDeviceOptions(['ro', 'device-serial=ibblob', 'noatime'], at)).to.deep.equal(['ro', 'device=/dev/vdc', 'noatime']);
    expect(await resolveDeviceOptions(['ro'], at)).to.deep.equal(['ro']);
  });

  it('refuses malformed paths and serials before waiting', async () => {
    for (const bad of ['device-pci=', 'device-pci=0B', 'device-pci=../x', 'device-pci=20', 'device-pci=0b,device=/etc', 'device-serial=../x', 'device-serial=', 'device-serial=a,b']) {
      const e = await resolveDeviceOptions([bad], at).then(() => undefined, (x: Error) => x);
      expect(e, bad).to.be.instanceOf(StorageError);
      expect(e!.message, bad).to.match(/bad device/);
    }
  });

  it('a blob disk that never appears, or a slot holding another device, is one error naming the path', async () => {
    let e = await resolveDeviceOptions(['device-pci=0d'], at).then(() => undefined, (x: Error) => x);
    expect(e).to.be.instanceOf(StorageError);
    expect(e!.message).to.match(/no block device appeared at PCI path 0d within 150 ms/);
    e = await resolveDeviceOptions(['device-pci=0c'], at).then(() => undefined, (x: Error) => x);
    expect(e).to.be.instanceOf(StorageError);
    expect(e!.message).to.match(/PCI path 0c \(0000:00:0c\.0\) is bound to the virtio_net driver, not virtio_blk/);
    e = await resolveDeviceOptions(['device-serial=missing'], at).then(() => undefined, (x: Error) => x);
    expect(e?.message).to.match(/no block device with serial missing/);
  });
});
