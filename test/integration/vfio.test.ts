/**
 * VFIO, the guest side, in a real QEMU (TCG) guest. These hosts have no
 * IOMMU, so no host device can be passed through: QEMU's emulated `edu`
 * PCI device (1234:11e8) STANDS IN for one (src/hypervisor/vfio-host.ts
 * EDU_STAND_IN), plugged where `vfio-pci,host=…` would go. What runs for
 * real: OCI linux.devices /dev/vfio/<group> → the device manager's vfio kind
 * → QMP device_add on a free slot → the agent finds the device by PCI path
 * and, in vfio mode, binds it to the guest's vfio-pci in no-IOMMU mode and
 * gives the container /dev/vfio/noiommu-N and /dev/vfio/vfio under a
 * default-deny device cgroup; in guest-kernel mode the container gets no
 * node, only sysfs. Also: a cold-plugged device on QEMU's command line is
 * where the boot plan put it (query-pci) and unplugs; a device that never
 * appears is one timeout error naming the PCI path.
 *
 * q35 with PCIe root ports (Kata's pcie_root_port and hot/cold_plug_vfio =
 * "root-port", the GPU path): the edu device cold-plugged behind rp0 and
 * hotplugged onto a free root port; the agent finds it by the two-level PCI
 * path "<port slot>/00", the container gets /dev/vfio/noiommu-N, and the
 * unplug frees the port (query-pci shows the port empty again).
 * pc with hot/cold_plug_vfio = "bridge-port": the same behind one pci-bridge,
 * PCI path "<bridge slot>/<slot>".
 */
import { expect } from 'chai';
import * as path from 'node:path';
import { testConfig, CACHE, collectOutput } from '../helpers/guest';
import { startQemuSandbox, stopQemuSandbox, type QemuTestSandbox } from '../helpers/qemu-sandbox';
import { until } from '../helpers/until';
import { selectHypervisor } from '../../src/hypervisor';
import { QemuHypervisor } from '../../src/hypervisor/qemu';
import { Sandbox } from '../../src/runtime/sandbox';
import { defaultSpec } from '../../src/runtime/spec';
import type { OciSpec } from '../../src/protocols/oci';
import { DeviceManager } from '../../src/resource/devices/device-manager';
import { waitForMarker } from '../../src/protocols/agent-dialer';
import { EDU_STAND_IN } from '../../src/hypervisor/vfio-host';
import { vfioDeviceId, type VfioMode } from '../../src/resource/devices/container-devices';

/** A container asking for host IOMMU group 7 as Kata's users do; default-deny device cgroup. */
function vfioSpec(args: string[]): OciSpec {
  const spec = defaultSpec({ args });
  spec.linux!.devices = [{ path: '/dev/vfio/7', type: 'c', major: 243, minor: 0, fileMode: 0o660, uid: 0, gid: 0 }];
  spec.linux!.resources = { devices: [{ allow: false, access: 'rwm' }] };
  return spec;
}

/** Lists /dev/vfio (or "no /dev/vfio"), the edu device's sysfs entry, and whether /dev/vfio/vfio opens. */
const PROBE = [
  'echo "vfio:$(ls /dev/vfio 2>/dev/null | tr "\\n" " ")"',
  'for d in /sys/bus/pci/devices/*; do echo "$(basename $d) $(cat $d/vendor):$(cat $d/device)"; done | grep "0x1234:0x11e8" || echo "no edu"',
  'if [ -e /dev/vfio/vfio ]; then (: < /dev/vfio/vfio) 2>/dev/null && echo open-ok || echo open-denied; else echo no-node; fi',
].join('; ');

describe('integration: VFIO guest side with the edu device standing in (QEMU)', function () {
  this.timeout(600000);
  let t: QemuTestSandbox | undefined;
  let runDir: string;
  let sandbox: Sandbox | undefined;
  let hv: QemuHypervisor;
  let rootfs = '';
  // The sandbox reads this per container: the tests switch Kata's vfio_mode between containers.
  const vfio: { mode: VfioMode; sources: () => string[] } = { mode: 'vfio', sources: () => [EDU_STAND_IN] };

  before(async function () {
    t = await startQemuSandbox(this, 'vfio', { sandbox: () => ({ vfio }) });
    ({ runDir, sandbox, hv, rootfs } = t);
  });

  after(() => stopQemuSandbox(t));

  it('vfio mode: the container gets /dev/vfio/noiommu-N and /dev/vfio/vfio; the edu device is at its PCI path', async () => {
    // The pod's one virtio-fs share comes with its first container and stays
    // for the sandbox's life (Kata's layout): part of the set the slots return to.
    await sandbox!.attachSandboxShare();
    const boot = hv.slotsInUse();
    vfio.mode = 'vfio';
    await sandbox!.createContainer('v', vfioSpec(['sh', '-c', PROBE]), rootfs);
    const dev = sandbox!.devices.list().find((d) => d.spec.kind === 'vfio' && d.holders.includes('v'));
    expect(dev, 'a vfio device held by the container').to.not.equal(undefined);
    expect(dev!.pciPath).to.match(/^[0-9a-f]{2}$/);
    await sandbox!.startContainer('v');
    const out = await collectOutput(sandbox!.agent, 'v', '');
    expect(out.status, out.out).to.equal(0);
    const lines = out.out.trim().split('\n');
    expect(lines[0], out.out).to.match(/^vfio:noiommu-\d+ vfio $/);
    expect(lines[1], out.out).to.equal(`0000:00:${dev!.pciPath}.0 0x1234:0x11e8`);
    expect(lines[2], out.out).to.equal('open-ok');
    await sandbox!.removeContainer('v');
    expect(sandbox!.devices.list().filter((d) => d.spec.kind === 'vfio')).to.deep.equal([]);
    await until('the PCI slots back at the boot set', () => (JSON.stringify(hv.slotsInUse()) === JSON.stringify(boot) ? true : undefined), 60000);
  });

  it('guest-kernel mode: no device node in the container, the device in its sysfs', async () => {
    const boot = hv.slotsInUse();
    vfio.mode = 'guest-kernel';
    try {
      await sandbox!.createContainer('g', vfioSpec(['sh', '-c', PROBE]), rootfs);
      const dev = sandbox!.devices.list().find((d) => d.spec.kind === 'vfio' && d.holders.includes('g'))!;
      await sandbox!.startContainer('g');
      const out = await collectOutput(sandbox!.agent, 'g', '');
      expect(out.status, out.out).to.equal(0);
      const lines = out.out.trim().split('\n');
      expect(lines[0], out.out).to.equal('vfio:');
      expect(lines[1], out.out).to.equal(`0000:00:${dev.pciPath}.0 0x1234:0x11e8`);
      expect(lines[2], out.out).to.equal('no-node');
      await sandbox!.removeContainer('g');
    } finally {
      vfio.mode = 'vfio';
    }
    await until('the PCI slots back at the boot set', () => (JSON.stringify(hv.slotsInUse()) === JSON.stringify(boot) ? true : undefined), 60000);
  });

  it('a device that never appears at its PCI path: one timeout error naming the path, no container', async () => {
    const spec = vfioSpec(['true']);
    spec.root = { path: '/', readonly: true };
    let err: unknown;
    const t0 = Date.now();
    try {
      await sandbox!.agent.createContainer({
        container_id: 'ghost', exec_id: '', storages: [], oci_spec_json: JSON.stringify(spec),
        devices: [{ id: 'ghost', type: 'vfio-pci', vm_path: '1e', container_path: '/dev/vfio/7', options: [EDU_STAND_IN] }],
      });
    } catch (e) { err = e; }
    expect(err, 'CreateContainer of a device that is not there').to.be.instanceOf(Error);
    expect((err as Error).message).to.match(/no PCI device appeared at PCI path 1e within 10000 ms/);
    expect(Date.now() - t0).to.be.greaterThan(9000);
    // The agent kept nothing: the id is free again.
    let again: unknown;
    try { await sandbox!.agent.createContainer({ container_id: 'ghost', exec_id: '', storages: [], oci_spec_json: JSON.stringify(spec), devices: [{ id: 'ghost', type: 'vfio-pci', vm_path: 'zz', container_path: '/dev/vfio/7', options: [] }] }); } catch (e) { again = e; }
    expect((again as Error).message).to.match(/not a PCI path/);
  });

  it('cold-plug: an edu device on the command line sits at its boot slot (query-pci), is adopted with its PCI path, and unplugs', async () => {
    const cold = new QemuHypervisor({ binary: '/usr/bin/qemu-system-x86_64', machine: 'pc', accel: 'tcg' });
    const cfg = {
      id: 'vfio-cold', dir: path.join(runDir, 'cold'), kernel: path.join(CACHE, 'kernel', 'vmlinux'), image: path.join(CACHE, 'image', 'rootfs.erofs'),
      vcpus: 1, memoryMiB: 512, kernelParams: '', disks: [], debug: false, vfio: [{ id: 'edu0', source: EDU_STAND_IN }],
    };
    expect(cold.commandLine(cfg)).to.include('edu,id=dev-edu0,addr=0x8');
    try {
      const vm = await cold.start(cfg);
      const manager = new DeviceManager(cold);
      manager.adoptBoot(cfg);
      expect(manager.get('edu0')!.pciPath).to.equal('08');
      const pci = (await cold.memoryQmp('query-pci')) as Array<{ devices: Array<{ slot: number; qdev_id: string; id: { vendor: number; device: number } }> }>;
      const edu = pci[0].devices.find((d) => d.qdev_id === 'dev-edu0');
      expect(edu, JSON.stringify(pci[0].devices.map((d) => d.qdev_id))).to.not.equal(undefined);
      expect([edu!.slot, edu!.id.vendor, edu!.id.device]).to.deep.equal([8, 0x1234, 0x11e8]);
      // ACPI unplug needs the guest's cooperation: wait for its agent to be up (the console marker).
      await waitForMarker(vm.consoleLog, 120000, cold.exited());
      expect(await manager.detach('edu0', 'sandbox')).to.equal(true);
      await until('the guest ejected the cold-plugged device (slot 8 free)', () => (cold.slotsInUse().includes(8) ? undefined : true), 60000);
      const after = (await cold.memoryQmp('query-pci')) as Array<{ devices: Array<{ qdev_id: string }> }>;
      expect(after[0].devices.map((d) => d.qdev_id)).to.not.include('dev-edu0');
    } finally {
      await cold.stop();
    }
  });

  it('cold-plug through a Sandbox: its boot VFIO device is adopted, and a container naming the group shares it in vfio mode (no hotplug)', async () => {
    const cfg = testConfig(runDir);
    const bootHv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
    const id = vfioDeviceId(EDU_STAND_IN, 7, 0);
    const boot = new Sandbox({ id: 'vfio-boot', config: cfg, hypervisor: bootHv, bootContainers: [], bootVfio: [{ id, source: EDU_STAND_IN }], vfio: { mode: 'vfio', sources: () => [EDU_STAND_IN] } });
    try {
      await boot.start();
      const dev = boot.devices.get(id)!;
      expect([dev.boot, dev.holders, dev.pciPath]).to.deep.equal([true, ['sandbox'], '08']);
      await boot.createContainer('c', vfioSpec(['sh', '-c', PROBE]), rootfs);
      expect(boot.devices.get(id)!.holders).to.deep.equal(['sandbox', 'c']);
      await boot.startContainer('c');
      const out = await collectOutput(boot.agent, 'c', '');
      expect(out.status, out.out).to.equal(0);
      const lines = out.out.trim().split('\n');
      expect(lines[0], out.out).to.match(/^vfio:noiommu-\d+ vfio $/);
      expect(lines[1], out.out).to.equal('0000:00:08.0 0x1234:0x11e8');
      await boot.removeContainer('c');
      // The sandbox still holds its boot device.
      expect(boot.devices.get(id)!.holders).to.deep.equal(['sandbox']);
    } finally {
      await boot.stop();
    }
  });

  /** A q35 sandbox with two root ports, VFIO in root-port mode (hot or cold). */
  function q35Config(mode: 'hot' | 'cold') {
    const cfg = testConfig(runDir);
    const q = cfg['hypervisor.qemu'];
    q.machine_type = 'q35';
    q.pcie_root_port = 2;
    if (mode === 'hot') q.hot_plug_vfio = 'root-port';
    else q.cold_plug_vfio = 'root-port';
    return cfg;
  }

  type PciBus = { bus: number; devices: Array<{ slot: number; qdev_id: string; id: { vendor: number; device: number }; pci_bridge?: { bus: { secondary: number }; devices?: PciBus['devices'] } }> };
  /** query-pci: the root port rpK and the devices behind it. */
  async function behindPort(h: QemuHypervisor, port: string): Promise<{ slot: number; secondary: number; devices: Array<{ qdev_id: string; vendor: number }> }> {
    const pci = (await h.memoryQmp('query-pci')) as PciBus[];
    const rp = pci[0].devices.find((d) => d.qdev_id === port);
    if (!rp?.pci_bridge) throw new Error(`no root port ${port} in query-pci: ${JSON.stringify(pci[0].devices.map((d) => d.qdev_id))}`);
    return { slot: rp.slot, secondary: rp.pci_bridge.bus.secondary, devices: (rp.pci_bridge.devices ?? []).map((d) => ({ qdev_id: d.qdev_id, vendor: d.id.vendor })) };
  }

  it('q35, cold_plug_vfio = "root-port": the edu device behind rp0 on the command line, found by "<port slot>/00", /dev/vfio/noiommu-N in the container', async () => {
    const cfg = q35Config('cold');
    const qhv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
    const id = vfioDeviceId(EDU_STAND_IN, 7, 0);
    const sb = new Sandbox({ id: 'vfio-q35c', config: cfg, hypervisor: qhv, bootContainers: [{ id: 'c', rootfs, rootfsShare: 'virtiofs' }], bootVfio: [{ id, source: EDU_STAND_IN }], vfio: { mode: 'vfio', sources: () => [EDU_STAND_IN] } });
    try {
      await sb.start();
      const rp0 = await behindPort(qhv, 'rp0');
      expect(rp0.devices).to.deep.equal([{ qdev_id: `dev-${id}`, vendor: 0x1234 }]);
      const dev = sb.devices.get(id)!;
      expect(dev.pciPath).to.equal(`${rp0.slot.toString(16).padStart(2, '0')}/00`);
      expect(qhv.rootPortsInUse()).to.deep.equal(['rp0']);
      await sb.createContainer('c', vfioSpec(['sh', '-c', PROBE]), rootfs);
      await sb.startContainer('c');
      const out = await collectOutput(sb.agent, 'c', '');
      expect(out.status, out.out).to.equal(0);
      const lines = out.out.trim().split('\n');
      expect(lines[0], out.out).to.match(/^vfio:noiommu-\d+ vfio $/);
      // Behind the port: on the port's secondary bus, not bus 00.
      expect(lines[1], out.out).to.match(/^0000:([0-9a-f]{2}):00\.0 0x1234:0x11e8$/);
      expect(lines[1].slice(5, 7)).to.not.equal('00');
      expect(lines[2], out.out).to.equal('open-ok');
      await sb.removeContainer('c');
    } finally {
      await sb.stop();
    }
  });

  it('q35, hot_plug_vfio = "root-port": device_add onto a free root port, the agent finds it by "<port slot>/00", unplug frees the port (query-pci) and it is reused', async () => {
    const cfg = q35Config('hot');
    const qhv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
    // q35 does not hotplug virtio-fs shares (pcie.0): the containers' rootfs shares are there from boot.
    const sb = new Sandbox({ id: 'vfio-q35h', config: cfg, hypervisor: qhv, bootContainers: [1, 2].map((r) => ({ id: `h${r}`, rootfs, rootfsShare: 'virtiofs' as const })), vfio: { mode: 'vfio', sources: () => [EDU_STAND_IN] } });
    try {
      await sb.start();
      for (const round of [1, 2]) {
        const name = `h${round}`;
        await sb.createContainer(name, vfioSpec(['sh', '-c', PROBE]), rootfs);
        const dev = sb.devices.list().find((d) => d.spec.kind === 'vfio' && d.holders.includes(name))!;
        const rp0 = await behindPort(qhv, 'rp0');
        expect(rp0.devices.map((d) => d.vendor), `round ${round}: the device behind rp0`).to.deep.equal([0x1234]);
        expect(dev.pciPath).to.equal(`${rp0.slot.toString(16).padStart(2, '0')}/00`);
        await sb.startContainer(name);
        const out = await collectOutput(sb.agent, name, '');
        expect(out.status, out.out).to.equal(0);
        const lines = out.out.trim().split('\n');
        expect(lines[0], out.out).to.match(/^vfio:noiommu-\d+ vfio $/);
        expect(lines[1], out.out).to.match(/^0000:[0-9a-f]{2}:00\.0 0x1234:0x11e8$/);
        expect(lines[1].slice(5, 7)).to.not.equal('00');
        expect(lines[2], out.out).to.equal('open-ok');
        await sb.removeContainer(name);
        await until('rp0 free again', () => (qhv.rootPortsInUse().length === 0 ? true : undefined), 60000);
        expect((await behindPort(qhv, 'rp0')).devices).to.deep.equal([]);
      }
    } finally {
      await sb.stop();
    }
  });

  for (const mode of ['hot', 'cold'] as const) {
    it(`pc, ${mode}_plug_vfio = "bridge-port": the edu device behind the pci-bridge (query-pci), found by "<bridge slot>/<slot>", /dev/vfio/noiommu-N, unplug empties the bridge`, async () => {
      const cfg = testConfig(runDir);
      if (mode === 'hot') cfg['hypervisor.qemu'].hot_plug_vfio = 'bridge-port';
      else cfg['hypervisor.qemu'].cold_plug_vfio = 'bridge-port';
      const bhv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
      const id = vfioDeviceId(EDU_STAND_IN, 7, 0);
      const sb = new Sandbox({ id: `vfio-br${mode[0]}`, config: cfg, hypervisor: bhv, bootContainers: [], ...(mode === 'cold' ? { bootVfio: [{ id, source: EDU_STAND_IN }] } : {}), vfio: { mode: 'vfio', sources: () => [EDU_STAND_IN] } });
      try {
        await sb.start();
        await sb.createContainer('b', vfioSpec(['sh', '-c', PROBE]), rootfs);
        const dev = sb.devices.list().find((d) => d.spec.kind === 'vfio' && d.holders.includes('b'))!;
        const br = await behindPort(bhv, 'pcibr0');
        expect(br.devices).to.deep.equal([{ qdev_id: `dev-${dev.spec.id}`, vendor: 0x1234 }]);
        expect(dev.pciPath).to.equal(`${br.slot.toString(16).padStart(2, '0')}/01`);
        await sb.startContainer('b');
        const out = await collectOutput(sb.agent, 'b', '');
        expect(out.status, out.out).to.equal(0);
        const lines = out.out.trim().split('\n');
        expect(lines[0], out.out).to.match(/^vfio:noiommu-\d+ vfio $/);
        expect(lines[1], out.out).to.equal(`0000:${br.secondary.toString(16).padStart(2, '0')}:01.0 0x1234:0x11e8`);
        expect(lines[2], out.out).to.equal('open-ok');
        await sb.removeContainer('b');
        if (mode === 'cold') expect(await sb.devices.detach(id, 'sandbox')).to.equal(true);
        await until('the bridge empty again', async () => ((await behindPort(bhv, 'pcibr0')).devices.length === 0 ? true : undefined), 60000);
      } finally {
        await sb.stop();
      }
    });
  }
});
