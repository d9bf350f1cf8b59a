/**
 * src/runtime/hypervisor-choice.ts: VFIO from a container spec as Kata takes
 * it — a linux.devices entry /dev/vfio/<group> is hotplugged by default and
 * cold-plugged at sandbox creation with [hypervisor.qemu] cold_plug_vfio.
 * A fake sysfs holds a viable group (this host has no IOMMU), and the spec's
 * devices are followed to the exact QEMU -device value (cold) and QMP
 * device_add arguments (hot). A group that does not exist, or one that is not
 * viable, is one DeviceError before anything is attached; both keys set is a
 * configuration error, as in Kata. Also the CRI form of a block device: the
 * host device is found by its numbers, the container path may be anything.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { sandboxBootVfio } from '../../../src/runtime/hypervisor-choice';
import { defaultConfig, parseConfig, ConfigError } from '../../../src/runtime/config';
import { planContainerDevices, vfioDeviceId, deviceDiskId, hostDevicePath } from '../../../src/resource/devices/container-devices';
import { DeviceError } from '../../../src/resource/devices/device-manager';
import { QemuHypervisor } from '../../../src/hypervisor/qemu';
import { vfioDeviceAdd } from '../../../src/hypervisor/vfio-host';
import type { VmConfig } from '../../../src/hypervisor/hypervisor';
import { splitDev } from '../../../src/common/devnum';

describe('unit: runtime hypervisor entry — VFIO from container specs (cold and hot plug)', () => {
  let dir: string;
  let sys: string;
  const BDF = '0000:65:00.1';
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvchoice-'));
    sys = path.join(dir, 'sys');
    for (const d of ['vfio-pci', 'e1000']) fs.mkdirSync(path.join(sys, 'bus/pci/drivers', d), { recursive: true });
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** A PCI device in IOMMU group `group` bound to `driver` ('' for none). */
  function device(bdf: string, group: number, driver: string): void {
    const dev = path.join(sys, 'bus/pci/devices', bdf);
    fs.mkdirSync(dev, { recursive: true });
    const g = path.join(sys, 'kernel/iommu_groups', String(group), 'devices');
    fs.mkdirSync(g, { recursive: true });
    fs.symlinkSync(dev, path.join(g, bdf));
    fs.symlinkSync(path.join(sys, 'kernel/iommu_groups', String(group)), path.join(dev, 'iommu_group'));
    if (driver) fs.symlinkSync(path.join(sys, 'bus/pci/drivers', driver), path.join(dev, 'driver'));
  }

  const vfioSpec = (group: number) => ({ linux: { devices: [{ path: `/dev/vfio/${group}`, type: 'c', major: 243, minor: 0 }, { path: '/dev/null', type: 'c', major: 1, minor: 3 }] } });

  it('cold_plug_vfio: the group\'s devices go on QEMU\'s command line as vfio-pci,host=…; the container then names the same ids', () => {
    device(BDF, 7, 'vfio-pci');
    const cfg = defaultConfig();
    expect(sandboxBootVfio(cfg, vfioSpec(7), undefined, sys), 'default (hotplug): nothing at boot').to.equal(undefined);
    cfg['hypervisor.qemu'].cold_plug_vfio = 'root-port';
    const boot = sandboxBootVfio(cfg, vfioSpec(7), undefined, sys);
    const id = vfioDeviceId(BDF, 7, 0);
    expect(boot).to.deep.equal([{ id, source: BDF }]);
    // The container's own plan names the same manager id and source: a reference to the boot device, not a hotplug.
    const plan = planContainerDevices(vfioSpec(7), { sys, mode: 'vfio' });
    expect(plan.disks).to.deep.equal([{ kind: 'vfio', id, bdf: BDF }]);
    expect(plan.devices).to.deep.equal([{ id, type: 'vfio-pci', vm_path: '', container_path: '/dev/vfio/7', options: [BDF] }]);
    // The exact QEMU argument.
    for (const f of ['vmlinux', 'rootfs.erofs']) fs.writeFileSync(path.join(dir, f), '');
    const vm = { id: 'cold', dir: path.join(dir, 'vm'), kernel: path.join(dir, 'vmlinux'), image: path.join(dir, 'rootfs.erofs'), vcpus: 1, memoryMiB: 64, kernelParams: '', debug: false, disks: [], shares: [], vfio: boot } as VmConfig;
    const args = new QemuHypervisor({ binary: '/usr/bin/qemu-system-x86_64', machine: 'pc', accel: 'tcg' }).commandLine(vm);
    const devs = args.filter((a, i) => args[i - 1] === '-device' && a.startsWith('vfio-pci,'));
    expect(devs).to.have.length(1);
    expect(devs[0]).to.match(new RegExp(`^vfio-pci,host=${BDF.replace(/\./g, '\\.')},id=dev-${id},addr=0x[0-9a-f]+$`));
    // q35 with cold_plug_vfio = "root-port": behind its own root port.
    const q35 = new QemuHypervisor({ binary: '/usr/bin/qemu-system-x86_64', machine: 'q35', accel: 'tcg', pcieRootPorts: 1, coldPlugVfio: 'root-port' }).commandLine(vm);
    expect(q35.filter((a, i) => q35[i - 1] === '-device' && a.startsWith('vfio-pci,'))).to.deep.equal([`vfio-pci,host=${BDF},id=dev-${id},bus=rp0,addr=0x0`]);
  });

  it('hot plug (default): the container\'s plan gives the manager vfio devices whose QMP device_add is vfio-pci with the host address', () => {
    device(BDF, 7, '');
    device('0000:65:00.0', 7, 'vfio-pci');
    const plan = planContainerDevices(vfioSpec(7), { sys });
    expect(plan.disks.map((d) => d.kind === 'vfio' && d.bdf)).to.deep.equal(['0000:65:00.0', BDF]);
    expect(plan.devices.map((d) => d.options[0])).to.deep.equal(['0000:65:00.0', BDF]);
    const d = plan.disks[1] as { id: string; bdf: string };
    expect(vfioDeviceAdd(d.bdf, `dev-${d.id}`, 0x0c)).to.deep.equal({ driver: 'vfio-pci', host: BDF, id: `dev-${d.id}`, addr: '0xc' });
  });

  it('a group that does not exist or is not viable is one DeviceError, cold or hot, before anything is attached', () => {
    const cfg = defaultConfig();
    const hot = defaultConfig();
    cfg['hypervisor.qemu'].cold_plug_vfio = 'bridge-port';
    const check = (f: () => unknown, re: RegExp) => {
      let err: unknown;
      try { f(); } catch (e) { err = e; }
      expect(err, String(re)).to.be.instanceOf(DeviceError);
      expect((err as Error).message).to.match(re);
    };
    check(() => sandboxBootVfio(cfg, vfioSpec(3), undefined, sys), /^linux\.devices: \/dev\/vfio\/3: IOMMU group 3 does not exist on this host/);
    check(() => planContainerDevices(vfioSpec(3), { sys }), /IOMMU group 3 does not exist/);
    // Hotplug mode checks the first container's groups before a VM boots too.
    check(() => sandboxBootVfio(hot, vfioSpec(3), undefined, sys), /IOMMU group 3 does not exist/);
    device(BDF, 5, 'vfio-pci');
    device('0000:65:00.0', 5, 'e1000');
    check(() => sandboxBootVfio(cfg, vfioSpec(5), undefined, sys), /IOMMU group 5 of 0000:65:00\.0 is not viable: 0000:65:00\.0 is bound to e1000/);
    check(() => planContainerDevices(vfioSpec(5), { sys }), /is not viable/);
    // This host itself: no IOMMU, so /dev/vfio/0 is refused plainly.
    if (fs.readdirSync('/sys/kernel/iommu_groups').length === 0) check(() => sandboxBootVfio(cfg, vfioSpec(0)), /IOMMU group 0 does not exist on this host/);
  });

  it('hot_plug_vfio and cold_plug_vfio: Kata\'s values; both set is refused, as Kata\'s checkPCIeConfig', () => {
    const ok = parseConfig('[hypervisor.qemu]\nmachine_type = "q35"\npcie_root_port = 2\ncold_plug_vfio = "root-port"\n', '/x.toml');
    expect(ok['hypervisor.qemu'].cold_plug_vfio).to.equal('root-port');
    expect(ok['hypervisor.qemu'].pcie_root_port).to.equal(2);
    expect(ok.warnings.join('\n')).to.not.match(/pcie_root_port/);
    // Root ports are PCIe: q35 only; root-port mode needs ports; bridge-port is pc's; switch-port is not built.
    expect(() => parseConfig('[hypervisor.qemu]\npcie_root_port = 2\n', '/x.toml')).to.throw(ConfigError, /^\/x\.toml:2: \[hypervisor\.qemu\] pcie_root_port = 2 needs machine_type = "q35" \(the pc machine has no PCI Express/);
    expect(() => parseConfig('[hypervisor.qemu]\ncold_plug_vfio = "root-port"\n', '/x.toml')).to.throw(ConfigError, /cold_plug_vfio = "root-port" needs machine_type = "q35" and pcie_root_port > 0 \(got pc, 0 ports\)/);
    expect(() => parseConfig('[hypervisor.qemu]\nmachine_type = "q35"\nhot_plug_vfio = "root-port"\n', '/x.toml')).to.throw(ConfigError, /hot_plug_vfio = "root-port" needs .*got q35, 0 ports/);
    expect(() => parseConfig('[hypervisor.qemu]\nmachine_type = "q35"\npcie_root_port = 1\nhot_plug_vfio = "bridge-port"\n', '/x.toml')).to.throw(ConfigError, /hot_plug_vfio = "bridge-port" needs machine_type = "pc"/);
    expect(parseConfig('[hypervisor.qemu]\ncold_plug_vfio = "bridge-port"\n', '/x.toml')['hypervisor.qemu'].cold_plug_vfio).to.equal('bridge-port');
    expect(() => parseConfig('[hypervisor.qemu]\ncold_plug_vfio = "switch-port"\n', '/x.toml')).to.throw(ConfigError, /cold_plug_vfio = "switch-port" is not supported by kata-ts/);
    expect(() => parseConfig('[hypervisor.qemu]\nmachine_type = "q35"\npcie_root_port = 17\n', '/x.toml')).to.throw(ConfigError, /pcie_root_port/);
    expect(ok.warnings.join('\n')).to.not.match(/cold_plug_vfio/);
    expect(() => parseConfig('[hypervisor.qemu]\nmachine_type = "q35"\npcie_root_port = 2\nhot_plug_vfio = "root-port"\ncold_plug_vfio = "root-port"\n', '/x.toml')).to.throw(ConfigError, /only one of them can be set/);
    expect(() => parseConfig('[hypervisor.qemu]\ncold_plug_vfio = "pcie"\n', '/x.toml')).to.throw(ConfigError, /must be one of "no-port"/);
  });

  it('a CRI block device: the host device is found by its numbers (Kata\'s GetHostPath), the container path may be anything', () => {
    const loop = ['/dev/loop1', '/dev/loop0'].find((p) => fs.existsSync(p) && fs.statSync(p).isBlockDevice());
    expect(loop, 'a loop device node on the host (losetup/loop module)').to.be.a('string');
    const n = splitDev(fs.statSync(loop!).rdev);
    const spec = { linux: { devices: [{ path: '/dev/xvdb', type: 'b', major: n.major, minor: n.minor }], resources: { devices: [] as unknown[] } } };
    const plan = planContainerDevices(spec);
    expect(plan.disks).to.deep.equal([{ kind: 'blk', id: deviceDiskId(loop!), path: loop, readonly: false }]);
    expect(plan.devices[0].container_path).to.equal('/dev/xvdb');
    expect(spec.linux.resources.devices).to.deep.equal([{ allow: true, type: 'b', major: n.major, minor: n.minor, access: 'rwm' }]);
    // The lookup itself: sysfs's DEVNAME, checked against the node's numbers; nothing outside /dev.
    expect(hostDevicePath('block', n.major, n.minor)).to.equal(loop);
    expect(hostDevicePath('char', 1, 3)).to.equal('/dev/null');
    fs.mkdirSync(path.join(sys, 'dev/char/1:3'), { recursive: true });
    fs.writeFileSync(path.join(sys, 'dev/char/1:3/uevent'), 'MAJOR=1\nMINOR=3\nDEVNAME=../etc/passwd\n');
    expect(hostDevicePath('char', 1, 3, sys)).to.equal(undefined);
    fs.writeFileSync(path.join(sys, 'dev/char/1:3/uevent'), 'MAJOR=1\nMINOR=3\nDEVNAME=zero\n');
    expect(hostDevicePath('char', 1, 3, sys), '/dev/zero is 1:5, not 1:3').to.equal(undefined);
    expect(hostDevicePath('block', '7', 0)).to.equal(undefined);
    // Numbers that name no host device and a path that does not exist: one error naming both.
    expect(() => planContainerDevices({ linux: { devices: [{ path: '/dev/xvdz-none', type: 'b', major: 7, minor: 1048575 }] } })).to.throw(DeviceError, /does not exist on the host and no host block device is 7:1048575/);
  });
});
