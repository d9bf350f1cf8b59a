/**
 * Port-IO and MMIO buses: which device answers an address. A handful of
 * devices per VM, so a sorted array and a linear scan (with a last-hit
 * cache for the serial port's tight loops) beat anything cleverer.
 * Unclaimed reads return all-ones and unclaimed writes are dropped, as on
 * a PC's ISA bus (Linux probes absent legacy devices that way).
 */
import { VmmError } from './errors';

export interface BusDevice {
  /** Fill `data` (the access width) with the value at `offset` in the device's range. */
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

interface Range { base: number; len: number; dev: BusDevice; name: string }

export class Bus {
  private ranges: Range[] = [];
  private last: Range | undefined;
  /** Counts unclaimed accesses (tests and debugging). */
  unclaimed = 0;

  constructor(readonly name: string) {}

  register(base: number, len: number, dev: BusDevice, name: string): void {
    if (len <= 0) throw new VmmError('config', `${this.name}: empty range for ${name}`);
    for (const r of this.ranges) {
      if (base < r.base + r.len && r.base < base + len) {
        throw new VmmError('config', `${this.name}: ${name} at 0x${base.toString(16)} overlaps ${r.name}`);
      }
    }
    this.ranges.push({ base, len, dev, name });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  find(addr: number): Range | undefined {
    const l = this.last;
    if (l && addr >= l.base && addr < l.base + l.len) return l;
    for (const r of this.ranges) {
      if (addr >= r.base && addr < r.base + r.len) return (this.last = r);
    }
    return undefined;
  }

  read(addr: number, data: Uint8Array): void {
    const r = this.find(addr);
    if (!r) { data.fill(0xff); this.unclaimed++; return; }
    r.dev.read(addr - r.base, data);
  }

  write(addr: number, data: Uint8Array): void {
    const r = this.find(addr);
    if (!r) { this.unclaimed++; return; }
    r.dev.write(addr - r.base, data);
  }
}
