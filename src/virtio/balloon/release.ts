/**
 * Giving guest pages back to the host: the one place the balloon device's
 * decisions become madvise(2) calls on guest RAM (the page ranges the guest
 * inflated or reported, virtio 1.2 §5.5.6 and §5.5.6.7).
 *
 * Which call depends on what backs the guest RAM area of the hot-path
 * WebAssembly.Memory (src/vmm/kvm/vm.ts):
 *   - 'shared-memfd' (a cold-booted builtin VM; ARCHITECTURE decision 1):
 *     MADV_DONTNEED on a MAP_SHARED mapping only drops this process's page
 *     table entries; the pages stay in the memfd. MADV_REMOVE frees them
 *     (for shmem it is fallocate(PUNCH_HOLE) on the range); the next guest
 *     access reads a fresh zero page.
 *   - 'anonymous' (private anonymous RAM: the WASM Memory's own pages, used
 *     when KSM is on, and in tests): MADV_DONTNEED frees the pages; the next
 *     access is a zero page.
 *   - 'private-file' (a VM restored from a snapshot maps memory.bin
 *     MAP_PRIVATE, copy-on-write): MADV_DONTNEED drops the private copies
 *     the guest wrote; the next access reads the snapshot file's page again
 *     (shared page cache, not a new anonymous page). MADV_REMOVE would fail
 *     (EACCES needs a shared writable mapping) and must not touch the file.
 * Either way the guest may not rely on the content of a page it gave away
 * (without VIRTIO_BALLOON_F_PAGE_POISON, which we do not offer).
 *
 * Safety: every range is checked to lie inside ONE guest region of the
 * Memory and to be 4 KiB aligned before the syscall; anything else is
 * refused (counted by the caller), never advised. The addon is reached
 * through the typed facade (src/common/native.ts) so tests substitute it.
 */
import { native } from '../../common/native';
import type { HotMemory } from '../../hot/memory';
import { BALLOON_PAGE, BalloonError } from './constants';

export type RamBacking = 'shared-memfd' | 'anonymous' | 'private-file';
export type Madvice = 'dontneed' | 'remove' | 'mergeable' | 'unmergeable';

/** The addon call the releaser makes (native().madvise), substitutable in tests. */
export type MadviseFn = (buffer: ArrayBuffer, offset: number, length: number, advice: Madvice) => void;

export function adviceFor(backing: RamBacking): Madvice {
  return backing === 'shared-memfd' ? 'remove' : 'dontneed';
}

export function nativeMadvise(): MadviseFn {
  const n = native();
  if (!n.madvise) throw new BalloonError('unavailable', 'the native addon has no madvise (rebuild it: cd native && npx node-gyp rebuild)');
  return n.madvise.bind(n);
}

/** Whether [offset, offset+length) of the Memory lies inside one guest region, page aligned. */
export function insideOneRegion(hot: HotMemory, offset: number, length: number): boolean {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || length <= 0) return false;
  if (offset % BALLOON_PAGE !== 0 || length % BALLOON_PAGE !== 0) return false;
  return hot.guestRegions.some((r) => offset >= r.offset && offset + length <= r.offset + r.size);
}

export class GuestRamReleaser {
  /** Bytes given back and madvise calls made (metrics). */
  releasedBytes = 0;
  calls = 0;

  constructor(
    private readonly hot: HotMemory,
    private readonly backing: () => RamBacking,
    private readonly madvise: MadviseFn = nativeMadvise(),
  ) {}

  /**
   * Gives [offset, offset+length) of the Memory back to the host. Throws
   * BalloonError 'malformed' (nothing advised) for a range outside one guest
   * region or not page aligned; a failing syscall throws its error.
   */
  release(offset: number, length: number): void {
    if (!insideOneRegion(this.hot, offset, length)) {
      throw new BalloonError('malformed', `range [0x${offset.toString(16)}, +0x${length.toString(16)}) is not page-aligned guest RAM of one region`);
    }
    this.madvise(this.hot.memory.buffer, offset, length, adviceFor(this.backing()));
    this.calls++;
    this.releasedBytes += length;
  }
}
