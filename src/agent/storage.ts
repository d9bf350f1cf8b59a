/**
 * Mounts the storages a container's rootfs is made of (Kata's Storage):
 *   blk     — a virtio-blk disk. On PCI (QEMU) its source is its PCI path
 *             ("0a", "02/00": Kata's form, from the host's device manager)
 *             and pci-device.ts waits until the virtio_blk driver probed
 *             it there; mounted read-only with the given fstype (EROFS
 *             images). A converted image's blob device (EROFS device 1) is
 *             named by the option `device-pci=PATH` the same way.
 *   overlay — a writable layer: tmpfs-backed upper/work dirs over lowerdir;
 *   virtiofs — a host directory shared by our virtio-fs device, mounted by
 *             its tag (virtio 1.2 §5.11.4) as it is: writes go straight to
 *             the host directory, as under runc. Kata sends only the tag;
 *             we also send the device's PCI path (driver_options
 *             `pci-path=PATH`) and wait until the virtiofs driver probed
 *             the device there before mounting, so a hotplugged share is
 *             never mounted before the guest has it;
 *   ephemeral — a tmpfs (the pod's /dev/shm).
 * The builtin VMM's devices (and QEMU microvm's) are virtio-mmio, declared
 * at boot: no PCI path exists for them, and all of them were probed before
 * the agent ran. Only for those the host sends the disk's virtio-blk
 * serial (source, `device-serial=`, found in /sys/block/vdX/serial) and a
 * share's bare tag (mounted, retrying while the kernel does not know it).
 * Storages are counted by mount point across the sandbox, as Kata's agent
 * does: the volume share and the pod's shm, which every container with a
 * volume names, are mounted by the first and unmounted with the last.
 * The agent makes the mount(2)/umount2(2) calls itself through the native
 * addon (native/src/mount.cc; options parsed in mount-options.ts): each
 * busybox `mount` it spawned before cost a process start under TCG (60-80
 * ms warm, ~350 ms the first in a fresh VM), twice per container on the
 * default image. An addon without those calls falls back to busybox
 * `mount`/`umount`. Every mount is recorded so teardown can undo it in
 * reverse.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Storage } from '../protocols/agent-api';
import { KataError } from '../common/errors';
import { PCI_PATH_RE, parsePciPath, waitForPciBlockDevice, waitForPciFsDevice } from './pci-device';
import { native } from '../common/native';
import { getSystemErrorMap } from 'node:util';
import { MNT_DETACH, MS_BIND, MS_REMOUNT, parseMountOptions } from './mount-options';

const execFileP = promisify(execFile);

/** How long a storage waits for its (hotplugged) device to be probed. */
export const DEVICE_WAIT_MS = 10000;

/** Where the agent looks for devices and how long it waits: the real /sys and /dev, or fake trees in unit tests. */
export interface DeviceLookup {
  sysPciDevices: string;
  sysBlock: string;
  devDir: string;
  timeoutMs: number;
}
export const GUEST_DEVICES: DeviceLookup = { sysPciDevices: '/sys/bus/pci/devices', sysBlock: '/sys/block', devDir: '/dev', timeoutMs: DEVICE_WAIT_MS };

/** A storage that cannot be mounted: kind 'failed-precondition' (the guest lacks what the host promised). */
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

/** The addon's mount calls, or undefined where it lacks them (or cannot load: unit tests on a host without it). */
function mountCalls(): { mountFs: NonNullable<ReturnType<typeof native>['mountFs']>; umountFs: NonNullable<ReturnType<typeof native>['umountFs']> } | undefined {
  try {
    const n = native();
    return n.mountFs && n.umountFs ? { mountFs: n.mountFs.bind(n), umountFs: n.umountFs.bind(n) } : undefined;
  } catch {
    return undefined;
  }
}

/** -errno as strerror words and the name ("Invalid argument (EINVAL)"), as busybox's message had the words: callers match them (virtio-fs tag retry). */
function errnoText(r: number): string {
  const [name, msg] = getSystemErrorMap().get(r) ?? [`errno ${-r}`, ''];
  return msg ? `${msg[0]!.toUpperCase()}${msg.slice(1)} (${name})` : name;
}

/**
 * mount(2) as `mount -t fstype -o options source target` makes it: the
 * mount, then for a bind mount asked read-only (nosuid, …) a remount that
 * applies those, then a propagation change if one was asked.
 */
export const syscallMounter: Mounter = {
  async mount(source, target, fstype, options) {
    const calls = mountCalls();
    if (!calls) return busyboxMounter.mount(source, target, fstype, options);
    const o = parseMountOptions(options);
    const fail = (r: number, what = '') => {
      throw new StorageError(`mount ${fstype} ${source} on ${target}${what}: ${errnoText(r)}`);
    };
    const r = calls.mountFs(source, target, fstype, o.flags, o.data || null);
    if (r < 0) fail(r);
    if (o.bindRemountFlags) {
      const rr = calls.mountFs(null, target, null, MS_REMOUNT | MS_BIND | o.bindRemountFlags, null);
      if (rr < 0) {
        calls.umountFs(target, MNT_DETACH);
        fail(rr, ' (read-only remount of the bind)');
      }
    }
    if (o.propagation) {
      const rp = calls.mountFs(null, target, null, o.propagation, null);
      if (rp < 0) {
        calls.umountFs(target, MNT_DETACH);
        fail(rp, ' (propagation)');
      }
    }
  },
  async umount(target) {
    const calls = mountCalls();
    if (!calls) return busyboxMounter.umount(target);
    // As `umount -l`; errors ignored as before (the mount may be gone already).
    calls.umountFs(target, MNT_DETACH);
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

/** A wait by PCI path whose failure (timeout naming the path, wrong driver, bad path) becomes the storage's error. */
function byPci<T>(p: Promise<T>): Promise<T> {
  return p.catch((err: Error) => { throw new StorageError(err.message, { cause: err }); });
}

/**
 * `device-pci=PATH` (and, for virtio-mmio disks, `device-serial=SERIAL`)
 * options become `device=/dev/vdX`: a converted image (src/image) is EROFS
 * metadata on one disk whose file data lives on a second disk (the image's
 * blob device, EROFS device 1), and the kernel wants that one named by path
 * (`mount -t erofs -o device=…`, fs/erofs/super.c) while the host only
 * knows where it plugged it.
 */
export async function resolveDeviceOptions(options: string[], at: DeviceLookup = GUEST_DEVICES): Promise<string[]> {
  const out: string[] = [];
  for (const o of options) {
    if (o.startsWith('device-pci=')) {
      const p = o.slice('device-pci='.length);
      try { parsePciPath(p); } catch (err) { throw new StorageError(`bad device-pci option: ${(err as Error).message}`, { cause: err }); }
      out.push(`device=${await byPci(waitForPciBlockDevice(p, at.timeoutMs, at.sysPciDevices, at.devDir))}`);
    } else if (o.startsWith('device-serial=')) {
      const serial = o.slice('device-serial='.length);
      if (!/^[A-Za-z0-9_-]{1,20}$/.test(serial)) throw new StorageError(`bad device serial "${serial}"`);
      out.push(`device=${await findBlockDevice(serial, at.timeoutMs, at.sysBlock)}`);
    } else {
      out.push(o);
    }
  }
  return out;
}

/** The PCI path a storage's driver_options name (`pci-path=PATH`), if any; a malformed one is refused. */
export function storagePciPath(s: Storage): string | undefined {
  const o = (s.driver_options ?? []).find((x) => x.startsWith('pci-path='));
  if (o === undefined) return undefined;
  const p = o.slice('pci-path='.length);
  try { parsePciPath(p); } catch (err) { throw new StorageError(`storage on ${s.mount_point}: bad pci-path driver option: ${(err as Error).message}`, { cause: err }); }
  return p;
}

/** The sandbox's mounted storages, by mount point, with how many containers use each. */
export class StorageRegistry {
  private readonly refs = new Map<string, { count: number; ready: Promise<void> }>();
  constructor(readonly mounter: Mounter = syscallMounter, readonly devices: DeviceLookup = GUEST_DEVICES) {}

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
    const ready = mountStorage(this.mounter, s, scratchDir, this.devices);
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

async function mountStorage(m: Mounter, s: Storage, scratchDir: string, at: DeviceLookup): Promise<void> {
  await fs.mkdir(s.mount_point, { recursive: true });
  switch (s.driver) {
    case 'blk': {
      // A PCI path (QEMU), else a virtio-blk serial (the builtin VMM's virtio-mmio disks: no PCI path).
      const dev = PCI_PATH_RE.test(s.source)
        ? await byPci(waitForPciBlockDevice(s.source, at.timeoutMs, at.sysPciDevices, at.devDir))
        : await findBlockDevice(s.source, at.timeoutMs, at.sysBlock);
      await m.mount(dev, s.mount_point, s.fstype || 'erofs', s.options.length ? await resolveDeviceOptions(s.options, at) : ['ro']);
      break;
    }
    case 'virtiofs': {
      // The tag is the device's config-space tag; the kernel finds the
      // device by it (fs/fuse/virtio_fs.c), no /dev node involved.
      if (!/^[A-Za-z0-9_.-]{1,36}$/.test(s.source)) throw new StorageError(`bad virtio-fs tag "${s.source}"`);
      const pci = storagePciPath(s);
      if (pci) {
        // The host told us where the device is: wait until the virtiofs
        // driver probed it there (a hotplugged share appears some time after
        // the host's device_add returned), then mount by tag once.
        await byPci(waitForPciFsDevice(pci, at.timeoutMs, at.sysPciDevices));
        await m.mount(s.source, s.mount_point, 'virtiofs', s.options).catch((err: Error) => {
          throw new StorageError(`${err.message} (the virtio-fs device at PCI path ${pci} is there: does it have tag ${s.source}?)`, { cause: err });
        });
        break;
      }
      // No PCI path: a virtio-mmio share of the builtin VMM, probed at boot.
      // Until the kernel knows the tag it answers EINVAL ("tag not found"),
      // so retry on that alone until the deadline.
      for (const deadline = Date.now() + at.timeoutMs; ; ) {
        try {
          await m.mount(s.source, s.mount_point, 'virtiofs', s.options);
          break;
        } catch (err) {
          if (!/Invalid argument|No such device/.test(String((err as Error).message))) throw err;
          if (Date.now() > deadline) throw new StorageError(`no virtio-fs device with tag ${s.source} appeared within ${at.timeoutMs} ms: ${(err as Error).message}`, { cause: err });
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
  constructor(mounter: Mounter = syscallMounter, registry?: StorageRegistry) {
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
