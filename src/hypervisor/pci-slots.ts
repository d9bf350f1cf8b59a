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
 * bus ("02/00" = slot 2 on the root, then slot 0 behind that bridge). Our
 * devices sit on the root bus, so the path is one element: the slot as two
 * hex digits.
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
