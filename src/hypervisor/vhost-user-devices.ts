/**
 * The vhost-user devices a QEMU VM gets from this process: one
 * VhostUserBackend (src/vhost-user) per device, each serving one of our
 * device models — virtio-blk (src/virtio/blk, virtio 1.2 §5.2) for disks and
 * virtio-fs (src/virtio/fs, §5.11) for shared directories — on its own unix
 * socket. QEMU reaches a socket through a `socket` chardev, either on its
 * command line (boot devices) or added at run time with QMP `chardev-add`
 * before `device_add vhost-user-{blk,fs}-pci` (hotplug).
 *
 * Ordering matters for hotplug: the backend listens before the chardev is
 * added (QEMU connects at chardev-add and blocks in device_add's realize on
 * GET_FEATURES/GET_CONFIG replies, which this same event loop answers while
 * the QMP call is pending), and on removal the backend closes only after
 * QEMU reported DEVICE_DELETED and the chardev is gone, so the guest never
 * sees its device vanish under in-flight requests.
 *
 * A served disk grows online (kata-ctl direct-volume resize) without QMP:
 * resizeBlk grows our device and sends CONFIG_CHANGE_MSG on the vhost-user
 * back-end channel, and QEMU tells the guest.
 *
 * Kept apart from qemu.ts so the command-line and QMP code stay about QEMU,
 * and the lifetime of our in-process device servers is in one place.
 */
import * as path from 'node:path';
import { logger } from '../common/log';
import { errorMessage } from '../common/errors';
import { VhostUserBackend } from '../vhost-user/backend';
import { BlkDevice, type BlkBackend } from '../virtio/blk/device';
import { VirtioFsDevice } from '../virtio/fs/device';
import type { VirtioDevice } from '../virtio/device';

/** Queue size of vhost-user-fs rings (QEMU's default is 128; 1024 is its maximum). */
export const FS_QUEUE_SIZE = 1024;
/**
 * Queue size of vhost-user-blk rings: QEMU 7.2's default (128) would cap a
 * request at fewer segments than the seg_max our config space advertises
 * (queue size − 2) unless indirect descriptors are used; 256 matches.
 */
export const BLK_QUEUE_SIZE = 256;
/**
 * The largest ring our vhost-user devices accept: QEMU's virtio-mmio
 * transport (microvm) reports QueueNumMax = 1024 (VIRTQUEUE_MAX_SIZE)
 * whatever a vhost-user device's own size, and Linux sizes its rings at it.
 */
export const MMIO_QUEUE_MAX = 1024;

export interface ServedDevice {
  /** Key: the disk id or the fs tag. */
  key: string;
  kind: 'blk' | 'fs';
  /** Unix socket QEMU's chardev connects to. */
  socket: string;
  /** QEMU ids (chardev and device). */
  chardev: string;
  qdevId: string;
  backend: VhostUserBackend;
  device: VirtioDevice;
}

export class VhostUserDevices {
  private readonly served = new Map<string, ServedDevice>();
  private seq = 0;
  private readonly log = logger('vhost-user-devices');

  constructor(private readonly guestBytes: number) {}

  /**
   * Starts serving a file-backed virtio-blk disk (or, given `backend`, a
   * read-only computed one); `id` is its GET_ID serial.
   */
  addBlk(id: string, file: string, readonly: boolean, socket: string, backend?: BlkBackend): ServedDevice {
    // O_RDONLY for read-only images: a hostile driver's writes fail in the kernel too.
    // Up to 1024 accepted: virtio-mmio (microvm) front-ends size the ring at QEMU's VIRTQUEUE_MAX_SIZE.
    const device = new BlkDevice({ path: file, readonly, id, queueSize: BLK_QUEUE_SIZE, queueMaxSize: MMIO_QUEUE_MAX, backend });
    return this.serve(`blk:${id}`, 'blk', device, socket, `vub-${id}`, `dev-${id}`);
  }

  /** Starts serving a host directory as a virtio-fs share with mount tag `tag`. */
  addFs(tag: string, dir: string, socket: string, ids?: { chardev: string; qdevId: string }): ServedDevice {
    const device = new VirtioFsDevice({ tag, sharedDir: dir, queueSize: FS_QUEUE_SIZE });
    const n = this.seq++;
    return this.serve(`fs:${tag}`, 'fs', device, socket, ids?.chardev ?? `vuf-${n}`, ids?.qdevId ?? `fsdev-${n}`);
  }

  /** forgetDevice on a served share's FUSE server (0 when `tag` is not served). */
  forgetFsDevice(tag: string, dev: bigint): number {
    const s = this.served.get(`fs:${tag}`);
    return s ? (s.device as VirtioFsDevice).fs.forgetDevice(dev) : 0;
  }

  /**
   * Online resize of a served disk: checked first (the front end must have
   * opened the back-end channel and the guest started the device, or the
   * guest would never learn), then the device grows its file and capacity,
   * then CONFIG_CHANGE_MSG makes QEMU re-read the config and interrupt the
   * guest; resolves once QEMU acked. Bad input changes nothing.
   */
  async resizeBlk(id: string, bytes: number): Promise<void> {
    const s = this.served.get(`blk:${id}`);
    if (!s) throw new Error(`disk ${id} is not served by a vhost-user-blk backend`);
    const why = s.backend.configChangeBlocker();
    if (why) throw new Error(`disk ${id} cannot be resized now: ${why}`);
    (s.device as BlkDevice).grow(bytes);
    try {
      await s.backend.notifyConfigChange();
    } catch (err) {
      // Growth is not undone (the guest may read the config at any time); say what state we are in.
      throw new Error(`disk ${id} was grown to ${bytes} bytes, but the guest was not told: ${errorMessage(err)}`, { cause: err });
    }
    this.log.info('disk resized', { id, bytes });
  }

  get(kind: 'blk' | 'fs', key: string): ServedDevice | undefined {
    return this.served.get(`${kind}:${key}`);
  }

  /** Stops serving one device (after QEMU let go of it). */
  remove(kind: 'blk' | 'fs', key: string): void {
    const s = this.served.get(`${kind}:${key}`);
    if (!s) return;
    this.served.delete(`${kind}:${key}`);
    this.closeOne(s);
  }

  /** Stops every device. Idempotent. */
  closeAll(): void {
    for (const s of this.served.values()) this.closeOne(s);
    this.served.clear();
  }

  private serve(mapKey: string, kind: 'blk' | 'fs', device: VirtioDevice, socket: string, chardev: string, qdevId: string): ServedDevice {
    if (this.served.has(mapKey)) {
      void device.close?.();
      throw new Error(`${mapKey} is already served`);
    }
    const backend = new VhostUserBackend({ socketPath: socket, device, guestBytes: this.guestBytes, name: `${kind}:${path.basename(socket)}` });
    try {
      backend.listen();
    } catch (err) {
      void device.close?.();
      throw err;
    }
    const s: ServedDevice = { key: mapKey.slice(kind.length + 1), kind, socket, chardev, qdevId, backend, device };
    this.served.set(mapKey, s);
    return s;
  }

  private closeOne(s: ServedDevice): void {
    try {
      s.backend.close();
      void s.device.close?.();
    } catch (err) {
      this.log.warn('closing a device server failed', { key: s.key, err: errorMessage(err) });
    }
  }
}
