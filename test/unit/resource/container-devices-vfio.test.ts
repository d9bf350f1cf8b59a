/**
 * OCI linux.devices /dev/vfio/<group> on the host side
 * (src/resource/devices/container-devices.ts): a group's devices become the
 * manager's vfio kind, with Kata's Device type per vfio_mode; a group that
 * does not exist (no IOMMU) or is not viable is one DeviceError before
 * anything is planned. Host groups come from a fake sysfs; on this host's
 * real sysfs (no IOMMU) the request is refused.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { planContainerDevices, hostGroupSources, vfioDeviceId } from '../../../src/resource/devices/container-devices';
import { DeviceError } from '../../../src/resource/devices/device-manager';

describe('container devices: VFIO groups (linux.devices /dev/vfio/<group>)', () => {
  let sys: string;
  const spec = (paths: string[]) => ({ linux: { devices: paths.map((p) => ({ path: p, type: 'c', major: 243, minor: 0 })) } });

  beforeEach(() => {
    sys = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-host-sys-'));
    fs.mkdirSync(path.join(sys, 'bus/pci/drivers/vfio-pci'), { recursive: true });
    fs.mkdirSync(path.join(sys, 'bus/pci/drivers/e1000'), { recursive: true });
  });
  afterEach(() => fs.rmSync(sys, { recursive: true, force: true }));

  function device(bdf: string, group: number, driver?: string): void {
    const dev = path.join(sys, 'bus/pci/devices', bdf);
    fs.mkdirSync(dev, { recursive: true });
    const g = path.join(sys, 'kernel/iommu_groups', String(group), 'devices');
    fs.mkdirSync(g, { recursive: true });
    fs.symlinkSync(path.join(sys, 'kernel/iommu_groups', String(group)), path.join(dev, 'iommu_group'));
    fs.symlinkSync(dev, path.join(g, bdf));
    if (driver) fs.symlinkSync(path.join(sys, 'bus/pci/drivers', driver), path.join(dev, 'driver'));
  }

  const refused = (f: () => unknown, re: RegExp) => {
    let err: unknown;
    try { f(); } catch (e) { err = e; }
    expect(err, String(re)).to.be.instanceOf(DeviceError);
    expect((err as Error).message).to.match(re);
  };

  it('every device of a viable group is a vfio device; Device type follows vfio_mode', () => {
    device('0000:65:00.0', 7, 'vfio-pci');
    device('0000:65:00.1', 7);
    const v = planContainerDevices(spec(['/dev/vfio/7']), { sources: hostGroupSources(sys) });
    expect(v.disks).to.deep.equal([
      { kind: 'vfio', id: vfioDeviceId('0000:65:00.0', 7, 0), bdf: '0000:65:00.0' },
      { kind: 'vfio', id: vfioDeviceId('0000:65:00.1', 7, 1), bdf: '0000:65:00.1' },
    ]);
    expect(v.devices.map((d) => [d.type, d.container_path, d.options])).to.deep.equal([
      ['vfio-pci', '/dev/vfio/7', ['0000:65:00.0']], ['vfio-pci', '/dev/vfio/7', ['0000:65:00.1']],
    ]);
    expect(v.disks[0].id).to.match(/^[A-Za-z0-9_.-]{1,36}$/);
    const g = planContainerDevices(spec(['/dev/vfio/7']), { mode: 'guest-kernel', sources: hostGroupSources(sys) });
    expect(g.devices.map((d) => d.type)).to.deep.equal(['vfio-pci-gk', 'vfio-pci-gk']);
    // /dev/vfio/vfio (the container node) is not a group: left alone.
    expect(planContainerDevices(spec(['/dev/vfio/vfio']), { sources: hostGroupSources(sys) }).disks).to.deep.equal([]);
  });

  it('a missing group, a group not viable, a group named twice: one DeviceError, nothing planned', () => {
    refused(() => planContainerDevices(spec(['/dev/vfio/9']), { sources: hostGroupSources(sys) }), /\/dev\/vfio\/9: IOMMU group 9 does not exist on this host/);
    device('0000:66:00.0', 8, 'vfio-pci');
    device('0000:66:00.1', 8, 'e1000');
    refused(() => planContainerDevices(spec(['/dev/vfio/8']), { sources: hostGroupSources(sys) }), /IOMMU group 8 of 0000:66:00.0 is not viable: 0000:66:00.1 is bound to e1000/);
    device('0000:67:00.0', 5, 'vfio-pci');
    refused(() => planContainerDevices(spec(['/dev/vfio/5', '/dev/vfio/5']), { sources: hostGroupSources(sys) }), /names \/dev\/vfio\/5 twice/);
  });

  it('this host (no IOMMU): a VFIO group request is refused plainly', function () {
    if (fs.existsSync('/sys/kernel/iommu_groups/0')) this.skip(); // a host with an IOMMU: this case does not apply
    refused(() => planContainerDevices(spec(['/dev/vfio/0'])), /IOMMU group 0 does not exist on this host .*no IOMMU/);
  });
});
