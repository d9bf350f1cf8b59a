/**
 * The agent's VFIO devices (src/agent/vfio-device.ts) on a fake guest sysfs
 * and /dev: waiting by PCI path (and timing out), the no-IOMMU bind sequence
 * and its failure, the group node lookup (a real character device made with
 * mknod), the spec rewrite in vfio and guest-kernel modes, and applyDevices
 * sending VFIO types there. The real bind in a guest is
 * test/integration/vfio.test.ts.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { waitForPciPresent, bindGuestVfio, applyVfioToSpec, applyVfioDevice, VfioGuestError, type GuestRoots } from '../../../src/agent/vfio-device';
import { applyDevices, DeviceMapError } from '../../../src/agent/devices';

describe('agent: VFIO devices (vfio and guest-kernel mode)', () => {
  let root: string;
  let roots: GuestRoots;
  const bdf = '0000:00:09.0';
  let dev: string;

  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-guest-'));
    roots = { sys: path.join(root, 'sys'), dev: path.join(root, 'dev') };
    dev = path.join(roots.sys, 'bus/pci/devices', bdf);
    fs.mkdirSync(dev, { recursive: true });
    fs.writeFileSync(path.join(dev, 'driver_override'), '(null)');
    fs.mkdirSync(path.join(roots.sys, 'module/vfio/parameters'), { recursive: true });
    fs.writeFileSync(path.join(roots.sys, 'module/vfio/parameters/enable_unsafe_noiommu_mode'), 'N');
    fs.writeFileSync(path.join(roots.sys, 'bus/pci/drivers_probe'), '');
    fs.mkdirSync(path.join(roots.sys, 'bus/pci/drivers/vfio-pci'), { recursive: true });
    fs.mkdirSync(path.join(roots.sys, 'kernel/iommu_groups/3'), { recursive: true });
    fs.mkdirSync(path.join(roots.dev, 'vfio'), { recursive: true });
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  const rejects = async (p: Promise<unknown>, kind: string, re: RegExp) => {
    let err: unknown;
    await p.catch((e: unknown) => { err = e; });
    expect(err, String(re)).to.be.instanceOf(VfioGuestError);
    expect((err as VfioGuestError).kind).to.equal(kind);
    expect((err as Error).message).to.match(re);
  };

  it('waits for the device by PCI path; a malformed path and a device that never appears are one error each', async () => {
    expect(await waitForPciPresent('09', 1000, roots)).to.equal(dev);
    await rejects(waitForPciPresent('0g', 1000, roots), 'invalid', /"0g" is not a PCI path/);
    const t0 = Date.now();
    await rejects(waitForPciPresent('1e', 200, roots), 'timeout', /no PCI device appeared at PCI path 1e within 200 ms/);
    expect(Date.now() - t0).to.be.at.least(200);
  });

  it('bind: no-IOMMU mode, driver_override and drivers_probe are written; a device that stays unbound is a bind error', async () => {
    await rejects(bindGuestVfio(dev, roots, 100), 'bind', /0000:00:09\.0 is bound to no driver after drivers_probe, not vfio-pci/);
    expect(fs.readFileSync(path.join(roots.sys, 'module/vfio/parameters/enable_unsafe_noiommu_mode'), 'utf8')).to.equal('1');
    expect(fs.readFileSync(path.join(dev, 'driver_override'), 'utf8')).to.equal('vfio-pci');
    expect(fs.readFileSync(path.join(roots.sys, 'bus/pci/drivers_probe'), 'utf8')).to.equal(bdf);
  });

  it('a device on vfio-pci: its no-IOMMU group node with the node\'s real numbers; no node is an error', async () => {
    fs.symlinkSync(path.join(roots.sys, 'bus/pci/drivers/vfio-pci'), path.join(dev, 'driver'));
    fs.symlinkSync(path.join(roots.sys, 'kernel/iommu_groups/3'), path.join(dev, 'iommu_group'));
    await rejects(bindGuestVfio(dev, roots, 100), 'bind', /group 3 has no \/dev\/vfio\/noiommu-3/);
    execFileSync('mknod', [path.join(roots.dev, 'vfio/noiommu-3'), 'c', '241', '7']);
    expect(await bindGuestVfio(dev, roots, 100)).to.deep.equal({ bdf, group: 3, node: '/dev/vfio/noiommu-3', major: 241, minor: 7 });
    // Nothing was written for an already-bound device.
    expect(fs.readFileSync(path.join(dev, 'driver_override'), 'utf8')).to.equal('(null)');
  });

  it('spec rewrite: vfio mode replaces the host group entry and adds /dev/vfio/vfio with allow rules; guest-kernel mode removes the entry', () => {
    const spec = () => ({ linux: { devices: [{ path: '/dev/vfio/7', type: 'c', major: 243, minor: 0, fileMode: 0o600, uid: 0, gid: 0 }], resources: { devices: [{ allow: false, access: 'rwm' }] as unknown[] } } });
    const v = spec();
    applyVfioToSpec(v, '/dev/vfio/7', { bdf, group: 3, node: '/dev/vfio/noiommu-3', major: 241, minor: 7 });
    expect(v.linux.devices).to.deep.equal([
      { path: '/dev/vfio/noiommu-3', type: 'c', major: 241, minor: 7, fileMode: 0o600, uid: 0, gid: 0 },
      { path: '/dev/vfio/vfio', type: 'c', major: 10, minor: 196, fileMode: 0o666, uid: 0, gid: 0 },
    ]);
    expect(v.linux.resources.devices).to.deep.equal([
      { allow: false, access: 'rwm' },
      { allow: true, type: 'c', major: 241, minor: 7, access: 'rwm' },
      { allow: true, type: 'c', major: 10, minor: 196, access: 'rwm' },
    ]);
    // A second device of the same host group: another guest group, added next to the first.
    applyVfioToSpec(v, '/dev/vfio/7', { bdf: '0000:00:0a.0', group: 4, node: '/dev/vfio/noiommu-4', major: 241, minor: 8 });
    expect(v.linux.devices.map((d) => d.path)).to.deep.equal(['/dev/vfio/noiommu-3', '/dev/vfio/vfio', '/dev/vfio/noiommu-4']);
    const g = spec();
    applyVfioToSpec(g, '/dev/vfio/7', undefined);
    expect(g.linux.devices).to.deep.equal([]);
    expect(g.linux.resources.devices).to.deep.equal([{ allow: false, access: 'rwm' }]);
  });

  it('guest-kernel mode end to end on the fake tree: waits, binds nothing, removes the entry', async () => {
    const spec = { linux: { devices: [{ path: '/dev/vfio/7', type: 'c', major: 243, minor: 0 }] as unknown[] } };
    expect(await applyVfioDevice(spec, { id: 'g', type: 'vfio-pci-gk', vm_path: '09', container_path: '/dev/vfio/7' }, roots, 500)).to.equal(undefined);
    expect(spec.linux.devices).to.deep.equal([]);
    expect(fs.readFileSync(path.join(dev, 'driver_override'), 'utf8')).to.equal('(null)');
    await rejects(applyVfioDevice(spec, { id: 'x', type: 'vfio', vm_path: '09', container_path: '/dev/vfio/7' }, roots), 'invalid', /not a VFIO type/);
  });

  it('applyDevices sends vfio-pci / vfio-pci-gk devices to the VFIO path and wraps its errors in one DeviceMapError', async () => {
    const spec = { linux: { devices: [] as unknown[] } };
    const seen: string[] = [];
    const out = await applyDevices(spec, [
      { id: 'a', type: 'vfio-pci', vm_path: '09', container_path: '/dev/vfio/7', options: [] },
      { id: 'b', type: 'vfio-pci-gk', vm_path: '0a', container_path: '/dev/vfio/8', options: [] },
    ], undefined, undefined, async (_s, d) => { seen.push(`${d.type}@${d.vm_path}`); return d.type === 'vfio-pci' ? '/dev/vfio/noiommu-0' : undefined; });
    expect(seen).to.deep.equal(['vfio-pci@09', 'vfio-pci-gk@0a']);
    expect([...out]).to.deep.equal([['/dev/vfio/7', '/dev/vfio/noiommu-0']]);
    let err: unknown;
    await applyDevices(spec, [{ id: 'c', type: 'vfio-pci', vm_path: '1e', container_path: '/dev/vfio/9', options: [] }], undefined, undefined,
      async () => { throw new VfioGuestError('timeout', 'no PCI device appeared at PCI path 1e within 10 ms'); }).catch((e: unknown) => { err = e; });
    expect(err).to.be.instanceOf(DeviceMapError);
    expect((err as DeviceMapError).kind).to.equal('failed-precondition');
    expect((err as Error).message).to.equal('device c for /dev/vfio/9: no PCI device appeared at PCI path 1e within 10 ms');
  });
});
