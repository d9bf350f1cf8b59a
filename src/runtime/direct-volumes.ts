/**
 * A sandbox's direct-assigned volumes (kata-ctl direct-volume; registry in
 * src/resource/volumes/direct-volume.ts). A container mount whose source is a
 * registered volume path is not shared through virtio-fs: its block device
 * (host block device or image file) is hotplugged through the device manager,
 * held by the container, and the agent mounts it (fstype and options from
 * mountInfo.json) at DIRECT_VOLUME_GUEST_DIR/<base64url(volume path)>; the
 * container's mount becomes a bind of that guest path. Containers naming the
 * same volume share the disk (the manager counts holders) and the guest
 * mount (the agent's storage registry counts mount points).
 *
 * The sandbox id is recorded in the volume's directory while a container
 * uses it, so kata-ctl finds the owner for stats/resize and `remove` refuses.
 *
 * Limit: direct mounts are appended after the container's other mounts
 * (a shared-fs mount nested below a direct volume's destination would be
 * hidden by it).
 */
import * as crypto from 'node:crypto';
import type { OciMount, OciSpec } from '../protocols/oci';
import type { Storage } from '../protocols/agent-api';
import { DIRECT_VOLUME_GUEST_DIR } from '../protocols/guest-paths';
import { DirectVolumeError, DirectVolumeStore, encodeVolumePath, volumeDeviceBytes, type MountInfo } from '../resource/volumes/direct-volume';
import type { DeviceManager, DeviceSpec } from '../resource/devices/device-manager';

export interface DirectMount {
  volumePath: string;
  info: MountInfo;
  disk: DeviceSpec & { kind: 'blk' };
  guestPath: string;
  mount: OciMount;
}

/** Disk id of a direct volume: ≤ 20 bytes (virtio-blk serial), the same for every container. */
export function directVolumeDiskId(volumePath: string): string {
  return 'dv' + crypto.createHash('sha256').update(volumePath).digest('hex').slice(0, 18);
}

export function directVolumeGuestPath(volumePath: string): string {
  return `${DIRECT_VOLUME_GUEST_DIR}/${encodeVolumePath(volumePath)}`;
}

function isBind(m: OciMount): boolean {
  return m.type === 'bind' || (m.options ?? []).includes('bind') || (m.options ?? []).includes('rbind');
}

/**
 * Splits a spec's mounts into the ordinary ones and those whose source is a
 * registered direct volume. Pure but for reading the store.
 */
export function planDirectMounts(mounts: OciMount[] | undefined, store: DirectVolumeStore): { rest: OciMount[] | undefined; direct: DirectMount[] } {
  if (!mounts?.length) return { rest: mounts, direct: [] };
  const rest: OciMount[] = [];
  const direct: DirectMount[] = [];
  for (const m of mounts) {
    const src = m.source;
    const info = isBind(m) && typeof src === 'string' && src.startsWith('/') && !src.split('/').includes('..') ? store.get(src) : undefined;
    if (!info || !src) { rest.push(m); continue; }
    // The disk is read-only when the volume is (mountInfo): containers
    // share one disk, so a container's own `ro` applies to its bind only.
    const diskRo = info.options.includes('ro');
    const ro = diskRo || (m.options ?? []).includes('ro');
    const guestPath = directVolumeGuestPath(src);
    // Bind options the runtime keeps; the mount's own fs options come from mountInfo.
    const keep = (m.options ?? []).filter((o) => ['nosuid', 'nodev', 'noexec', 'rprivate', 'private', 'rslave', 'slave'].includes(o));
    direct.push({
      volumePath: src, info, guestPath,
      disk: { kind: 'blk', id: directVolumeDiskId(src), path: info.device, readonly: diskRo },
      mount: { destination: m.destination, type: 'bind', source: guestPath, options: ['rbind', ro ? 'ro' : 'rw', ...keep] },
    });
  }
  return { rest, direct };
}

export class SandboxDirectVolumes {
  /** volume path → containers using it, and its disk/guest path. */
  private readonly users = new Map<string, { diskId: string; guestPath: string; containers: Set<string> }>();

  constructor(private readonly sandboxId: string, private readonly store: DirectVolumeStore, private readonly devices: DeviceManager) {}

  /**
   * Attaches the direct volumes `spec` names for container `id`: returns the
   * spec's other mounts, the translated direct mounts and the agent storages
   * (to go before the rootfs). Nothing stays attached or recorded on error.
   */
  async attach(id: string, spec: OciSpec): Promise<{ rest: OciMount[] | undefined; mounts: OciMount[]; storages: Storage[] }> {
    const plan = planDirectMounts(spec.mounts, this.store);
    if (!plan.direct.length) return { rest: spec.mounts, mounts: [], storages: [] };
    const storages: Storage[] = [];
    const taken: DirectMount[] = [];
    try {
      for (const d of plan.direct) {
        const att = await this.devices.attach(d.disk, id);
        taken.push(d);
        this.store.recordSandbox(d.volumePath, this.sandboxId);
        const u = this.users.get(d.volumePath) ?? { diskId: d.disk.id, guestPath: d.guestPath, containers: new Set<string>() };
        u.containers.add(id);
        this.users.set(d.volumePath, u);
        // Non-empty options: the agent mounts an option-less blk storage read-only (EROFS images).
        const opts = d.info.options.filter((o) => o !== 'ro' && o !== 'rw');
        storages.push({ driver: 'blk', source: att.pciPath ?? d.disk.id, fstype: d.info.fstype, options: [d.disk.readonly ? 'ro' : 'rw', ...opts], mount_point: d.guestPath });
      }
    } catch (err) {
      await this.release(id).catch(() => undefined);
      for (const d of taken) await this.devices.detach(d.disk.id, id).catch(() => undefined);
      throw err;
    }
    return { rest: plan.rest, mounts: plan.direct.map((d) => d.mount), storages };
  }

  /** Container `id` no longer uses its volumes (its disks are detached with its other devices). */
  async release(id: string): Promise<void> {
    for (const [vp, u] of this.users) {
      if (!u.containers.delete(id) || u.containers.size) continue;
      this.users.delete(vp);
      this.store.forgetSandbox(vp, this.sandboxId);
    }
  }

  /** The sandbox stops: forget every record. */
  async releaseAll(): Promise<void> {
    for (const vp of this.users.keys()) this.store.forgetSandbox(vp, this.sandboxId);
    this.users.clear();
  }

  /**
   * The disk behind a direct volume's guest path, for resize to `size`
   * bytes (when given): refused before anything changes when the volume's
   * device is bigger than that — shrinking would cut the tail off the
   * mounted filesystem (and QMP block_resize would do it).
   */
  diskOf(guestPath: string, size?: number): string {
    for (const [vp, u] of this.users) {
      if (u.guestPath !== guestPath) continue;
      if (size !== undefined) {
        const cur = volumeDeviceBytes(this.store.require(vp).device);
        if (size < cur) throw new DirectVolumeError('invalid', `resize ${vp}: ${size} bytes is smaller than its device (${cur} bytes); direct volumes only grow`);
      }
      return u.diskId;
    }
    throw new DirectVolumeError('not-found', `no direct volume of sandbox ${this.sandboxId} is mounted at ${guestPath}`);
  }
}
