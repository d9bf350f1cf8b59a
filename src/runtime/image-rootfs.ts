/**
 * A container rootfs from a converted image (src/image, issue 12) instead of
 * a per-container mkfs.erofs: two read-only virtio-blk disks —
 *   meta  the image's EROFS metadata (images/<id>/meta.erofs, a plain file);
 *   blob  the image's blob device (EROFS device 1), whose bytes our
 *         virtio-blk device computes per read (src/image/blob-device.ts:
 *         chunk table → stored chunk → WASM LZ4 → sha256 check; missing
 *         chunks fetched lazily from `[image] registry_url`);
 * both attached through the sandbox's device manager, which knows their PCI
 * paths; the agent waits for the meta disk at its PCI path (the storage's
 * source) and mounts EROFS from it with `device=` the blob disk, found by
 * its PCI path too (`device-pci=`, src/agent/storage.ts; the builtin VMM's
 * virtio-mmio disks have none and are named by serial), with a tmpfs overlay for writes,
 * as the per-container EROFS path does. Nothing is converted or written per
 * container: a second container from the same image reads the same store.
 *
 * Also resolves an image for `kata-ts run --image SOURCE|ID` (convert on
 * first use) and turns its OCI config (entrypoint/cmd/env/cwd/user) into
 * the process to run.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { KataError } from '../common/errors';
import type { DiskDevice } from '../hypervisor/hypervisor';
import { BlobDevice } from '../image/blob-device';
import { convertImage } from '../image/convert';
import type { ContainerdOptions } from '../image/oci-source';
import { resolveImage } from '../image/gc';
import { acquireImageUse } from '../image/in-use';
import { LazySource } from '../image/lazy-source';
import { imageIdHex, metaPath, readImage, type ImageRecord } from '../image/store';
import type { Storage } from '../protocols/agent-api';
import type { Config } from './config';
import { logger } from '../common/log';
import { errorMessage } from '../common/errors';

export class ImageRootfsError extends KataError<'not-found' | 'config' | 'usage'> {}

/** Serials of a container's two image disks (virtio-blk serials are ≤ 20 bytes). */
export function imageDiskIds(containerId: string): { meta: string; blob: string } {
  const h = crypto.createHash('sha256').update(containerId).digest('hex').slice(0, 18);
  return { meta: `im${h}`, blob: `ib${h}` };
}

export interface ImageDisks {
  record: ImageRecord;
  disks: [DiskDevice, DiskDevice];
  device: BlobDevice;
}

/** The lazy source `[image] registry_url`/`registry_name` describe, if any. */
export function lazySourceFor(cfg: Config): LazySource | undefined {
  const { registry_url: url, registry_name: name, fetch_timeout: t } = cfg.image;
  if (!url) return undefined;
  if (!name) throw new ImageRootfsError('config', '[image] registry_url is set but registry_name is empty');
  return new LazySource({ baseUrl: url, name, stallMs: t * 1000 });
}

/**
 * Opens a converted image's two disks for one container, holding a use
 * record (src/image/in-use.ts) until the blob device closes, so that
 * `kata-ctl image rm|gc` leave the image alone meanwhile.
 */
export function openImageDisks(cfg: Config, containerId: string, imageId: string, sandboxId = '-'): ImageDisks {
  const root = cfg.image.store_dir;
  const record = readImage(root, imageId);
  const hex = imageIdHex(record.id);
  const meta = metaPath(root, hex);
  // Record first, then check the image is still listed: rm does the reverse (in-use.ts).
  const use = acquireImageUse(root, record.id, sandboxId, containerId);
  let device: BlobDevice;
  try {
    if (!fs.existsSync(meta)) throw new ImageRootfsError('not-found', `image ${record.id}: ${meta} is missing (removed?)`);
    device = new BlobDevice({ root, imageId: record.id, lazy: lazySourceFor(cfg), cacheBytes: cfg.image.chunk_cache_mib << 20 });
  } catch (err) { use.release(); throw err; }
  const close = device.close.bind(device);
  device.close = () => { try { close(); } finally { use.release(); } };
  const ids = imageDiskIds(containerId);
  return {
    record, device,
    disks: [
      { id: ids.meta, path: meta, readonly: true },
      { id: ids.blob, path: `blob-device:${record.id}`, readonly: true, backend: device },
    ],
  };
}

/**
 * The agent storages: EROFS (meta disk + blob device) at `lower`, an overlay
 * at `root`. `pciPathOf` answers where the device manager put each disk: the
 * agent finds them there; a disk without one (virtio-mmio) by its serial.
 */
export function imageStorages(containerId: string, lower: string, root: string, pciPathOf: (diskId: string) => string | undefined): Storage[] {
  const ids = imageDiskIds(containerId);
  const blobPci = pciPathOf(ids.blob);
  return [
    { driver: 'blk', source: pciPathOf(ids.meta) ?? ids.meta, fstype: 'erofs', options: ['ro', blobPci ? `device-pci=${blobPci}` : `device-serial=${ids.blob}`], mount_point: lower },
    { driver: 'overlay', source: 'overlay', fstype: 'overlay', options: [`lowerdir=${lower}`], mount_point: root },
  ];
}

/**
 * `--image SOURCE|ID`: an image already in the store (by id, id prefix or a
 * reference it was converted from), else SOURCE converted now (once; later
 * runs hit the store).
 */
export async function findOrConvertImage(cfg: Config, ref: string, opts: { progress?: boolean } = {}): Promise<{ record: ImageRecord; converted: boolean }> {
  const root = cfg.image.store_dir;
  try {
    return { record: resolveImage(root, ref), converted: false };
  } catch (err) {
    if (!(err instanceof KataError && err.kind === 'not-found')) throw err;
  }
  const r = await convertImage(ref, { store: root, progress: opts.progress });
  return { record: r.record, converted: !r.cached };
}

/**
 * The command an image runs when none is given: entrypoint + cmd (a given
 * command replaces cmd, as `docker run IMAGE CMD`), its env and cwd.
 */
export function imageProcess(rec: ImageRecord, command: string[]): { args: string[]; env: string[]; cwd: string; user: string } {
  const c = rec.config;
  const args = [...c.entrypoint, ...(command.length ? command : c.cmd)];
  if (!args.length) throw new ImageRootfsError('usage', `image ${rec.id} has no entrypoint or cmd: give a command (kata-ts run --image ID -- CMD)`);
  return { args, env: c.env, cwd: c.cwd || '/', user: c.user };
}

/** Annotation naming the converted image a containerd container runs from (`ctr run --annotation io.kata-ts.image=REF`). */
export const IMAGE_ANNOTATION = 'io.kata-ts.image';
/** What containerd's CRI plugin puts on every container: the image reference the pod spec named. */
export const CRI_IMAGE_NAME_ANNOTATION = 'io.kubernetes.cri.image-name';

/**
 * The shim's choice for a containerd container (README "containerd and
 * converted images"): the converted image named by IMAGE_ANNOTATION (an
 * error if it cannot be found or converted: it was asked for), else, with
 * `[image] containerd_images = true`, the one CRI's image-name annotation
 * names — found in the store by reference, or converted now from
 * containerd's content store (`containerd:REF`, the shim's namespace) —
 * falling back to the snapshot (undefined, one warning) when that fails.
 * Keyed by the manifest digest: the same image converts once, whatever
 * containers and pods use it.
 */
export async function imageForContainer(cfg: Config, annotations: Record<string, string> | undefined, ctrd: ContainerdOptions): Promise<string | undefined> {
  const explicit = annotations?.[IMAGE_ANNOTATION];
  const cri = annotations?.[CRI_IMAGE_NAME_ANNOTATION];
  const ref = explicit || (cfg.image.containerd_images ? cri : undefined);
  if (!ref) return undefined;
  const root = cfg.image.store_dir;
  try {
    try {
      return resolveImage(root, ref).id;
    } catch (err) {
      if (!(err instanceof KataError && err.kind === 'not-found')) throw err;
    }
    const source = ref.startsWith('containerd:') || ref.startsWith('/') ? ref : `containerd:${ref}`;
    const r = await convertImage(source, { store: root, progress: false, containerd: { ...ctrd, contentDir: ctrd.contentDir ?? (cfg.image.containerd_content_dir || undefined) } });
    return r.id;
  } catch (err) {
    if (explicit) throw new ImageRootfsError('not-found', `${IMAGE_ANNOTATION}=${explicit}: ${errorMessage(err)}`, { cause: err });
    logger('image-rootfs').warn('no converted image for this container; sharing containerd\'s snapshot instead', { image: ref, err: errorMessage(err) });
    return undefined;
  }
}
