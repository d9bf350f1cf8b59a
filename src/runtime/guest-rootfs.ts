/**
 * The default container rootfs inside the guest image (issue 16, cold
 * path). guest/image/build.sh builds the default busybox rootfs at
 * <cache_dir>/rootfs/busybox and puts the same tree into the guest image at
 * /opt/kata-ts/rootfs/busybox, writing that path into `default-rootfs.guest`
 * beside the image. A container whose rootfs is that host directory, on the
 * EROFS path (`kata-ts run` without --rootfs, --bundle or --image), then
 * needs no disk: the agent puts a tmpfs overlay over the guest's copy, as it
 * does over a rootfs disk. That saves, per run, the EROFS image built on the
 * host before QEMU starts, a vhost-user-blk device (its backend, the
 * vhost-user handshakes, SeaBIOS's and the kernel's probe of it), the
 * agent's wait for it and its mount, and for a template clone the disk's
 * hotplug. An image built before the copy existed has no marker: the disk
 * is used as before.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Config } from './config';
import { guestAssets } from './config';

/** The file beside the guest image that names the guest's copy of the default rootfs. */
export const GUEST_ROOTFS_MARKER = 'default-rootfs.guest';
/** Where in the guest image such copies may be (the marker's content is checked against it). */
const GUEST_ROOTFS_RE = /^\/opt\/kata-ts\/rootfs\/[a-z0-9][a-z0-9._-]*$/;

/** The host's default container rootfs (kata-ts run without --rootfs). */
export function defaultRootfsDir(cfg: Config): string {
  return path.join(cfg.runtime.cache_dir, 'rootfs', 'busybox');
}

/**
 * The guest path of `rootfs` when it is the default rootfs and the guest
 * image `which` boots carries a copy of it; else undefined (use a disk).
 */
export function guestCopyOfRootfs(cfg: Config, which: 'qemu' | 'builtin', rootfs: string): string | undefined {
  if (!rootfs || path.resolve(rootfs) !== defaultRootfsDir(cfg)) return undefined;
  let named: string;
  try {
    named = fs.readFileSync(path.join(path.dirname(guestAssets(cfg, which).image), GUEST_ROOTFS_MARKER), 'utf8').trim();
  } catch {
    return undefined;
  }
  return GUEST_ROOTFS_RE.test(named) ? named : undefined;
}
