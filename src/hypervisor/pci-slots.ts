/**
 * PCI slot allocator for the root bus (bus 0) of a `pc`/`q35` VM: which
 * device slots in a fixed range are taken. One per VM; the device manager
 * (src/resource/devices) reads it to tell the agent where a device will
 * appear (its PCI path), and QemuHypervisor consults it when it renders the
 * boot command line and when it hotplugs.
 *
 * Why its own module: the slot bookkeeping used to live inside the QEMU
 * class next to the command line, and slots were never given back. Here a
 * slot is taken lowest-first and returned with free(); a slot whose device
 * the guest never released stays taken (device_add into it would fail).
 *
 * PCI path: Kata's agent names a device by the chain of slots from the root
 * bus ("02/00" = slot 2 on the root, then slot 0 behind that bridge). Most
 * devices sit on the root bus, so the path is one element: the slot as two
 * hex digits. VFIO devices on q35 may sit behind a PCIe root port
 * (RootPortPool below): "<port's root slot>/00".
 */
import { KataError } from '../common/errors';

export class PciSlotError extends KataError<'full' | 'range' | 'taken'> {}

/** Slots below this are fixed (3 root disk, 4 vsock, 5 rng); 8.. are handed out. */
export const FIRST_DYNAMIC_SLOT = 8;
/** The last device number on a PCI bus (5 bits). */
export const LAST_SLOT = 0x1f;

/** Kata's PCI path spelling of a root-bus slot ("0a"). */
export function pciPath(slot: number): string {
  return slot.toString(16).padStart(2, '0');
}

/** QMP/QEMU spelling of a PCI slot number (device_add addr). */
export function slotAddr(slot: number): string {
  return `0x${slot.toString(16)}`;
}

export class PciSlotAllocator {
  private readonly used = new Set<number>();

  constructor(readonly first = FIRST_DYNAMIC_SLOT, readonly last = LAST_SLOT) {
    if (!Number.isInteger(first) || !Number.isInteger(last) || first < 0 || last > LAST_SLOT || first > last) {
      throw new PciSlotError('range', `bad PCI slot range ${first}..${last} (0..${LAST_SLOT})`);
    }
  }

  /** Number of slots in the range. */
  get capacity(): number {
    return this.last - this.first + 1;
  }

  /** Slots still free. */
  get free(): number {
    return this.capacity - this.used.size;
  }

  /** The lowest free slot, now taken (give it back with release() if nothing gets plugged there). */
  take(): number {
    for (let slot = this.first; slot <= this.last; slot++) {
      if (!this.used.has(slot)) {
        this.used.add(slot);
        return slot;
      }
    }
    throw new PciSlotError('full', `no free PCI slot for another device (${this.used.size} of ${this.capacity} in use)`);
  }

  /** Marks a specific slot taken (a boot plan's). */
  reserve(slot: number): void {
    if (!Number.isInteger(slot) || slot < this.first || slot > this.last) throw new PciSlotError('range', `PCI slot ${slot} is outside ${this.first}..${this.last}`);
    if (this.used.has(slot)) throw new PciSlotError('taken', `PCI slot ${pciPath(slot)} is already taken`);
    this.used.add(slot);
  }

  release(slot: number): void {
    this.used.delete(slot);
  }

  has(slot: number): boolean {
    return this.used.has(slot);
  }

  /** Forget every slot (a new boot). */
  clear(): void {
    this.used.clear();
  }

  /** Slots in use, ascending. */
  inUse(): number[] {
    return [...this.used].sort((a, b) => a - b);
  }
}

/**
 * Kata's VFIO port types ([hypervisor.qemu] hot_plug_vfio / cold_plug_vfio):
 * where a passed-through device goes. no-port: the root bus; root-port: its
 * own PCIe root port (q35); bridge-port: a slot of one pci-bridge on the
 * root bus (pc). switch-port is refused by the configuration and by
 * QemuHypervisor (not implemented).
 */
export type VfioPortType = 'no-port' | 'bridge-port' | 'root-port' | 'switch-port';

/** Kata's PCI path of a device in `slot` behind the bridge in root slot `bridgeSlot` ("09/01"). */
export function bridgedPciPath(bridgeSlot: number, slot: number): string {
  return `${pciPath(bridgeSlot)}/${pciPath(slot)}`;
}

/** Kata's PCI path of the device in slot 0 behind the root port in root slot `portSlot` ("09/00"). */
export function rootPortPciPath(portSlot: number): string {
  return `${pciPath(portSlot)}/00`;
}

/** One pcie-root-port of a q35 VM: its QEMU id (rpK), its slot on pcie.0, its chassis/slot numbers. */
export interface RootPort {
  id: string;
  /** Slot on pcie.0 (the root complex). */
  slot: number;
  /** PCIe chassis and physical slot numbers: the pair must be unique per VM (QEMU refuses duplicates). */
  chassis: number;
  physSlot: number;
}

/**
 * The PCIe root ports a q35 VM got at boot ([hypervisor.qemu]
 * pcie_root_port = N, Kata's key) and which of them hold a device. Each
 * port has one downstream slot (0), so one VFIO device per port, as Kata's
 * root-port mode does for GPUs: large BARs get the port's own bridge
 * windows instead of competing on the root bus. A port is taken lowest-first
 * and given back when its device is gone (DEVICE_DELETED).
 */
export class RootPortPool {
  readonly ports: RootPort[];
  private readonly busy = new Set<string>();

  /** One port per slot in `slots` (pcie.0 slots from the VM's PciSlotAllocator plan), named rp0, rp1, … */
  constructor(slots: number[]) {
    this.ports = slots.map((slot, k) => ({ id: `rp${k}`, slot, chassis: 1, physSlot: k + 1 }));
  }

  get capacity(): number {
    return this.ports.length;
  }

  get free(): number {
    return this.ports.length - this.busy.size;
  }

  /** The lowest free port, now taken; all busy (or none configured) is one PciSlotError 'full'. */
  take(): RootPort {
    const port = this.ports.find((p) => !this.busy.has(p.id));
    if (!port) {
      throw new PciSlotError('full', this.ports.length === 0
        ? 'no PCIe root port for the device: set [hypervisor.qemu] pcie_root_port = N (q35) to create N ports at boot'
        : `all ${this.ports.length} PCIe root ports are in use (${[...this.busy].sort().join(', ')}); raise [hypervisor.qemu] pcie_root_port`);
    }
    this.busy.add(port.id);
    return port;
  }

  /** Marks port `id` taken (a cold-plugged device's). */
  reserve(id: string): RootPort {
    const port = this.ports.find((p) => p.id === id);
    if (!port) throw new PciSlotError('range', `no PCIe root port ${id}`);
    if (this.busy.has(id)) throw new PciSlotError('taken', `PCIe root port ${id} is already taken`);
    this.busy.add(id);
    return port;
  }

  release(id: string): void {
    this.busy.delete(id);
  }

  /** Ids of the ports holding a device, ascending by index. */
  inUse(): string[] {
    return this.ports.filter((p) => this.busy.has(p.id)).map((p) => p.id);
  }

  clear(): void {
    this.busy.clear();
  }
}
