/**
 * One pod, many containers over its life: 50 containers added to a running
 * sandbox and removed again, one after the other (rootfs through the
 * sandbox's one virtio-fs share, every tenth on a hotplugged EROFS disk).
 * Each runs and exits 0; every unplug gives its PCI slot back, so the pod
 * never runs out (it used to refuse containers after ~20 hotplugs). Through
 * the device manager (src/resource/devices): an EROFS container's disk is
 * held by it alone, its PCI path is where QEMU put it (query-pci) and where
 * the guest sees it (the container reads the device's sysfs node by that
 * path); a shared-rootfs container adds no device at all (the sandbox share,
 * attached at boot, serves it) and leaves no host mount behind; after each
 * removal the manager, the slots, our vhost-user servers (their sockets),
 * the sandbox's mounts and the fds of this process and of QEMU are back to
 * the boot state.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import { PassThrough } from 'node:stream';
import { startQemuSandbox, stopQemuSandbox, type QemuTestSandbox } from '../helpers/qemu-sandbox';
import type { Sandbox } from '../../src/runtime/sandbox';
import type { QemuHypervisor } from '../../src/hypervisor/qemu';
import { defaultSpec } from '../../src/runtime/spec';
import { attachProcess } from '../../src/runtime/stdio';
import { diskIdFor } from '../../src/runtime/sandbox';
import { mountsUnder } from '../../src/runtime/volumes';
import { until } from '../helpers/until';

/** Open fds of a process (a leaked backend or chardev shows here). */
function fdCount(pid: number | 'self'): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

/** Unix sockets in the sandbox directory (each served device listens on one). */
function sockets(dir: string): string[] {
  return fs.readdirSync(dir).filter((f) => f.endsWith('.sock')).sort();
}

/** PCI vendor:device of virtio-fs (0x1af4:0x105a) and modern virtio-blk (0x1af4:0x1042), legacy blk 0x1001. */
const VIRTIO_IDS: Record<string, string[]> = { fs: ['0x105a'], blk: ['0x1042', '0x1001'] };

const CYCLES = 50;

describe('integration: 50 containers added to and removed from one pod (QEMU)', function () {
  // Bounded: a cycle takes a few seconds under TCG.
  this.timeout(CYCLES * 40000 + 120000); // a cycle takes 5 s on an idle host, 20-30 s when the 2 cores are shared
  let t: QemuTestSandbox | undefined;
  let sandbox: Sandbox | undefined;
  let hv: QemuHypervisor;
  let rootfs = '';

  before(async function () {
    t = await startQemuSandbox(this, 'cycles', { sandbox: () => ({ volumes: true }) });
    ({ sandbox, hv, rootfs } = t);
  });

  after(() => stopQemuSandbox(t));

  it(`adds, runs and removes ${CYCLES} containers; the PCI slots in use return to the boot set each time`, async () => {
    const boot = hv.slotsInUse();
    const bootDevices = sandbox!.devices.list().map((d) => d.spec.id);
    const bootSockets = sockets(sandbox!.dir);
    const bootMounts = mountsUnder(sandbox!.dir).map((m) => m.target);
    const qemuPid = sandbox!.vmInfo!.pids[0];
    let fds: { self: number; qemu: number } | undefined;
    const t0 = Date.now();
    for (let i = 0; i < CYCLES; i++) {
      const id = `c${i}`;
      const rootfsShare = i % 10 === 9 ? 'erofs' as const : 'virtiofs' as const;
      const kind = 'blk';
      const devId = diskIdFor(id);
      // The container lists the PCI devices the guest sees (address and device id).
      const probe = 'for d in /sys/bus/pci/devices/*; do echo "${d##*/} $(cat $d/device)"; done';
      const dev0 = sandbox!.devices.list().length;
      await sandbox!.createContainer(id, defaultSpec({ args: ['sh', '-c', `echo run ${i}; ${probe}`] }), rootfs, { rootfsShare });
      if (rootfsShare === 'virtiofs') {
        // Through the sandbox share: no device, no slot, one host bind while it exists.
        expect(hv.slotsInUse(), `container ${i} (shared rootfs) takes no slot`).to.deep.equal(boot);
        expect(sandbox!.devices.list().length, `container ${i} adds no device`).to.equal(dev0);
        expect(mountsUnder(sandbox!.dir).length, `container ${i}'s rootfs is bound into the share`).to.be.above(bootMounts.length);
        await sandbox!.startContainer(id);
        const out = new PassThrough();
        let o = '';
        out.on('data', (d) => (o += d));
        const st = await attachProcess(sandbox!.agent, id, '', { stdout: out, stderr: out, terminal: false }).done;
        expect(st.status, `container ${i} (${rootfsShare}): ${o}`).to.equal(0);
        expect(o.split('\n')[0], `container ${i}`).to.equal(`run ${i}`);
        await sandbox!.removeContainer(id);
        expect(mountsUnder(sandbox!.dir).map((m) => m.target), `mounts after container ${i}`).to.deep.equal(bootMounts);
        expect(sandbox!.devices.list().map((d) => d.spec.id), `manager after container ${i}`).to.deep.equal(bootDevices);
        expect(sockets(sandbox!.dir), `sockets after container ${i}`).to.deep.equal(bootSockets);
        if (i % 5 === 4) process.stdout.write(`      ${i + 1} cycles, ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
        continue;
      }
      expect(hv.slotsInUse().length, `container ${i} holds one slot`).to.equal(boot.length + 1);
      const dev = sandbox!.devices.get(devId);
      expect(dev?.holders, `container ${i}'s ${kind} device is held by it`).to.deep.equal([id]);
      expect(sandbox!.devices.list().length).to.equal(dev0 + 1);
      const slot = hv.slotOf(kind, devId)!;
      expect(dev!.pciPath).to.equal(slot.toString(16).padStart(2, '0'));
      // QEMU agrees on where the device is.
      const pci = (await hv.memoryQmp('query-pci')) as Array<{ devices: Array<{ slot: number; qdev_id: string }> }>;
      expect(pci[0].devices.some((d) => d.slot === slot), `QEMU has a device in slot ${slot}`).to.equal(true);
      await sandbox!.startContainer(id);
      const out = new PassThrough();
      let o = '';
      out.on('data', (d) => (o += d));
      const st = await attachProcess(sandbox!.agent, id, '', { stdout: out, stderr: out, terminal: false }).done;
      expect(st.status, `container ${i} (${rootfsShare}): ${o}`).to.equal(0);
      const [line, ...pciLines] = o.trim().split('\n');
      expect(line, `container ${i}`).to.equal(`run ${i}`);
      const seen = pciLines.find((l) => l.startsWith(`0000:00:${dev!.pciPath}.0 `))?.split(' ')[1];
      expect(VIRTIO_IDS[kind], `container ${i}: device at PCI path ${dev!.pciPath} in the guest (${pciLines.join('; ')})`).to.include(seen);
      await sandbox!.removeContainer(id);
      // removeContainer waits 5 s for the guest's ACPI eject; on a loaded
      // host it can come later, and the slot is freed when it does.
      await until(`the guest to release container ${i}'s slot (in use: ${hv.slotsInUse()})`, () => (JSON.stringify(hv.slotsInUse()) === JSON.stringify(boot) ? true : undefined), 60000);
      expect(sandbox!.devices.list().map((d) => d.spec.id), `manager after container ${i}`).to.deep.equal(bootDevices);
      expect(hv.servedDevice(kind, devId), `backend of container ${i}`).to.equal(undefined);
      expect(sockets(sandbox!.dir), `sockets after container ${i}`).to.deep.equal(bootSockets);
      // fds settle after the first cycle (lazily opened files); from then on they must not grow.
      const now = { self: fdCount('self'), qemu: fdCount(qemuPid) };
      if (!fds) fds = now;
      else expect(now, `fds after container ${i} (this process, QEMU)`).to.deep.equal(fds);
      // Progress: a cycle takes seconds to a minute depending on the host's load.
      if (i % 5 === 4) process.stdout.write(`      ${i + 1} cycles, ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    }
    process.stdout.write(`      ${CYCLES} cycles in ${((Date.now() - t0) / 1000).toFixed(0)} s; fds steady at ${fds!.self} (runtime) / ${fds!.qemu} (QEMU)\n`);
  });
});
