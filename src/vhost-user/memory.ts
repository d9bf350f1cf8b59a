/**
 * Guest RAM received over vhost-user SET_MEM_TABLE (vhost-user.rst "Memory
 * regions description"), mapped into the hot-path WebAssembly.Memory
 * (ARCHITECTURE.md decision 1).
 *
 * Each region names a file (SCM_RIGHTS fd), an offset in it, the guest-
 * physical range it backs and the front end's own virtual address of it.
 * QEMU sends one region per RAM section, and for `memory-backend-memfd` all
 * of them come from the same memfd at different offsets. So we place each
 * distinct file once, in a slot of the guest RAM area, and map every region
 * at slot + mmap_offset: the guest's RAM keeps its layout, and two regions
 * of the same file can never alias different pages.
 *
 * A later table (QEMU sends the whole table again after a memory hotplug,
 * vhost-user.rst "Memory regions description": we do not offer
 * CONFIGURE_MEM_SLOTS, so no ADD/REM_MEM_REG) keeps every file already
 * mapped at its slot, so running rings and in-flight requests keep valid
 * offsets; a new file (a hot-added DIMM's memfd) takes a free slot.
 *
 * The Memory's guest area is fixed (never grown, sized for the VM's maximum
 * RAM); a table that does not fit is refused, never partly mapped. Unmapping restores zero pages so V8's
 * range stays valid.
 */
import { native } from '../common/native';
import type { GuestRegion, HotMemory } from '../hot/memory';
import { VhostUserError, type MemRegion } from './protocol';

const PAGE = 4096;
const SLOT_ALIGN = 65536;

export interface MappedRegion extends GuestRegion {
  /** Front-end virtual address (SET_VRING_ADDR speaks these). */
  uva: bigint;
}

export class VhostUserMemory {
  private mapped: Array<{ offset: number; length: number }> = [];
  /**
   * Where each file (dev:ino) lives in the guest area, kept from one table
   * to the next: a memory hotplug (QEMU sends the whole table again, with
   * one more memfd) must not move the guest RAM already mapped, because
   * running rings and in-flight requests hold offsets into it.
   */
  private slots = new Map<string, { base: number; bytes: number }>();
  regions: MappedRegion[] = [];
  /** Whether the last set() moved pages that the table before it had mapped (rings must then restart). */
  moved = false;

  constructor(private readonly hot: HotMemory) {}

  /**
   * Maps a new table, replacing the old one. Takes ownership of `fds` (one
   * per region, closed here once mapped: the mapping keeps the file alive).
   * Files already mapped stay where they are; new files take the first gap
   * that fits; files no longer named are unmapped. Mapping is MAP_FIXED over
   * the old pages, so a page present in both tables is never unmapped.
   */
  set(table: MemRegion[], fds: number[]): MappedRegion[] {
    const n = native();
    try {
      if (fds.length !== table.length) {
        throw new VhostUserError('memory', `SET_MEM_TABLE: ${table.length} regions but ${fds.length} fds`);
      }
      // Plan first, map after: a bad table leaves the old mapping untouched.
      const files = table.map((r, i) => {
        if (r.size === 0n || r.size % BigInt(PAGE) !== 0n || r.mmapOffset % BigInt(PAGE) !== 0n) {
          throw new VhostUserError('memory', `region ${i}: size 0x${r.size.toString(16)} / offset 0x${r.mmapOffset.toString(16)} not page aligned`);
        }
        if (r.gpa + r.size > 0xffff_ffff_ffff_ffffn || r.uva + r.size > 0xffff_ffff_ffff_ffffn) {
          throw new VhostUserError('memory', `region ${i} wraps the address space`);
        }
        const id = n.fstatId(fds[i]);
        // A region past the end of its file maps, but the first access to
        // those pages (a ring or buffer the guest names) is SIGBUS: the
        // whole backend process dies. Refuse the table instead.
        if (r.mmapOffset + r.size > BigInt(id.size)) {
          throw new VhostUserError('memory', `region ${i}: offset 0x${r.mmapOffset.toString(16)} + size 0x${r.size.toString(16)} passes the end of its ${id.size}-byte file`);
        }
        return `${id.dev}:${id.ino}`;
      });
      const spans = new Map<string, number>();
      for (let i = 0; i < table.length; i++) {
        const end = Number(table[i].mmapOffset + table[i].size);
        spans.set(files[i], Math.max(spans.get(files[i]) ?? 0, end));
      }
      const slots = this.placeSlots(spans);
      const regions: MappedRegion[] = table.map((r, i) => ({
        gpa: r.gpa, size: Number(r.size), uva: r.uva, offset: slots.get(files[i])!.base + Number(r.mmapOffset),
      }));
      for (let i = 0; i < regions.length; i++) {
        for (let j = 0; j < i; j++) {
          const a = regions[i], b = regions[j];
          if (a.gpa < b.gpa + BigInt(b.size) && b.gpa < a.gpa + BigInt(a.size)) {
            throw new VhostUserError('memory', `regions ${j} and ${i} overlap in guest-physical space`);
          }
        }
      }
      // Did a guest-physical page of the old table land somewhere else?
      this.moved = this.regions.some((o) => regions.some((r) =>
        o.gpa < r.gpa + BigInt(r.size) && r.gpa < o.gpa + BigInt(o.size) &&
        Number(o.gpa - r.gpa) + r.offset !== o.offset));
      const mapped: Array<{ offset: number; length: number }> = [];
      for (let i = 0; i < regions.length; i++) {
        n.mapFileOver(this.hot.memory.buffer, regions[i].offset, regions[i].size, fds[i], Number(table[i].mmapOffset));
        mapped.push({ offset: regions[i].offset, length: regions[i].size });
      }
      // What the old table mapped and the new one does not: back to zero pages.
      for (const piece of subtractRanges(this.mapped, mapped)) n.unmapOver(this.hot.memory.buffer, piece.offset, piece.length);
      this.mapped = mapped;
      this.slots = slots;
      this.regions = regions;
      return regions;
    } finally {
      for (const fd of fds) {
        try { n.closeFd(fd); } catch { /* already closed */ }
      }
    }
  }

  /** Keeps the slot of every file still named (if it still fits), first-fit for the rest. */
  private placeSlots(spans: Map<string, number>): Map<string, { base: number; bytes: number }> {
    const out = new Map<string, { base: number; bytes: number }>();
    const area = { start: this.hot.guestBase, end: this.hot.guestBase + this.hot.guestBytes };
    const todo: Array<[string, number]> = [];
    for (const [file, span] of spans) {
      const bytes = Math.ceil(span / SLOT_ALIGN) * SLOT_ALIGN;
      const old = this.slots.get(file);
      if (old && bytes <= old.bytes) out.set(file, old);
      else todo.push([file, bytes]);
    }
    for (const [file, bytes] of todo) {
      const taken = [...out.values()].sort((a, b) => a.base - b.base);
      let base = area.start;
      for (const t of taken) {
        if (base + bytes <= t.base) break;
        base = Math.max(base, t.base + t.bytes);
      }
      if (!Number.isSafeInteger(base + bytes) || base + bytes > area.end) {
        const total = [...spans.values()].reduce((a, b) => a + b, 0);
        throw new VhostUserError('memory', `guest memory (${total} bytes in ${spans.size} file(s)) does not fit the ${this.hot.guestBytes}-byte guest area; size the HotMemory to the VM's maximum RAM`);
      }
      out.set(file, { base, bytes });
    }
    return out;
  }

  /** Front-end virtual address → guest-physical, if [uva, uva+len) is in one region. */
  uvaToGpa(uva: bigint, len: number): bigint | undefined {
    for (const r of this.regions) {
      if (uva >= r.uva && uva - r.uva + BigInt(len) <= BigInt(r.size)) return r.gpa + (uva - r.uva);
    }
    return undefined;
  }

  /** Drops every mapping (disconnect, RESET_OWNER, new table). */
  unmapAll(): void {
    const n = native();
    for (const m of this.mapped) n.unmapOver(this.hot.memory.buffer, m.offset, m.length);
    this.mapped = [];
    this.slots.clear();
    this.regions = [];
  }
}

/** Parts of `a` (page-aligned ranges) that no range of `b` covers. */
export function subtractRanges(a: ReadonlyArray<{ offset: number; length: number }>, b: ReadonlyArray<{ offset: number; length: number }>): Array<{ offset: number; length: number }> {
  let pieces = a.map((r) => ({ start: r.offset, end: r.offset + r.length }));
  for (const cut of b) {
    const cs = cut.offset, ce = cut.offset + cut.length;
    pieces = pieces.flatMap((p) => {
      if (ce <= p.start || cs >= p.end) return [p];
      const left = cs > p.start ? [{ start: p.start, end: cs }] : [];
      const right = ce < p.end ? [{ start: ce, end: p.end }] : [];
      return [...left, ...right];
    });
  }
  return pieces.map((p) => ({ offset: p.start, length: p.end - p.start }));
}
