/**
 * The KVM/VFIO part of the addon on its own: capability checks, every
 * syscall error as a JS Error with the syscall name and errno text, type
 * errors for bad arguments, VFIO error paths (no VFIO devices here), the
 * snapshot calls (state blobs, MSR list, MAP_PRIVATE guest RAM), and no
 * leaked fds or threads from VM/vCPU create/close.
 */
import { expect } from 'chai';
import { kvmNative, KVM_CAP } from '../../../src/vmm/kvm/native';
import { REC_BYTES } from '../../../src/vmm/kvm/exit-record';
import { KvmVm } from '../../../src/vmm/kvm/vm';
import { HotMemory } from '../../../src/hot/memory';
import { VmmError } from '../../../src/vmm/errors';
import { openVfioDevice } from '../../../src/vmm/vfio';
import { fdCount, kvmUsable, threadCount } from './helpers';
import { skipOrFail } from '../../helpers/skip';

describe('vmm addon (KVM, VFIO)', () => {
  before(function () {
    const why = kvmUsable();
    if (why) skipOrFail(this, why, { hostCannot: true });
  });

  it('reports API 12 and the capabilities the VMM needs', () => {
    const n = kvmNative();
    const fd = n.kvmOpen();
    try {
      expect(n.kvmApiVersion(fd)).to.equal(12);
      for (const c of [KVM_CAP.IRQCHIP, KVM_CAP.IRQFD, KVM_CAP.IOEVENTFD, KVM_CAP.IMMEDIATE_EXIT]) expect(n.kvmCheckExtension(fd, c)).to.be.greaterThan(0);
      expect(n.kvmGetSupportedCpuid(fd).some((e) => e.function === 0)).to.equal(true);
    } finally { n.closeFd(fd); }
  });

  it('syscall failures carry the syscall name and errno text', () => {
    const n = kvmNative();
    const cases: Array<[() => unknown, RegExp]> = [
      [() => n.kvmOpen('/nonexistent/kvm'), /^open\(\/nonexistent\/kvm\): No such file or directory/],
      [() => n.kvmApiVersion(987654), /^ioctl\(KVM_GET_API_VERSION\): Bad file descriptor/],
      [() => n.vmCreateIrqchip(987654), /^ioctl\(KVM_CREATE_IRQCHIP\): Bad file descriptor/],
      [() => n.vmSetUserMemoryRegion(987654, 0, 0n, 4096, 0n), /^ioctl\(KVM_SET_USER_MEMORY_REGION\): Bad file descriptor/],
      [() => n.vmIrqfd(987654, 1, 5), /^ioctl\(KVM_IRQFD\): Bad file descriptor/],
      [() => n.vmIoeventfd(987654, { fd: 1, addr: 0xd0000050, len: 4, datamatch: 0 }), /^ioctl\(KVM_IOEVENTFD\): Bad file descriptor/],
      [() => new n.KvmVcpu(987654, 0, 12288, new ArrayBuffer(REC_BYTES)), /^ioctl\(KVM_CREATE_VCPU\): Bad file descriptor/],
    ];
    for (const [f, re] of cases) {
      let err: (Error & { syscall?: string; errno?: number }) | undefined;
      try { f(); } catch (e) { err = e as Error; }
      expect(err, re.source).to.be.instanceOf(Error);
      expect(err!.message).to.match(re);
      expect(err!.syscall).to.be.a('string');
      expect(err!.errno).to.be.a('number');
    }
  });

  it('bad arguments are TypeErrors, not garbage ioctls', () => {
    const n = kvmNative();
    expect(() => n.vmIrqLine('x' as unknown as number, 1, 1)).to.throw(TypeError);
    expect(() => n.vmSetUserMemoryRegion(3, 0, -1n, 4096, 0n)).to.throw(TypeError);
    expect(() => new n.KvmVcpu(3, 0, 12288, new ArrayBuffer(16))).to.throw(TypeError, /exit record/);
  });

  it('a KVM refusal is an error naming the ioctl: overlapping memory slots, a vCPU index twice, a bad ioeventfd', () => {
    const hot = new HotMemory({ scratchBytes: 65536, guestRegions: [{ gpa: 0n, size: 1 << 20 }] });
    const vm = new KvmVm();
    const n = kvmNative();
    try {
      vm.attachMemory(hot);
      const base = n.arrayBufferAddress(hot.memory.buffer) + BigInt(hot.guestBase);
      expect(() => n.vmSetUserMemoryRegion(vm.vmFd, 1, 0x80000n, 1 << 20, base, 0)).to.throw(/KVM_SET_USER_MEMORY_REGION: File exists|KVM_SET_USER_MEMORY_REGION\): File exists/);
      const v = new n.KvmVcpu(vm.vmFd, 0, vm.mmapSize, new ArrayBuffer(REC_BYTES));
      expect(() => new n.KvmVcpu(vm.vmFd, 0, vm.mmapSize, new ArrayBuffer(REC_BYTES))).to.throw(/KVM_CREATE_VCPU\): File exists/);
      expect(() => vm.ioeventfd({ fd: 987654, addr: 0xd0000050, len: 4 })).to.throw(/KVM_IOEVENTFD\): Bad file descriptor/);
      expect(() => v.setMsrs([[0xdeadbeef, 1n]])).to.throw(/KVM_SET_MSRS\): MSR 0xdeadbeef was refused/);
      expect(() => v.getMsrs([0xdeadbeef])).to.throw(/KVM_GET_MSRS\): MSR 0xdeadbeef is not supported/);
      const regs = v.getRegs();
      v.setRegs({ rax: 0x1234n });
      expect(v.getRegs().rax).to.equal(0x1234n);
      expect(v.getRegs().rip).to.equal(regs.rip);
      expect(v.getLapic().length).to.equal(1024);
      expect(v.getXcrs().length).to.be.greaterThan(0);
      v.close();
      expect(() => v.getRegs()).to.throw(/closed/);
    } finally {
      vm.close();
    }
    // Guest RAM unmapped again: the Memory reads zero pages, not the memfd.
    expect(hot.u8[hot.guestBase]).to.equal(0);
  });

  it('guest RAM is shared: a write through the WASM Memory view is what KVM maps', () => {
    const hot = new HotMemory({ scratchBytes: 65536, guestRegions: [{ gpa: 0n, size: 1 << 20 }] });
    const vm = new KvmVm();
    try {
      vm.attachMemory(hot);
      expect(vm.memoryFd).to.be.greaterThan(2);
      hot.u8[hot.guestBase + 10] = 0xab;
      const fs = require('node:fs') as typeof import('node:fs');
      const b = Buffer.alloc(16);
      fs.readSync(vm.memoryFd, b, 0, 16, 0);
      expect(b[10]).to.equal(0xab);
    } finally { vm.close(); }
  });

  it('snapshot state: vCPU and VM blobs round-trip, wrong sizes and unknown kinds are refused, the MSR list is there', () => {
    const n = kvmNative();
    const vm = new KvmVm();
    const v = new (n.KvmVcpu)(vm.vmFd, 0, vm.mmapSize, new ArrayBuffer(REC_BYTES));
    try {
      const kinds = ['regs', 'sregs', 'fpu', 'xcrs', 'lapic', 'mpstate', 'events', 'debugregs'];
      for (const k of kinds) v.setState(k, v.getState(k));
      v.setRegs({ rip: 0x123456n, rax: 42n });
      const regs = v.getState('regs');
      const fresh = new (n.KvmVcpu)(vm.vmFd, 1, vm.mmapSize, new ArrayBuffer(REC_BYTES));
      try {
        fresh.setState('regs', regs);
        expect(fresh.getRegs().rip).to.equal(0x123456n);
        expect(fresh.getRegs().rax).to.equal(42n);
      } finally { fresh.close(); }
      expect(() => v.setState('regs', Buffer.alloc(10))).to.throw(RangeError, /setState\(regs\): a Buffer of 144 bytes required/);
      expect(() => v.getState('nope')).to.throw(TypeError, /vCPU state kind must be one of regs, sregs/);
      for (const k of ['pic0', 'pic1', 'ioapic', 'pit2', 'clock']) n.vmSetState(vm.vmFd, k, n.vmGetState(vm.vmFd, k));
      expect(() => n.vmSetState(vm.vmFd, 'pic0', n.vmGetState(vm.vmFd, 'pic1'))).to.throw(RangeError, /blob is for another chip/);
      expect(() => n.vmSetState(vm.vmFd, 'pit2', Buffer.alloc(3))).to.throw(RangeError, /exactly 112 bytes/);
      expect(() => n.vmGetState(vm.vmFd, 'nope')).to.throw(TypeError, /VM state kind must be one of pic0/);
      expect(n.kvmGetMsrIndexList(vm.kvmFd)).to.include(0x10); // IA32_TSC
    } finally { v.close(); vm.close(); }
  });

  it('a memory file mapped MAP_PRIVATE: guest RAM reads the file, writes stay private to the VM', () => {
    const fs = require('node:fs') as typeof import('node:fs');
    const os = require('node:os') as typeof import('node:os');
    const path = require('node:path') as typeof import('node:path');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-cow-'));
    const file = path.join(dir, 'memory.bin');
    const hot = new HotMemory({ scratchBytes: 65536, guestRegions: [{ gpa: 0n, size: 1 << 20 }] });
    const vm = new KvmVm();
    try {
      const content = Buffer.alloc(1 << 20);
      content.write('template', 4096);
      fs.writeFileSync(file, content);
      const fd = fs.openSync(file, 'r');
      try { vm.attachMemoryFile(hot, fd); } finally { fs.closeSync(fd); }
      expect(vm.memoryFd).to.equal(-1);
      expect(Buffer.from(hot.u8.subarray(hot.guestBase + 4096, hot.guestBase + 4104)).toString()).to.equal('template');
      hot.u8[hot.guestBase + 4096] = 0x54; // 'T'
      expect(hot.u8[hot.guestBase + 4096]).to.equal(0x54);
      expect(fs.readFileSync(file).subarray(4096, 4104).toString()).to.equal('template');
    } finally {
      vm.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('VM create/close leaks no fds or threads', () => {
    const fds = fdCount(), threads = threadCount();
    for (let i = 0; i < 5; i++) {
      const hot = new HotMemory({ scratchBytes: 65536, guestRegions: [{ gpa: 0n, size: 1 << 20 }] });
      const vm = new KvmVm();
      vm.attachMemory(hot);
      const v = new (kvmNative().KvmVcpu)(vm.vmFd, 0, vm.mmapSize, new ArrayBuffer(REC_BYTES));
      v.close();
      vm.close();
    }
    expect(fdCount()).to.equal(fds);
    expect(threadCount()).to.equal(threads);
  });

  it('VFIO: errors say what is missing (no VFIO on these machines)', () => {
    let err: VmmError | undefined;
    try { openVfioDevice('0000:00:1f.7'); } catch (e) { err = e as VmmError; }
    expect(err).to.be.instanceOf(VmmError);
    expect(err!.kind).to.equal('vfio');
    expect(err!.message).to.match(/no PCI device 0000:00:1f.7|no IOMMU group|vfio-pci|\/dev\/vfio\/vfio/);
    expect(() => openVfioDevice('not-a-bdf')).to.throw(VmmError, /PCI address/);
    const n = kvmNative();
    expect(() => n.vfioOpen('/dev/vfio/vfio')).to.throw(/^open\(\/dev\/vfio\/vfio\): No such file or directory/);
    expect(() => n.vfioGroupStatus(987654)).to.throw(/VFIO_GROUP_GET_STATUS\): Bad file descriptor/);
    expect(() => n.vfioDmaMap(987654, 0n, 0n, 4096)).to.throw(/VFIO_IOMMU_MAP_DMA\): Bad file descriptor/);
  });
});
