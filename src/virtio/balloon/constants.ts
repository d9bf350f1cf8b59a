/**
 * virtio-balloon (virtio 1.2 §5.5, "Traditional Memory Balloon Device"):
 * feature bits, the config layout, statistics tags and the device's error
 * class. Names follow the spec and Linux's include/uapi/linux/virtio_balloon.h.
 */
import { KataError } from '../../common/errors';

export type BalloonErrorKind = 'config' | 'malformed' | 'unavailable';
export class BalloonError extends KataError<BalloonErrorKind> {}

/** §5.5.3 feature bits. */
export const VIRTIO_BALLOON_F_MUST_TELL_HOST = 1n << 0n;
export const VIRTIO_BALLOON_F_STATS_VQ = 1n << 1n;
export const VIRTIO_BALLOON_F_DEFLATE_ON_OOM = 1n << 2n;
export const VIRTIO_BALLOON_F_FREE_PAGE_HINT = 1n << 3n;
export const VIRTIO_BALLOON_F_PAGE_POISON = 1n << 4n;
export const VIRTIO_BALLOON_F_PAGE_REPORTING = 1n << 5n;

/** §5.5.6: inflate/deflate buffers are arrays of le32 page frame numbers of 4 KiB pages. */
export const VIRTIO_BALLOON_PFN_SHIFT = 12n;
export const BALLOON_PAGE = 4096;

/**
 * §5.5.4 struct virtio_balloon_config: le32 num_pages (device: the pages it
 * wants in the balloon), le32 actual (driver: the pages in it now), then
 * free_page_hint_cmd_id and poison_val (features we do not offer; read as 0).
 */
export const CONFIG_NUM_PAGES = 0;
export const CONFIG_ACTUAL = 4;
export const CONFIG_SIZE = 16;

/** The queues the device has, in the order Linux and QEMU number them. */
export type BalloonQueue = 'inflate' | 'deflate' | 'stats' | 'reporting';

/**
 * Queue index → role for the negotiated features. §5.5.2 lists inflateq 0,
 * deflateq 1, statsq 2, free_page_vq 3, reporting_vq 4, each optional queue
 * present only with its feature; Linux (virtballoon init_vqs, a NULL name
 * takes no index) and QEMU (virtio_add_queue in order) number the queues
 * that exist consecutively, and a device must match the drivers that exist.
 * We never offer FREE_PAGE_HINT, so the reporting queue is 3 with STATS_VQ
 * and 2 without.
 */
export function queueRoles(features: bigint): BalloonQueue[] {
  const roles: BalloonQueue[] = ['inflate', 'deflate'];
  if (features & VIRTIO_BALLOON_F_STATS_VQ) roles.push('stats');
  if (features & VIRTIO_BALLOON_F_PAGE_REPORTING) roles.push('reporting');
  return roles;
}

/**
 * §5.5.6.3 statistics tags, named as QEMU's guest-stats (so kata-ctl balloon
 * prints the same keys for both VMMs). Linux 6.x adds tags after 9 (OOM
 * kills, allocation stalls, scan/reclaim counters); they are kept by number.
 */
export const STAT_NAMES: Readonly<Record<number, string>> = {
  0: 'stat-swap-in',
  1: 'stat-swap-out',
  2: 'stat-major-faults',
  3: 'stat-minor-faults',
  4: 'stat-free-memory',
  5: 'stat-total-memory',
  6: 'stat-available-memory',
  7: 'stat-disk-caches',
  8: 'stat-htlb-pgalloc',
  9: 'stat-htlb-pgfail',
  10: 'stat-oom-kills',
  11: 'stat-alloc-stalls',
  12: 'stat-async-scans',
  13: 'stat-direct-scans',
  14: 'stat-async-reclaims',
  15: 'stat-direct-reclaims',
};
/** Tags whose value is a byte count of guest memory (bounded by the VM's RAM). */
export const STAT_BYTE_TAGS: ReadonlySet<number> = new Set([4, 5, 6, 7]);
/** §5.5.6.3 struct virtio_balloon_stat { le16 tag; le64 val; } (packed). */
export const STAT_ENTRY_BYTES = 10;
