/**
 * VFIO device assignment to QEMU, the host side (Documentation/driver-api/
 * vfio.rst; QEMU docs "VFIO"): bind a PCI device to vfio-pci through
 * `driver_override`, check its IOMMU group is viable (every device in
 * /sys/kernel/iommu_groups/N/devices bound to vfio-pci or to no driver),
 * preflight the group with the kernel's own answer (src/vmm/vfio.ts opens
 * the container and group and asks VFIO_GROUP_GET_STATUS, then closes them:
 * QEMU opens them itself), and build QEMU's `vfio-pci,host=…` for a
 * cold-plugged device or the QMP device_add arguments for a hotplugged one.
 *
 * These machines have no IOMMU (no /sys/kernel/iommu_groups entries), so
 * only the error paths and the argument building run here; the checks read
 * a sysfs root given as a parameter so tests can build one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError } from '../common/errors';
import { openVfioDevice } from '../vmm/vfio';
import { slotAddr } from './pci-slots';

export class VfioHostError extends KataError<'invalid' | 'no-iommu' | 'not-viable' | 'bind'> {}

const BDF_RE = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

function driverOf(sys: string, bdf: string): string {
  try { return path.basename(fs.readlinkSync(path.join(sys, 'bus/pci/devices', bdf, 'driver'))); } catch { return ''; }
}

/** The IOMMU group of a PCI device and the devices in it; a VfioHostError says what is wrong. */
export function iommuGroupOf(bdf: string, sys = '/sys'): { group: number; devices: string[] } {
  if (!BDF_RE.test(bdf)) throw new VfioHostError('invalid', `"${bdf}" is not a PCI address (dddd:bb:dd.f, lower-case hex)`);
  const dev = path.join(sys, 'bus/pci/devices', bdf);
  if (!fs.existsSync(dev)) throw new VfioHostError('invalid', `no PCI device ${bdf} on this host`);
  let link: string;
  try { link = fs.readlinkSync(path.join(dev, 'iommu_group')); } catch {
    throw new VfioHostError('no-iommu', `${bdf} has no IOMMU group: the host's IOMMU is off (intel_iommu=on / amd_iommu=on) or absent; VFIO assignment needs one`);
  }
  const group = Number(path.basename(link));
  if (!Number.isInteger(group) || group < 0) throw new VfioHostError('invalid', `${bdf}: IOMMU group link ${link} has no group number`);
  const devices = fs.readdirSync(path.join(sys, 'kernel/iommu_groups', String(group), 'devices')).sort();
  return { group, devices };
}

/**
 * The group is viable when every device in it is bound to vfio-pci or to
 * nothing (bridges excepted by the kernel are not modelled: name them and
 * bind them too). Returns the group number.
 */
export function checkGroupViable(bdf: string, sys = '/sys'): number {
  const { group, devices } = iommuGroupOf(bdf, sys);
  const blocking = devices.map((d) => [d, driverOf(sys, d)]).filter(([, drv]) => drv !== '' && drv !== 'vfio-pci');
  if (blocking.length) {
    throw new VfioHostError('not-viable', `IOMMU group ${group} of ${bdf} is not viable: ${blocking.map(([d, drv]) => `${d} is bound to ${drv}`).join(', ')}; bind every device of the group to vfio-pci`);
  }
  return group;
}

/**
 * Binds a device to vfio-pci: driver_override, unbind from its driver,
 * drivers_probe (the kernel's documented sequence). Throws unless the device
 * ends up bound to vfio-pci.
 */
export function bindToVfioPci(bdf: string, sys = '/sys'): void {
  iommuGroupOf(bdf, sys);
  const dev = path.join(sys, 'bus/pci/devices', bdf);
  const write = (file: string, value: string) => {
    try { fs.writeFileSync(file, value); } catch (err) {
      throw new VfioHostError('bind', `${bdf}: cannot write ${value} to ${file}: ${(err as Error).message}`, { cause: err });
    }
  };
  const current = driverOf(sys, bdf);
  if (current === 'vfio-pci') return;
  write(path.join(dev, 'driver_override'), 'vfio-pci');
  if (current) write(path.join(dev, 'driver', 'unbind'), bdf);
  write(path.join(sys, 'bus/pci/drivers_probe'), bdf);
  const now = driverOf(sys, bdf);
  if (now !== 'vfio-pci') throw new VfioHostError('bind', `${bdf} is ${now ? `bound to ${now}` : 'not bound to any driver'} after drivers_probe, not vfio-pci (is the vfio-pci module loaded?)`);
}

/**
 * Everything QEMU needs to be true before it gets the device: the group is
 * viable in sysfs, and the kernel agrees (the VFIO container/group ioctls of
 * src/vmm/vfio.ts, closed again at once).
 */
export function preflightVfio(bdf: string, sys = '/sys'): number {
  const group = checkGroupViable(bdf, sys);
  try {
    openVfioDevice(bdf, path.join(sys, 'bus/pci/devices')).close();
  } catch (err) {
    throw new VfioHostError('not-viable', `${bdf}: ${(err as Error).message}`, { cause: err });
  }
  return group;
}

/**
 * TEST STAND-IN, not VFIO: the source "edu" plugs QEMU's emulated `edu`
 * PCI device (vendor:device 1234:11e8, hw/misc/edu.c) where a real device
 * would be `vfio-pci,host=…`. These hosts have no IOMMU, so nothing can be
 * passed through; the edu device lets the guest side (the agent finding the
 * device by PCI path, binding it to vfio-pci in the guest with no-IOMMU
 * mode, exposing /dev/vfio/noiommu-N) run for real. Same slot, same id,
 * same hotplug and unplug path; no host preflight (there is no host device).
 */
export const EDU_STAND_IN = 'edu';

/** A host device (dddd:bb:dd.f) or the edu stand-in, else one VfioHostError. */
export function checkVfioSource(source: string): void {
  if (source !== EDU_STAND_IN && !BDF_RE.test(source)) throw new VfioHostError('invalid', `"${source}" is not a PCI address (dddd:bb:dd.f, lower-case hex)`);
}

/**
 * Where a device goes: a root-bus slot (number), slot 0 behind a PCIe root
 * port ({ bus: 'rpK' }, q35; src/hypervisor/pci-slots.ts RootPortPool), or a
 * slot of the pc machine's VFIO pci-bridge ({ bus: 'pcibr0', slot }).
 */
export type VfioPlace = number | { bus: string; slot?: number };

function placeProps(at: VfioPlace): { bus?: string; addr: string } {
  return typeof at === 'number' ? { addr: slotAddr(at) } : { bus: at.bus, addr: slotAddr(at.slot ?? 0) };
}

/** QEMU -device value for a cold-plugged device at `at` (root-bus slot or behind a root port). */
export function vfioDeviceArg(source: string, id: string, at: VfioPlace): string {
  checkVfioSource(source);
  const p = placeProps(at);
  const where = `${p.bus ? `bus=${p.bus},` : ''}addr=${p.addr}`;
  return source === EDU_STAND_IN ? `edu,id=${id},${where}` : `vfio-pci,host=${source},id=${id},${where}`;
}

/** QMP device_add arguments for a hotplugged device (qapi: device_add takes the -device properties). */
export function vfioDeviceAdd(source: string, id: string, at: VfioPlace): Record<string, unknown> {
  checkVfioSource(source);
  const p = placeProps(at);
  const head = source === EDU_STAND_IN ? { driver: 'edu', id } : { driver: 'vfio-pci', host: source, id };
  return p.bus ? { ...head, bus: p.bus, addr: p.addr } : { ...head, addr: p.addr };
}

/** Host checks before QEMU gets the device (none for the stand-in); the IOMMU group, or undefined. */
export function preflightVfioSource(source: string, sys = '/sys'): number | undefined {
  checkVfioSource(source);
  return source === EDU_STAND_IN ? undefined : preflightVfio(source, sys);
}
