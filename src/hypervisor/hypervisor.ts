/**
 * The Hypervisor interface: what the runtime needs from a VMM, whichever it
 * is (QEMU as a child process driven over QMP, or the builtin VMM in this
 * process). Kata's runtime-rs has the same seam. Devices are described
 * abstractly; each implementation maps them onto its own transport.
 */
import * as fs from 'node:fs';
import type { BlkBackend } from '../virtio/blk/device';

export interface DiskDevice {
  /** Stable id; becomes the virtio-blk serial the agent looks the disk up by. */
  id: string;
  path: string;
  readonly: boolean;
  /**
   * Bytes computed by this process instead of read from `path` (a converted
   * image's blob device, src/image/blob-device.ts). Only our own virtio-blk
   * device can serve it (QEMU's vhost-user-blk driver; the builtin VMM).
   */
  backend?: BlkBackend;
}

/** A host directory shared into the guest with virtio-fs (our FUSE server). */
export interface FsShare {
  /** Mount tag the guest mounts by (≤ 36 bytes, §5.11.4). */
  tag: string;
  /** Host directory; the guest's changes land in it. */
  path: string;
}

/**
 * A network device backed by a tap the runtime opened (in the pod's netns,
 * src/resource/network): the hypervisor gets the fd, the guest NIC the MAC.
 */
export interface NetDevice {
  id: string;
  /** Open tap fd (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR). */
  fd: number;
  mac: string;
  mtu: number;
}

/**
 * A PCI device handed to the guest: `source` is the host address
 * dddd:bb:dd.f (QEMU vfio-pci) or "edu", QEMU's emulated edu device standing
 * in for one in tests (src/hypervisor/vfio-host.ts says why).
 */
export interface VfioDevice {
  id: string;
  source: string;
}

export interface VmConfig {
  /** Sandbox id (names the VM). */
  id: string;
  /** Directory for this VM's sockets, pid file and console log. */
  dir: string;
  kernel: string;
  /** Guest root filesystem image (EROFS), attached read-only as the first disk. */
  image: string;
  vcpus: number;
  memoryMiB: number;
  kernelParams: string;
  /** Disks present from boot (containers known at start). */
  disks: DiskDevice[];
  /** virtio-fs shares present from boot. */
  shares?: FsShare[];
  /** virtio-net devices present from boot (one per pod interface). */
  nets?: NetDevice[];
  /** Host PCI devices given to the guest from boot (cold-plug; QEMU only). */
  vfio?: VfioDevice[];
  debug: boolean;
}

export interface VmInfo {
  hypervisor: 'qemu' | 'builtin';
  /** Host pids that belong to the VM (QEMU's; the runtime's own for builtin). */
  pids: number[];
  /** Unix socket whose stream reaches the guest agent's transport. */
  agentSocket: string;
  consoleLog: string;
  accel: string;
  /** The guest's vsock CID, when it is not the fixed default (a VM template clone's own). */
  guestCid?: number;
}

export interface Hypervisor {
  readonly name: 'qemu' | 'builtin';
  /** Boot the VM; resolves once the VMM runs (not when the guest is ready). */
  start(cfg: VmConfig): Promise<VmInfo>;
  /** Stop the VM and release everything it holds. Idempotent. */
  stop(): Promise<void>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Attach a disk to the running VM (hotplug). */
  addDisk(d: DiskDevice): Promise<void>;
  removeDisk(id: string): Promise<void>;
  /**
   * Grow an attached disk to `size` bytes (direct volumes' online resize),
   * when the hypervisor can; absent otherwise.
   */
  resizeDisk?(id: string, size: number): Promise<void>;
  /**
   * Share a host directory with the running VM (virtio-fs hotplug), when the
   * hypervisor can; callers fall back to a disk image when it is absent.
   */
  addShare?(share: FsShare): Promise<void>;
  removeShare?(tag: string): Promise<void>;
  /**
   * A filesystem (host st_dev `dev`) was unmounted from below share `tag`'s
   * directory: its FUSE server lets go of the inodes it holds there (a
   * container's rootfs leaving the sandbox share). Returns how many; absent
   * where the hypervisor serves no shares itself.
   */
  forgetShareDevice?(tag: string, dev: bigint): number;
  /** Hotplug a network device on a tap fd (a pod interface added after boot), when the hypervisor can. */
  addNet?(n: NetDevice): Promise<void>;
  removeNet?(id: string): Promise<void>;
  /**
   * Where an attached disk, share or network device sits: its root-bus PCI
   * slot (the device manager turns it into the PCI path the agent waits
   * for). Absent where devices are not on PCI (the builtin VMM's virtio-mmio).
   */
  slotOf?(kind: 'blk' | 'fs' | 'net' | 'vfio', id: string): number | undefined;
  /** Kata's PCI path of an attached device ("0a", or "09/00" behind a bridge/root port), when it differs from its root slot's. */
  pciPathOf?(kind: 'blk' | 'fs' | 'net' | 'vfio', id: string): string | undefined;
  /** Hotplug a host PCI device (vfio-pci) by its address dddd:bb:dd.f (or the "edu" test stand-in), when the hypervisor can. */
  addVfio?(id: string, bdf: string): Promise<void>;
  removeVfio?(id: string): Promise<void>;
  /** Hotplug slots still free, where the hypervisor has a bounded bus. */
  freeSlots?(): number;
  /** Resolves when the VM ends for any reason, with a human reason. */
  exited(): Promise<string>;
  /** Last lines of the guest console, for error messages. */
  consoleTail(lines?: number): string;
}

/**
 * Whether a QEMU machine type is the i440fx `pc` (plain or versioned), whose
 * firmware (SeaBIOS) gives the kernel a PCI IRQ routing table ($PIR).
 */
function isI440fx(machine: string | undefined): boolean {
  return machine !== undefined && /^pc(-i440fx-[\d.]+)?$/.test(machine.split(',')[0]!);
}

/**
 * The host's TSC frequency in kHz as /proc/cpuinfo gives it (`cpu MHz`, the
 * kernel's calibrated cpu_khz), or undefined when it cannot be read.
 */
export function hostTscKhz(cpuinfo?: string): number | undefined {
  let text = cpuinfo;
  if (text === undefined) {
    try {
      text = fs.readFileSync('/proc/cpuinfo', 'utf8');
    } catch {
      return undefined;
    }
  }
  const m = /^cpu MHz\s*:\s*([\d.]+)/m.exec(text);
  const khz = m ? Math.round(Number(m[1]) * 1000) : NaN;
  return Number.isFinite(khz) && khz > 0 ? khz : undefined;
}

/**
 * The guest kernel command line every kata-ts VM gets. `machine` (QEMU's
 * machine type, when QEMU runs the VM) adds what only that machine needs.
 */
export function baseKernelParams(debug: boolean, machine?: string): string {
  const tscKhz = machine?.split(',')[0] === 'microvm' ? hostTscKhz() : undefined;
  return [
    'console=ttyS0', 'root=/dev/vda', 'rootfstype=erofs', 'ro', 'init=/sbin/kata-init',
    // Entropy: Node blocks in getrandom() until the CRNG is ready; trust the
    // (emulated) RDRAND of -cpu max, see shared/NOTES.md.
    'random.trust_cpu=on', 'panic=-1', 'reboot=k',
    // As Kata: skip the IO-APIC timer check. Under TCG on a loaded host the
    // timer interrupts can miss its TSC-timed window, and the kernel panics
    // at ~0.04 s ("IO-APIC + timer doesn't work!"): 2 of 109 soak boots.
    'no_timer_check',
    // i440fx only: PCI interrupts routed from SeaBIOS's $PIR table, not by
    // ACPI. Under TCG each ACPI PCI interrupt link the kernel enables while
    // the virtio devices probe cost ~0.8 s of guest time (QEMU -icount: 3
    // links, kernel to init 3.96 s with ACPI routing, 0.65 s without; real
    // time at load ~13: 2.5-4.2 s -> 1.0-2.1 s), 2026-12-01. Virtio uses
    // MSI-X anyway; ACPI hotplug (PCI, memory, CPU) is untouched. Not on q35,
    // whose INTx routing SeaBIOS's table does not describe.
    ...(isI440fx(machine) ? ['acpi=noirq'] : []),
    // microvm has no HPET or ACPI PM timer, so the kernel can only calibrate
    // the TSC against the PIT, and under TCG on a loaded host that fails
    // ("Unable to calibrate against PIT"); the TSC is then marked unstable,
    // the delay loop waits on jiffies, and the PIT's tick never reaches the
    // guest: boot stops there for good (seen at load ~9-23, 2026-12-01).
    // Under TCG the guest's RDTSC is the host's TSC, so its frequency is
    // the host's: given up front, no calibration runs.
    ...(tscKhz ? [`tsc_early_khz=${tscKhz}`] : []),
    debug ? 'agent.log=debug' : 'quiet',
  ].join(' ');
}
