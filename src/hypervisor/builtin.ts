/**
 * The builtin hypervisor: the in-process VMM (src/vmm) behind the same
 * Hypervisor interface as QEMU. The rootfs image and disks are virtio-blk
 * (src/virtio/blk), the agent channel is virtio-vsock with the hybrid unix
 * socket (src/virtio/vsock/hybrid), the console is COM1 written to the
 * console log. All on virtio-mmio, announced on the kernel command line.
 *
 * Network: with a tap name ([hypervisor.builtin] net_tap) or a backend
 * (tests), a virtio-net device (src/virtio/net) comes after the disks and
 * vsock; the guest's addresses are the agent's business, as with QEMU.
 *
 * Snapshots (API for the factory, src/factory; Firecracker's model, see
 * src/vmm/snapshot):
 *   - `snapshot(dir)` pauses the running VM, writes `dir/state.bin`
 *     (versioned, SHA-256-checked vCPU/VM/device state) and `dir/memory.bin`
 *     (sparse guest RAM), and resumes it unless it was paused. Resolves with
 *     SnapshotInfo (pause time, sizes). Throws SnapshotError kind 'refused'
 *     when the VM is not running or virtio requests stay in flight.
 *   - `restore(dir, cfg)` is start() from a snapshot: the same devices as
 *     cfg describes (root image, disks in order, vsock; cfg must match the
 *     snapshotted VM's, else SnapshotError 'mismatch'), guest RAM mapped
 *     MAP_PRIVATE from memory.bin (clones share its page cache), then the
 *     vCPUs resume where the snapshot stopped. cfg.kernel, kernelParams,
 *     vcpus and memoryMiB are taken from the snapshot, not from cfg. Any
 *     failure throws before a vCPU runs and closes everything it opened.
 *   The guest's vsock connections do not survive a restore (the host side
 *   is new); the agent must be reached by a new connection — which is
 *   what a factory clone does anyway.
 *
 * Limits today: no disk hotplug (virtio-mmio has none; Firecracker has the
 * same limit), pause/resume are vCPU-level only.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlkDevice } from '../virtio/blk/device';
import { HybridVsock } from '../virtio/vsock/hybrid';
import { NetDevice } from '../virtio/net/device';
import { BalloonDevice } from '../virtio/balloon/device';
import type { NetBackend } from '../virtio/net/backend';
import { TapBackend } from '../virtio/net/tap';
import type { VirtioDevice } from '../virtio/device';
import { Machine } from '../vmm/machine';
import type { SnapshotInfo } from '../vmm/snapshot/save';
import { VmmError } from '../vmm/errors';
import { baseKernelParams, type DiskDevice, type Hypervisor, type VmConfig, type VmInfo } from './hypervisor';

/** Guest CID of every builtin VM (each VM has its own vsock device, so no clash). */
export const BUILTIN_GUEST_CID = 3;

export interface BuiltinOptions {
  /** Tap interface (name or pattern, e.g. "kts%d") for a virtio-net device; none when unset. */
  netTap?: string;
  /** A ready backend instead of a tap (tests). */
  netBackend?: NetBackend;
  /** Guest MAC; default a fixed locally administered one. */
  netMac?: string;
  /**
   * A virtio-balloon with free page reporting (src/virtio/balloon), last on
   * the device list ([hypervisor.builtin] reclaim_guest_freed_memory).
   */
  balloon?: boolean;
  /** Guest RAM private anonymous and MADV_MERGEABLE for KSM ([memory] ksm_throttler; Machine mergeableRam). */
  ksm?: boolean;
}

export class BuiltinHypervisor implements Hypervisor {
  readonly name = 'builtin' as const;
  /** The virtio-net device while the VM runs (when configured). */
  net: NetDevice | undefined;
  /** The virtio-balloon device while the VM runs (when configured). */
  balloon: BalloonDevice | undefined;
  private machine: Machine | undefined;
  private vsock: HybridVsock | undefined;
  private console: fs.WriteStream | undefined;
  private consoleBuf = '';
  private exitReason: Promise<string> = new Promise(() => {});

  constructor(private readonly opts: BuiltinOptions = {}) {}

  /** The options it was made with (the VM factory keys its templates on the balloon). */
  get options(): Readonly<BuiltinOptions> { return this.opts; }

  /** The machine while it runs (tests, metrics). */
  get vmm(): Machine | undefined { return this.machine; }

  async start(cfg: VmConfig): Promise<VmInfo> {
    return this.launch(cfg, (devices, serialOut) => new Machine({
      memoryBytes: cfg.memoryMiB << 20, vcpus: cfg.vcpus, kernel: cfg.kernel, devices,
      cmdline: [baseKernelParams(cfg.debug), cfg.kernelParams].filter(Boolean).join(' '),
      serialOut, mergeableRam: this.opts.ksm,
    }));
  }

  /** start() from a snapshot directory written by snapshot(); see the module header. */
  async restore(dir: string, cfg: VmConfig): Promise<VmInfo> {
    return this.launch(cfg, (devices, serialOut) => Machine.restore(dir, { devices, serialOut, mergeableRam: this.opts.ksm }));
  }

  /** Saves the running VM into `dir` (state.bin + memory.bin); see the module header. */
  async snapshot(dir: string): Promise<SnapshotInfo> {
    if (!this.machine) throw new VmmError('config', 'no VM to snapshot');
    return this.machine.snapshot(dir);
  }

  private async launch(cfg: VmConfig, make: (devices: VirtioDevice[], serialOut: (b: Uint8Array) => void) => Machine): Promise<VmInfo> {
    if (this.machine) throw new VmmError('config', 'VM already started');
    // Pod networking hands the VM tap fds; our virtio-net device (src/virtio/net)
    // is not wired into the builtin machine's boot yet: say so, don't drop it.
    if (cfg.nets?.length) throw new VmmError('config', 'the builtin VMM does not attach pod network interfaces yet; use the qemu hypervisor for networked sandboxes');
    fs.mkdirSync(cfg.dir, { recursive: true });
    const consoleLog = path.join(cfg.dir, 'console.log');
    const agentSocket = path.join(cfg.dir, 'vsock.sock');
    this.console = fs.createWriteStream(consoleLog);
    const devices: VirtioDevice[] = [];
    devices.push(new BlkDevice({ path: cfg.image, readonly: true, id: 'kata-root' }));
    for (const d of cfg.disks) devices.push(new BlkDevice({ path: d.path, readonly: d.readonly, id: d.id, backend: d.backend }));
    this.vsock = new HybridVsock(agentSocket, { guestCid: BUILTIN_GUEST_CID });
    await this.vsock.listen();
    devices.push(this.vsock.device);
    try {
      if (this.opts.netBackend || this.opts.netTap) {
        this.net = new NetDevice({ backend: this.opts.netBackend ?? new TapBackend(this.opts.netTap), mac: this.opts.netMac });
        devices.push(this.net);
      }
      if (this.opts.balloon) {
        // Last, so the other devices keep their slots (and snapshots their order) with or without it.
        this.balloon = new BalloonDevice({ ramBytes: cfg.memoryMiB * 1024 * 1024, backing: () => this.machine?.ramBacking ?? 'shared-memfd' });
        devices.push(this.balloon);
      }
      this.machine = make(devices, (b) => {
        this.console?.write(Buffer.from(b));
        this.consoleBuf = (this.consoleBuf + Buffer.from(b).toString('latin1')).slice(-16384);
      });
    } catch (err) {
      await this.vsock.close();
      for (const d of devices) await d.close?.();
      this.console?.end();
      this.console = undefined;
      this.net = undefined;
      this.balloon = undefined;
      throw err;
    }
    this.exitReason = this.machine.ended.then((e) => e.reason);
    this.machine.start();
    return { hypervisor: 'builtin', pids: [process.pid], agentSocket, consoleLog, accel: 'kvm' };
  }

  async stop(): Promise<void> {
    const m = this.machine;
    if (!m) return;
    await m.stop();
    m.close();
    await this.vsock?.close();
    this.console?.end();
  }

  async pause(): Promise<void> { await this.machine?.pause(); }
  async resume(): Promise<void> { this.machine?.resume(); }
  async addDisk(d: DiskDevice): Promise<void> {
    throw new VmmError('config', `cannot hotplug disk ${d.id}: virtio-mmio has no hotplug; start the VM with its disks`);
  }
  async removeDisk(id: string): Promise<void> {
    throw new VmmError('config', `cannot unplug disk ${id}: virtio-mmio has no hotplug`);
  }
  exited(): Promise<string> { return this.exitReason; }
  consoleTail(lines = 20): string { return this.consoleBuf.split('\n').slice(-lines).join('\n'); }
}
