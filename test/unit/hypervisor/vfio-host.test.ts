/**
 * VFIO host side (src/hypervisor/vfio-host.ts) in a fake sysfs, and against
 * this host, which has no IOMMU: bad addresses, a device without an IOMMU
 * group, a group made non-viable by a device bound to another driver, the
 * driver_override/unbind/drivers_probe sequence and its failure, the
 * kernel preflight through src/vmm/vfio.ts failing plainly, and the exact
 * QEMU -device value and QMP device_add arguments.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { iommuGroupOf, checkGroupViable, bindToVfioPci, preflightVfio, vfioDeviceArg, vfioDeviceAdd, VfioHostError } from '../../../src/hypervisor/vfio-host';

describe('unit: VFIO host side', () => {
  let sys: string;
  beforeEach(() => {
    sys = fs.mkdtempSync(path.join(os.tmpdir(), 'vfiosys-'));
    fs.mkdirSync(path.join(sys, 'bus/pci/drivers/e1000'), { recursive: true });
    fs.mkdirSync(path.join(sys, 'bus/pci/drivers/vfio-pci'), { recursive: true });
    fs.writeFileSync(path.join(sys, 'bus/pci/drivers/e1000/unbind'), '');
    fs.writeFileSync(path.join(sys, 'bus/pci/drivers_probe'), '');
  });
  afterEach(() => fs.rmSync(sys, { recursive: true, force: true }));

  /** A PCI device in IOMMU group `group` (undefined: no IOMMU), bound to `driver` ('' for none). */
  function device(bdf: string, group: number | undefined, driver: string): string {
    const dev = path.join(sys, 'bus/pci/devices', bdf);
    fs.mkdirSync(dev, { recursive: true });
    fs.writeFileSync(path.join(dev, 'driver_override'), '(null)');
    if (group !== undefined) {
      const g = path.join(sys, 'kernel/iommu_groups', String(group), 'devices');
      fs.mkdirSync(g, { recursive: true });
      fs.symlinkSync(dev, path.join(g, bdf));
      fs.symlinkSync(path.join(sys, 'kernel/iommu_groups', String(group)), path.join(dev, 'iommu_group'));
    }
    if (driver) fs.symlinkSync(path.join(sys, 'bus/pci/drivers', driver), path.join(dev, 'driver'));
    return dev;
  }

  function rejects(f: () => unknown, kind: string, re: RegExp): void {
    let err: unknown;
    try { f(); } catch (e) { err = e; }
    expect(err, String(re)).to.be.instanceOf(VfioHostError);
    expect((err as VfioHostError).kind).to.equal(kind);
    expect((err as Error).message).to.match(re);
  }

  it('bad addresses, missing devices and a device without an IOMMU group are one clear error', () => {
    rejects(() => iommuGroupOf('01:00.0', sys), 'invalid', /not a PCI address/);
    rejects(() => iommuGroupOf('0000:01:00.0', sys), 'invalid', /no PCI device 0000:01:00.0/);
    device('0000:01:00.0', undefined, 'e1000');
    rejects(() => checkGroupViable('0000:01:00.0', sys), 'no-iommu', /no IOMMU group: the host's IOMMU is off/);
  });

  it('this host has no IOMMU: its own PCI devices are refused plainly', function () {
    const real = fs.readdirSync('/sys/bus/pci/devices')[0];
    if (fs.readdirSync('/sys/kernel/iommu_groups').length > 0) this.skip(); // a host with an IOMMU: this case does not apply
    rejects(() => preflightVfio(real), 'no-iommu', new RegExp(`${real.replace(/\./g, '\\.')} has no IOMMU group`));
  });

  it('a group with a device bound to another driver is not viable; vfio-pci and unbound devices are fine', () => {
    device('0000:01:00.0', 7, 'vfio-pci');
    device('0000:01:00.1', 7, 'e1000');
    device('0000:01:00.2', 7, '');
    expect(iommuGroupOf('0000:01:00.0', sys)).to.deep.equal({ group: 7, devices: ['0000:01:00.0', '0000:01:00.1', '0000:01:00.2'] });
    rejects(() => checkGroupViable('0000:01:00.0', sys), 'not-viable', /IOMMU group 7 of 0000:01:00.0 is not viable: 0000:01:00.1 is bound to e1000/);
    fs.unlinkSync(path.join(sys, 'bus/pci/devices/0000:01:00.1/driver'));
    expect(checkGroupViable('0000:01:00.0', sys)).to.equal(7);
  });

  it('binding writes driver_override, unbind and drivers_probe, and fails when the device does not end on vfio-pci', () => {
    const dev = device('0000:02:00.0', 3, 'e1000');
    rejects(() => bindToVfioPci('0000:02:00.0', sys), 'bind', /bound to e1000 after drivers_probe, not vfio-pci/);
    expect(fs.readFileSync(path.join(dev, 'driver_override'), 'utf8')).to.equal('vfio-pci');
    expect(fs.readFileSync(path.join(sys, 'bus/pci/drivers/e1000/unbind'), 'utf8')).to.equal('0000:02:00.0');
    expect(fs.readFileSync(path.join(sys, 'bus/pci/drivers_probe'), 'utf8')).to.equal('0000:02:00.0');
    // Already on vfio-pci: nothing is written.
    fs.unlinkSync(path.join(dev, 'driver'));
    fs.symlinkSync(path.join(sys, 'bus/pci/drivers/vfio-pci'), path.join(dev, 'driver'));
    fs.writeFileSync(path.join(sys, 'bus/pci/drivers_probe'), '');
    bindToVfioPci('0000:02:00.0', sys);
    expect(fs.readFileSync(path.join(sys, 'bus/pci/drivers_probe'), 'utf8')).to.equal('');
  });

  it('the kernel preflight (src/vmm/vfio.ts) fails plainly where there is no VFIO', () => {
    device('0000:03:00.0', 9, 'vfio-pci');
    if (fs.existsSync('/dev/vfio/vfio')) return; // a VFIO host: the ioctls would run for real
    rejects(() => preflightVfio('0000:03:00.0', sys), 'not-viable', /0000:03:00.0: .*VFIO container.*\/dev\/vfio\/vfio/);
  });

  it('builds the exact QEMU -device value and QMP device_add arguments', () => {
    expect(vfioDeviceArg('0000:01:00.0', 'dev-gpu0', 9)).to.equal('vfio-pci,host=0000:01:00.0,id=dev-gpu0,addr=0x9');
    expect(vfioDeviceAdd('0000:65:00.1', 'dev-nic', 0x1a)).to.deep.equal({ driver: 'vfio-pci', host: '0000:65:00.1', id: 'dev-nic', addr: '0x1a' });
    rejects(() => vfioDeviceAdd('0000:65:00', 'x', 9), 'invalid', /not a PCI address/);
  });
});
