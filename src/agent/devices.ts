/**
 * A container's devices (CreateContainerRequest.devices, Kata's Device
 * list), on the guest side: the host attached a virtio-blk disk and named
 * its PCI path; we wait for it (pci-device.ts) and rewrite the container's
 * OCI spec so crun creates the node at the requested path for the *guest's*
 * device: the spec's major/minor were the host device's, which mean nothing
 * (or another device) in the guest. Device-cgroup rules in
 * linux.resources.devices that named the host major:minor get the guest's
 * numbers too, so an allow rule keeps allowing exactly this device. This is
 * what Kata's agent does (update_spec_devices). Type, path, mode and owner
 * stay as requested.
 */
import * as fs from 'node:fs/promises';
import type { Device } from '../protocols/agent-api';
import { KataError } from '../common/errors';
import { splitDev } from '../common/devnum';
import { waitForPciBlockDevice } from './pci-device';
import { applyVfioDevice, isVfioType } from './vfio-device';

export class DeviceMapError extends KataError<'invalid' | 'failed-precondition'> {}

interface SpecDevice { path: string; type: string; major?: number; minor?: number }
interface CgroupRule { allow: boolean; type?: string; major?: number; minor?: number; access?: string }
/** The parts of an OCI spec this module touches, as the agent receives them (unchecked JSON). */
interface SpecWithDevices { linux?: { devices?: unknown[]; resources?: Record<string, unknown> } }

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Finds the guest node of a device: /dev/vdX for type "blk". */
export type DeviceResolver = (d: Device) => Promise<string>;

export const resolveByPciPath: DeviceResolver = async (d) => waitForPciBlockDevice(d.vm_path);

/** Guest major/minor of a device node (Linux's dev_t encoding, as glibc's major()/minor()). */
export async function nodeNumbers(node: string): Promise<{ major: number; minor: number }> {
  const st = await fs.stat(node, { bigint: true });
  if (!st.isBlockDevice()) throw new DeviceMapError('failed-precondition', `${node} is not a block device`);
  return splitDev(st.rdev);
}

/**
 * Rewrites `spec` (in place) for the given devices; returns the guest nodes
 * by container path. Every device must name a linux.devices entry of the
 * spec; anything else is one DeviceMapError.
 */
export async function applyDevices(
  spec: SpecWithDevices, devices: Device[], resolve: DeviceResolver = resolveByPciPath,
  numbers: (node: string) => Promise<{ major: number; minor: number }> = nodeNumbers,
  vfio: (spec: SpecWithDevices, d: Device) => Promise<string | undefined> = (s, d) => applyVfioDevice(s, d),
): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const d of devices) {
    // VFIO ("vfio-pci" / "vfio-pci-gk"): a PCI device, bound or left to the guest kernel (vfio-device.ts).
    if (isVfioType(d.type)) {
      let node: string | undefined;
      try {
        node = await vfio(spec, d);
      } catch (err) {
        throw new DeviceMapError((err as { kind?: string }).kind === 'invalid' ? 'invalid' : 'failed-precondition', `device ${d.id} for ${d.container_path}: ${(err as Error).message}`, { cause: err });
      }
      if (node) out.set(d.container_path, node);
      continue;
    }
    if (d.type !== 'blk') throw new DeviceMapError('invalid', `device ${d.id}: type "${d.type}" is not supported (blk, vfio-pci, vfio-pci-gk)`);
    const entry = (spec.linux?.devices ?? []).find((e): e is SpecDevice => isObject(e) && e.path === d.container_path);
    if (!entry) throw new DeviceMapError('invalid', `device ${d.id}: the OCI spec has no linux.devices entry for ${d.container_path}`);
    if (entry.type !== 'b') throw new DeviceMapError('invalid', `device ${d.id}: ${d.container_path} is type "${entry.type}" in the spec; a disk is a block device ("b")`);
    let node: string;
    try {
      node = await resolve(d);
    } catch (err) {
      throw new DeviceMapError('failed-precondition', `device ${d.id} for ${d.container_path}: ${(err as Error).message}`, { cause: err });
    }
    const guest = await numbers(node);
    const host = { major: entry.major, minor: entry.minor };
    entry.major = guest.major;
    entry.minor = guest.minor;
    const rules = spec.linux?.resources?.devices;
    for (const r of (Array.isArray(rules) ? rules : []).filter((x): x is CgroupRule => isObject(x))) {
      if ((r.type === 'b' || r.type === 'a' || r.type === undefined) && r.major === host.major && r.minor === host.minor && host.major !== undefined) {
        r.major = guest.major;
        r.minor = guest.minor;
      }
    }
    out.set(d.container_path, node);
  }
  return out;
}
