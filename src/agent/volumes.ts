/**
 * Direct-assigned volumes in the guest (kata-ctl direct-volume stats |
 * resize): GetVolumeStats answers statfs figures — bytes and inodes, Kata's
 * VolumeStatsResponse — for a volume the host had us mount, and
 * ResizeVolume grows its ext4 filesystem online after the host enlarged the
 * block device (QMP block_resize). The grow is the EXT4_IOC_RESIZE_FS ioctl
 * through the native addon, so the guest image needs no e2fsprogs.
 *
 * Only mount points under DIRECT_VOLUME_GUEST_DIR that the sandbox's storage
 * registry holds are accepted: these RPCs reach kata-ctl through the owner,
 * and must not become a way to statfs or resize anything else in the guest.
 */
import * as fs from 'node:fs/promises';
import { KataError } from '../common/errors';
import { native } from '../common/native';
import type { VolumeStatsResponse } from '../protocols/agent-api';
import { DIRECT_VOLUME_GUEST_DIR, isDirectVolumeGuestPath } from '../protocols/guest-paths';

export class VolumeError extends KataError<'not-found' | 'invalid' | 'failed-precondition'> {}

const EXT4_SUPER_MAGIC = 0xef53;
/** How long a resize waits for the guest kernel to see the new disk capacity (virtio config-change interrupt). */
export const CAPACITY_WAIT_MS = 10000;

/** Checks that `guestPath` is a direct volume this sandbox mounted. */
export function checkVolumePath(guestPath: string, mounted: readonly string[]): string {
  if (typeof guestPath !== 'string' || !isDirectVolumeGuestPath(guestPath)) {
    throw new VolumeError('invalid', `volume guest path ${JSON.stringify(guestPath)} is not under ${DIRECT_VOLUME_GUEST_DIR}`);
  }
  if (!mounted.includes(guestPath)) throw new VolumeError('not-found', `no direct volume is mounted at ${guestPath}`);
  return guestPath;
}

export async function volumeStats(guestPath: string, mounted: readonly string[]): Promise<VolumeStatsResponse> {
  checkVolumePath(guestPath, mounted);
  const s = await fs.statfs(guestPath);
  // A filesystem without an inode limit (EROFS reports all-ones) has no
  // meaningful inode figures: report zeros rather than 2^64 rounded.
  const inodesKnown = Number.isSafeInteger(s.files) && Number.isSafeInteger(s.ffree);
  return {
    usage: [
      { unit: 'BYTES', total: s.blocks * s.bsize, available: s.bavail * s.bsize, used: (s.blocks - s.bfree) * s.bsize },
      { unit: 'INODES', total: inodesKnown ? s.files : 0, available: inodesKnown ? s.ffree : 0, used: inodesKnown ? s.files - s.ffree : 0 },
    ],
    volume_condition: { abnormal: false, message: '' },
  };
}

/** Size in bytes of the block device holding `p`, from sysfs (512-byte sectors). */
async function deviceBytes(p: string): Promise<number> {
  const dev = (await fs.stat(p)).dev;
  // Linux dev_t: major = bits 8..19 (+ high bits), minor = bits 0..7 and 20..31.
  const major = ((dev >> 8) & 0xfff) >>> 0;
  const minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) >>> 0;
  const sectors = Number((await fs.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim());
  if (!Number.isFinite(sectors)) throw new VolumeError('failed-precondition', `cannot read the size of block device ${major}:${minor}`);
  return sectors * 512;
}

/**
 * Grows the ext4 filesystem at `guestPath` to `size` bytes of its device.
 * Waits for the kernel to see the device's new capacity first; refuses a
 * shrink (ext4 cannot shrink online) and other filesystems.
 */
export async function resizeVolume(guestPath: string, size: number, mounted: readonly string[], waitMs = CAPACITY_WAIT_MS): Promise<void> {
  checkVolumePath(guestPath, mounted);
  if (!Number.isSafeInteger(size) || size <= 0) throw new VolumeError('invalid', `resize ${guestPath}: size ${size} is not a positive byte count`);
  const s = await fs.statfs(guestPath);
  if (s.type !== EXT4_SUPER_MAGIC) throw new VolumeError('failed-precondition', `resize ${guestPath}: only ext4 grows online (filesystem magic 0x${s.type.toString(16)})`);
  const blocks = Math.floor(size / s.bsize);
  if (blocks < s.blocks) throw new VolumeError('invalid', `resize ${guestPath}: ${size} bytes is smaller than the filesystem (${s.blocks * s.bsize}); ext4 cannot shrink online`);
  for (const deadline = Date.now() + waitMs; ; ) {
    const have = await deviceBytes(guestPath);
    if (have >= blocks * s.bsize) break;
    if (Date.now() > deadline) throw new VolumeError('failed-precondition', `resize ${guestPath}: the disk still has ${have} bytes, not ${size} (was it enlarged on the host?)`);
    await new Promise((r) => setTimeout(r, 50));
  }
  if (blocks === s.blocks) return;
  const n = native();
  if (!n.ext4ResizeFs) throw new VolumeError('failed-precondition', 'the guest\'s native addon has no ext4ResizeFs (rebuild native/ and the guest image)');
  try {
    n.ext4ResizeFs(guestPath, blocks);
  } catch (err) {
    throw new VolumeError('failed-precondition', `resize ${guestPath}: ${(err as Error).message}`, { cause: err });
  }
}
