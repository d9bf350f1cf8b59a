/**
 * VFIO devices in the guest (Kata's Device types "vfio-pci" and
 * "vfio-pci-gk", CreateContainerRequest.devices): the host plugged a PCI
 * device (QEMU vfio-pci, or the emulated edu device standing in for one in
 * tests) and named its PCI path in vm_path. We wait until it is on the bus,
 * then, as Kata's agent does (docs/use-cases/GPU-passthrough-and-Kata.md,
 * vfio_mode in configuration.toml):
 *   - "vfio" mode (type "vfio-pci"): the guest has no vIOMMU, so the device
 *     is bound to the guest's vfio-pci driver in no-IOMMU mode
 *     (vfio.enable_unsafe_noiommu_mode=1, driver_override, drivers_probe).
 *     The kernel then gives it a group of its own, /dev/vfio/noiommu-N; the
 *     container gets that node and /dev/vfio/vfio (10:196), with cgroup
 *     allow rules, in place of the host's /dev/vfio/<group> entry.
 *   - guest-kernel mode (type "vfio-pci-gk"): the guest's own driver (if it
 *     has one) owns the device; the container gets no device node, only the
 *     sysfs view it always has. The host's /dev/vfio/<group> entry is removed
 *     from the spec (it means nothing in the guest).
 *
 * Unlike virtio devices the edu device (and most passed-through devices) has
 * no guest driver, so "appeared" means present on the bus, not bound.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { KataError } from '../common/errors';
import { splitDev } from '../common/devnum';
import { parsePciPath, sysfsDeviceAt } from './pci-device';

export class VfioGuestError extends KataError<'invalid' | 'timeout' | 'bind'> {}

/** Kata's Device types for VFIO: vfio mode and guest-kernel mode. */
export const VFIO_TYPES = ['vfio-pci', 'vfio-pci-gk'] as const;
export type VfioType = (typeof VFIO_TYPES)[number];
export const isVfioType = (t: string): t is VfioType => (VFIO_TYPES as readonly string[]).includes(t);

/** The VFIO container node every VFIO user opens first (misc device 10:196, include/linux/miscdevice.h VFIO_MINOR). */
export const VFIO_CONTAINER = { path: '/dev/vfio/vfio', major: 10, minor: 196 };

/** Where the guest's sysfs and /dev are (parameters so unit tests can use a fake tree). */
export interface GuestRoots { sys: string; dev: string }
const REAL: GuestRoots = { sys: '/sys', dev: '/dev' };

/** Waits until some PCI device is at `pciPath` (bound or not); its sysfs directory. */
export async function waitForPciPresent(pciPath: string, timeoutMs = 10000, roots: GuestRoots = REAL): Promise<string> {
  try { parsePciPath(pciPath); } catch (err) { throw new VfioGuestError('invalid', (err as Error).message, { cause: err }); }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const dev = await sysfsDeviceAt(pciPath, path.join(roots.sys, 'bus/pci/devices'));
    if (dev) return dev;
    if (Date.now() > deadline) throw new VfioGuestError('timeout', `no PCI device appeared at PCI path ${pciPath} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function driverOf(dev: string): Promise<string> {
  return fs.readlink(path.join(dev, 'driver')).then((l) => path.basename(l), () => '');
}

async function write(file: string, value: string, what: string): Promise<void> {
  try { await fs.writeFile(file, value); } catch (err) {
    throw new VfioGuestError('bind', `${what}: cannot write "${value}" to ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** What a vfio-mode device became: its guest group node. */
export interface GuestVfioGroup { bdf: string; group: number; node: string; major: number; minor: number }

/**
 * Binds the device at sysfs directory `dev` to the guest's vfio-pci in
 * no-IOMMU mode and returns its group node. Idempotent: a device already on
 * vfio-pci is only looked up.
 */
export async function bindGuestVfio(dev: string, roots: GuestRoots = REAL, timeoutMs = 5000): Promise<GuestVfioGroup> {
  const bdf = path.basename(dev);
  if (await driverOf(dev) !== 'vfio-pci') {
    // The guest has no IOMMU: vfio-pci refuses the device unless no-IOMMU mode is on (the kernel taints itself, as documented).
    await write(path.join(roots.sys, 'module/vfio/parameters/enable_unsafe_noiommu_mode'), '1', `${bdf}: no-IOMMU mode (is CONFIG_VFIO_NOIOMMU in the guest kernel?)`);
    await write(path.join(dev, 'driver_override'), 'vfio-pci', bdf);
    const current = await driverOf(dev);
    if (current) await write(path.join(dev, 'driver', 'unbind'), bdf, `${bdf}: unbind from ${current}`);
    await write(path.join(roots.sys, 'bus/pci/drivers_probe'), bdf, `${bdf}: probe`);
    const now = await driverOf(dev);
    if (now !== 'vfio-pci') throw new VfioGuestError('bind', `${bdf} is ${now ? `bound to ${now}` : 'bound to no driver'} after drivers_probe, not vfio-pci`);
  }
  let link: string;
  try { link = await fs.readlink(path.join(dev, 'iommu_group')); } catch {
    throw new VfioGuestError('bind', `${bdf} is bound to vfio-pci but has no iommu_group link`);
  }
  const group = Number(path.basename(link));
  if (!Number.isInteger(group) || group < 0) throw new VfioGuestError('bind', `${bdf}: iommu_group link ${link} has no group number`);
  // No-IOMMU groups are /dev/vfio/noiommu-N, real ones /dev/vfio/N (drivers/vfio/group.c); devtmpfs creates it, maybe a moment later.
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const name of [`noiommu-${group}`, String(group)]) {
      const node = path.join(roots.dev, 'vfio', name);
      const st = await fs.stat(node, { bigint: true }).catch(() => undefined);
      if (st?.isCharacterDevice()) return { bdf, group, node: `/dev/vfio/${name}`, ...splitDev(st.rdev) };
    }
    if (Date.now() > deadline) throw new VfioGuestError('bind', `${bdf}: group ${group} has no /dev/vfio/noiommu-${group} or /dev/vfio/${group} character device`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface SpecDevice { path: string; type: string; major?: number; minor?: number; fileMode?: number; uid?: number; gid?: number }
interface SpecWithDevices { linux?: { devices?: unknown[]; resources?: Record<string, unknown> } }
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function allow(spec: SpecWithDevices, major: number, minor: number): void {
  const linux = (spec.linux ??= {});
  const res = (linux.resources ??= {});
  const rules = (Array.isArray(res.devices) ? res.devices : (res.devices = [])) as Array<Record<string, unknown>>;
  if (!rules.some((r) => r.allow === true && r.type === 'c' && r.major === major && r.minor === minor)) rules.push({ allow: true, type: 'c', major, minor, access: 'rwm' });
}

/**
 * Rewrites `spec` (in place) for one VFIO Device: `container_path` names the
 * host's /dev/vfio/<group> entry. `group` is the bound device's guest group
 * (vfio mode) or undefined (guest-kernel mode: the entry goes).
 */
export function applyVfioToSpec(spec: SpecWithDevices, containerPath: string, group: GuestVfioGroup | undefined): void {
  const linux = (spec.linux ??= {});
  const devices = (Array.isArray(linux.devices) ? linux.devices : (linux.devices = [])) as unknown[];
  const i = devices.findIndex((e) => isObject(e) && e.path === containerPath);
  const entry = i >= 0 ? devices[i] as SpecDevice : undefined;
  if (!group) {
    if (i >= 0) devices.splice(i, 1);
    return;
  }
  const node: SpecDevice = { path: group.node, type: 'c', major: group.major, minor: group.minor, fileMode: entry?.fileMode ?? 0o660, uid: entry?.uid ?? 0, gid: entry?.gid ?? 0 };
  // Several host devices of one group are several guest groups under no-IOMMU: the first takes the entry's place, the rest are added.
  if (entry && entry.path === containerPath && !devices.some((e) => isObject(e) && e.path === group.node)) devices.splice(i, 1, node);
  else if (!devices.some((e) => isObject(e) && e.path === group.node)) devices.push(node);
  if (!devices.some((e) => isObject(e) && e.path === VFIO_CONTAINER.path)) {
    devices.push({ path: VFIO_CONTAINER.path, type: 'c', major: VFIO_CONTAINER.major, minor: VFIO_CONTAINER.minor, fileMode: 0o666, uid: 0, gid: 0 });
  }
  allow(spec, group.major, group.minor);
  allow(spec, VFIO_CONTAINER.major, VFIO_CONTAINER.minor);
}

/** One VFIO Device, end to end in the guest: wait, bind (vfio mode), rewrite the spec. Returns the node given, if any. */
export async function applyVfioDevice(
  spec: SpecWithDevices, d: { id: string; type: string; vm_path: string; container_path: string },
  roots: GuestRoots = REAL, timeoutMs = 10000,
): Promise<string | undefined> {
  if (!isVfioType(d.type)) throw new VfioGuestError('invalid', `device ${d.id}: type "${d.type}" is not a VFIO type (${VFIO_TYPES.join(', ')})`);
  const dev = await waitForPciPresent(d.vm_path, timeoutMs, roots);
  const group = d.type === 'vfio-pci' ? await bindGuestVfio(dev, roots) : undefined;
  applyVfioToSpec(spec, d.container_path, group);
  return group?.node;
}
