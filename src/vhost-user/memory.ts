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
 * The Memory's guest area is fixed (never grown); a table that does not fit
 * is refused, never partly mapped. Unmapping restores zero pages so V8's
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
  regions: MappedRegion[] = [];

  constructor(private readonly hot: HotMemory) {}

  /**
   * Maps a new table, replacing the old one. Takes ownership of `fds` (one
   * per region, closed here once mapped: the mapping keeps the file alive).
   */
  set(table: MemRegion[], fds: number[]): MappedRegion[] {
    const n = native();
    try {
      if (fds.length !== table.length) {
        throw new VhostUserError('memory', `SET_MEM_TABLE: ${table.length} regions but ${fds.length} fds`);
      }
      // Plan first, map after: a bad table leaves the old mapping untouched.
      const slots = new Map<string, { base: number; span: number }>();
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
      let next = this.hot.guestBase;
      const limit = this.hot.guestBase + this.hot.guestBytes;
      for (let i = 0; i < table.length; i++) {
        const end = Number(table[i].mmapOffset + table[i].size);
        const s = slots.get(files[i]);
        if (s) s.span = Math.max(s.span, end);
        else slots.set(files[i], { base: 0, span: end });
      }
      for (const s of slots.values()) {
        s.base = next;
        next += Math.ceil(s.span / SLOT_ALIGN) * SLOT_ALIGN;
        if (!Number.isSafeInteger(next) || next > limit) {
          throw new VhostUserError('memory', `guest memory (${next - this.hot.guestBase} bytes) does not fit the ${this.hot.guestBytes}-byte guest area; size the HotMemory to the VM's RAM`);
        }
      }
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
      this.unmapAll();
      for (let i = 0; i < regions.length; i++) {
        n.mapFileOver(this.hot.memory.buffer, regions[i].offset, regions[i].size, fds[i], Number(table[i].mmapOffset));
        this.mapped.push({ offset: regions[i].offset, length: regions[i].size });
      }
      this.regions = regions;
      return regions;
    } finally {
      for (const fd of fds) {
        try { n.closeFd(fd); } catch { /* already closed */ }
      }
    }
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
    this.regions = [];
  }
}
