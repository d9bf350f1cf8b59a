/**
 * Mounts the storages a container's rootfs is made of (Kata's Storage):
 *   blk     — a virtio-blk disk found by its PCI path when the source is one
 *             ("0a", "02/00": Kata's form, from the host's device manager;
 *             pci-device.ts waits for it), else by its serial
 *             (/sys/block/vdX/serial; the builtin VMM's virtio-mmio disks),
 *             mounted read-only with the given fstype (EROFS images; a
 *             converted image's blob device named by `device-serial=`);
 *   overlay — a writable layer: tmpfs-backed upper/work dirs over lowerdir;
 *   virtiofs — a host directory shared by our virtio-fs device, found by its
 *             mount tag (virtio 1.2 §5.11.4) and mounted as it is: writes go
 *             straight to the host directory, as under runc;
 *   ephemeral — a tmpfs (the pod's /dev/shm).
 * Storages are counted by mount point across the sandbox, as Kata's agent
 * does: the volume share and the pod's shm, which every container with a
 * volume names, are mounted by the first and unmounted with the last.
 * The guest has no libmount in Node, so busybox `mount`/`umount` do the
 * syscalls; every mount is recorded so teardown can undo it in reverse.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Storage } from '../protocols/agent-api';
import { KataError } from '../common/errors';
import { PCI_PATH_RE, waitForPciBlockDevice } from './pci-device';

const execFileP = promisify(execFile);

/** A storage that cannot be mounted: kind 'failed-precondition' (the guest lacks what the host promised). */
/** How long a virtio-fs mount waits for its (hotplugged) device to be probed. */
export const VIRTIOFS_WAIT_MS = 10000;

export class StorageError extends KataError<'failed-precondition'> {
  constructor(message: string, options?: { cause?: unknown }) {
    super('failed-precondition', message, options);
  }
}

export interface Mounter {
  mount(source: string, target: string, fstype: string, options: string[]): Promise<void>;
  umount(target: string): Promise<void>;
}

export const busyboxMounter: Mounter = {
  async mount(source, target, fstype, options) {
    const args = ['-t', fstype];
    if (options.length) args.push('-o', options.join(','));
    args.push(source, target);
    try {
      await execFileP('mount', args);
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new StorageError(`mount ${fstype} ${source} on ${target}: ${(e.stderr || e.message).trim()}`);
    }
  },
  async umount(target) {
    await execFileP('umount', ['-l', target]).catch(() => undefined);
  },
};

/** Finds /dev/vdX whose virtio-blk serial is `serial`, waiting for hotplug. */
export async function findBlockDevice(serial: string, timeoutMs = 10000, sysBlock = '/sys/block'): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const dev of await fs.readdir(sysBlock).catch(() => [] as string[])) {
      const s = await fs.readFile(path.join(sysBlock, dev, 'serial'), 'utf8').catch(() => '');
      if (s.trim() === serial) return `/dev/${dev}`;
    }
    if (Date.now() > deadline) throw new StorageError(`no block device with serial ${serial}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * `device-serial=SERIAL` options become `device=/dev/vdX`: a converted image
 * (src/image) is EROFS metadata on one disk whose file data lives on a second
 * disk (the image's blob device, EROFS device 1), and the kernel wants that
 * one named by path (`mount -t erofs -o device=…`, fs/erofs/super.c) while
 * the host only knows its serial.
 */
export async function resolveDeviceSerials(options: string[], sysBlock = '/sys/block', timeoutMs = 10000): Promise<string[]> {
  const out: string[] = [];
  for (const o of options) {
    if (!o.startsWith('device-serial=')) { out.push(o); continue; }
    const serial = o.slice('device-serial='.length);
    if (!/^[A-Za-z0-9_-]{1,20}$/.test(serial)) throw new StorageError(`bad device serial "${serial}"`);
    out.push(`device=${await findBlockDevice(serial, timeoutMs, sysBlock)}`);
  }
  return out;
}

/** The sandbox's mounted storages, by mount point, with how many containers use each. */
export class StorageRegistry {
  private readonly refs = new Map<string, { count: number; ready: Promise<void> }>();
  constructor(readonly mounter: Mounter = busyboxMounter) {}

  /** Mounts `s` unless a container already did; returns its mount point. */
  async acquire(s: Storage, scratchDir: string): Promise<string> {
    if (!s.mount_point.startsWith('/') || s.mount_point.split('/').includes('..')) throw new StorageError(`storage mount point must be absolute, without "..": ${s.mount_point}`);
    const held = this.refs.get(s.mount_point);
    if (held) {
      held.count++;
      try {
        await held.ready;
      } catch (err) {
        held.count--;
        throw err;
      }
      return s.mount_point;
    }
    const ready = mountStorage(this.mounter, s, scratchDir);
    this.refs.set(s.mount_point, { count: 1, ready });
    try {
      await ready;
    } catch (err) {
      this.refs.delete(s.mount_point);
      throw err;
    }
    return s.mount_point;
  }

  async release(mountPoint: string): Promise<void> {
    const held = this.refs.get(mountPoint);
    if (!held) return;
    if (--held.count > 0) return;
    this.refs.delete(mountPoint);
    await this.mounter.umount(mountPoint);
  }

  /** Mount points in use (tests). */
  get mounted(): string[] {
    return [...this.refs.keys()];
  }
}

async function mountStorage(m: Mounter, s: Storage, scratchDir: string): Promise<void> {
  await fs.mkdir(s.mount_point, { recursive: true });
  switch (s.driver) {
    case 'blk': {
      const dev = PCI_PATH_RE.test(s.source)
        ? await waitForPciBlockDevice(s.source).catch((err: Error) => { throw new StorageError(err.message, { cause: err }); })
        : await findBlockDevice(s.source);
      await m.mount(dev, s.mount_point, s.fstype || 'erofs', s.options.length ? await resolveDeviceSerials(s.options) : ['ro']);
      break;
    }
    case 'virtiofs': {
      // The tag is the device's config-space tag; the kernel finds the
      // device by it (fs/fuse/virtio_fs.c), no /dev node involved.
      if (!/^[A-Za-z0-9_.-]{1,36}$/.test(s.source)) throw new StorageError(`bad virtio-fs tag "${s.source}"`);
      // A hotplugged share's device is probed by the guest some time after
      // the host's device_add returned; until then the kernel answers EINVAL
      // ("tag not found"). Wait for it as for a block device's serial.
      for (const deadline = Date.now() + VIRTIOFS_WAIT_MS; ; ) {
        try {
          await m.mount(s.source, s.mount_point, 'virtiofs', s.options);
          break;
        } catch (err) {
          if (!/Invalid argument|No such device/.test(String((err as Error).message)) || Date.now() > deadline) throw err;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      break;
    }
    case 'ephemeral': {
      await m.mount(s.source || 'tmpfs', s.mount_point, 'tmpfs', s.options);
      break;
    }
    case 'overlay': {
      const upper = path.join(scratchDir, 'upper');
      const work = path.join(scratchDir, 'work');
      await fs.mkdir(upper, { recursive: true });
      await fs.mkdir(work, { recursive: true });
      const lower = s.options.find((o) => o.startsWith('lowerdir='));
      if (!lower) throw new StorageError('overlay storage needs a lowerdir= option');
      await m.mount('overlay', s.mount_point, 'overlay', [lower, `upperdir=${upper}`, `workdir=${work}`]);
      break;
    }
    default:
      throw new StorageError(`unknown storage driver "${s.driver}"`);
  }
}

/** One container's storages, in the sandbox's registry (a private one when none is given). */
export class StorageSet {
  private mounted: string[] = [];
  private readonly registry: StorageRegistry;
  constructor(mounter: Mounter = busyboxMounter, registry?: StorageRegistry) {
    this.registry = registry ?? new StorageRegistry(mounter);
  }

  async add(s: Storage, scratchDir: string): Promise<string> {
    const mp = await this.registry.acquire(s, scratchDir);
    this.mounted.push(mp);
    return mp;
  }

  async removeAll(): Promise<void> {
    for (const m of this.mounted.reverse()) await this.registry.release(m);
    this.mounted = [];
  }
}
