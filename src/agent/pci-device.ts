/**
 * Finds a device the host hotplugged (or attached at boot) by its PCI path,
 * as Kata's agent does (its device module resolves a "PCI path" and waits
 * for the matching uevent) instead of guessing by order or serial.
 *
 * A PCI path is the chain of device slots from the root bus, each two hex
 * digits: "0a" is slot 0x0a on bus 0000:00; "02/00" is slot 0 on the bus
 * behind the bridge in root slot 2 (Kata's spelling; the function is always
 * 0). The host's device manager (src/resource/devices) hands it out from the
 * slot it plugged the device into.
 *
 * We poll sysfs rather than listen to uevents: the agent is PID 1's only
 * job, there is no udev, and a netlink uevent socket would have to be opened
 * before the device_add to not miss the event. Polling every 20 ms costs
 * nothing measurable and cannot miss a device that is already there.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { KataError } from '../common/errors';

export class PciDeviceError extends KataError<'invalid' | 'timeout' | 'driver'> {}

/** A Kata PCI path: 1..8 two-hex-digit slots (≤ 0x1f each) separated by '/'. */
export const PCI_PATH_RE = /^[0-9a-f]{2}(\/[0-9a-f]{2}){0,7}$/;

export function parsePciPath(p: string): number[] {
  if (!PCI_PATH_RE.test(p)) throw new PciDeviceError('invalid', `"${p}" is not a PCI path (slots as two hex digits, e.g. "0a" or "02/00")`);
  const slots = p.split('/').map((x) => parseInt(x, 16));
  if (slots.some((s) => s > 0x1f)) throw new PciDeviceError('invalid', `PCI path ${p}: a slot is above 1f`);
  return slots;
}

const hex2 = (n: number) => n.toString(16).padStart(2, '0');

/**
 * The sysfs directory of the device at `pciPath`, or undefined while it (or
 * a bridge on the way) is not there yet. A bridge's secondary bus is the
 * `pci_bus/<domain:bus>` entry under the bridge's own directory.
 */
export async function sysfsDeviceAt(pciPath: string, sysDevices = '/sys/bus/pci/devices'): Promise<string | undefined> {
  const slots = parsePciPath(pciPath);
  let bus = '0000:00';
  for (let i = 0; i < slots.length; i++) {
    const dev = path.join(sysDevices, `${bus}:${hex2(slots[i])}.0`);
    try { await fs.access(dev); } catch { return undefined; }
    if (i === slots.length - 1) return dev;
    const child = (await fs.readdir(path.join(dev, 'pci_bus')).catch(() => [] as string[]))[0];
    if (!child) return undefined;
    bus = child;
  }
  return undefined;
}

/**
 * The virtio device (`virtioN`) under a PCI device's sysfs directory and the
 * name of the virtio driver bound to it ('' until one probed it): the
 * virtio-pci transport is the PCI device's driver, the device-type driver
 * (virtio_blk, virtiofs, virtio_net) binds the virtioN child.
 */
async function virtioUnder(dev: string): Promise<{ dir: string; driver: string } | undefined> {
  for (const v of await fs.readdir(dev).catch(() => [] as string[])) {
    if (!/^virtio\d+$/.test(v)) continue;
    const dir = path.join(dev, v);
    const link = await fs.readlink(path.join(dir, 'driver')).catch(() => '');
    return { dir, driver: link ? path.basename(link) : '' };
  }
  return undefined;
}

/** Linux's virtio driver names (drivers/block/virtio_blk.c, fs/fuse/virtio_fs.c KBUILD_MODNAME). */
export const VIRTIO_BLK_DRIVER = 'virtio_blk';
export const VIRTIO_FS_DRIVER = 'virtiofs';
export const VIRTIO_NET_DRIVER = 'virtio_net';

/**
 * A device bound to another virtio driver than the one expected will not
 * change while we wait: say so at once, naming the path (the host put a
 * different device in that slot than it told us).
 */
function wrongDriver(pciPath: string, dev: string, want: string, got: string): PciDeviceError {
  return new PciDeviceError('driver', `the device at PCI path ${pciPath} (${path.basename(dev)}) is bound to the ${got} driver, not ${want}`);
}

/** What one look at the PCI path found: the awaited value, or what is there instead. */
type Probe<T> = { found: T } | { seen: string };

/**
 * The one wait loop behind the waiters below: looks at `pciPath` every
 * 20 ms until `probe` finds what is awaited. What `probe` throws (a device
 * bound to another driver will not change while we wait) ends the wait at
 * once; after `timeoutMs` it is one PciDeviceError('timeout') naming the
 * path, what was awaited and the last thing seen there.
 */
async function pollPciPath<T>(pciPath: string, timeoutMs: number, sysDevices: string, what: string, probe: (dev: string) => Promise<Probe<T>>): Promise<T> {
  parsePciPath(pciPath);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const dev = await sysfsDeviceAt(pciPath, sysDevices);
    const r: Probe<T> = dev ? await probe(dev) : { seen: 'no PCI device there' };
    if ('found' in r) return r.found;
    if (Date.now() > deadline) throw new PciDeviceError('timeout', `no ${what} appeared at PCI path ${pciPath} within ${timeoutMs} ms (${r.seen})`);
    await new Promise((res) => setTimeout(res, 20));
  }
}

/**
 * The first entry of `virtioN/<sub>` (block/<vdX>, net/<ethN>) of the virtio
 * device under `dev`, once `driver` has probed it; another driver bound
 * there is a PciDeviceError('driver').
 */
async function virtioChild(pciPath: string, dev: string, driver: string, sub: string, missing: string): Promise<Probe<string>> {
  const v = await virtioUnder(dev);
  if (v?.driver && v.driver !== driver) throw wrongDriver(pciPath, dev, driver, v.driver);
  const name = v && (await fs.readdir(path.join(v.dir, sub)).catch(() => [] as string[]))[0];
  return name ? { found: name } : { seen: `a PCI device (${path.basename(dev)}) ${missing}` };
}

/**
 * Waits until the virtio-blk disk at `pciPath` has its block device and
 * returns /dev/<name>; a device that does not appear within `timeoutMs` is
 * a PciDeviceError('timeout') naming the path and what was seen, one bound
 * to another virtio driver a PciDeviceError('driver') at once.
 */
export async function waitForPciBlockDevice(pciPath: string, timeoutMs = 10000, sysDevices = '/sys/bus/pci/devices', devDir = '/dev'): Promise<string> {
  const name = await pollPciPath(pciPath, timeoutMs, sysDevices, 'block device',
    (dev) => virtioChild(pciPath, dev, VIRTIO_BLK_DRIVER, 'block', 'without a virtio block device'));
  return path.join(devDir, name);
}

/**
 * Waits until the virtio-fs device at `pciPath` is probed by the virtiofs
 * driver (its tag is then known to the kernel, so a mount by tag cannot
 * race the hotplug) and returns its sysfs directory. The tag itself is not
 * in sysfs before Linux 6.9, so the mount by tag that follows is what
 * checks it. Errors as waitForPciBlockDevice.
 */
export async function waitForPciFsDevice(pciPath: string, timeoutMs = 10000, sysDevices = '/sys/bus/pci/devices'): Promise<string> {
  return pollPciPath(pciPath, timeoutMs, sysDevices, 'virtio-fs device', async (dev): Promise<Probe<string>> => {
    const v = await virtioUnder(dev);
    if (v?.driver === VIRTIO_FS_DRIVER) return { found: dev };
    if (v?.driver) throw wrongDriver(pciPath, dev, VIRTIO_FS_DRIVER, v.driver);
    return { seen: `a PCI device (${path.basename(dev)}) not yet probed by ${VIRTIO_FS_DRIVER}` };
  });
}

/** Waits until any device is at `pciPath` and bound to a driver (a virtio-fs share before its mount). */
export async function waitForPciDevice(pciPath: string, timeoutMs = 10000, sysDevices = '/sys/bus/pci/devices'): Promise<string> {
  return pollPciPath(pciPath, timeoutMs, sysDevices, 'device bound to a driver', async (dev): Promise<Probe<string>> =>
    (await fs.access(path.join(dev, 'driver')).then(() => true, () => false)) ? { found: dev } : { seen: 'the device is there, unbound' });
}

/**
 * Waits until the virtio-net device at `pciPath` has its network interface
 * (virtio_net bound, `virtioN/net/<name>` there) and returns the name, as
 * Kata's agent waits for a hotplugged NIC's PCI path before it looks the
 * link up by MAC. Errors as waitForPciBlockDevice.
 */
export async function waitForPciNetDevice(pciPath: string, timeoutMs = 10000, sysDevices = '/sys/bus/pci/devices'): Promise<string> {
  return pollPciPath(pciPath, timeoutMs, sysDevices, 'network interface',
    (dev) => virtioChild(pciPath, dev, VIRTIO_NET_DRIVER, 'net', 'without a network interface yet'));
}
