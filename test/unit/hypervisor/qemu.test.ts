/**
 * QemuHypervisor PCI slot bookkeeping, without a VM: commandLine() is pure
 * (same config → same argv, however often it is called), and start() with a
 * stand-in QEMU (a sleeping shell script; the test answers QMP itself on
 * qmp.sock) adopts the boot slots so hotplugged devices get free ones,
 * frees them on unplug, and starts QEMU so it dies with its owner.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { QemuHypervisor } from '../../../src/hypervisor/qemu';
import { DeviceManager, DeviceError } from '../../../src/resource/devices/device-manager';
import type { VmConfig } from '../../../src/hypervisor/hypervisor';
import { fakeQmp, type FakeQmp } from '../../helpers/fake-qmp';

/** PCI slot of every -device that names one (addr=0x..), by its id= (or driver when it has none). */
function slotsOf(args: string[]): Map<string, number> {
  const out = new Map<string, number>();
  args.forEach((a, i) => {
    if (args[i - 1] !== '-device') return;
    const addr = /,addr=0x([0-9a-f]+)/.exec(a);
    if (!addr) return;
    const id = /,id=([^,]+)/.exec(a)?.[1] ?? a.split(',')[0];
    out.set(id, parseInt(addr[1], 16));
  });
  return out;
}

describe('QemuHypervisor with a stand-in QEMU: PCI slots, owner death', function () {
  this.timeout(20000);
  let dir: string;
  let cfg: VmConfig;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qemu-slots-'));
    for (const f of ['vmlinux', 'rootfs.erofs', 'a.img', 'b.img', 'c.img']) fs.writeFileSync(path.join(dir, f), '');
    fs.mkdirSync(path.join(dir, 'share0'));
    fs.mkdirSync(path.join(dir, 'share1'));
    cfg = {
      id: 'slots', dir: path.join(dir, 'vm'), kernel: path.join(dir, 'vmlinux'), image: path.join(dir, 'rootfs.erofs'),
      vcpus: 1, memoryMiB: 64, kernelParams: '', debug: false,
      disks: [
        { id: 'a', path: path.join(dir, 'a.img'), readonly: true },
        { id: 'b', path: path.join(dir, 'b.img'), readonly: false },
      ],
      shares: [{ tag: 'share0', path: path.join(dir, 'share0') }, { tag: 'share1', path: path.join(dir, 'share1') }],
    } as VmConfig;
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const blockDriver of ['vhost-user-blk', 'virtio-blk'] as const) {
    it(`commandLine() is pure: repeated calls give identical argv, boot slots distinct (${blockDriver})`, () => {
      const hv = new QemuHypervisor({ binary: '/bin/false', machine: 'pc', accel: 'tcg', blockDriver });
      const first = hv.commandLine(cfg);
      const second = hv.commandLine(cfg);
      expect(second).to.deep.equal(first);
      expect(hv.commandLine(cfg)).to.deep.equal(first);
      // A fresh instance renders the same line too: no hidden state.
      expect(new QemuHypervisor({ binary: '/bin/false', machine: 'pc', accel: 'tcg', blockDriver }).commandLine(cfg)).to.deep.equal(first);
      const slots = slotsOf(first);
      expect(slots.get('fsdev-b0')).to.equal(8);
      expect(slots.get('fsdev-b1')).to.equal(9);
      expect(slots.get('dev-a')).to.equal(10);
      expect(slots.get('dev-b')).to.equal(11);
      const used = [...slots.values()];
      expect(new Set(used).size, `slots ${used.join(',')}`).to.equal(used.length);
    });
  }

  it('start() keeps the boot slots; hotplugged disks and shares get free slots that collide with none', async () => {
    const bin = path.join(dir, 'fake-qemu');
    fs.writeFileSync(bin, '#!/bin/sh\nexec sleep 60\n', { mode: 0o755 });
    fs.mkdirSync(cfg.dir, { recursive: true });
    const hv = new QemuHypervisor({ binary: bin, machine: 'pc', accel: 'tcg', blockDriver: 'virtio-blk' });
    let pid = 0;
    const qmp = fakeQmp(path.join(cfg.dir, 'qmp.sock'), () => { if (pid) process.kill(pid, 'SIGKILL'); });
    try {
      const before = hv.commandLine(cfg);
      const info = await hv.start(cfg);
      pid = info.pids[0];
      // What start() booted with is what commandLine() still renders.
      expect(hv.commandLine(cfg)).to.deep.equal(before);
      const boot = [...slotsOf(before).values()];
      await hv.addDisk({ id: 'c', path: path.join(dir, 'c.img'), readonly: true });
      fs.mkdirSync(path.join(dir, 'share2'));
      await hv.addShare({ tag: 'share2', path: path.join(dir, 'share2') });
      await hv.addDisk({ id: 'd', path: path.join(dir, 'c.img'), readonly: true });
      const hot = qmp.deviceAdds.map((a) => parseInt(String(a.addr), 16));
      expect(hot).to.have.length(3);
      const all = [...boot, ...hot];
      expect(new Set(all).size, `slots ${all.join(',')}`).to.equal(all.length);
      for (const s of hot) expect(s).to.be.within(8, 0x1f);
      // commandLine() calls after hotplug change nothing either.
      expect(hv.commandLine(cfg)).to.deep.equal(before);
      const cSlot = hot[0];
      await hv.removeDisk('c');
      await hv.addDisk({ id: 'e', path: path.join(dir, 'c.img'), readonly: true });
      // The lowest free slot is the one disk c gave back; no device in use shares it.
      const last = parseInt(String(qmp.deviceAdds[qmp.deviceAdds.length - 1].addr), 16);
      expect(last).to.equal(cSlot);
      expect(hv.slotsInUse()).to.deep.equal(all.filter((s) => s >= 8).sort((a, b) => a - b));
    } finally {
      await hv.stop();
      if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      await new Promise<void>((res) => qmp.server.close(() => res()));
    }
  });

  /** Boots the stand-in QEMU with cfg and runs fn against it. */
  async function withFakeVm(blockDriver: 'vhost-user-blk' | 'virtio-blk', fn: (hv: QemuHypervisor, qmp: FakeQmp) => Promise<void>): Promise<void> {
    const bin = path.join(dir, 'fake-qemu');
    fs.writeFileSync(bin, '#!/bin/sh\nexec sleep 60\n', { mode: 0o755 });
    fs.mkdirSync(cfg.dir, { recursive: true });
    const hv = new QemuHypervisor({ binary: bin, machine: 'pc', accel: 'tcg', blockDriver });
    let pid = 0;
    const qmp = fakeQmp(path.join(cfg.dir, 'qmp.sock'), () => { if (pid) process.kill(pid, 'SIGKILL'); });
    try {
      pid = (await hv.start(cfg)).pids[0];
      await fn(hv, qmp);
    } finally {
      await hv.stop();
      if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      await new Promise<void>((res) => qmp.server.close(() => res()));
    }
  }

  for (const blockDriver of ['vhost-user-blk', 'virtio-blk'] as const) {
    it(`50 add/remove cycles of a disk and a share reuse freed slots and never run out (${blockDriver})`, async () => {
      fs.mkdirSync(path.join(dir, 'hot'));
      await withFakeVm(blockDriver, async (hv, qmp) => {
        const boot = hv.slotsInUse();
        expect(boot).to.deep.equal([8, 9, 10, 11]);
        // One long-lived disk, so the cycling devices are not simply the only ones.
        await hv.addDisk({ id: 'keep', path: path.join(dir, 'c.img'), readonly: true });
        for (let i = 0; i < 50; i++) {
          await hv.addDisk({ id: `c${i}`, path: path.join(dir, 'c.img'), readonly: true });
          await hv.addShare({ tag: `hot${i}`, path: path.join(dir, 'hot') });
          expect(hv.slotsInUse()).to.deep.equal([8, 9, 10, 11, 12, 13, 14]);
          await hv.removeDisk(`c${i}`);
          await hv.removeShare(`hot${i}`);
          expect(hv.slotsInUse()).to.deep.equal([8, 9, 10, 11, 12]);
        }
        // 1 + 100 device_adds, every one accepted on a free slot (the fake refuses occupied ones).
        expect(qmp.deviceAdds).to.have.length(101);
        expect(new Set(qmp.deviceAdds.map((a) => a.addr))).to.deep.equal(new Set(['0xc', '0xd', '0xe']));
        // Boot devices can go too, and their slots are reused.
        await hv.removeDisk('a');
        expect(hv.slotsInUse()).to.not.include(10);
        await hv.addDisk({ id: 'z', path: path.join(dir, 'c.img'), readonly: true });
        expect(qmp.deviceAdds[qmp.deviceAdds.length - 1].addr).to.equal('0xa');
      });
    });
  }

  it('a full bus refuses the next device with a clear error; freeing one slot makes room again', async () => {
    await withFakeVm('virtio-blk', async (hv) => {
      // 0x08..0x1f is 24 slots; boot takes 4.
      for (let i = 0; i < 20; i++) await hv.addDisk({ id: `f${i}`, path: path.join(dir, 'c.img'), readonly: true });
      expect(hv.slotsInUse()).to.have.length(24);
      let err: Error | undefined;
      await hv.addDisk({ id: 'over', path: path.join(dir, 'c.img'), readonly: true }).catch((e: Error) => { err = e; });
      expect(err?.message).to.match(/no free PCI slot/);
      await hv.removeDisk('f7');
      await hv.addDisk({ id: 'over', path: path.join(dir, 'c.img'), readonly: true });
      expect(hv.slotsInUse()).to.have.length(24);
    });
  });

  for (const blockDriver of ['vhost-user-blk', 'virtio-blk'] as const) {
    it(`a device_add QEMU refuses gives its slot back (${blockDriver})`, async () => {
      await withFakeVm(blockDriver, async (hv, qmp) => {
        await hv.addDisk({ id: 'x', path: path.join(dir, 'c.img'), readonly: true });
        const before = hv.slotsInUse();
        qmp.refuseAdd.add('dev-y');
        let err: Error | undefined;
        await hv.addDisk({ id: 'y', path: path.join(dir, 'c.img'), readonly: true }).catch((e: Error) => { err = e; });
        expect(err?.message).to.match(/refused/);
        expect(hv.slotsInUse()).to.deep.equal(before);
        if (blockDriver === 'virtio-blk') expect(qmp.commands).to.deep.include({ execute: 'blockdev-del', arguments: { 'node-name': 'd-y' } });
        qmp.refuseAdd.clear();
        await hv.addDisk({ id: 'y', path: path.join(dir, 'c.img'), readonly: true });
        expect(hv.slotsInUse()).to.deep.equal([...before, 13]);
      });
    });
  }

  it('VFIO through the device manager: this host has no IOMMU, so the device is refused before any device_add and no slot is taken', async function () {
    if (fs.readdirSync('/sys/kernel/iommu_groups').length > 0) this.skip(); // a host with an IOMMU: this case does not apply
    const bdf = fs.readdirSync('/sys/bus/pci/devices')[0];
    await withFakeVm('virtio-blk', async (hv, qmp) => {
      const before = hv.slotsInUse();
      const m = new DeviceManager(hv);
      let err: unknown;
      await m.attach({ kind: 'vfio', id: 'gpu0', bdf }, 'c1').catch((e: unknown) => { err = e; });
      expect(err).to.be.instanceOf(DeviceError);
      expect((err as Error).message).to.match(new RegExp(`cannot attach vfio device gpu0: ${bdf.replace(/\./g, '\\.')} has no IOMMU group: the host's IOMMU is off`));
      expect(hv.slotsInUse()).to.deep.equal(before);
      expect(qmp.commands.filter((c) => c.execute === 'device_add')).to.deep.equal([]);
      expect(m.list()).to.deep.equal([]);
    });
  });

  it('VFIO hotplug with the edu stand-in: device_add edu on a free slot, the manager hands out its PCI path, unplug frees the slot (VF)', async () => {
    await withFakeVm('virtio-blk', async (hv, qmp) => {
      const before = hv.slotsInUse();
      const m = new DeviceManager(hv);
      const d = await m.attach({ kind: 'vfio', id: 'edu1', bdf: 'edu' }, 'c1');
      const add = qmp.commands.filter((c) => c.execute === 'device_add');
      expect(add).to.deep.equal([{ execute: 'device_add', arguments: { driver: 'edu', id: 'dev-edu1', addr: '0xc' } }]);
      expect(d.pciPath).to.equal('0c');
      expect(hv.slotOf('vfio', 'edu1')).to.equal(12);
      expect(await m.detach('edu1', 'c1')).to.equal(true);
      expect(qmp.commands).to.deep.include({ execute: 'device_del', arguments: { id: 'dev-edu1' } });
      expect(hv.slotsInUse()).to.deep.equal(before);
    });
  });

  it('VFIO cold-plug: vfio-pci,host= and edu on the command line after the nets, in the boot plan; microvm and a bad source refused (VF)', () => {
    const hv = new QemuHypervisor({ binary: '/usr/bin/qemu-system-x86_64', machine: 'pc', accel: 'tcg' });
    const c: VmConfig = { ...cfg, vfio: [{ id: 'gpu0', source: '0000:65:00.1' }, { id: 'edu0', source: 'edu' }] };
    const args = hv.commandLine(c);
    const slots = slotsOf(args);
    const devs = args.filter((a, i) => args[i - 1] === '-device' && /^(vfio-pci|edu),/.test(a));
    const last = Math.max(...[...slots.values()].filter((s) => s >= 8 && s !== slots.get('dev-gpu0') && s !== slots.get('dev-edu0')));
    expect(devs).to.deep.equal([`vfio-pci,host=0000:65:00.1,id=dev-gpu0,addr=0x${(last + 1).toString(16)}`, `edu,id=dev-edu0,addr=0x${(last + 2).toString(16)}`]);
    expect(() => new QemuHypervisor({ binary: '/usr/bin/qemu-system-x86_64', machine: 'microvm', accel: 'tcg' }).commandLine(c)).to.throw(/microvm machine has no PCI bus/);
    expect(() => hv.commandLine({ ...cfg, vfio: [{ id: 'x', source: '65:00.1' }] })).to.throw(/not a PCI address/);
  });

  it('VFIO cold-plug of a host device on this IOMMU-less host: start() refuses it before QEMU runs (VF)', async function () {
    if (fs.readdirSync('/sys/kernel/iommu_groups').length > 0) this.skip(); // a host with an IOMMU: this case does not apply
    const bdf = fs.readdirSync('/sys/bus/pci/devices')[0];
    const bin = path.join(dir, 'fake-qemu-cold');
    const marker = path.join(dir, 'cold-ran');
    fs.writeFileSync(bin, `#!/bin/sh\ntouch ${marker}\nexec sleep 60\n`, { mode: 0o755 });
    const hv = new QemuHypervisor({ binary: bin, machine: 'pc', accel: 'tcg' });
    let err: unknown;
    await hv.start({ ...cfg, vfio: [{ id: 'gpu0', source: bdf }] }).catch((e: unknown) => { err = e; });
    expect((err as Error)?.message).to.match(/has no IOMMU group: the host's IOMMU is off/);
    expect(fs.existsSync(marker)).to.equal(false);
    await hv.stop();
  });

  it('a device the guest does not release keeps its slot until DEVICE_DELETED comes; DeviceNotFound frees it at once', async function () {
    this.timeout(30000);
    await withFakeVm('virtio-blk', async (hv, qmp) => {
      await hv.addDisk({ id: 'stuck', path: path.join(dir, 'c.img'), readonly: true });
      await hv.addDisk({ id: 'gone', path: path.join(dir, 'c.img'), readonly: true });
      expect(hv.slotsInUse()).to.deep.equal([8, 9, 10, 11, 12, 13]);
      qmp.withhold.add('dev-stuck');
      await hv.removeDisk('stuck'); // gives up waiting after 5 s
      expect(hv.slotsInUse(), 'slot of an unreleased device').to.include(12);
      await hv.addDisk({ id: 'next', path: path.join(dir, 'c.img'), readonly: true });
      expect(qmp.deviceAdds[qmp.deviceAdds.length - 1].addr, 'not the stuck slot').to.equal('0xe');
      qmp.emit('DEVICE_DELETED', { device: 'dev-stuck' });
      await new Promise((r) => setTimeout(r, 100));
      expect(hv.slotsInUse()).to.not.include(12);
      qmp.notFound.add('dev-gone');
      await hv.removeDisk('gone');
      expect(hv.slotsInUse()).to.deep.equal([8, 9, 10, 11, 14]);
    });
  });

  it('QEMU does not outlive the process that started it (SIGKILL of the owner kills QEMU)', async () => {
    const bin = path.join(dir, 'fake-qemu');
    fs.writeFileSync(bin, '#!/bin/sh\nexec sleep 60\n', { mode: 0o755 });
    fs.mkdirSync(cfg.dir, { recursive: true });
    const qmp = fakeQmp(path.join(cfg.dir, 'qmp.sock'), () => undefined);
    const owner = spawn(process.execPath, [path.join(__dirname, 'qemu-owner-child.js'), bin, JSON.stringify({ ...cfg, disks: [], shares: [] })], { stdio: ['ignore', 'pipe', 'pipe'] });
    let qemuPid = 0;
    try {
      let out = '';
      let err = '';
      owner.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      qemuPid = await new Promise<number>((resolve, reject) => {
        owner.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('\n')) resolve(Number(out.trim()));
        });
        owner.once('exit', (code) => reject(new Error(`owner exited ${code}: ${err}`)));
      });
      expect(alive(qemuPid), 'stand-in QEMU running').to.equal(true);
      // The QEMU pid is QEMU's own (setpriv execs it), as -pidfile and `shim delete` expect.
      // The stand-in is a script that execs sleep: give its exec chain (setpriv →
      // /bin/sh → sleep) a moment to finish before reading what the pid runs.
      const cmd = () => fs.readFileSync(`/proc/${qemuPid}/cmdline`, 'utf8').split('\0')[0];
      for (const end = Date.now() + 2000; cmd() !== 'sleep' && Date.now() < end; ) await new Promise((r) => setTimeout(r, 20));
      expect(cmd()).to.equal('sleep');
      const exited = new Promise((r) => owner.once('exit', r));
      owner.kill('SIGKILL');
      await exited;
      const end = Date.now() + 3000;
      while (alive(qemuPid) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      expect(alive(qemuPid), 'QEMU still running after its owner was SIGKILLed').to.equal(false);
    } finally {
      owner.kill('SIGKILL');
      if (qemuPid && alive(qemuPid)) process.kill(qemuPid, 'SIGKILL');
      await new Promise<void>((res) => qmp.server.close(() => res()));
    }
  });
});

/** Running (a zombie waiting for its reaper counts as gone). */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}
