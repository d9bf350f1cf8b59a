/**
 * Pod resizing, as Kata does without static sandbox sizing: the VM boots
 * with default_vcpus / default_memory, and when containers with CPU or
 * memory limits (OCI linux.resources) join, it grows — vCPUs by QMP
 * device_add of the CPU model QEMU offers (query-hotpluggable-cpus), memory
 * in one of two ways ([hypervisor.qemu] memory_hotplug) — and shrinks when
 * they leave:
 *
 *   virtio-mem (default)  the VM booted with one virtio-mem device of
 *     maxmem - base, requested-size 0 (src/hypervisor/memory-plan.ts).
 *     Growing and shrinking are both `qom-set requested-size`; the guest
 *     driver plugs or unplugs blocks (onlined movable by the guest kernel,
 *     no agent call), and QEMU discards unplugged blocks (fallocate punch
 *     hole on the memfd): the host gets the memory back. We poll the
 *     device's `size` until it reaches the request: a grow the guest does
 *     not finish in time is one ResizeError and the request goes back; a
 *     shrink the guest cannot finish (unmovable pages in the way) is a
 *     warning, the lower request stays and is set again every retryMs
 *     until the guest gets there (retryShrink).
 *   dimm  object-add memory-backend-memfd (share=on: our vhost-user
 *     devices map every RAM region) + device_add pc-dimm; shrinking goes
 *     through the balloon (its target set to what the remaining containers
 *     need), because unplugging a DIMM made QEMU 7.2 abort here ("corrupted
 *     double-linked list", SIGABRT, with our vhost-user devices; measured
 *     2026-11-30). Without a balloon the DIMMs stay plugged, with a
 *     warning. A DIMM once plugged is reused before plugging another.
 *
 * Every DIMM is one more region in the memory table QEMU sends our
 * vhost-user backends (they keep running across it, src/vhost-user); QEMU
 * allows 8 regions without CONFIGURE_MEM_SLOTS, boot RAM takes some, so
 * each growth plugs one DIMM of the whole difference (a refused plug is one
 * ResizeError). The virtio-mem device is one region from boot: resizing it
 * sends no new table.
 *
 * vCPUs shrink by device_del, except under TCG (keepCpus: a vCPU unplug
 * made QEMU 7.2 crash at the next DIMM hotplug); they stay and are reused.
 *
 * Sizing follows Kata: vCPUs = base + Σ ceil(quota / period), memory = base
 * + Σ limit, memory in 128 MiB steps (the x86 guest's memory block size, the
 * unit Linux onlines). Beyond default_maxvcpus / default_maxmemory → a
 * clear error and nothing plugged.
 *
 * Onlining in the guest: hotplugged memory comes up online by itself
 * (kernel parameter memhp_default_state=online for DIMMs, online_movable
 * with virtio-mem); hotplugged vCPUs are onlined by the agent (Kata's
 * OnlineCPUMem with cpu_only, src/agent/online-cpu-mem.ts).
 */
import { KataError } from '../../common/errors';
import { logger } from '../../common/log';

export class ResizeError extends KataError<'limit' | 'qmp' | 'timeout'> {}

export const MEMORY_BLOCK_MIB = 128;
const MIB = 1024 * 1024;

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

/** How memory is resized: the boot-time virtio-mem device, or DIMMs when absent. */
export interface MemoryResizeOptions {
  /** The virtio-mem device (QOM id under /machine/peripheral, its size). */
  virtioMem?: { id: string; sizeMiB: number };
  /** How long the guest may take to plug a growth (default 30 s: TCG under load). */
  growTimeoutMs?: number;
  /** How long a shrink is waited for before it is left to the guest driver with a warning (default 30 s: unplugging 512 MiB took ~10 s under TCG at load 10). */
  shrinkTimeoutMs?: number;
  /** Poll interval of the device's size (default 50 ms). */
  pollMs?: number;
  /** After an unfinished shrink, how often the request is set again (default 30 s). */
  retryMs?: number;
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
    private readonly keepCpus = false,
    private readonly mem: MemoryResizeOptions = {}) {}

  /** virtio-mem: what the device is asked for and what the guest has plugged (MiB), as last seen. */
  private requestedMiB = 0;
  private pluggedMiB = 0;
  /** One resize at a time: a join and a leave racing would otherwise interleave qom-sets and waits. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Re-asserts an unfinished shrink (see retryShrink). */
  private retryTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** The last virtio-mem resize: from and to (MiB), how long until the guest's size reached it (or the wait ended), and whether it did. */
  lastMemoryResize: { fromMiB: number; toMiB: number; ms: number; reached: boolean } | undefined;

  get vcpus(): number {
    return this.limits.baseVcpus + this.cpus.length;
  }

  /** The VM's RAM now (virtio-mem: the larger of the request and what the guest still has plugged). */
  get memoryMiB(): number {
    if (this.mem.virtioMem) return this.limits.baseMiB + Math.max(this.requestedMiB, this.pluggedMiB);
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
      await this.serial(() => this.apply(this.target()));
    } catch (err) {
      this.demands.delete(id);
      throw err;
    }
  }

  /** A container leaves: shrink to what the rest need. */
  async remove(id: string): Promise<void> {
    if (!this.demands.delete(id)) return;
    await this.serial(() => this.apply(this.target()));
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
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
    if (this.mem.virtioMem) return this.resizeVirtioMem(Math.min(want, this.mem.virtioMem.sizeMiB));
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

  /**
   * Sets the virtio-mem device's requested-size and waits until the guest
   * has plugged or unplugged to it (its `size` property; QEMU also emits
   * MEMORY_DEVICE_SIZE_CHANGE, but polling needs no event plumbing and sees
   * the same value).
   */
  private async resizeVirtioMem(wantMiB: number): Promise<void> {
    const dev = this.mem.virtioMem!;
    const qomPath = `/machine/peripheral/${dev.id}`;
    this.cancelRetry();
    if (wantMiB === this.requestedMiB && wantMiB === this.pluggedMiB) return;
    const before = this.requestedMiB;
    const set = async (mib: number) => {
      try {
        await this.qmp('qom-set', { path: qomPath, property: 'requested-size', value: mib * MIB });
      } catch (err) {
        throw new ResizeError('qmp', `virtio-mem: setting ${dev.id} requested-size to ${mib} MiB failed: ${(err as Error).message}`, { cause: err });
      }
      this.requestedMiB = mib;
    };
    await set(wantMiB);
    const grow = wantMiB > before;
    const timeoutMs = grow ? this.mem.growTimeoutMs ?? 30000 : this.mem.shrinkTimeoutMs ?? 30000;
    const t0 = Date.now();
    for (;;) {
      const size = await this.qmp('qom-get', { path: qomPath, property: 'size' }).catch(() => undefined);
      if (typeof size === 'number' && Number.isFinite(size) && size >= 0) this.pluggedMiB = size / MIB;
      if (this.pluggedMiB === wantMiB) break;
      if (Date.now() - t0 >= timeoutMs) {
        if (grow) {
          // The container that asked is refused (add() drops its demand): take the request back too.
          await set(before).catch((err) => this.log.warn('virtio-mem: cannot take the request back', { device: dev.id, err: (err as Error).message }));
          throw new ResizeError('timeout', `virtio-mem: the guest plugged ${this.pluggedMiB} of the ${wantMiB} MiB requested within ${timeoutMs} ms (is the guest's virtio_mem driver loaded?); request set back to ${before} MiB`);
        }
        this.lastMemoryResize = { fromMiB: before, toMiB: wantMiB, ms: Date.now() - t0, reached: false };
        this.log.warn('virtio-mem: the guest has not unplugged down to the request (memory in use that it cannot move); the request stays and is set again every so often', { device: dev.id, requestedMiB: wantMiB, pluggedMiB: this.pluggedMiB, waitedMs: timeoutMs });
        this.retryShrink(qomPath);
        return;
      }
      await new Promise((res) => setTimeout(res, this.mem.pollMs ?? 50));
    }
    this.lastMemoryResize = { fromMiB: before, toMiB: wantMiB, ms: Date.now() - t0, reached: true };
    this.log.info('virtio-mem resized', { device: dev.id, fromMiB: before, toMiB: wantMiB, ms: this.lastMemoryResize.ms });
  }

  /**
   * An unfinished shrink: every retryMs, if the guest still has more than
   * asked, set the same request again. Linux's driver does not come back to
   * a request it gave up on by itself (measured: 240 s with nothing
   * unplugged after the guest could again), but a config change (QEMU
   * notifies one for every requested-size set, even the same value) makes
   * it try at once (measured: unplugged within 1 s). Ends when the size is
   * reached, at the next resize, or at stop().
   */
  private retryShrink(qomPath: string): void {
    const tick = () => {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        void this.serial(async () => {
          if (this.stopped || this.retryTimer) return;
          const size = await this.qmp('qom-get', { path: qomPath, property: 'size' }).catch(() => undefined);
          if (typeof size === 'number' && Number.isFinite(size) && size >= 0) this.pluggedMiB = size / MIB;
          if (this.pluggedMiB <= this.requestedMiB) {
            this.log.info('virtio-mem: the guest finished an earlier shrink', { requestedMiB: this.requestedMiB });
            return;
          }
          await this.qmp('qom-set', { path: qomPath, property: 'requested-size', value: this.requestedMiB * MIB }).catch(() => undefined);
          if (!this.stopped) tick();
        });
      }, this.mem.retryMs ?? 30000);
      this.retryTimer.unref();
    };
    tick();
  }

  private cancelRetry(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
  }

  /** The VM is going away: no more retries. */
  stop(): void {
    this.stopped = true;
    this.cancelRetry();
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
