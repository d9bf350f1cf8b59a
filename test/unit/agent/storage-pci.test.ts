/**
 * Storages found by PCI path in a fake sysfs (src/agent/storage.ts +
 * pci-device.ts): a virtio-fs share is mounted by tag only once the
 * virtiofs driver probed the device at the PCI path the host named
 * (driver_options `pci-path=`), including one hotplugged while the agent
 * waits; a slot holding another kind of device, a device that never
 * appears and a malformed path are one StorageError naming the path, with
 * nothing mounted or registered. A converted image's meta + blob disks are
 * both found by PCI path.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { StorageError, StorageRegistry, type DeviceLookup, type Mounter } from '../../../src/agent/storage';
import type { Storage } from '../../../src/protocols/agent-api';

describe('agent/storage: shares and image disks found by PCI path', () => {
  let tmp: string;
  let at: DeviceLookup;
  let mounts: { source: string; target: string; fstype: string; options: string[] }[];
  const mounter: Mounter = {
    async mount(source, target, fstype, options) { mounts.push({ source, target, fstype, options }); },
    async umount() {},
  };
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-storage-pci-'));
    at = { sysPciDevices: path.join(tmp, 'sys'), sysBlock: path.join(tmp, 'block'), devDir: '/dev', timeoutMs: 200 };
    fs.mkdirSync(at.sysPciDevices);
    mounts = [];
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  /** A virtio device in root-bus `slot`; `driver` bound to it when given; a block device `blk` under it. */
  function deviceAt(slot: number, driver?: string, blk?: string): void {
    const v = path.join(at.sysPciDevices, `0000:00:${slot.toString(16).padStart(2, '0')}.0`, 'virtio7');
    fs.mkdirSync(blk ? path.join(v, 'block', blk) : v, { recursive: true });
    if (driver) fs.symlinkSync(`../../../../bus/virtio/drivers/${driver}`, path.join(v, 'driver'));
  }
  const share = (pci: string | undefined, mp = path.join(tmp, 'mnt')): Storage => ({
    driver: 'virtiofs', source: 'kata-abc', fstype: 'virtiofs', options: [], mount_point: mp, ...(pci ? { driver_options: [`pci-path=${pci}`] } : {}),
  });

  it('mounts a share by tag once the virtiofs driver probed the device at its PCI path', async () => {
    deviceAt(0x08, 'virtiofs');
    const reg = new StorageRegistry(mounter, at);
    await reg.acquire(share('08'), tmp);
    expect(mounts).to.deep.equal([{ source: 'kata-abc', target: path.join(tmp, 'mnt'), fstype: 'virtiofs', options: [] }]);
  });

  it('waits for a hotplugged share: no mount before the driver is bound', async () => {
    at.timeoutMs = 5000;
    setTimeout(() => deviceAt(0x09), 80);
    let boundAt = 0;
    setTimeout(() => { fs.symlinkSync('../../../../bus/virtio/drivers/virtiofs', path.join(at.sysPciDevices, '0000:00:09.0', 'virtio7', 'driver')); boundAt = Date.now(); }, 200);
    const seenAt: number[] = [];
    const m: Mounter = { async mount(source, target, fstype, options) { seenAt.push(Date.now()); mounts.push({ source, target, fstype, options }); }, async umount() {} };
    await new StorageRegistry(m, at).acquire(share('09'), tmp);
    expect(mounts).to.have.length(1);
    expect(boundAt).to.be.above(0);
    expect(seenAt[0]).to.be.at.least(boundAt);
  });

  it('a share whose slot holds another device, or that never appears, is one error naming the path; nothing is mounted', async () => {
    deviceAt(0x0a, 'virtio_blk', 'vdb');
    deviceAt(0x0b); // there, never probed
    const reg = new StorageRegistry(mounter, at);
    const cases: [string, RegExp][] = [
      ['0a', /the device at PCI path 0a \(0000:00:0a\.0\) is bound to the virtio_blk driver, not virtiofs/],
      ['0b', /no virtio-fs device appeared at PCI path 0b within 200 ms \(a PCI device \(0000:00:0b\.0\) not yet probed by virtiofs\)/],
      ['0c', /no virtio-fs device appeared at PCI path 0c within 200 ms \(no PCI device there\)/],
    ];
    for (const [pci, re] of cases) {
      const t0 = Date.now();
      const e = await reg.acquire(share(pci), tmp).then(() => undefined, (x: Error) => x);
      expect(e, pci).to.be.instanceOf(StorageError);
      expect(e!.message, pci).to.match(re);
      if (pci === '0a') expect(Date.now() - t0, 'wrong driver fails at once').to.be.below(150);
    }
    expect(mounts).to.deep.equal([]);
    expect(reg.mounted).to.deep.equal([]);
  });

  it('refuses a malformed pci-path driver option', async () => {
    for (const bad of ['', '8', '0G', '08/../x', '20']) {
      const s = { ...share(undefined), driver_options: [`pci-path=${bad}`] };
      const e = await new StorageRegistry(mounter, at).acquire(s, tmp).then(() => undefined, (x: Error) => x);
      expect(e, bad).to.be.instanceOf(StorageError);
      expect(e!.message, bad).to.match(/bad pci-path driver option/);
    }
    expect(mounts).to.deep.equal([]);
  });

  it('finds a converted image\'s meta disk (source) and blob disk (device-pci=) by PCI path', async () => {
    deviceAt(0x0d, 'virtio_blk', 'vdc');
    deviceAt(0x0e, 'virtio_blk', 'vdd');
    const lower = path.join(tmp, 'lower');
    await new StorageRegistry(mounter, at).acquire({ driver: 'blk', source: '0d', fstype: 'erofs', options: ['ro', 'device-pci=0e'], mount_point: lower }, tmp);
    expect(mounts).to.deep.equal([{ source: '/dev/vdc', target: lower, fstype: 'erofs', options: ['ro', 'device=/dev/vdd'] }]);
    const e = await new StorageRegistry(mounter, at).acquire({ driver: 'blk', source: '0d', fstype: 'erofs', options: ['ro', 'device-pci=0f'], mount_point: path.join(tmp, 'l2') }, tmp).then(() => undefined, (x: Error) => x);
    expect(e).to.be.instanceOf(StorageError);
    expect(e!.message).to.match(/no block device appeared at PCI path 0f within 200 ms/);
  });
});
