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

/**
 * Waits until the virtio-blk disk at `pciPath` has its block device and
 * returns /dev/<name>; a device that does not appear within `timeoutMs` is
 * a PciDeviceError('timeout') naming the path and what was seen, one bound
 * to another virtio driver a PciDeviceError('driver') at once.
 */
export async function waitForPciBlockDevice(pciPath: string, timeoutMs = 10000, sysDevices = '/sys/bus/pci/devices', devDir = '/dev'): Promise<string> {
  parsePciPath(pciPath);
  const deadline = Date.now() + timeoutMs;
  let seen = 'no PCI device there';
  for (;;) {
    const dev = await sysfsDeviceAt(pciPath, sysDevices);
    if (dev) {
      const v = await virtioUnder(dev);
      if (v?.driver && v.driver !== VIRTIO_BLK_DRIVER) throw wrongDriver(pciPath, dev, VIRTIO_BLK_DRIVER, v.driver);
      const name = v && (await fs.readdir(path.join(v.dir, 'block')).catch(() => [] as string[]))[0];
      if (name) return path.join(devDir, name);
      seen = `a PCI device (${path.basename(dev)}) without a virtio block device`;
    }
    if (Date.now() > deadline) throw new PciDeviceError('timeout', `no block device appeared at PCI path ${pciPath} within ${timeoutMs} ms (${seen})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Waits until the virtio-fs device at `pciPath` is probed by the virtiofs
 * driver (its tag is then known to the kernel, so a mount by tag cannot
 * race the hotplug) and returns its sysfs directory. The tag itself is not
 * in sysfs before Linux 6.9, so the mount by tag that follows is what
 * checks it. Errors as waitForPciBlockDevice.
 */
export async function waitForPciFsDevice(pciPath: string, timeoutMs = 10000, sysDevices = '/sys/bus/pci/devices'): Promise<string> {
  parsePciPath(pciPath);
  const deadline = Date.now() + timeoutMs;
  let seen = 'no PCI device there';
  for (;;) {
    const dev = await sysfsDeviceAt(pciPath, sysDevices);
    if (dev) {
      const v = await virtioUnder(dev);
      if (v?.driver === VIRTIO_FS_DRIVER) return dev;
      if (v?.driver) throw wrongDriver(pciPath, dev, VIRTIO_FS_DRIVER, v.driver);
      seen = `a PCI device (${path.basename(dev)}) not yet probed by ${VIRTIO_FS_DRIVER}`;
    }
    if (Date.now() > deadline) throw new PciDeviceError('timeout', `no virtio-fs device appeared at PCI path ${pciPath} within ${timeoutMs} ms (${seen})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits until any device is at `pciPath` and bound to a driver (a virtio-fs share before its mount). */
export async function waitForPciDevice(pciPath: string, timeoutMs = 10000, sysDevices = '/sys/bus/pci/devices'): Promise<string> {
  parsePciPath(pciPath);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const dev = await sysfsDeviceAt(pciPath, sysDevices);
    if (dev && await fs.access(path.join(dev, 'driver')).then(() => true, () => false)) return dev;
    if (Date.now() > deadline) throw new PciDeviceError('timeout', `no device bound to a driver appeared at PCI path ${pciPath} within ${timeoutMs} ms${dev ? ' (the device is there, unbound)' : ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Waits until the virtio-net device at `pciPath` has its network interface
 * (virtio_net bound, `virtioN/net/<name>` there) and returns the name, as
 * Kata's agent waits for a hotplugged NIC's PCI path before it looks the
 * link up by MAC. Errors as waitForPciBlockDevice.
 */
export async function waitForPciNetDevice(pciPath: string, timeoutMs = 10000, sysDevices = '/sys/bus/pci/devices'): Promise<string> {
  parsePciPath(pciPath);
  const deadline = Date.now() + timeoutMs;
  let seen = 'no PCI device there';
  for (;;) {
    const dev = await sysfsDeviceAt(pciPath, sysDevices);
    if (dev) {
      const v = await virtioUnder(dev);
      if (v?.driver && v.driver !== VIRTIO_NET_DRIVER) throw wrongDriver(pciPath, dev, VIRTIO_NET_DRIVER, v.driver);
      const name = v && (await fs.readdir(path.join(v.dir, 'net')).catch(() => [] as string[]))[0];
      if (name) return name;
      seen = `a PCI device (${path.basename(dev)}) without a network interface yet`;
    }
    if (Date.now() > deadline) throw new PciDeviceError('timeout', `no network interface appeared at PCI path ${pciPath} within ${timeoutMs} ms (${seen})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
