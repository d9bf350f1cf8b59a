/**
 * virtio-mmio transport, modern only (virtio 1.2 §4.2.2 register layout,
 * Version 2). Drives a transport-agnostic VirtioDevice (src/virtio/device.ts):
 * feature negotiation, config space, queue set-up into the WASM virtqueue,
 * status and reset, interrupts. Queue notifications arrive through one
 * ioeventfd per queue (datamatch = queue index on QueueNotify) so a kick
 * costs no exit to this process; interrupts leave through an irqfd.
 *
 * Guest input is hostile (decision 2): a register write that makes a device
 * throw puts it in DEVICE_NEEDS_RESET (§2.1.2) with a config interrupt; the
 * host carries on. The driver announces this device from the kernel command
 * line: `virtio_mmio.device=<size>@<base>:<irq>` (Linux drivers/virtio/virtio_mmio.c).
 */
import { logger } from '../../common/log';
import { errorMessage } from '../../common/errors';
import type { VirtioModule, Virtqueue } from '../../hot/virtqueue';
import {
  VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
  type ActivateContext, type GuestMemory, type VirtioDevice,
} from '../../virtio/device';
import type { BusDevice } from '../bus';
import { SnapshotError, type TransportState } from '../snapshot/format';

export const MMIO_MAGIC = 0x7472_6976; // "virt"
export const MMIO_VERSION = 2;
export const MMIO_VENDOR = 0x5354_4b4b; // "KKTS"
export const REG = {
  MagicValue: 0x000, Version: 0x004, DeviceID: 0x008, VendorID: 0x00c,
  DeviceFeatures: 0x010, DeviceFeaturesSel: 0x014, DriverFeatures: 0x020, DriverFeaturesSel: 0x024,
  QueueSel: 0x030, QueueNumMax: 0x034, QueueNum: 0x038, QueueReady: 0x044, QueueNotify: 0x050,
  InterruptStatus: 0x060, InterruptACK: 0x064, Status: 0x070,
  QueueDescLow: 0x080, QueueDescHigh: 0x084, QueueDriverLow: 0x090, QueueDriverHigh: 0x094,
  QueueDeviceLow: 0x0a0, QueueDeviceHigh: 0x0a4, SHMSel: 0x0ac, SHMLenLow: 0x0b0, SHMLenHigh: 0x0b4,
  SHMBaseLow: 0x0b8, SHMBaseHigh: 0x0bc, QueueReset: 0x0c0, ConfigGeneration: 0x0fc, Config: 0x100,
} as const;
export const INT_VRING = 1, INT_CONFIG = 2;

interface QueueRegs { num: number; ready: boolean; desc: bigint; driver: bigint; device: bigint }

/** What the machine gives a transport: interrupt line and kick wiring. */
export interface MmioWiring {
  /** Raise the device's interrupt (irqfd write). */
  raiseIrq(): void;
  /** Register an ioeventfd for QueueNotify == index; returns an unregister function, or undefined if unavailable. */
  watchNotify?(index: number, onKick: () => void): (() => void) | undefined;
}

export class VirtioMmio implements BusDevice {
  private readonly log = logger('virtio-mmio');
  private status = 0;
  private devFeatSel = 0;
  private drvFeatSel = 0;
  private driverFeatures = 0n;
  private queueSel = 0;
  private interruptStatus = 0;
  private configGeneration = 0;
  private active = false;
  private queues: QueueRegs[];
  private readonly vqs: Virtqueue[];
  private unwatch: Array<() => void> = [];

  constructor(readonly device: VirtioDevice, private readonly memory: GuestMemory, module: VirtioModule, private readonly wiring: MmioWiring, name: string) {
    this.queues = device.queueMaxSizes.map(() => ({ num: 0, ready: false, desc: 0n, driver: 0n, device: 0n }));
    this.vqs = device.queueMaxSizes.map((max, i) => module.createQueue({ maxSize: max, name: `${name}.q${i}` }));
    device.queueMaxSizes.forEach((_, i) => {
      const u = wiring.watchNotify?.(i, () => this.notify(i));
      if (u) this.unwatch.push(u);
    });
  }

  read(off: number, d: Uint8Array): void {
    d.fill(0);
    if (off >= REG.Config) {
      try { this.device.readConfig(off - REG.Config, d); } catch (err) { this.fail(`config read: ${errorMessage(err)}`); }
      return;
    }
    // §4.2.2.2: registers are 32-bit; other widths are undefined — we answer 0.
    if (d.length !== 4 || (off & 3) !== 0) return;
    const q = this.queues[this.queueSel];
    let v = 0;
    switch (off) {
      case REG.MagicValue: v = MMIO_MAGIC; break;
      case REG.Version: v = MMIO_VERSION; break;
      case REG.DeviceID: v = this.device.deviceType; break;
      case REG.VendorID: v = MMIO_VENDOR; break;
      case REG.DeviceFeatures: {
        const all = this.device.availableFeatures | VIRTIO_F_VERSION_1;
        v = this.devFeatSel < 2 ? Number(BigInt.asUintN(32, all >> BigInt(32 * this.devFeatSel))) : 0;
        break;
      }
      case REG.QueueNumMax: v = q ? this.device.queueMaxSizes[this.queueSel] : 0; break;
      case REG.QueueReady: v = q?.ready ? 1 : 0; break;
      case REG.InterruptStatus: v = this.interruptStatus; break;
      case REG.Status: v = this.status; break;
      case REG.SHMLenLow: case REG.SHMLenHigh: v = 0xffff_ffff; break; // no shared memory regions
      case REG.ConfigGeneration: v = this.configGeneration; break;
      default: v = 0;
    }
    new DataView(d.buffer, d.byteOffset, 4).setUint32(0, v >>> 0, true);
  }

  write(off: number, d: Uint8Array): void {
    if (off >= REG.Config) {
      try { this.device.writeConfig(off - REG.Config, d); } catch (err) { this.fail(`config write: ${errorMessage(err)}`); }
      return;
    }
    if (d.length !== 4 || (off & 3) !== 0) return;
    const v = new DataView(d.buffer, d.byteOffset, 4).getUint32(0, true);
    const q = this.queues[this.queueSel];
    // §4.2.2.3: queue registers change only while the queue is not ready and before DRIVER_OK.
    const queueWritable = q !== undefined && !q.ready && !this.active;
    switch (off) {
      case REG.DeviceFeaturesSel: this.devFeatSel = v; break;
      case REG.DriverFeaturesSel: this.drvFeatSel = v; break;
      case REG.DriverFeatures:
        if (this.drvFeatSel < 2 && !(this.status & VIRTIO_CONFIG_S_FEATURES_OK)) {
          const sh = BigInt(32 * this.drvFeatSel);
          this.driverFeatures = (this.driverFeatures & ~(0xffff_ffffn << sh)) | (BigInt(v) << sh);
        }
        break;
      case REG.QueueSel: this.queueSel = v; break;
      case REG.QueueNum:
        if (queueWritable) q.num = v;
        break;
      case REG.QueueReady:
        if (q && !this.active) q.ready = v === 1;
        break;
      case REG.QueueNotify: this.notify(v); break; // only reached when ioeventfd is not in use
      case REG.InterruptACK: this.interruptStatus &= ~v; break;
      case REG.Status: this.setStatus(v); break;
      case REG.QueueDescLow: if (queueWritable) q.desc = lo(q.desc, v); break;
      case REG.QueueDescHigh: if (queueWritable) q.desc = hi(q.desc, v); break;
      case REG.QueueDriverLow: if (queueWritable) q.driver = lo(q.driver, v); break;
      case REG.QueueDriverHigh: if (queueWritable) q.driver = hi(q.driver, v); break;
      case REG.QueueDeviceLow: if (queueWritable) q.device = lo(q.device, v); break;
      case REG.QueueDeviceHigh: if (queueWritable) q.device = hi(q.device, v); break;
      default: break;
    }
  }

  private setStatus(v: number): void {
    if (v === 0) { this.reset(); return; }
    // §2.1.1: the driver never clears bits; treat such writes as ignorable noise.
    if ((v & this.status) !== this.status) return;
    const added = v & ~this.status;
    if (added & VIRTIO_CONFIG_S_FEATURES_OK) {
      const offered = this.device.availableFeatures | VIRTIO_F_VERSION_1;
      // §3.1.1: a subset of what we offer, and VERSION_1 (modern only).
      if ((this.driverFeatures & ~offered) !== 0n || !(this.driverFeatures & VIRTIO_F_VERSION_1)) {
        this.status = v & ~VIRTIO_CONFIG_S_FEATURES_OK;
        return;
      }
      try { this.device.ackFeatures(this.driverFeatures); } catch (err) { this.fail(`features: ${errorMessage(err)}`); return; }
    }
    this.status = v;
    if ((added & VIRTIO_CONFIG_S_DRIVER_OK) && (this.status & VIRTIO_CONFIG_S_FEATURES_OK)) this.activate();
  }

  /**
   * Transport state for a snapshot. The machine's vCPUs are paused; a queue
   * whose device still holds popped chains (in-flight I/O) cannot be saved
   * consistently — inFlight() says so and the snapshot waits or refuses.
   */
  saveState(): TransportState {
    return {
      deviceType: this.device.deviceType, status: this.status, devFeatSel: this.devFeatSel, drvFeatSel: this.drvFeatSel,
      driverFeatures: '0x' + this.driverFeatures.toString(16), queueSel: this.queueSel, interruptStatus: this.interruptStatus,
      configGeneration: this.configGeneration, active: this.active,
      queues: this.queues.map((q, i) => ({
        num: q.num, ready: q.ready, desc: '0x' + q.desc.toString(16), driver: '0x' + q.driver.toString(16), device: '0x' + q.device.toString(16),
        lastAvail: this.active && q.ready ? this.vqs[i].lastAvailIdx & 0xffff : 0, nextUsed: this.active && q.ready ? this.vqs[i].nextUsedIdx & 0xffff : 0,
      })),
    };
  }

  /** Chains the device popped and has not completed, over all queues. */
  inFlight(): number {
    if (!this.active) return 0;
    let n = 0;
    this.queues.forEach((q, i) => { if (q.ready) n += (this.vqs[i].lastAvailIdx - this.vqs[i].nextUsedIdx) & 0xffff; });
    return n;
  }

  /**
   * Restore: the registers as saved and, for a running device, the same
   * feature acknowledgement and activation the driver's DRIVER_OK caused,
   * with each queue resuming at its saved ring indices.
   */
  restoreState(s: TransportState): void {
    if (s.deviceType !== this.device.deviceType) throw new SnapshotError('mismatch', `virtio device type ${this.device.deviceType} where the snapshot has ${s.deviceType}`);
    if (s.queues.length !== this.queues.length) throw new SnapshotError('mismatch', `virtio device type ${s.deviceType}: ${this.queues.length} queues, the snapshot has ${s.queues.length}`);
    s.queues.forEach((q, i) => {
      if (q.num > this.device.queueMaxSizes[i]) throw new SnapshotError('mismatch', `queue ${i} size ${q.num} exceeds the device's ${this.device.queueMaxSizes[i]}`);
    });
    this.status = s.status; this.devFeatSel = s.devFeatSel; this.drvFeatSel = s.drvFeatSel;
    this.driverFeatures = BigInt(s.driverFeatures); this.queueSel = s.queueSel;
    this.interruptStatus = s.interruptStatus; this.configGeneration = s.configGeneration;
    this.queues = s.queues.map((q) => ({ num: q.num, ready: q.ready, desc: BigInt(q.desc), driver: BigInt(q.driver), device: BigInt(q.device) }));
    if (!s.active) return;
    if (this.status & VIRTIO_CONFIG_S_FEATURES_OK) this.device.ackFeatures(this.driverFeatures);
    this.activate(s.queues.map((q) => ({ lastAvail: q.lastAvail, nextUsed: q.nextUsed })));
    if (!this.active || ((this.status & VIRTIO_CONFIG_S_NEEDS_RESET) && !(s.status & VIRTIO_CONFIG_S_NEEDS_RESET))) {
      throw new SnapshotError('mismatch', `virtio device type ${s.deviceType} did not reactivate from the snapshot`);
    }
    // A kick the guest wrote just before the snapshot went to the old VM's
    // ioeventfd and is lost: look at every ready queue once (a spurious
    // notification is harmless — the device reads the avail index).
    this.queues.forEach((q, i) => { if (q.ready) this.notify(i); });
  }

  private activate(resumeAt?: Array<{ lastAvail: number; nextUsed: number }>): void {
    const queues: Array<Virtqueue | undefined> = [];
    try {
      this.queues.forEach((q, i) => {
        if (!q.ready) { queues.push(undefined); return; }
        this.vqs[i].activate({ size: q.num, features: this.driverFeatures, descGpa: q.desc, availGpa: q.driver, usedGpa: q.device, lastAvailIdx: resumeAt?.[i].lastAvail, nextUsedIdx: resumeAt?.[i].nextUsed });
        queues.push(this.vqs[i]);
      });
      const ctx: ActivateContext = {
        memory: this.memory,
        queues,
        features: this.driverFeatures,
        interrupt: () => this.interrupt(INT_VRING),
        configChanged: () => { this.configGeneration++; this.interrupt(INT_CONFIG); },
        needsReset: (reason) => this.fail(reason),
      };
      this.active = true;
      this.device.activate(ctx);
    } catch (err) {
      this.fail(`activation: ${errorMessage(err)}`);
    }
  }

  private notify(index: number): void {
    if (!this.active || index >= this.queues.length || (this.status & VIRTIO_CONFIG_S_NEEDS_RESET)) return;
    try { this.device.queueNotify(index); } catch (err) { this.fail(`queue ${index}: ${errorMessage(err)}`); }
  }

  private interrupt(bit: number): void {
    this.interruptStatus |= bit;
    this.wiring.raiseIrq();
  }

  /** §2.1.2 DEVICE_NEEDS_RESET: stop the device, tell the driver. */
  private fail(reason: string): void {
    if (this.status & VIRTIO_CONFIG_S_NEEDS_RESET) return;
    this.log.warn('device needs reset', { type: this.device.deviceType, reason });
    this.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
    this.configGeneration++;
    this.interrupt(INT_CONFIG);
  }

  private reset(): void {
    if (this.active || this.status !== 0) {
      try { this.device.reset(); } catch (err) { this.log.warn('device reset failed', { err: errorMessage(err) }); }
    }
    for (const vq of this.vqs) vq.reset();
    this.active = false;
    this.status = 0;
    this.driverFeatures = 0n;
    this.devFeatSel = this.drvFeatSel = this.queueSel = 0;
    this.interruptStatus = 0;
    this.queues = this.queues.map(() => ({ num: 0, ready: false, desc: 0n, driver: 0n, device: 0n }));
  }

  close(): void {
    for (const u of this.unwatch.splice(0)) u();
  }

  get deviceStatus(): number { return this.status; }
}

const lo = (x: bigint, v: number): bigint => (x & 0xffff_ffff_0000_0000n) | BigInt(v >>> 0);
const hi = (x: bigint, v: number): bigint => (x & 0xffff_ffffn) | (BigInt(v >>> 0) << 32n);
