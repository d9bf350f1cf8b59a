/**
 * Pod resizing, as Kata does without static sandbox sizing: the VM boots
 * with default_vcpus / default_memory, and when containers with CPU or
 * memory limits (OCI linux.resources) join, it grows — vCPUs by QMP
 * device_add of the CPU model QEMU offers (query-hotpluggable-cpus), memory
 * by object-add memory-backend-memfd (share=on: our vhost-user devices map
 * every RAM region) + device_add pc-dimm — and shrinks when they leave:
 * vCPUs by device_del; memory through the balloon (its target set to what
 * the remaining containers need), because unplugging a DIMM made QEMU 7.2
 * abort here ("corrupted double-linked list", SIGABRT, with our vhost-user
 * devices; measured 2026-11-30). Without a balloon the DIMMs stay plugged,
 * with a warning. A DIMM once plugged is reused before plugging another.
 *
 * Every DIMM is one more region in the memory table QEMU sends our
 * vhost-user backends (they keep running across it, src/vhost-user); QEMU
 * allows 8 regions without CONFIGURE_MEM_SLOTS, boot RAM takes some, so
 * each growth plugs one DIMM of the whole difference (a refused plug is one
 * ResizeError).
 *
 * Under TCG vCPUs are not unplugged either (keepCpus: a vCPU unplug made
 * QEMU 7.2 crash at the next memory hotplug); they stay and are reused.
 *
 * Sizing follows Kata: vCPUs = base + Σ ceil(quota / period), memory = base
 * + Σ limit, memory in 128 MiB steps (the x86 guest's memory block size, the
 * unit Linux onlines). Beyond default_maxvcpus / default_maxmemory → a
 * clear error and nothing plugged.
 *
 * Onlining in the guest: hotplugged memory comes up online by itself
 * (kernel parameter memhp_default_state=online); hotplugged vCPUs are
 * onlined by the agent (Kata's OnlineCPUMem, src/agent/online-cpu-mem.ts).
 */
import { KataError } from '../../common/errors';
import { logger } from '../../common/log';

export class ResizeError extends KataError<'limit' | 'qmp'> {}

export const MEMORY_BLOCK_MIB = 128;

export type Qmp = (cmd: string, args?: Record<string, unknown>) => Promise<unknown>;

export interface ResizeLimits {
  baseVcpus: number;
  maxVcpus: number;
  baseMiB: number;
  maxMiB: number;
}

/** OCI linux.resources → what a container asks the VM for (Kata's rules). */
export function containerDemand(res: { cpu?: { quota?: number; period?: number }; memory?: { limit?: number } } | undefined): { vcpus: number; memoryMiB: number } {
  const q = res?.cpu?.quota ?? 0;
  const p = res?.cpu?.period ?? 0;
  const vcpus = q > 0 && p > 0 ? Math.ceil(q / p) : 0;
  const lim = res?.memory?.limit ?? 0;
  const memoryMiB = lim > 0 ? Math.ceil(lim / (1024 * 1024)) : 0;
  return { vcpus, memoryMiB };
}

interface HotCpu {
  type: string;
  props: Record<string, number>;
  'qom-path'?: string;
}

export class VmResizer {
  private readonly demands = new Map<string, { vcpus: number; memoryMiB: number }>();
  private readonly cpus: string[] = [];
  private readonly dimms: Array<{ id: string; mib: number }> = [];
  private seq = 0;
  private readonly log = logger('resize');

  constructor(private readonly qmp: Qmp, readonly limits: ResizeLimits, private readonly balloon = false,
    /** The agent's OnlineCPUMem: onlines hot-added vCPUs in the guest. */
    private readonly online?: (nbCpus: number) => Promise<unknown>,
    /**
     * Keep hot-added vCPUs when containers leave (reused by the next
     * growth). Set under TCG: after a vCPU device_del, QEMU 7.2 (TCG)
     * died with SIGSEGV at the next memory hotplug (measured here: plug,
     * unplug a vCPU, then a DIMM; each step alone or without the unplug
     * works), so a vCPU is never unplugged there.
     */
    private readonly keepCpus = false) {}

  get vcpus(): number {
    return this.limits.baseVcpus + this.cpus.length;
  }

  get memoryMiB(): number {
    return this.limits.baseMiB + this.dimms.reduce((a, d) => a + d.mib, 0);
  }

  /** The size the current containers call for (checked against the limits). */
  target(): { vcpus: number; memoryMiB: number } {
    let v = this.limits.baseVcpus;
    let m = this.limits.baseMiB;
    for (const d of this.demands.values()) {
      v += d.vcpus;
      m += d.memoryMiB;
    }
    return { vcpus: v, memoryMiB: m };
  }

  /** A container joins: grow to fit it, or refuse it whole (nothing plugged) beyond the maximum. */
  async add(id: string, demand: { vcpus: number; memoryMiB: number }): Promise<void> {
    this.demands.set(id, demand);
    const t = this.target();
    if (t.vcpus > this.limits.maxVcpus || t.memoryMiB > this.limits.maxMiB) {
      this.demands.delete(id);
      throw new ResizeError('limit', `container ${id} needs ${demand.vcpus} vCPU(s) and ${demand.memoryMiB} MiB: the sandbox would need ${t.vcpus} vCPUs / ${t.memoryMiB} MiB, beyond its maximum of ${this.limits.maxVcpus} vCPUs / ${this.limits.maxMiB} MiB (default_maxvcpus, default_maxmemory)`);
    }
    try {
      await this.apply(t);
    } catch (err) {
      this.demands.delete(id);
      throw err;
    }
  }

  /** A container leaves: shrink to what the rest need. */
  async remove(id: string): Promise<void> {
    if (!this.demands.delete(id)) return;
    await this.apply(this.target());
  }

  private async apply(t: { vcpus: number; memoryMiB: number }): Promise<void> {
    let added = 0;
    while (this.vcpus < t.vcpus) {
      await this.plugCpu();
      added++;
    }
    if (added && this.online) await this.online(added);
    if (!this.keepCpus) while (this.vcpus > t.vcpus && this.cpus.length) await this.unplug(this.cpus.pop()!);
    const want = Math.ceil(Math.max(0, t.memoryMiB - this.limits.baseMiB) / MEMORY_BLOCK_MIB) * MEMORY_BLOCK_MIB;
    const have = this.memoryMiB - this.limits.baseMiB;
    if (want > have) await this.plugMemory(want - have);
    if (this.dimms.length === 0) return;
    // Plugged memory beyond the need goes back through the balloon (see the header); none beyond: deflated.
    const keep = this.limits.baseMiB + want;
    if (this.balloon) {
      await this.qmp('balloon', { value: Math.min(keep, this.memoryMiB) * 1024 * 1024 });
    } else if (keep < this.memoryMiB) {
      this.log.warn('plugged memory stays in the VM: no balloon to return it ([hypervisor.qemu] reclaim_guest_freed_memory = true)', { pluggedMiB: this.memoryMiB - this.limits.baseMiB, neededMiB: want });
    }
  }

  private async plugCpu(): Promise<void> {
    const list = await this.qmp('query-hotpluggable-cpus') as HotCpu[];
    const free = list.filter((c) => !c['qom-path']).sort((a, b) => (a.props['socket-id'] ?? 0) - (b.props['socket-id'] ?? 0) || (a.props['core-id'] ?? 0) - (b.props['core-id'] ?? 0));
    if (!free.length) throw new ResizeError('limit', 'QEMU has no free vCPU slot (maxcpus reached)');
    const id = `hcpu${this.seq++}`;
    await this.qmp('device_add', { driver: free[0].type, id, ...free[0].props });
    this.cpus.push(id);
  }

  private async plugMemory(mib: number): Promise<void> {
    const id = `dimm${this.seq++}`;
    await this.qmp('object-add', { 'qom-type': 'memory-backend-memfd', id: `${id}-mem`, size: mib * 1024 * 1024, share: true });
    try {
      await this.qmp('device_add', { driver: 'pc-dimm', id, memdev: `${id}-mem` });
    } catch (err) {
      await this.qmp('object-del', { id: `${id}-mem` }).catch(() => undefined);
      throw new ResizeError('qmp', `memory hotplug of ${mib} MiB failed: ${(err as Error).message}`, { cause: err });
    }
    this.dimms.push({ id, mib });
  }

  private async unplug(id: string): Promise<void> {
    try {
      await this.qmp('device_del', { id });
    } catch (err) {
      this.log.warn('unplug refused; the device stays', { id, err: (err as Error).message });
    }
  }
}
