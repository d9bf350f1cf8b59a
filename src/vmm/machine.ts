/**
 * The builtin VMM's machine: KVM VM + guest RAM inside the hot-path
 * WebAssembly.Memory, legacy devices (COM1, i8042, RTC), virtio-mmio devices
 * announced on the kernel command line, the Linux 64-bit boot protocol, and
 * one native thread per vCPU. Firecracker's builder.rs is the model.
 *
 * Lifetime: create() builds everything (vCPUs not running), start() runs
 * them, `ended` resolves once with why the machine stopped (guest reset
 * through the i8042 — Kata treats a guest reboot as the end of the VM —, a
 * guest power-off through port 0x501 (devices/power.ts), a guest error, or
 * stop()), close() releases every fd, thread and mapping.
 *
 * Snapshots (src/vmm/snapshot, Firecracker's model): snapshot(dir) saves a
 * running machine; Machine.restore(dir, opts) builds a new one from it —
 * guest RAM mapped copy-on-write from the memory file, vCPU/VM/device state
 * from the state file — ready to start() where the original was.
 */
import * as fs from 'node:fs';
import { native } from '../common/native';
import { HotMemory } from '../hot/memory';
import { VirtioModule } from '../hot/virtqueue';
import type { GuestMemory, VirtioDevice } from '../virtio/device';
import { Bus } from './bus';
import { I8042 } from './devices/i8042';
import { POWER_PORT, PowerPort } from './devices/power';
import { Rtc } from './devices/rtc';
import { COM1_IRQ, COM1_PORT, Serial } from './devices/serial';
import { VirtioMmio, REG } from './devices/virtio-mmio';
import { loadKernel, placeInitrd } from './boot/loader';
import { buildMpTable } from './boot/mptable';
import { buildZeroPage, e820For } from './boot/params';
import { cpuidFor, setLongMode, setupLapic, setupMsrs, writeBootTables } from './boot/x86';
import { VmmError } from './errors';
import type { CpuidEntry } from './kvm/native';
import { saveSnapshot, type SnapshotInfo } from './snapshot/save';
import { applySnapshot, openSnapshot, type RestoreHooks } from './snapshot/restore';
import { SnapshotError, type SnapshotState } from './snapshot/format';
import { KvmVm } from './kvm/vm';
import { kvmNative } from './kvm/native';
import { Vcpu, type VcpuEnd } from './kvm/vcpu';
import { CMDLINE_ADDR, CMDLINE_MAX, MPTABLE_ADDR, ramRegions, VIRTIO_IRQS, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE, ZERO_PAGE } from './layout';

export interface MachineOptions {
  memoryBytes: number;
  vcpus: number;
  /** Required for a cold boot; ignored when restoring (Machine.restore). */
  kernel?: Buffer | string;
  initrd?: Buffer | string;
  cmdline: string;
  devices?: VirtioDevice[];
  /** Guest serial output (COM1). */
  serialOut?: (b: Uint8Array) => void;
  /** Scratch for the WASM modules' queue structs. Default 1 MiB. */
  scratchBytes?: number;
  /**
   * Where each vCPU starts; default: all at the kernel entry (test guests
   * tell themselves apart by APIC id). Linux itself brings APs up via INIT/SIPI,
   * so for Linux only vCPU 0 is made runnable (apsRunnable false).
   */
  apsRunnable?: boolean;
  /**
   * KSM ([memory] ksm_throttler): guest RAM is the Memory's own private
   * anonymous pages instead of the shared memfd (KSM skips shared mappings),
   * advised MADV_MERGEABLE. A restored VM's MAP_PRIVATE RAM is advised too:
   * the pages the guest has written (private copies) can merge.
   */
  mergeableRam?: boolean;
  /** Set by Machine.restore: the validated state and the memory file to map. */
  restoreFrom?: { state: SnapshotState; memoryFd: number };
}

/** What Machine.restore takes: the same devices, in the same order, as the snapshotted machine had. */
export interface RestoreOptions {
  devices?: VirtioDevice[];
  serialOut?: (b: Uint8Array) => void;
  scratchBytes?: number;
  hooks?: RestoreHooks;
  mergeableRam?: boolean;
}

export interface MachineEnd {
  kind: VcpuEnd['kind'];
  reason: string;
  error?: VmmError;
  /** The byte the guest wrote to the power port (devices/power.ts), for kind 'shutdown' by that port. */
  exitCode?: number;
}

const MP_STATE_RUNNABLE = 0;

export class Machine {
  readonly hot: HotMemory;
  readonly vm: KvmVm;
  readonly pio = new Bus('pio');
  readonly mmio = new Bus('mmio');
  readonly vcpus: Vcpu[] = [];
  readonly serial: Serial;
  readonly rtc = new Rtc();
  readonly memoryBytes: number;
  private cpuids: CpuidEntry[][] = [];
  private paused = false;
  readonly transports: VirtioMmio[] = [];
  readonly cmdline: string;
  readonly ended: Promise<MachineEnd>;
  private resolveEnd!: (e: MachineEnd) => void;
  private endInfo: MachineEnd | undefined;
  private irqfds: Array<{ fd: number; gsi: number }> = [];
  private notifyFds: Array<{ fd: number; poll: number; addr: number; index: number }> = [];
  private closed = false;
  private started = false;

  constructor(opts: MachineOptions) {
    if (!Number.isInteger(opts.vcpus) || opts.vcpus < 1 || opts.vcpus > 64) throw new VmmError('config', `vcpus ${opts.vcpus} out of 1..64`);
    if (opts.memoryBytes < 16 << 20 || opts.memoryBytes % 4096 !== 0) throw new VmmError('config', 'memory must be ≥ 16 MiB and a multiple of 4 KiB');
    if ((opts.devices?.length ?? 0) > VIRTIO_IRQS.length) throw new VmmError('config', `at most ${VIRTIO_IRQS.length} virtio-mmio devices`);
    this.ended = new Promise((r) => (this.resolveEnd = r));
    this.hot = new HotMemory({ scratchBytes: opts.scratchBytes ?? (1 << 20), guestRegions: ramRegions(opts.memoryBytes) });
    this.memoryBytes = opts.memoryBytes;
    this.vm = new KvmVm();
    try {
      if (opts.vcpus > this.vm.maxVcpus) throw new VmmError('config', `KVM allows at most ${this.vm.maxVcpus} vCPUs`);
      if (opts.restoreFrom) {
        const want = opts.restoreFrom.state.meta.memoryFileBytes;
        if (want !== this.hot.guestBytes) throw new SnapshotError('mismatch', `snapshot memory is ${want} bytes; ${opts.memoryBytes} bytes of RAM lay out as ${this.hot.guestBytes}`);
        // The caller (Machine.restore) closes the fd; the mapping keeps the file.
        this.vm.attachMemoryFile(this.hot, opts.restoreFrom.memoryFd);
      } else if (opts.mergeableRam) {
        this.vm.attachAnonymous(this.hot);
      } else {
        this.vm.attachMemory(this.hot);
      }
      if (opts.mergeableRam) this.adviseMergeable();
      // Legacy devices.
      this.serial = new Serial(opts.serialOut ?? (() => {}), () => this.vm.pulseIrq(COM1_IRQ));
      this.pio.register(COM1_PORT, 8, this.serial, 'com1');
      this.pio.register(0x60, 5, new I8042(() => this.finish({ kind: 'reset', reason: 'guest reset through the i8042 (reboot)' })), 'i8042');
      this.pio.register(0x70, 2, this.rtc, 'rtc');
      this.pio.register(POWER_PORT, 1, new PowerPort((code) => this.finish({ kind: 'shutdown', reason: `guest powered off through port 0x501 (code ${code})`, exitCode: code })), 'power');
      // virtio-mmio devices.
      const module = new VirtioModule(this.hot);
      const memory: GuestMemory = { hot: this.hot, module, translate: (gpa, len) => module.translate(gpa, len) };
      const extra: string[] = [];
      (opts.devices ?? []).forEach((dev, i) => {
        const base = VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE;
        const gsi = VIRTIO_IRQS[i];
        const t = new VirtioMmio(dev, memory, module, {
          raiseIrq: this.irqfdFor(gsi),
          watchNotify: (index, onKick) => this.watchNotify(base + REG.QueueNotify, index, onKick),
        }, `mmio${i}`);
        this.mmio.register(base, VIRTIO_MMIO_SIZE, t, `virtio-mmio@0x${base.toString(16)}`);
        this.transports.push(t);
        extra.push(`virtio_mmio.device=4K@0x${base.toString(16)}:${gsi}`);
      });
      const restore = opts.restoreFrom?.state;
      this.cmdline = restore ? restore.meta.cmdline : [opts.cmdline, ...extra].filter(Boolean).join(' ');
      if (!restore) this.loadGuest(opts);
      for (let i = 0; i < opts.vcpus; i++) this.vcpus.push(new Vcpu(this.vm.vmFd, i, this.vm.mmapSize, { pio: this.pio, mmio: this.mmio }));
      if (restore) {
        this.cpuids = restore.meta.vcpu.map((v) => v.cpuid);
        applySnapshot(this, restore);
      } else {
        this.setupVcpus(opts);
      }
    } catch (err) {
      this.close();
      throw err;
    }
  }

  private entry = 0n;

  /** What backs guest RAM (the balloon picks its madvise from it). */
  get ramBacking(): 'shared-memfd' | 'anonymous' | 'private-file' { return this.vm.ramBacking; }

  /** MADV_MERGEABLE on every guest region (KSM then scans them; see mergeableRam). */
  private adviseMergeable(): void {
    const n = native();
    if (!n.madvise) throw new VmmError('config', 'KSM for the builtin VMM needs the addon\'s madvise (rebuild it: cd native && npx node-gyp rebuild)');
    for (const r of this.hot.guestRegions) n.madvise(this.hot.memory.buffer, r.offset, r.size, 'mergeable');
  }

  private write(gpa: number, data: Uint8Array): void {
    const off = this.hot.gpaToOffset(BigInt(gpa), data.length);
    this.hot.u8.set(data, off);
  }

  private loadGuest(opts: MachineOptions): void {
    const ram = opts.memoryBytes;
    if (opts.kernel === undefined) throw new VmmError('config', 'a kernel is required to boot');
    const img = typeof opts.kernel === 'string' ? fs.readFileSync(opts.kernel) : opts.kernel;
    const k = loadKernel(img, (gpa, d) => this.write(gpa, d), ram);
    this.entry = k.entry;
    let initrd: { addr: number; size: number } | undefined;
    if (opts.initrd !== undefined) {
      const rd = typeof opts.initrd === 'string' ? fs.readFileSync(opts.initrd) : opts.initrd;
      const addr = placeInitrd(rd.length, k, ram);
      this.write(addr, rd);
      initrd = { addr, size: rd.length };
    }
    const cmd = Buffer.from(this.cmdline + '\0', 'latin1');
    if (cmd.length > CMDLINE_MAX) throw new VmmError('boot', `kernel command line is ${cmd.length} bytes; at most ${CMDLINE_MAX}`);
    this.write(CMDLINE_ADDR, cmd);
    this.write(ZERO_PAGE, buildZeroPage({ setupHeader: k.setupHeader, cmdlineSize: cmd.length - 1, initrd, e820: e820For(ram) }));
    this.write(MPTABLE_ADDR, buildMpTable(MPTABLE_ADDR, opts.vcpus));
    writeBootTables(this.hot.view, (gpa, len) => this.hot.gpaToOffset(BigInt(gpa), len));
  }

  private setupVcpus(opts: MachineOptions): void {
    for (const v of this.vcpus) {
      this.cpuids[v.index] = cpuidFor(this.vm.supportedCpuid, v.index, opts.vcpus);
      v.native.setCpuid2(this.cpuids[v.index]);
      setupMsrs(v.native);
      setLongMode(v.native, this.entry, BigInt(ZERO_PAGE), { rsp: BigInt(0x8ff0 - v.index * 0x100) });
      setupLapic(v.native);
      if (v.index > 0 && opts.apsRunnable) v.native.setMpState(MP_STATE_RUNNABLE);
    }
  }

  /** An irqfd on `gsi`; returns the function that raises it. */
  private irqfdFor(gsi: number): () => void {
    const n = kvmNative();
    const fd = n.eventfdCreate(0);
    this.irqfds.push({ fd, gsi });
    this.vm.irqfd(fd, gsi);
    return () => n.eventfdWrite(fd, 1);
  }

  private watchNotify(addr: number, index: number, onKick: () => void): () => void {
    const n = kvmNative();
    const fd = n.eventfdCreate(0);
    this.vm.ioeventfd({ fd, addr, len: 4, datamatch: index });
    const poll = n.pollStart(fd, 1, () => { if (n.eventfdRead(fd) > 0) onKick(); }, true);
    const rec = { fd, poll, addr, index };
    this.notifyFds.push(rec);
    return () => this.unwatch(rec);
  }

  private unwatch(rec: { fd: number; poll: number; addr: number; index: number }): void {
    const i = this.notifyFds.indexOf(rec);
    if (i < 0) return;
    this.notifyFds.splice(i, 1);
    const n = kvmNative();
    n.pollStop(rec.poll);
    try { this.vm.ioeventfd({ fd: rec.fd, addr: rec.addr, len: 4, datamatch: rec.index, deassign: true }); } catch { /* VM already gone */ }
    n.closeFd(rec.fd);
  }

  /** Starts every vCPU thread. */
  start(): void {
    if (this.started) throw new VmmError('config', 'machine already started');
    this.started = true;
    for (const v of this.vcpus) v.start((e) => this.onVcpuEnd(e));
  }

  private onVcpuEnd(e: VcpuEnd): void {
    // One vCPU ending ends the machine (a guest reset or error concerns all).
    if (e.kind !== 'stopped' || !this.endInfo) this.finish({ kind: e.kind, reason: e.reason, error: e.error });
  }

  private finish(e: MachineEnd): void {
    if (this.endInfo) return;
    this.endInfo = e;
    // Stop the other vCPUs from outside their handlers: defer to a fresh tick.
    setImmediate(() => {
      for (const v of this.vcpus) v.stop();
      this.resolveEnd(e);
    });
  }

  /** Why the machine ended, once it has (synchronous view of `ended`). */
  get endReason(): MachineEnd | undefined { return this.endInfo; }

  async pause(): Promise<void> {
    this.paused = true;
    await Promise.all(this.vcpus.map((v) => v.pause()));
  }

  resume(): void {
    this.paused = false;
    for (const v of this.vcpus) v.resume();
  }

  get isPaused(): boolean { return this.paused; }
  /** Started, not ended, not closed. */
  get isRunning(): boolean { return this.started && !this.endInfo && !this.closed; }
  /** The CPUID table vCPU `i` was given (saved in snapshots). */
  cpuidOf(i: number): CpuidEntry[] { return this.cpuids[i]; }

  /** Saves the machine into `dir` (state.bin + sparse memory.bin); it keeps running afterwards unless it was paused. */
  snapshot(dir: string): Promise<SnapshotInfo> {
    return saveSnapshot(this, dir);
  }

  /**
   * A new machine from a snapshot directory, not started yet (start() resumes
   * the guest where it was). `devices` must match the snapshotted machine's
   * virtio devices in type and order; their host-side state (open files,
   * sockets) is the caller's. Throws SnapshotError for a corrupt, truncated,
   * foreign-version or mismatched snapshot, with nothing left open.
   */
  static restore(dir: string, opts: RestoreOptions = {}): Machine {
    const snap = openSnapshot(dir, opts.hooks);
    const m = snap.state.meta;
    try {
      return new Machine({
        memoryBytes: m.memoryBytes, vcpus: m.vcpus, cmdline: m.cmdline, devices: opts.devices,
        serialOut: opts.serialOut, scratchBytes: opts.scratchBytes, restoreFrom: { state: snap.state, memoryFd: snap.memoryFd }, mergeableRam: opts.mergeableRam,
      });
    } catch (err) {
      if (err instanceof SnapshotError || err instanceof VmmError) throw err;
      throw new SnapshotError('mismatch', `restore from ${dir} failed: ${(err as Error).message}`, { cause: err });
    } finally {
      kvmNative().closeFd(snap.memoryFd);
    }
  }

  /** Stops the vCPUs; resolves `ended` with kind 'stopped' if the guest had not ended it. */
  async stop(): Promise<MachineEnd> {
    this.finish({ kind: 'stopped', reason: 'stopped by the host' });
    return this.ended;
  }

  /** Releases everything. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (!this.endInfo) { this.endInfo = { kind: 'stopped', reason: 'closed' }; this.resolveEnd(this.endInfo); }
    for (const v of this.vcpus) v.close();
    for (const t of this.transports) t.close();
    for (const rec of [...this.notifyFds]) this.unwatch(rec);
    const n = kvmNative();
    for (const { fd, gsi } of this.irqfds.splice(0)) {
      try { this.vm.irqfd(fd, gsi, true); } catch { /* VM gone */ }
      n.closeFd(fd);
    }
    for (const d of this.transports) void d.device.close?.();
    this.vm?.close();
  }
}
