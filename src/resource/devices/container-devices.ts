/**
 * OCI `linux.devices` (and CRI devices, which containerd turns into the same
 * spec entries) on the host side: each block-device entry ("b") names a host
 * path — a block device or an image file — that becomes a virtio-blk disk of
 * the VM through the device manager, held by the container; the agent gets a
 * Device (proto/agent.proto) with the disk's PCI path and the container
 * path, and gives the entry the guest device's numbers (src/agent/devices.ts).
 *
 * Rules:
 *   - the host device is found by the entry's major:minor, as Kata's
 *     GetHostPath does (/sys/dev/block/M:m/uevent DEVNAME): CRI devices and
 *     `ctr run --device` write the host device's numbers, and CRI's
 *     container_path (the entry's `path`) need not exist on the host;
 *   - when the numbers name no host block device (or are absent), the host
 *     path is the entry's `path` (the device the container asked for, seen
 *     at the same path inside): a block device whose numbers differ from the
 *     entry's is an error (the spec describes another device), an image file
 *     takes the entry's numbers as only a request (the guest's replace them);
 *   - the disk is read-write;
 *   - an allow rule for the device is added to linux.resources.devices when
 *     none names it (crun's device cgroup would otherwise deny it under a
 *     default-deny rule, as CRI's specs have);
 *   - character devices ("c", "u", "p") are left to the guest as they are:
 *     a host character device cannot be given to a VM this way.
 * The disk id comes from the host path, so two containers naming the same
 * device share one disk (reference-counted by the manager).
 *
 * A privileged container (its device cgroup allows every device: what
 * `ctr run --privileged` and CRI's privileged mode write, next to every host
 * device in linux.devices) gets none of the host's devices in the VM: handing
 * the host's own disks to a guest is never what "privileged" means in a VM,
 * so we behave as containerd's `privileged_without_host_devices`, which
 * Kata's documentation tells its users to set. The entries stay in the spec
 * for the guest's runtime; the plan says how many were left out.
 *
 * VFIO (as Kata: a character entry /dev/vfio/<group>, or one whose numbers
 * are the host's /dev/vfio/<group> — a CRI device with another
 * container_path): every PCI
 * device of IOMMU group <group> (/sys/kernel/iommu_groups/<group>/devices)
 * becomes a `vfio` device of the manager, after the group is found viable
 * (src/hypervisor/vfio-host.ts; no IOMMU or a group with devices on host
 * drivers is one DeviceError before anything is attached). The agent gets
 * Kata's Device type "vfio-pci" (vfio mode: the guest binds it to vfio-pci
 * and the container gets /dev/vfio/noiommu-N) or "vfio-pci-gk"
 * (guest-kernel mode: left to the guest's driver, no device node).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import type { Device } from '../../protocols/agent-api';
import { DeviceError, type DeviceSpec } from './device-manager';
import { splitDev } from '../../common/devnum';
import { checkGroupViable, VfioHostError } from '../../hypervisor/vfio-host';

/** Kata's vfio_mode: bind to vfio-pci in the guest ("vfio") or leave it to the guest's driver ("guest-kernel"). */
export type VfioMode = 'vfio' | 'guest-kernel';

/**
 * The PCI devices behind host group `group`, checked viable; each is a
 * source for the manager's vfio kind (a BDF, or "edu" where a test stands
 * the emulated device in for a host one: these hosts have no IOMMU).
 */
export type VfioGroupSources = (group: number) => string[];

/** The host's answer: the group's devices from sysfs, each group checked viable. */
export function hostGroupSources(sys = '/sys'): VfioGroupSources {
  return (group) => {
    let devices: string[];
    try { devices = fs.readdirSync(`${sys}/kernel/iommu_groups/${group}/devices`).sort(); } catch {
      throw new VfioHostError('no-iommu', `IOMMU group ${group} does not exist on this host (${sys}/kernel/iommu_groups/${group}): no IOMMU, or the device is not bound to vfio-pci`);
    }
    if (!devices.length) throw new VfioHostError('invalid', `IOMMU group ${group} has no devices`);
    for (const d of devices) checkGroupViable(d, sys);
    return devices;
  };
}

/** Manager id of a VFIO source held for one container path (≤ 36 of [A-Za-z0-9_.-]). */
export function vfioDeviceId(source: string, group: number, index: number): string {
  return `vfio-${group}-${index}-${source.replace(/[^A-Za-z0-9]/g, '')}`.slice(0, 36);
}

/** What a container's block devices need: the disks to attach and what to tell the agent. */
export interface ContainerDevicePlan {
  /** Devices to attach, in the order of `devices` (disks and VFIO devices). */
  disks: Array<DeviceSpec & { kind: 'blk' | 'vfio' }>;
  /** vm_path is filled in once the disk is attached (its PCI path). */
  devices: Device[];
  /** A privileged container's host devices that were not passed into the VM (see the header). */
  hostDevicesLeftOut?: number;
}

interface SpecLike { linux?: { devices?: unknown[]; resources?: Record<string, unknown> } }

/** Disk id of a host path: ≤ 20 bytes (virtio-blk serial), the same for every container. */
export function deviceDiskId(hostPath: string): string {
  return 'x' + crypto.createHash('sha256').update(hostPath).digest('hex').slice(0, 19);
}

/**
 * Reads the spec's block-device entries and checks them against the host;
 * adds missing cgroup allow rules to `spec` (in place). Throws one
 * DeviceError for a bad entry before anything is attached.
 */
export function planContainerDevices(spec: SpecLike, vfio: { mode?: VfioMode; sources?: VfioGroupSources; sys?: string } = {}): ContainerDevicePlan {
  const plan: ContainerDevicePlan = { disks: [], devices: [] };
  const entries = spec.linux?.devices;
  if (entries === undefined) return plan;
  if (!Array.isArray(entries)) throw new DeviceError('invalid', 'linux.devices must be an array');
  if (allowsAllDevices(spec)) {
    plan.hostDevicesLeftOut = entries.filter((e) => typeof e === 'object' && e !== null && ((e as { type?: unknown }).type === 'b' || /^\/dev\/vfio\/\d+$/.test(String((e as { path?: unknown }).path)))).length;
    return plan;
  }
  const seen = new Set<string>();
  for (const e of entries) {
    if (typeof e !== 'object' || e === null) throw new DeviceError('invalid', 'a linux.devices entry is not an object');
    const { path: p, type, major, minor } = e as { path?: unknown; type?: unknown; major?: unknown; minor?: unknown };
    if (typeof p !== 'string' || !p.startsWith('/')) throw new DeviceError('invalid', `linux.devices: path ${JSON.stringify(p)} is not an absolute path`);
    const group = /^\/dev\/vfio\/(\d+)$/.exec(p) ?? (type === 'c' ? /^\/dev\/vfio\/(\d+)$/.exec(hostDevicePath('char', major, minor, vfio.sys) ?? '') : null);
    if (type === 'c' && group) {
      if (seen.has(p)) throw new DeviceError('duplicate', `linux.devices names ${p} twice`);
      seen.add(p);
      planVfioGroup(plan, p, Number(group[1]), vfio.mode ?? 'vfio', vfio.sources ?? hostGroupSources(vfio.sys));
      continue;
    }
    if (type !== 'b') continue;
    if (seen.has(p)) throw new DeviceError('duplicate', `linux.devices names ${p} twice`);
    seen.add(p);
    // Kata's way first: the host device with the entry's numbers (the container path may be anything).
    let hostPath = hostDevicePath('block', major, minor, vfio.sys);
    if (!hostPath) {
      let st: fs.Stats;
      try { st = fs.statSync(p); } catch { throw new DeviceError('invalid', `linux.devices: ${p} does not exist on the host${typeof major === 'number' ? ` and no host block device is ${String(major)}:${String(minor)}` : ''}`); }
      if (!st.isBlockDevice() && !st.isFile()) throw new DeviceError('invalid', `linux.devices: ${p} is neither a block device nor an image file`);
      if (st.isBlockDevice()) {
        const host = splitDev(st.rdev);
        if ((major !== undefined && major !== host.major) || (minor !== undefined && minor !== host.minor)) {
          throw new DeviceError('invalid', `linux.devices: ${p} is ${host.major}:${host.minor} on the host, not ${String(major)}:${String(minor)} as the spec says`);
        }
      }
      hostPath = p;
    }
    const id = deviceDiskId(hostPath);
    plan.disks.push({ kind: 'blk', id, path: hostPath, readonly: false });
    plan.devices.push({ id, type: 'blk', vm_path: '', container_path: p, options: [] });
    if (typeof major === 'number' && typeof minor === 'number') {
      const res = (spec.linux!.resources ??= {});
      const rules = (Array.isArray(res.devices) ? res.devices : (res.devices = [])) as Array<Record<string, unknown>>;
      if (!rules.some((r) => r.allow === true && r.major === major && r.minor === minor && (r.type === 'b' || r.type === 'a'))) {
        rules.push({ allow: true, type: 'b', major, minor, access: 'rwm' });
      }
    }
  }
  return plan;
}

/**
 * The host device node with numbers major:minor, as Kata's GetHostPath finds
 * it: /sys/dev/{block,char}/M:m/uevent's DEVNAME under /dev, when that node
 * exists with those numbers; else undefined.
 */
export function hostDevicePath(kind: 'block' | 'char', major: unknown, minor: unknown, sys = '/sys'): string | undefined {
  if (typeof major !== 'number' || typeof minor !== 'number' || !Number.isInteger(major) || !Number.isInteger(minor) || major < 0 || minor < 0) return undefined;
  let uevent: string;
  try { uevent = fs.readFileSync(`${sys}/dev/${kind}/${major}:${minor}/uevent`, 'utf8'); } catch { return undefined; }
  const name = /^DEVNAME=(.+)$/m.exec(uevent)?.[1];
  if (!name || name.split('/').includes('..')) return undefined;
  const dev = `/dev/${name}`;
  try {
    const st = fs.statSync(dev);
    const n = splitDev(st.rdev);
    const typeOk = kind === 'block' ? st.isBlockDevice() : st.isCharacterDevice();
    return typeOk && n.major === major && n.minor === minor ? dev : undefined;
  } catch { return undefined; }
}

/**
 * The VFIO devices of a spec's /dev/vfio/<group> entries, for a sandbox that
 * cold-plugs them (Kata's cold_plug_vfio; src/runtime/hypervisor-choice.ts):
 * the same ids and sources the container's own plan will name, so the
 * container then takes a reference instead of a hotplug. Groups are checked
 * as for hotplug (one DeviceError; nothing is attached yet). A privileged
 * container's host devices are left out here too.
 */
export function planBootVfio(spec: SpecLike, sources?: VfioGroupSources, sys?: string): Array<{ id: string; source: string }> {
  const entries = spec.linux?.devices;
  if (!Array.isArray(entries)) return [];
  const vfioOnly = entries.filter((e) => typeof e === 'object' && e !== null && (e as { type?: unknown }).type === 'c');
  const plan = planContainerDevices({ linux: { devices: vfioOnly, resources: spec.linux?.resources } }, { sources, sys });
  return plan.disks.flatMap((d) => (d.kind === 'vfio' ? [{ id: d.id, source: d.bdf }] : []));
}

/** A privileged container's device cgroup: one allow rule for every device (no type, or 'a', and no numbers). */
function allowsAllDevices(spec: SpecLike): boolean {
  const rules = spec.linux?.resources?.devices;
  if (!Array.isArray(rules)) return false;
  return rules.some((r) => typeof r === 'object' && r !== null && (r as Record<string, unknown>).allow === true &&
    ((r as Record<string, unknown>).type === undefined || (r as Record<string, unknown>).type === 'a') &&
    (r as Record<string, unknown>).major === undefined && (r as Record<string, unknown>).minor === undefined);
}

/** The manager devices and agent Devices for host group `group` (container path `p`). */
function planVfioGroup(plan: ContainerDevicePlan, p: string, group: number, mode: VfioMode, sources: VfioGroupSources): void {
  let list: string[];
  try { list = sources(group); } catch (err) {
    throw new DeviceError('invalid', `linux.devices: ${p}: ${(err as Error).message}`, { cause: err });
  }
  list.forEach((source, i) => {
    const id = vfioDeviceId(source, group, i);
    plan.disks.push({ kind: 'vfio', id, bdf: source });
    // Kata's options carry "<host BDF>=<PCI path>"; our vm_path already is the PCI path, so only the source goes along.
    plan.devices.push({ id, type: mode === 'vfio' ? 'vfio-pci' : 'vfio-pci-gk', vm_path: '', container_path: p, options: [source] });
  });
}
