/**
 * The builtin VMM end to end with the freestanding test guest: long-mode
 * entry through our loader, COM1 output, PIT interrupts through the
 * in-kernel PIC, several vCPUs, virtio-mmio register probe and a queue round
 * trip (ioeventfd kick → WASM virtqueue → irqfd interrupt), a hostile guest,
 * a triple fault, i8042 reboot, pause/resume, and no leaked fds or threads.
 * These guests run a few thousand instructions, so they finish in
 * milliseconds even where KVM only emulates (PVM hosts).
 */
import { expect } from 'chai';
import { buildGuest } from './guest-build';
import { EchoDevice } from './echo-device';
import { fdCount, kvmUsable, runGuest, threadCount } from './helpers';
import { Machine } from '../../../src/vmm/machine';
import { VmmError } from '../../../src/vmm/errors';
import { skipOrFail } from '../../helpers/skip';

describe('vmm machine (test guest)', function () {
  this.timeout(60000);
  before(function () {
    const noKvm = kvmUsable();
    if (noKvm) skipOrFail(this, noKvm, { hostCannot: true });
    const noGuest = buildGuest().reason;
    if (noGuest) skipOrFail(this, noGuest);
  });

  it('enters long mode through the loader, prints on COM1 with our cmdline, reboots via the i8042', async () => {
    const r = await runGuest('serial');
    expect(r.out).to.contain('hello from the test guest');
    expect(r.out).to.contain('cmdline: test=serial');
    expect(r.out).to.contain('bye');
    expect(r.end.kind).to.equal('reset');
    expect(r.end.reason).to.match(/i8042/);
  });

  it('takes timer interrupts (8254 PIT → 8259 PIC → vector 0x20)', async () => {
    const r = await runGuest('irq');
    expect(r.out).to.match(/irq ok ticks=\d+/);
    expect(r.end.kind).to.equal('reset');
  });

  it('runs 4 vCPUs, each on its own thread, all checking in', async () => {
    const r = await runGuest('smp', { vcpus: 4, extra: 'cpus=4' });
    expect(r.out).to.contain('smp ok cpus=4');
    for (const i of [1, 2, 3]) expect(r.out).to.contain(`cpu ${i} up`);
  });

  it('virtio-mmio: announced on the cmdline, registers per §4.2.2, a queue round trip with ioeventfd kick and irqfd interrupt', async () => {
    const dev = new EchoDevice();
    const r = await runGuest('virtio', { devices: [dev] });
    expect(r.out).to.contain('virtio_mmio.device=4K@0xd0000000:5');
    expect(r.out).to.contain('magic=0x74726976 version=2 device=127');
    expect(r.out).to.match(/virtio queue max=16 irqs=[1-9]\d* used_idx=1 len=21 reply=pong:ping from guest/);
    expect(dev.seen).to.deep.equal(['ping from guest']);
  });

  it('hostile guest: garbage in every register and ring → DEVICE_NEEDS_RESET, host alive, VM ends cleanly', async () => {
    const dev = new EchoDevice();
    const r = await runGuest('hostile', { devices: [dev] });
    const m = /hostile done status=0x([0-9a-f]+)/.exec(r.out);
    expect(m, r.out).to.not.equal(null);
    expect(parseInt(m![1], 16) & 0x40).to.equal(0x40);
    expect(r.end.kind).to.equal('reset');
  });

  it('a triple fault ends the VM with a clear guest error', async () => {
    const r = await runGuest('fault');
    expect(r.end.kind).to.equal('error');
    expect(r.end.error).to.be.instanceOf(VmmError);
    expect(r.end.reason).to.match(/triple-fault|KVM_EXIT_SHUTDOWN/);
  });

  it('pause stops exits, resume continues, stop ends a spinning guest', async () => {
    const g = buildGuest();
    const m = new Machine({ memoryBytes: 32 << 20, vcpus: 2, apsRunnable: true, kernel: g.elf!, cmdline: 'test=pio n=100000000' });
    try {
      m.start();
      await new Promise((r) => setTimeout(r, 100));
      await m.pause();
      const a = m.vcpus[0].exits;
      expect(a).to.be.greaterThan(0);
      await new Promise((r) => setTimeout(r, 100));
      expect(m.vcpus[0].exits).to.equal(a);
      // Registers can be read while paused (and not while running).
      expect(m.vcpus[0].native.getRegs().rip > 0x100000n).to.equal(true);
      m.resume();
      await new Promise((r) => setTimeout(r, 100));
      // vCPU 1 sits in an in-kernel HLT (not in an exit): state access is refused rather than blocking.
      expect(() => m.vcpus[1].native.getRegs()).to.throw(/paused or inside an exit handler/);
      expect(m.vcpus[0].exits).to.be.greaterThan(a);
      const e = await m.stop();
      expect(e.kind).to.equal('stopped');
    } finally {
      m.close();
    }
  });

  it('leaks no fds or threads over repeated create/run/close (1 and 3 vCPUs, with a virtio device)', async () => {
    await runGuest('serial'); // warm-up: libuv/V8 threads, compiled modules
    await runGuest('virtio', { devices: [new EchoDevice()] });
    const fds = fdCount(), threads = threadCount();
    for (let i = 0; i < 3; i++) {
      await runGuest('virtio', { devices: [new EchoDevice()] });
      await runGuest('smp', { vcpus: 3, extra: 'cpus=3' });
    }
    await new Promise((r) => setTimeout(r, 50));
    expect(fdCount()).to.equal(fds);
    expect(threadCount()).to.equal(threads);
  });

  it('refuses bad machine options and a non-kernel image with clear errors (and releases what it opened)', () => {
    const fds = fdCount();
    expect(() => new Machine({ memoryBytes: 1 << 20, vcpus: 1, kernel: Buffer.alloc(0), cmdline: '' })).to.throw(VmmError, /16 MiB/);
    expect(() => new Machine({ memoryBytes: 32 << 20, vcpus: 0, kernel: Buffer.alloc(0), cmdline: '' })).to.throw(VmmError, /vcpus/);
    expect(() => new Machine({ memoryBytes: 32 << 20, vcpus: 1, kernel: Buffer.alloc(4096), cmdline: '' })).to.throw(VmmError, /HdrS/);
    expect(() => new Machine({ memoryBytes: 32 << 20, vcpus: 1, kernel: buildGuest().elf!, cmdline: 'x'.repeat(5000) })).to.throw(VmmError, /command line/);
    expect(fdCount()).to.equal(fds);
  });
});
