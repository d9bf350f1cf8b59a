/**
 * VFIO behind PCIe root ports on q35 (Kata's pcie_root_port and
 * hot_plug_vfio / cold_plug_vfio = "root-port"), without a VM: the
 * RootPortPool, the exact QEMU -device values (root ports with unique
 * chassis/slot on pcie.0 slots of the boot plan, cold-plugged devices at
 * bus=rpK,addr=0x0), the QMP device_add of a hotplugged device onto the
 * lowest free port (a stand-in QEMU: a sleeping shell script, QMP answered
 * by this test), its two-level PCI path, the port freed on DEVICE_DELETED
 * and reused, port exhaustion (one error, nothing attached), and the wrong
 * machine / missing ports / switch-port refused. Also bridge-port on pc: one
 * pci-bridge, devices in its slots 1.., PCI path "<bridge slot>/<slot>".
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { QemuHypervisor, QemuError, checkVfioPorts } from '../../../src/hypervisor/qemu';
import { RootPortPool, rootPortPciPath, PciSlotError } from '../../../src/hypervisor/pci-slots';
import { vfioDeviceAdd, vfioDeviceArg } from '../../../src/hypervisor/vfio-host';
import { DeviceManager } from '../../../src/resource/devices/device-manager';
import type { VmConfig } from '../../../src/hypervisor/hypervisor';
import { fakeQmp } from '../../helpers/fake-qmp';

describe('unit: VFIO behind PCIe root ports (q35)', function () {
  this.timeout(20000);
  let dir: string;
  let cfg: VmConfig;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qemu-rp-'));
    for (const f of ['vmlinux', 'rootfs.erofs', 'a.img']) fs.writeFileSync(path.join(dir, f), '');
    cfg = {
      id: 'rp', dir: path.join(dir, 'vm'), kernel: path.join(dir, 'vmlinux'), image: path.join(dir, 'rootfs.erofs'),
      vcpus: 1, memoryMiB: 64, kernelParams: '', debug: false, disks: [{ id: 'a', path: path.join(dir, 'a.img'), readonly: true }],
    } as VmConfig;
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const devices = (args: string[]) => args.filter((_, i) => args[i - 1] === '-device');

  it('RootPortPool: lowest free port first, released ports reused, exhaustion one PciSlotError naming the ports', () => {
    const pool = new RootPortPool([9, 10]);
    expect(pool.ports).to.deep.equal([{ id: 'rp0', slot: 9, chassis: 1, physSlot: 1 }, { id: 'rp1', slot: 10, chassis: 1, physSlot: 2 }]);
    expect(pool.take().id).to.equal('rp0');
    expect(pool.take().id).to.equal('rp1');
    expect(() => pool.take()).to.throw(PciSlotError, /all 2 PCIe root ports are in use \(rp0, rp1\)/);
    pool.release('rp0');
    expect(pool.take().id).to.equal('rp0');
    expect(() => pool.reserve('rp1')).to.throw(PciSlotError, /already taken/);
    expect(() => new RootPortPool([]).take()).to.throw(PciSlotError, /set \[hypervisor\.qemu\] pcie_root_port/);
    expect(rootPortPciPath(9)).to.equal('09/00');
    expect(vfioDeviceArg('0000:01:00.0', 'dev-gpu', { bus: 'rp2' })).to.equal('vfio-pci,host=0000:01:00.0,id=dev-gpu,bus=rp2,addr=0x0');
    expect(vfioDeviceAdd('edu', 'dev-e', { bus: 'rp0' })).to.deep.equal({ driver: 'edu', id: 'dev-e', bus: 'rp0', addr: '0x0' });
  });

  it('cold plug: N root ports on pcie.0 after the boot devices, each cold-plugged device in slot 0 of its own port', () => {
    const hv = new QemuHypervisor({ binary: '/bin/true', machine: 'q35', accel: 'tcg', pcieRootPorts: 3, coldPlugVfio: 'root-port' });
    const args = hv.commandLine({ ...cfg, vfio: [{ id: 'gpu0', source: '0000:01:00.0' }, { id: 'e', source: 'edu' }] });
    const d = devices(args);
    // disk a takes slot 8; the ports 9, 10, 11.
    expect(d.filter((x) => x.startsWith('pcie-root-port'))).to.deep.equal([
      'pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1,addr=0x9',
      'pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=2,addr=0xa',
      'pcie-root-port,id=rp2,bus=pcie.0,chassis=1,slot=3,addr=0xb',
    ]);
    expect(d).to.include('vfio-pci,host=0000:01:00.0,id=dev-gpu0,bus=rp0,addr=0x0');
    expect(d).to.include('edu,id=dev-e,bus=rp1,addr=0x0');
    // The ports are created before the devices that sit behind them (QEMU resolves bus= in order).
    expect(args.indexOf('pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=2,addr=0xa')).to.be.lessThan(args.indexOf('edu,id=dev-e,bus=rp1,addr=0x0'));
    // Without root-port cold plug the devices stay on the root bus, the ports stay empty.
    const flat = new QemuHypervisor({ binary: '/bin/true', machine: 'q35', accel: 'tcg', pcieRootPorts: 1 }).commandLine({ ...cfg, vfio: [{ id: 'e', source: 'edu' }] });
    expect(devices(flat)).to.include('edu,id=dev-e,addr=0x9');
    expect(devices(flat)).to.include('pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1,addr=0xa');
    // More cold devices than ports: one config error.
    const small = new QemuHypervisor({ binary: '/bin/true', machine: 'q35', accel: 'tcg', pcieRootPorts: 1, coldPlugVfio: 'root-port' });
    expect(() => small.commandLine({ ...cfg, vfio: [{ id: 'x', source: 'edu' }, { id: 'y', source: 'edu' }] })).to.throw(QemuError, /2 VFIO devices are cold-plugged on root ports but pcie_root_port = 1/);
  });

  it('wrong machine, missing ports, bridge-port and switch-port: one QemuError each, before anything runs', () => {
    const bad = (f: () => unknown, re: RegExp) => expect(f).to.throw(QemuError, re);
    bad(() => checkVfioPorts('pc', 2, 'no-port', 'no-port'), /pcie_root_port = 2 needs machine_type = "q35": the pc machine has no PCI Express/);
    bad(() => checkVfioPorts('microvm', 1, 'no-port', 'no-port'), /microvm machine has no PCI Express/);
    bad(() => checkVfioPorts('pc', 0, 'root-port', 'no-port'), /hot_plug_vfio = "root-port" needs machine_type = "q35"/);
    bad(() => checkVfioPorts('q35', 0, 'no-port', 'root-port'), /cold_plug_vfio = "root-port" needs pcie_root_port > 0/);
    bad(() => checkVfioPorts('q35', 2, 'bridge-port', 'no-port'), /hot_plug_vfio = "bridge-port" needs machine_type = "pc"/);
    bad(() => checkVfioPorts('q35', 2, 'no-port', 'switch-port'), /cold_plug_vfio = "switch-port" is not supported/);
    bad(() => checkVfioPorts('q35', 17, 'no-port', 'no-port'), /must be 0\.\.16/);
    bad(() => new QemuHypervisor({ binary: '/bin/true', machine: 'pc', accel: 'tcg', pcieRootPorts: 1 }), /needs machine_type = "q35"/);
    expect(() => checkVfioPorts('q35', 2, 'root-port', 'no-port')).to.not.throw();
    expect(() => checkVfioPorts('pc', 0, 'no-port', 'bridge-port')).to.not.throw();
  });

  it('hotplug: device_add onto the lowest free root port, PCI path "<port slot>/00", port freed on DEVICE_DELETED and reused; all ports busy is one error with nothing attached', async () => {
    const bin = path.join(dir, 'fake-qemu');
    fs.writeFileSync(bin, '#!/bin/sh\nexec sleep 60\n', { mode: 0o755 });
    fs.mkdirSync(cfg.dir, { recursive: true });
    const hv = new QemuHypervisor({ binary: bin, machine: 'q35', accel: 'tcg', blockDriver: 'virtio-blk', pcieRootPorts: 2, hotPlugVfio: 'root-port' });
    const qmp = fakeQmp(path.join(cfg.dir, 'qmp.sock'));
    let pid = 0;
    try {
      pid = (await hv.start(cfg)).pids[0];
      const slotsAtBoot = hv.slotsInUse();
      expect(slotsAtBoot).to.deep.equal([8, 9, 10]); // disk a, rp0, rp1
      const m = new DeviceManager(hv);
      const e1 = await m.attach({ kind: 'vfio', id: 'e1', bdf: 'edu' }, 'c1');
      const e2 = await m.attach({ kind: 'vfio', id: 'e2', bdf: 'edu' }, 'c2');
      expect([e1.pciPath, e2.pciPath]).to.deep.equal(['09/00', '0a/00']);
      expect(qmp.commands.filter((c) => c.execute === 'device_add').map((c) => c.arguments)).to.deep.equal([
        { driver: 'edu', id: 'dev-e1', bus: 'rp0', addr: '0x0' },
        { driver: 'edu', id: 'dev-e2', bus: 'rp1', addr: '0x0' },
      ]);
      expect(hv.rootPortsInUse()).to.deep.equal(['rp0', 'rp1']);
      // Exhausted: one error, no device_add sent, nothing attached, no root-bus slot taken.
      const before = qmp.commands.length;
      let err: unknown;
      try { await m.attach({ kind: 'vfio', id: 'e3', bdf: 'edu' }, 'c3'); } catch (e) { err = e; }
      expect((err as Error).message).to.match(/VFIO device e3: all 2 PCIe root ports are in use \(rp0, rp1\)/);
      expect((err as { kind?: string }).kind).to.equal('full');
      expect(qmp.commands.slice(before).filter((c) => c.execute === 'device_add')).to.deep.equal([]);
      expect(m.get('e3')).to.equal(undefined);
      expect(hv.slotsInUse()).to.deep.equal(slotsAtBoot);
      // A guest that has not released e1 yet keeps rp0 busy; DEVICE_DELETED frees it.
      qmp.withhold.add('dev-e1');
      const t0 = Date.now();
      await m.detach('e1', 'c1');
      expect(Date.now() - t0).to.be.greaterThan(4000);
      expect(hv.rootPortsInUse()).to.deep.equal(['rp0', 'rp1']);
      qmp.emit('DEVICE_DELETED', { device: 'dev-e1' });
      await new Promise((r) => setTimeout(r, 100));
      expect(hv.rootPortsInUse()).to.deep.equal(['rp1']);
      // Reused: the next device goes to rp0 again.
      const e4 = await m.attach({ kind: 'vfio', id: 'e4', bdf: 'edu' }, 'c4');
      expect(e4.pciPath).to.equal('09/00');
      await m.detach('e4', 'c4');
      await m.detach('e2', 'c2');
      expect(hv.rootPortsInUse()).to.deep.equal([]);
      expect(hv.slotsInUse()).to.deep.equal(slotsAtBoot);
      // q35 still refuses disk hotplug (pcie.0 has none); VFIO on root ports is the exception.
      let diskErr: unknown;
      try { await hv.addDisk({ id: 'z', path: path.join(dir, 'a.img'), readonly: true }); } catch (e) { diskErr = e; }
      expect((diskErr as Error).message).to.match(/q35 machine cannot hotplug disks/);
    } finally {
      await hv.stop();
      if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      await new Promise<void>((res) => qmp.server.close(() => res()));
    }
  });

  it('cold-plugged devices behind root ports are adopted with their two-level PCI path and their ports are not handed out again', async () => {
    const bin = path.join(dir, 'fake-qemu');
    fs.writeFileSync(bin, '#!/bin/sh\nexec sleep 60\n', { mode: 0o755 });
    fs.mkdirSync(cfg.dir, { recursive: true });
    const hv = new QemuHypervisor({ binary: bin, machine: 'q35', accel: 'tcg', blockDriver: 'virtio-blk', pcieRootPorts: 2, coldPlugVfio: 'root-port' });
    const qmp = fakeQmp(path.join(cfg.dir, 'qmp.sock'));
    let pid = 0;
    const vcfg = { ...cfg, vfio: [{ id: 'c0', source: 'edu' }] };
    try {
      pid = (await hv.start(vcfg)).pids[0];
      const m = new DeviceManager(hv);
      m.adoptBoot(vcfg);
      expect(m.get('c0')!.pciPath).to.equal('09/00');
      expect(hv.rootPortsInUse()).to.deep.equal(['rp0']);
      expect(await m.detach('c0', 'sandbox')).to.equal(true);
      expect(qmp.commands).to.deep.include({ execute: 'device_del', arguments: { id: 'dev-c0' } });
      expect(hv.rootPortsInUse()).to.deep.equal([]);
    } finally {
      await hv.stop();
      if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      await new Promise<void>((res) => qmp.server.close(() => res()));
    }
  });

  it('bridge-port (pc): one pci-bridge after the boot devices, cold devices in its slots 1.., hotplug into its lowest free slot with PCI path "<bridge slot>/<slot>", freed on unplug', async () => {
    const cold = new QemuHypervisor({ binary: '/bin/true', machine: 'pc', accel: 'tcg', coldPlugVfio: 'bridge-port' });
    const args = devices(cold.commandLine({ ...cfg, vfio: [{ id: 'g', source: '0000:01:00.0' }, { id: 'e', source: 'edu' }] }));
    expect(args).to.include('pci-bridge,id=pcibr0,bus=pci.0,chassis_nr=1,shpc=off,addr=0x9');
    expect(args).to.include('vfio-pci,host=0000:01:00.0,id=dev-g,bus=pcibr0,addr=0x1');
    expect(args).to.include('edu,id=dev-e,bus=pcibr0,addr=0x2');
    expect(devices(new QemuHypervisor({ binary: '/bin/true', machine: 'pc', accel: 'tcg' }).commandLine(cfg)).filter((a) => a.startsWith('pci-bridge'))).to.deep.equal([]);
    const bin = path.join(dir, 'fake-qemu');
    fs.writeFileSync(bin, '#!/bin/sh\nexec sleep 60\n', { mode: 0o755 });
    fs.mkdirSync(cfg.dir, { recursive: true });
    const hv = new QemuHypervisor({ binary: bin, machine: 'pc', accel: 'tcg', blockDriver: 'virtio-blk', hotPlugVfio: 'bridge-port' });
    const qmp = fakeQmp(path.join(cfg.dir, 'qmp.sock'));
    let pid = 0;
    try {
      pid = (await hv.start(cfg)).pids[0];
      expect(hv.slotsInUse()).to.deep.equal([8, 9]); // disk a, the bridge
      const m = new DeviceManager(hv);
      const e1 = await m.attach({ kind: 'vfio', id: 'e1', bdf: 'edu' }, 'c1');
      const e2 = await m.attach({ kind: 'vfio', id: 'e2', bdf: 'edu' }, 'c2');
      expect([e1.pciPath, e2.pciPath]).to.deep.equal(['09/01', '09/02']);
      expect(qmp.commands.filter((c) => c.execute === 'device_add').map((c) => c.arguments)).to.deep.equal([
        { driver: 'edu', id: 'dev-e1', bus: 'pcibr0', addr: '0x1' },
        { driver: 'edu', id: 'dev-e2', bus: 'pcibr0', addr: '0x2' },
      ]);
      await m.detach('e1', 'c1');
      const e3 = await m.attach({ kind: 'vfio', id: 'e3', bdf: 'edu' }, 'c3');
      expect(e3.pciPath).to.equal('09/01');
      await m.detach('e3', 'c3');
      await m.detach('e2', 'c2');
      expect(hv.slotsInUse()).to.deep.equal([8, 9]);
    } finally {
      await hv.stop();
      if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      await new Promise<void>((res) => qmp.server.close(() => res()));
    }
  });
});
