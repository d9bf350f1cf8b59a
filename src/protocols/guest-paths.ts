/**
 * Guest paths the host and the agent agree on for volumes and shared
 * container roots (Kata's `kataShared`): the sandbox-wide virtio-fs share
 * that carries every container's bind-mount sources and, with virtio-fs
 * rootfs sharing, every container's root filesystem
 * (SHARED_GUEST_DIR/<container id>/rootfs), and the pod's /dev/shm. The host
 * rewrites a container's bind mounts to sources under SHARED_GUEST_DIR; the
 * agent keeps exactly those (any other host path means nothing in the guest).
 */

/** virtio-fs mount tag of the sandbox-wide volume share (≤ 36 bytes, virtio 1.2 §5.11.4). */
export const SHARED_FS_TAG = 'kataShared';

/** Where the agent mounts the volume share, once per sandbox. */
export const SHARED_GUEST_DIR = '/run/kata-ts/shared';

/** Name of a container's root filesystem in its directory of the share (volumes are `<n>-<name>`: never this). */
export const SHARED_ROOTFS_NAME = 'rootfs';

/**
 * Where a container's root filesystem is in the guest when it comes through
 * the sandbox share (Kata: /run/kata-containers/shared/containers/<id>/rootfs):
 * no storage of its own, the share is mounted once for the sandbox.
 */
export function sharedRootfsGuestPath(containerId: string): string {
  return `${SHARED_GUEST_DIR}/${containerId}/${SHARED_ROOTFS_NAME}`;
}

/** The pod's /dev/shm: one guest tmpfs shared by every container of the sandbox. */
export const SANDBOX_SHM_GUEST_DIR = '/run/kata-ts/sandbox/shm';

/** True when `p` is SHARED_GUEST_DIR or below it, with no `.`/`..` component. */
export function underSharedGuestDir(p: string): boolean {
  if (!p.startsWith(SHARED_GUEST_DIR + '/')) return false;
  return p.split('/').every((c) => c !== '..' && c !== '.');
}

/**
 * Where the agent mounts a direct-assigned volume (kata-ctl direct-volume):
 * <dir>/<base64url of the host volume path>, a blk Storage's mount point.
 * Container bind mounts may name these sources, and GetVolumeStats /
 * ResizeVolume accept only these paths.
 */
export const DIRECT_VOLUME_GUEST_DIR = '/run/kata-ts/sandbox/direct-volumes';

/** True when `p` is one direct volume's mount point (one component below DIRECT_VOLUME_GUEST_DIR). */
export function isDirectVolumeGuestPath(p: string): boolean {
  if (!p.startsWith(DIRECT_VOLUME_GUEST_DIR + '/')) return false;
  const rest = p.slice(DIRECT_VOLUME_GUEST_DIR.length + 1);
  return /^[A-Za-z0-9_=-]+$/.test(rest);
}
