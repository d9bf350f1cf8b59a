/**
 * QemuHypervisor PCI slot bookkeeping, without a VM: commandLine() is pure
 * (same config → same argv, however often it is called), and start() with a
 * stand-in QEMU (a sleeping shell script; the test answers QMP itself on
 * qmp.sock) adopts the boot slots so hotplugged devices get free ones.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { QemuHypervisor } from '../../../src/hypervisor/qemu';
import type { VmConfig } from '../../../src/hypervisor/hypervisor';

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

/** A QMP server on qmp.sock that greets, answers every command with {}, records device_add arguments and confirms device_del at once. */
function fakeQmp(sock: string, onQuit: () => void): { server: net.Server; deviceAdds: Array<Record<string, unknown>> } {
  const deviceAdds: Array<Record<string, unknown>> = [];
  const server = net.createServer((c) => {
    c.write('{"QMP": {"version": {}, "capabilities": []}}\n');
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; arguments?: Record<string, unknown>; id?: string };
        buf = buf.slice(nl + 1);
        if (msg.execute === 'device_add') deviceAdds.push(msg.arguments ?? {});
        c.write(`${JSON.stringify({ return: {}, id: msg.id })}\n`);
        if (msg.execute === 'device_del') c.write(`${JSON.stringify({ event: 'DEVICE_DELETED', data: { device: msg.arguments?.id } })}\n`);
        if (msg.execute === 'quit') onQuit();
      }
    });
    c.on('error', () => undefined);
  });
  server.listen(sock);
  return { server, deviceAdds };
}

describe('QemuHypervisor PCI slots', function () {
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
      await hv.removeDisk('c');
      await hv.addDisk({ id: 'e', path: path.join(dir, 'c.img'), readonly: true });
      const last = parseInt(String(qmp.deviceAdds[qmp.deviceAdds.length - 1].addr), 16);
      expect(all).to.not.include(last);
    } finally {
      await hv.stop();
      if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      await new Promise<void>((res) => qmp.server.close(() => res()));
    }
  });
});
