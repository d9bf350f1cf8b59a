/**
 * The builtin hypervisor as the runtime sees it.
 *  - Selection (decision 3): on a host where KVM only emulates standard
 *    guests (PVM, like these build machines) `--hypervisor builtin` is refused
 *    at once with the probe's evidence; the explicit override lets it run.
 *  - Linux smoke test: our guest kernel (vmlinux, ELF, 64-bit boot protocol)
 *    started by the builtin VMM prints its version, our command line and our
 *    e820 map on COM1 within a bounded time — even emulated that takes seconds.
 *  - Snapshot/restore through BuiltinHypervisor (the factory's API): the
 *    test guest's count mode with the rootfs blk and vsock devices attached
 *    is snapshotted mid-run and restored into two hypervisors at once; both
 *    continue the count; a restore whose cfg has another disk set is
 *    refused and leaves its directory's sockets closed.
 *  - Linux mid-boot: our 6.1 kernel, snapshotted while it prints its
 *    command line (emulated KVM is slow enough to cut it mid-line), is
 *    restored; the clone finishes that very line and boots on (e820 map,
 *    kvm-clock) — vCPU, LAPIC, kvmclock and serial state of a real kernel.
 *  - Full boots (bzImage decompression, the agent over vsock, containers)
 *    only where KVM runs guests in hardware; skipped here with the reason.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { probeKvm, type KvmProbe } from '../../src/hypervisor/capabilities';
import { builtinRefusal, HypervisorSelectError, selectHypervisor, ALLOW_EMULATED_ENV } from '../../src/hypervisor';
import { BuiltinHypervisor } from '../../src/hypervisor/builtin';
import { defaultConfig } from '../../src/runtime/config';
import { Machine } from '../../src/vmm/machine';
import { MemoryBackend } from '../../src/virtio/net/backend';
import { buildGuest } from '../unit/vmm/guest-build';
import { checkCount, countLines } from '../unit/vmm/count-guest';
import { SnapshotError } from '../../src/vmm/snapshot/format';
import { until } from '../helpers/until';
import { skipOrFail } from '../helpers/skip';

const KERNEL_DIR = '/var/cache/kata-ts/kernel';

describe('integration: builtin hypervisor', function () {
  this.timeout(120000);
  let probe: KvmProbe;
  let runDir: string;

  before(async function () {
    runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-builtin-'));
    probe = await probeKvm(undefined, runDir);
    console.log(`    host check: ${probe.reason}`);
  });
  after(() => fs.rmSync(runDir, { recursive: true, force: true }));

  it('refuses at once on an emulating host with the evidence, runs with the override', async function () {
    const cfg = defaultConfig();
    cfg.runtime.run_dir = runDir;
    if (probe.hardware) {
      expect(builtinRefusal(probe, false)).to.equal(undefined);
      const { hv } = await selectHypervisor(cfg, 'builtin');
      expect(hv).to.be.instanceOf(BuiltinHypervisor);
      return;
    }
    const t0 = Date.now();
    let err: unknown;
    try { await selectHypervisor(cfg, 'builtin'); } catch (e) { err = e; }
    expect(Date.now() - t0).to.be.below(5000); // the probe is cached per boot: no crawling
    expect(err).to.be.instanceOf(HypervisorSelectError);
    const msg = (err as Error).message;
    expect(msg).to.match(/refusing --hypervisor builtin/);
    expect(msg).to.match(/instruction emulator/);
    expect(msg).to.contain(`${probe.loopMs} ms`);
    expect(msg).to.contain('allow_emulated_kvm');
    // auto never picks builtin here.
    expect((await selectHypervisor(cfg, 'auto')).hv.name).to.equal('qemu');
    // Override: config key, then the environment variable.
    cfg['hypervisor.builtin'].allow_emulated_kvm = true;
    expect((await selectHypervisor(cfg, 'builtin')).hv).to.be.instanceOf(BuiltinHypervisor);
    cfg['hypervisor.builtin'].allow_emulated_kvm = false;
    process.env[ALLOW_EMULATED_ENV] = '1';
    try { expect((await selectHypervisor(cfg, 'builtin')).hv).to.be.instanceOf(BuiltinHypervisor); } finally { delete process.env[ALLOW_EMULATED_ENV]; }
  });

  it('Linux smoke: our kernel prints its version, our cmdline and our e820 map on COM1', async function () {
    const vmlinux = path.join(KERNEL_DIR, 'vmlinux');
    if (!probe.devKvm) skipOrFail(this, probe.reason, { hostCannot: true });
    if (!fs.existsSync(vmlinux)) skipOrFail(this, `${vmlinux} not built (scripts/setup.sh)`);
    let out = '';
    const m = new Machine({
      memoryBytes: 256 << 20, vcpus: 1, kernel: vmlinux,
      cmdline: 'console=ttyS0 earlyprintk=serial,ttyS0 kata.smoke=builtin panic=-1 reboot=k',
      serialOut: (b) => { out += Buffer.from(b).toString('latin1'); },
    });
    const t0 = Date.now();
    const done = () => out.includes('Linux version') && out.includes('kata.smoke=builtin') && /BIOS-e820: \[mem 0x0000000000100000-0x000000000fffffff\] usable/.test(out);
    try {
      m.start();
      const limit = probe.hardware ? 10000 : 60000;
      while (!done() && Date.now() - t0 < limit) await new Promise((r) => setTimeout(r, 50));
      console.log(`    first console lines after ${Date.now() - t0} ms (${probe.hardware ? 'hardware' : 'emulated'} KVM)`);
      expect(out).to.match(/Linux version 6\.1/);
      expect(out).to.match(/Command line: .*kata\.smoke=builtin/);
      expect(out).to.match(/BIOS-e820: \[mem 0x0000000000000000-0x000000000009fbff\] usable/);
      expect(out).to.match(/BIOS-e820: \[mem 0x0000000000100000-0x000000000fffffff\] usable/);
      await m.stop();
    } finally {
      m.close();
    }
  });

  it('BuiltinHypervisor with the test guest as kernel: rootfs blk + hybrid vsock + virtio-net devices on the cmdline, a frame out and back, guest end seen', async function () {
    const g = buildGuest();
    if (!probe.devKvm) skipOrFail(this, probe.reason, { hostCannot: true });
    if (!g.elf) skipOrFail(this, g.reason ?? 'test guest not built');
    const image = path.join(runDir, 'root.raw');
    fs.writeFileSync(image, Buffer.alloc(1 << 20));
    const be = new MemoryBackend();
    be.onSend = (f) => {
      const reply = Buffer.alloc(60);
      f.copy(reply, 0, 6, 12);
      reply.writeUInt16BE(0x88b5, 12);
      reply.write('reply via builtin', 14, 'latin1');
      setImmediate(() => be.inject(reply));
    };
    const hv = new BuiltinHypervisor({ netBackend: be, netMac: '02:00:00:00:00:42' });
    await hv.start({ id: 'tg', dir: path.join(runDir, 'tg'), kernel: g.elf!, image, vcpus: 1, memoryMiB: 64, kernelParams: 'test=net', disks: [], debug: false });
    try {
      const reason = await Promise.race([hv.exited(), new Promise<string>((r) => setTimeout(() => r('timeout'), 20000))]);
      expect(reason).to.match(/i8042/);
      const out = hv.consoleTail(100);
      // three devices announced in order: blk (rootfs), vsock, net
      expect(out).to.match(/virtio_mmio\.device=4K@0xd0000000:5 virtio_mmio\.device=4K@0xd0001000:6 virtio_mmio\.device=4K@0xd0002000:7/);
      expect(out).to.contain('net mac=02:00:00:00:00:42');
      expect(out).to.contain('net got len=60 type=0x88b5 payload=reply via builtin');
      expect(be.sent).to.have.length(1);
    } finally {
      await hv.stop();
    }
    expect(be.closed).to.equal(true);
  });

  it('snapshot(dir) mid-run and restore(dir, cfg) into two hypervisors at once: both continue the guest; a cfg with other disks is refused', async function () {
    const g = buildGuest();
    if (!probe.devKvm) skipOrFail(this, probe.reason, { hostCannot: true });
    if (!g.elf) skipOrFail(this, g.reason ?? 'test guest not built');
    const image = path.join(runDir, 'snap-root.raw');
    fs.writeFileSync(image, Buffer.alloc(1 << 20));
    const cfg = (id: string) => ({ id, dir: path.join(runDir, id), kernel: g.elf!, image, vcpus: 1, memoryMiB: 64, kernelParams: 'test=count n=100000', disks: [], debug: false });
    const snap = path.join(runDir, 'snapshot');
    const hvs: BuiltinHypervisor[] = [];
    try {
      const orig = new BuiltinHypervisor();
      hvs.push(orig);
      await orig.start(cfg('orig'));
      await until('10 count lines', () => (countLines(orig.consoleTail(1000)).length >= 10 ? true : undefined), 30000, 10);
      await orig.pause();
      const info = await orig.snapshot(snap);
      const at = countLines(orig.consoleTail(1000)).length;
      expect(info.memoryDataBytes).to.be.below(info.memoryBytes);
      await orig.stop();
      const clones = [new BuiltinHypervisor(), new BuiltinHypervisor()];
      hvs.push(...clones);
      const infos = await Promise.all(clones.map((c, k) => c.restore(snap, cfg(`clone${k}`))));
      expect(infos[0].agentSocket).to.not.equal(infos[1].agentSocket);
      for (const c of clones) {
        await until('20 lines past the snapshot', () => (countLines(c.consoleTail(1000)).length >= 20 ? true : undefined), 30000, 10);
        // The console log of a clone starts at the snapshot: its first full line is the next count.
        const lines = countLines(c.consoleTail(1000));
        expect(lines[0].i).to.be.oneOf([at + 1, at + 2]);
        expect(lines.slice(1).every((l, k) => l.i === lines[k].i + 1)).to.equal(true);
      }
      // The whole computation, original then clone, checks out.
      // (The cut may fall mid-line: join the two console texts, not their lines.)
      const full = countLines(orig.consoleTail(1000) + clones[0].consoleTail(1000));
      expect(checkCount(full)).to.equal(undefined);
      // A cfg with an extra disk does not match the snapshot's devices.
      const bad = new BuiltinHypervisor();
      const extra = path.join(runDir, 'extra.raw');
      fs.writeFileSync(extra, Buffer.alloc(1 << 20));
      let err: unknown;
      try { await bad.restore(snap, { ...cfg('bad'), disks: [{ id: 'x', path: extra, readonly: true }] }); } catch (e) { err = e; }
      expect(err).to.be.instanceOf(SnapshotError);
      expect((err as Error).message).to.match(/the snapshot has 2 virtio device\(s\); the restore was given 3/);
      expect(bad.vmm).to.equal(undefined);
    } finally {
      for (const h of hvs) await h.stop();
    }
  });

  it('Linux mid-boot: snapshot while the kernel prints its command line, the restored clone finishes the line and boots on', async function () {
    const vmlinux = path.join(KERNEL_DIR, 'vmlinux');
    if (!probe.devKvm) skipOrFail(this, probe.reason, { hostCannot: true });
    if (!fs.existsSync(vmlinux)) skipOrFail(this, `${vmlinux} not built (scripts/setup.sh)`);
    const cmdline = 'console=ttyS0 earlyprintk=serial,ttyS0 kata.snapshot=builtin panic=-1 reboot=k';
    let out = '';
    const m = new Machine({ memoryBytes: 256 << 20, vcpus: 1, kernel: vmlinux, cmdline, serialOut: (b) => { out += Buffer.from(b).toString('latin1'); } });
    const dir = path.join(runDir, 'linux-snapshot');
    let clone: Machine | undefined;
    try {
      m.start();
      await until('the kernel printing its command line', () => (out.includes('Command line:') ? true : undefined), 60000, 5);
      await m.pause();
      const info = await m.snapshot(dir);
      const atSnapshot = out;
      await m.stop();
      m.close();
      console.log(`    Linux snapshot: ${info.pausedMs.toFixed(0)} ms paused, ${info.memoryDataBytes >> 20} MiB of ${info.memoryBytes >> 20} MiB written`);
      let cont = '';
      clone = Machine.restore(dir, { serialOut: (b) => { cont += Buffer.from(b).toString('latin1'); } });
      clone.start();
      await until('the clone to print the e820 map', () => (/BIOS-e820: \[mem 0x0000000000100000-0x000000000fffffff\] usable/.test(cont) ? true : undefined), probe.hardware ? 10000 : 60000, 20);
      expect(clone.endReason, 'the clone runs').to.equal(undefined);
      // Original output up to the cut plus the clone's is one console: the command line reads whole.
      const whole = (atSnapshot + cont).replace(/\r/g, ''); // the serial console ends lines with CRLF
      expect(whole, whole.slice(0, 600)).to.contain(`Command line: ${cmdline}\n`);
      console.log(`    the cut fell ${cont.startsWith('[') ? 'between' : 'inside'} console lines`);
    } finally {
      if (clone) { await clone.stop(); clone.close(); }
      m.close();
    }
  });

  it('full Linux boots (bzImage, agent over vsock, containers) need hardware KVM', function () {
    if (!probe.hardware) skipOrFail(this, probe.reason, { hostCannot: true });
    // On hardware hosts the container suite (test/integration/run.test.ts)
    // runs with KATA_TS_HYPERVISOR=builtin; nothing extra here yet.
  });
});
