/**
 * Direct-assigned volumes (Kata's `kata-ctl direct-volume`, design doc
 * "direct-blk-assigned volume"): an operator registers a block volume — a
 * host block device or an image file — under the host path a container will
 * name as a mount source; the runtime then hotplugs that device into the VM
 * and the agent mounts it inside instead of sharing the path over virtio-fs.
 *
 * On-disk layout, as Kata's:
 *   <root>/<base64url(volume path)>/mountInfo.json   the registration
 *   <root>/<base64url(volume path)>/<sandbox id>     empty file: who uses it
 * with <root> = /run/kata-containers/shared/direct-volumes by default
 * (KATA_TS_DIRECT_VOLUMES_ROOT overrides it, for tests). Go's
 * base64.URLEncoding (URL alphabet, with padding) names the directory.
 *
 * This module owns only parsing, validation and the store; it never talks
 * to a VM. Every bad input is one DirectVolumeError and leaves nothing on disk.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError } from '../../common/errors';
import { splitDev } from '../../common/devnum';

export class DirectVolumeError extends KataError<'invalid' | 'not-found' | 'exists' | 'in-use'> {}

export const DEFAULT_DIRECT_VOLUMES_ROOT = '/run/kata-containers/shared/direct-volumes';
export const MOUNT_INFO_FILE = 'mountInfo.json';

/** Kata's MountInfo (src/runtime/pkg/direct-volume): field names as in its JSON. */
export interface MountInfo {
  'volume-type': string;
  device: string;
  fstype: string;
  metadata: Record<string, string>;
  options: string[];
}

/** Filesystems the guest kernel can mount from a block volume (guest/kernel config). */
const GUEST_FSTYPES = new Set(['ext4', 'erofs']);
/** Mount options we pass through; anything else could change what the guest exposes. */
const OPTION_RE = /^(ro|rw|noatime|relatime|nodiratime|nosuid|nodev|noexec|sync|discard|nodiscard|data=(ordered|writeback|journal)|errors=(continue|remount-ro|panic))$/;

export function directVolumesRoot(env: NodeJS.ProcessEnv = process.env): string {
  return env.KATA_TS_DIRECT_VOLUMES_ROOT || DEFAULT_DIRECT_VOLUMES_ROOT;
}

/** Go's base64.URLEncoding of the volume path. */
export function encodeVolumePath(volumePath: string): string {
  return Buffer.from(volumePath, 'utf8').toString('base64').replace(/\+/g, '-').replace(/\//g, '_');
}

function checkVolumePath(volumePath: string): void {
  if (typeof volumePath !== 'string' || !path.isAbsolute(volumePath) || volumePath.split('/').includes('..')) {
    throw new DirectVolumeError('invalid', `volume path ${JSON.stringify(volumePath)} must be absolute, without ".."`);
  }
}

/**
 * Parses and validates a mountInfo JSON text. `checkDevice` (default on)
 * also requires the device to exist on this host as a block device or file.
 */
export function parseMountInfo(text: string, checkDevice = true): MountInfo {
  let raw: unknown;
  try { raw = JSON.parse(text); } catch (err) {
    throw new DirectVolumeError('invalid', `mount info is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new DirectVolumeError('invalid', 'mount info must be a JSON object');
  const o = raw as Record<string, unknown>;
  const known = new Set(['volume-type', 'device', 'fstype', 'metadata', 'options']);
  for (const k of Object.keys(o)) if (!known.has(k)) throw new DirectVolumeError('invalid', `mount info: unknown field "${k}"`);
  const vt = o['volume-type'] ?? 'block';
  if (vt !== 'block') throw new DirectVolumeError('invalid', `mount info: volume-type ${JSON.stringify(vt)} is not supported (only "block")`);
  if (typeof o.device !== 'string' || !path.isAbsolute(o.device)) throw new DirectVolumeError('invalid', `mount info: device ${JSON.stringify(o.device)} must be an absolute host path`);
  if (typeof o.fstype !== 'string' || !GUEST_FSTYPES.has(o.fstype)) {
    throw new DirectVolumeError('invalid', `mount info: fstype ${JSON.stringify(o.fstype)} is not one the guest mounts (${[...GUEST_FSTYPES].join(', ')})`);
  }
  const metadata = o.metadata ?? {};
  if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata) || Object.values(metadata).some((v) => typeof v !== 'string')) {
    throw new DirectVolumeError('invalid', 'mount info: metadata must be an object of strings');
  }
  const options = o.options ?? [];
  if (!Array.isArray(options) || options.some((x) => typeof x !== 'string')) throw new DirectVolumeError('invalid', 'mount info: options must be an array of strings');
  for (const opt of options as string[]) if (!OPTION_RE.test(opt)) throw new DirectVolumeError('invalid', `mount info: mount option "${opt}" is not allowed`);
  if (checkDevice) {
    let st: fs.Stats;
    try { st = fs.statSync(o.device); } catch { throw new DirectVolumeError('invalid', `mount info: device ${o.device} does not exist`); }
    if (!st.isBlockDevice() && !st.isFile()) throw new DirectVolumeError('invalid', `mount info: device ${o.device} is neither a block device nor an image file`);
  }
  return { 'volume-type': 'block', device: o.device, fstype: o.fstype, metadata: metadata as Record<string, string>, options: options as string[] };
}

/**
 * Bytes of a volume's device now: an image file's size, or a host block
 * device's from /sys/dev/block (fstat says 0 for those). Resize compares
 * against it so that a smaller size is refused before anything changes.
 */
export function volumeDeviceBytes(device: string): number {
  let st: fs.BigIntStats;
  try { st = fs.statSync(device, { bigint: true }); } catch { throw new DirectVolumeError('not-found', `volume device ${device} does not exist`); }
  if (!st.isBlockDevice()) return Number(st.size);
  const { major, minor } = splitDev(st.rdev);
  return Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim()) * 512;
}

/** The registered direct volumes under one root. */
export class DirectVolumeStore {
  constructor(readonly root: string = directVolumesRoot()) {}

  dirOf(volumePath: string): string {
    checkVolumePath(volumePath);
    return path.join(this.root, encodeVolumePath(volumePath));
  }

  /** Registers a volume; refuses one already registered. Nothing is written on error. */
  add(volumePath: string, mountInfoJson: string): MountInfo {
    const dir = this.dirOf(volumePath);
    const info = parseMountInfo(mountInfoJson);
    if (fs.existsSync(path.join(dir, MOUNT_INFO_FILE))) throw new DirectVolumeError('exists', `direct volume ${volumePath} is already registered`);
    fs.mkdirSync(this.root, { recursive: true, mode: 0o700 });
    const created = !fs.existsSync(dir);
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      // Write-then-rename: a reader never sees half a file.
      const tmp = path.join(dir, `.${MOUNT_INFO_FILE}.tmp`);
      fs.writeFileSync(tmp, JSON.stringify(info), { mode: 0o600 });
      fs.renameSync(tmp, path.join(dir, MOUNT_INFO_FILE));
    } catch (err) {
      if (created) fs.rmSync(dir, { recursive: true, force: true });
      throw new DirectVolumeError('invalid', `cannot register ${volumePath} under ${this.root}: ${(err as Error).message}`, { cause: err });
    }
    return info;
  }

  /** The registration of a volume path, or undefined when it is not a direct volume. */
  get(volumePath: string): MountInfo | undefined {
    let text: string;
    try { text = fs.readFileSync(path.join(this.dirOf(volumePath), MOUNT_INFO_FILE), 'utf8'); } catch { return undefined; }
    try {
      return parseMountInfo(text, false);
    } catch (err) {
      throw new DirectVolumeError('invalid', `direct volume ${volumePath}: stored ${MOUNT_INFO_FILE} is bad: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Like get, but an unregistered path is one error. */
  require(volumePath: string): MountInfo {
    const info = this.get(volumePath);
    if (!info) throw new DirectVolumeError('not-found', `${volumePath} is not a registered direct volume`);
    return info;
  }

  /** Sandbox ids recorded as using the volume. */
  sandboxesOf(volumePath: string): string[] {
    let names: string[];
    try { names = fs.readdirSync(this.dirOf(volumePath)); } catch { return []; }
    return names.filter((n) => n !== MOUNT_INFO_FILE && !n.startsWith('.')).sort();
  }

  /** Records that `sandboxId` uses the volume (Kata: an empty file named by the id). */
  recordSandbox(volumePath: string, sandboxId: string): void {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(sandboxId)) throw new DirectVolumeError('invalid', `bad sandbox id "${sandboxId}"`);
    this.require(volumePath);
    fs.writeFileSync(path.join(this.dirOf(volumePath), sandboxId), '', { mode: 0o600 });
  }

  forgetSandbox(volumePath: string, sandboxId: string): void {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(sandboxId)) return;
    fs.rmSync(path.join(this.dirOf(volumePath), sandboxId), { force: true });
  }

  /**
   * Unregisters a volume. Refuses while a sandbox whose id `isLive` accepts
   * still uses it; records of sandboxes that are gone are dropped.
   */
  remove(volumePath: string, isLive: (sandboxId: string) => boolean): void {
    this.require(volumePath);
    const users = this.sandboxesOf(volumePath).filter(isLive);
    if (users.length) throw new DirectVolumeError('in-use', `direct volume ${volumePath} is in use by sandbox ${users.join(', ')}`);
    fs.rmSync(this.dirOf(volumePath), { recursive: true, force: true });
  }
}
