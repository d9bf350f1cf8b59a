/**
 * The sandbox's device manager, as runtime-rs's `DeviceManager`: the one
 * owner of every device a sandbox's VM has (disks, virtio-fs shares, network
 * devices), whether attached at boot or hotplugged. It
 *   - validates a device before anything is plugged (id, host path, kind),
 *   - refuses a duplicate id that describes a different device, and counts
 *     references when several holders (containers, the sandbox itself)
 *     share the same one: it is unplugged when the last holder lets go,
 *   - checks there is a free slot first, so a full bus is one clear error
 *     with nothing half-attached,
 *   - knows where each device sits (its PCI path, from the hypervisor's
 *     slot allocator, src/hypervisor/pci-slots.ts) so the agent can wait
 *     for it there instead of guessing by order.
 * The hypervisor stays the one that speaks QMP (or refuses): this module
 * calls its attach/detach methods (addDisk/removeDisk, addShare/…,
 * addNet/…) and never builds command lines.
 *
 * Kinds not hotpluggable here are said plainly: `pmem` (the NVDIMM is a
 * boot-time device of the memory plan, src/resource/memory), `vsock` (the agent
 * channel is fixed at slot 4 from boot). `vfio` goes to the hypervisor's
 * addVfio (QEMU: vfio-pci after an IOMMU group check, which on these hosts
 * without an IOMMU always refuses). The builtin VMM has no hotplug at all: its
 * virtio-mmio devices are declared on the kernel command line and the guest
 * cannot discover new ones without ACPI.
 *
 * Attach/detach calls are serialized: two containers asking for the same
 * shared device at once must not plug it twice.
 */
import * as fs from 'node:fs';
import { KataError, errorMessage } from '../../common/errors';
import type { DiskDevice, FsShare, Hypervisor, NetDevice, VfioDevice } from '../../hypervisor/hypervisor';
import { pciPath } from '../../hypervisor/pci-slots';

export class DeviceError extends KataError<'invalid' | 'duplicate' | 'unsupported' | 'full' | 'attach' | 'not-found'> {}

export type DeviceKind = 'blk' | 'fs' | 'net' | 'pmem' | 'vfio' | 'vsock';

export type DeviceSpec =
  | ({ kind: 'blk' } & DiskDevice)
  /** A virtio-fs share; `id` is its mount tag. */
  | { kind: 'fs'; id: string; path: string }
  | ({ kind: 'net' } & NetDevice)
  | { kind: 'pmem'; id: string; path: string }
  /** A host PCI device dddd:bb:dd.f, or "edu": QEMU's emulated device standing in for one in tests (hypervisor/vfio-host.ts). */
  | { kind: 'vfio'; id: string; bdf: string }
  | { kind: 'vsock'; id: string; cid: number };

/** What the manager knows of an attached device. */
export interface AttachedDevice {
  spec: DeviceSpec;
  /** Holders, in the order they took it (container ids, "sandbox"). */
  holders: string[];
  /** Kata's PCI path of the device ("0a": root-bus slot 0x0a), when it is on PCI. */
  pciPath?: string;
  /** Attached at boot (part of the VM's configuration) rather than hotplugged. */
  boot: boolean;
}

/** The holder name for devices the sandbox itself owns (the volume share, boot devices). */
export const SANDBOX_HOLDER = 'sandbox';

/** Ids become virtio-blk serials (≤ 20 bytes), virtio-fs tags (≤ 36) and QEMU ids. */
const ID_RE: Record<'blk' | 'fs' | 'net' | 'other', RegExp> = {
  blk: /^[A-Za-z0-9_-]{1,20}$/,
  fs: /^[A-Za-z0-9_.-]{1,36}$/,
  net: /^[A-Za-z0-9_-]{1,32}$/,
  other: /^[A-Za-z0-9_.-]{1,36}$/,
};

/** The hypervisor methods the manager drives. */
export type DeviceHost = Pick<Hypervisor, 'name' | 'addDisk' | 'removeDisk' | 'addShare' | 'removeShare' | 'addNet' | 'removeNet' | 'addVfio' | 'removeVfio' | 'slotOf' | 'pciPathOf' | 'freeSlots'>;

/** Same device? (A second holder must describe exactly what is attached.) */
function sameDevice(a: DeviceSpec, b: DeviceSpec): boolean {
  if (a.kind !== b.kind || a.id !== b.id) return false;
  switch (a.kind) {
    case 'blk': return b.kind === 'blk' && a.path === b.path && a.readonly === b.readonly && a.backend === b.backend;
    case 'fs': return b.kind === 'fs' && a.path === b.path;
    case 'net': return b.kind === 'net' && a.mac === b.mac && a.mtu === b.mtu;
    case 'vfio': return b.kind === 'vfio' && a.bdf === b.bdf;
    default: return false;
  }
}

function describe(s: DeviceSpec): string {
  switch (s.kind) {
    case 'blk': return `disk ${s.id} (${s.path}${s.readonly ? ', read-only' : ''})`;
    case 'fs': return `share ${s.id} (${s.path})`;
    case 'net': return `network device ${s.id} (${s.mac})`;
    default: return `${s.kind} device ${s.id}`;
  }
}

/**
 * Checks a device description against the host before anything is plugged:
 * one DeviceError naming what is wrong.
 */
export function validateDevice(s: DeviceSpec): void {
  const re = s.kind === 'blk' || s.kind === 'fs' || s.kind === 'net' ? ID_RE[s.kind] : ID_RE.other;
  if (typeof s.id !== 'string' || !re.test(s.id)) throw new DeviceError('invalid', `${s.kind} device id "${s.id}" must match ${re.source}`);
  if (s.kind === 'blk') {
    if (s.backend) return; // bytes computed in this process (a converted image's blob device)
    let st: fs.Stats;
    try { st = fs.statSync(s.path); } catch { throw new DeviceError('invalid', `disk ${s.id}: ${s.path} does not exist`); }
    if (!st.isFile() && !st.isBlockDevice()) throw new DeviceError('invalid', `disk ${s.id}: ${s.path} is neither a block device nor an image file`);
    try { fs.accessSync(s.path, s.readonly ? fs.constants.R_OK : fs.constants.R_OK | fs.constants.W_OK); } catch {
      throw new DeviceError('invalid', `disk ${s.id}: ${s.path} cannot be opened ${s.readonly ? 'for reading' : 'read-write'}`);
    }
  } else if (s.kind === 'fs') {
    let st: fs.Stats;
    try { st = fs.statSync(s.path); } catch { throw new DeviceError('invalid', `share ${s.id}: ${s.path} does not exist`); }
    if (!st.isDirectory()) throw new DeviceError('invalid', `share ${s.id}: ${s.path} is not a directory`);
  } else if (s.kind === 'net') {
    if (!Number.isInteger(s.fd) || s.fd < 0) throw new DeviceError('invalid', `network device ${s.id}: no tap fd`);
  }
}

export class DeviceManager {
  private readonly devices = new Map<string, AttachedDevice>();
  /** Serializes attach/detach (see the header). */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly hv: DeviceHost) {}

  /** Runs f after every earlier attach/detach has settled. */
  private serial<T>(f: () => Promise<T>): Promise<T> {
    const run = this.queue.then(f, f);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Records the devices a VM was started with (they are plugged by the
   * hypervisor's boot command line, not by us), held by `holders[id]` or the
   * sandbox. Call once the VM runs, so their PCI paths are known.
   */
  adoptBoot(cfg: { disks: DiskDevice[]; shares?: FsShare[]; nets?: NetDevice[]; vfio?: VfioDevice[] }, holders: Record<string, string> = {}): void {
    const add = (spec: DeviceSpec) => {
      if (this.devices.has(spec.id)) throw new DeviceError('duplicate', `device id ${spec.id} is used twice in the VM's boot devices`);
      this.devices.set(spec.id, { spec, holders: [holders[spec.id] ?? SANDBOX_HOLDER], pciPath: this.pciPathOf(spec), boot: true });
    };
    for (const d of cfg.disks) add({ kind: 'blk', ...d });
    for (const s of cfg.shares ?? []) add({ kind: 'fs', id: s.tag, path: s.path });
    for (const n of cfg.nets ?? []) add({ kind: 'net', ...n });
    for (const v of cfg.vfio ?? []) add({ kind: 'vfio', id: v.id, bdf: v.source });
  }

  /**
   * Attaches a device for `holder`, hotplugging it if it is not attached
   * yet; a second holder of the same device only takes a reference. Nothing
   * stays attached when this throws.
   */
  attach(spec: DeviceSpec, holder: string): Promise<AttachedDevice> {
    return this.serial(async () => {
      const have = this.devices.get(spec.id);
      if (have) {
        if (!sameDevice(have.spec, spec)) throw new DeviceError('duplicate', `device id ${spec.id} is already attached as ${describe(have.spec)}; cannot attach ${describe(spec)} under the same id`);
        if (have.holders.includes(holder)) throw new DeviceError('duplicate', `${holder} already holds ${describe(spec)}`);
        have.holders.push(holder);
        return have;
      }
      validateDevice(spec);
      if (this.hv.name === 'builtin') throw new DeviceError('unsupported', `cannot hotplug ${describe(spec)}: the builtin VMM's virtio-mmio devices are declared on the guest kernel command line at boot and the guest cannot discover new ones (no ACPI); attach it at boot or use qemu`);
      const free = this.hv.freeSlots?.();
      if (free !== undefined && free <= 0) throw new DeviceError('full', `cannot attach ${describe(spec)}: no free PCI slot left in the VM (${this.devices.size} devices attached)`);
      try {
        await this.plug(spec);
      } catch (err) {
        if (err instanceof DeviceError) throw err;
        throw new DeviceError(/no free PCI slot|PCIe root ports are in use/.test(errorMessage(err)) ? 'full' : 'attach', `cannot attach ${describe(spec)}: ${errorMessage(err)}`, { cause: err });
      }
      const dev: AttachedDevice = { spec, holders: [holder], pciPath: this.pciPathOf(spec), boot: false };
      this.devices.set(spec.id, dev);
      return dev;
    });
  }

  /**
   * Attaches several devices for one holder, all or nothing: on a failure
   * the ones this call attached are detached again before the error goes on.
   */
  async attachAll(specs: DeviceSpec[], holder: string): Promise<AttachedDevice[]> {
    const seen = new Set<string>();
    for (const s of specs) {
      if (seen.has(s.id)) throw new DeviceError('duplicate', `device id ${s.id} appears twice in one request`);
      seen.add(s.id);
    }
    const done: AttachedDevice[] = [];
    try {
      for (const s of specs) done.push(await this.attach(s, holder));
    } catch (err) {
      for (const d of done.reverse()) await this.detach(d.spec.id, holder).catch(() => undefined);
      throw err;
    }
    return done;
  }

  /**
   * `holder` lets go of a device; the last holder's detach unplugs it (its
   * slot is freed by the hypervisor once the guest released it). Returns
   * whether it was unplugged. Unknown ids and holders are a no-op (teardown
   * paths call this unconditionally).
   */
  detach(id: string, holder: string): Promise<boolean> {
    return this.serial(async () => {
      const dev = this.devices.get(id);
      if (!dev) return false;
      const i = dev.holders.indexOf(holder);
      if (i < 0) return false;
      dev.holders.splice(i, 1);
      if (dev.holders.length) return false;
      this.devices.delete(id);
      await this.unplug(dev.spec);
      return true;
    });
  }

  /** Every device `holder` holds is let go (a container removed). */
  async detachHolder(holder: string): Promise<void> {
    for (const [id, d] of [...this.devices]) if (d.holders.includes(holder)) await this.detach(id, holder);
  }

  get(id: string): AttachedDevice | undefined {
    return this.devices.get(id);
  }

  list(): AttachedDevice[] {
    return [...this.devices.values()];
  }

  private pciPathOf(spec: DeviceSpec): string | undefined {
    if (spec.kind !== 'blk' && spec.kind !== 'fs' && spec.kind !== 'net' && spec.kind !== 'vfio') return undefined;
    // A device behind a root port (q35 VFIO) has a two-level path only the hypervisor knows.
    if (this.hv.pciPathOf) return this.hv.pciPathOf(spec.kind, spec.id);
    const slot = this.hv.slotOf?.(spec.kind, spec.id);
    return slot === undefined ? undefined : pciPath(slot);
  }

  private async plug(spec: DeviceSpec): Promise<void> {
    const hv = this.hv;
    switch (spec.kind) {
      case 'blk': {
        const { kind: _k, ...d } = spec;
        await hv.addDisk(d);
        return;
      }
      case 'fs':
        if (!hv.addShare) throw new DeviceError('unsupported', `the ${hv.name} hypervisor cannot hotplug virtio-fs shares (virtio-mmio has no hotplug without ACPI); use qemu`);
        await hv.addShare({ tag: spec.id, path: spec.path });
        return;
      case 'net': {
        if (!hv.addNet) throw new DeviceError('unsupported', `the ${hv.name} hypervisor cannot hotplug network devices; use qemu`);
        const { kind: _k, ...n } = spec;
        await hv.addNet(n);
        return;
      }
      case 'pmem':
        throw new DeviceError('unsupported', `pmem device ${spec.id}: NVDIMMs are boot-time devices of the memory plan ([hypervisor.qemu] disable_image_nvdimm); they are not hotplugged`);
      case 'vsock':
        throw new DeviceError('unsupported', `vsock device ${spec.id}: the agent channel is fixed from boot (slot 04); a second vsock device is not supported`);
      case 'vfio':
        if (!hv.addVfio) throw new DeviceError('unsupported', `vfio device ${spec.id} (${spec.bdf}): the ${hv.name} hypervisor cannot assign host PCI devices; use qemu`);
        await hv.addVfio(spec.id, spec.bdf);
        return;
    }
  }

  private async unplug(spec: DeviceSpec): Promise<void> {
    if (spec.kind === 'blk') await this.hv.removeDisk(spec.id);
    else if (spec.kind === 'fs') await this.hv.removeShare?.(spec.id);
    else if (spec.kind === 'net') await this.hv.removeNet?.(spec.id);
    else if (spec.kind === 'vfio') await this.hv.removeVfio?.(spec.id);
  }
}
