/**
 * A running sandbox's memory management, in the process that owns its VM:
 * the periodic page scanner pass (scanner.ts) with its event-loop delay
 * measured, the balloon (balloon-control.ts: QEMU's over QMP, or the
 * builtin VMM's own device), and the mem.sock kata-ctl talks to
 * (ctl-socket.ts).
 *
 * Guest numbers are untrusted: balloon sizes and guest memory statistics
 * come from the guest driver (through QEMU, or our device), and a figure outside the VM's
 * RAM is reported as a warning, never acted on.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { KataError, errorMessage } from '../../common/errors';
import { logger } from '../../common/log';
import { PageScanner, type ScanResult, type ScanSource } from './scanner';
import { serveMemoryCtl, type MemoryCtlServer, type MemoryRequest } from './ctl-socket';
import { VmResizer, containerDemand, type ResizeLimits, type MemoryResizeOptions } from './resize';
import { holdProcessTrim } from './process-trim';
import { qmpBalloon, type BalloonControl } from './balloon-control';

export class SandboxMemoryError extends KataError<'config' | 'unavailable'> {}

const MIB = 1024 * 1024;

export interface SandboxMemoryOptions {
  id: string;
  dir: string;
  memoryMiB: number;
  /** Guest RAM as the runtime maps it; undefined where there is none to read (builtin VMM not wired). */
  source?: ScanSource;
  /** QMP of the VM (balloon, resizing); undefined: none (the builtin VMM). */
  qmp?: (cmd: string, args?: Record<string, unknown>) => Promise<unknown>;
  /** The balloon, when not QEMU's over `qmp` (the builtin VMM's device: balloon-control.ts deviceBalloon). */
  balloonControl?: BalloonControl;
  balloon: boolean;
  scanner: { enabled: boolean; rateMiB: number; intervalSec: number };
  /** Stopped with the sandbox (the KSM throttler). */
  companions?: Array<{ stop(): void }>;
  /** Hotplug room (default_maxvcpus / default_maxmemory above the boot size): containers' limits resize the VM. */
  resize?: ResizeLimits;
  /** The agent's OnlineCPUMem for hot-added vCPUs. */
  onlineCpus?: (nbCpus: number) => Promise<unknown>;
  /**
   * Grow memory by DIMM hotplug too (on in the runtime). It was off while our
   * vhost-user backends reset their device on QEMU's new memory table after a
   * hotplug (the agent's vsock channel died); they now carry on
   * (src/vhost-user/backend.ts), checked in test/integration/memory-resize.
   */
  memoryHotplug?: boolean;
  /** Never unplug hot-added vCPUs (TCG: resize.ts keepCpus says why). */
  keepCpus?: boolean;
  /** How memory resizes (the virtio-mem device, else DIMMs; resize.ts). */
  memoryResize?: MemoryResizeOptions;
}

export interface ScanReport extends Omit<ScanResult, 'fingerprints' | 'counts'> {
  at: string;
  /** Event-loop delay while the pass ran (this process serves the VM's devices). */
  eventLoopDelayMaxMs: number;
  eventLoopDelayP99Ms: number;
  /** base64 of the sorted fingerprints (u64 LE) and their counts (u32 LE), for kata-ctl's cross-sandbox merge. */
  fingerprints: string;
  counts: string;
}

export class SandboxMemory {
  private scanner: PageScanner | undefined;
  private last: ScanReport | undefined;
  private timer: NodeJS.Timeout | undefined;
  private ctl: MemoryCtlServer | undefined;
  private inflight: Promise<ScanReport> | undefined;
  /** This process's malloc trimming, held while the sandbox runs (process-trim.ts). */
  private trim: { stop(): void } | undefined;
  private readonly log = logger('memory');
  readonly resizer: VmResizer | undefined;
  private readonly balloonCtl: BalloonControl | undefined;

  private constructor(private readonly o: SandboxMemoryOptions) {
    this.balloonCtl = o.balloon ? (o.balloonControl ?? (o.qmp ? qmpBalloon(o.qmp) : undefined)) : undefined;
    if (o.resize && o.qmp) this.resizer = new VmResizer(o.qmp, o.resize, o.balloon, o.onlineCpus, o.keepCpus, o.memoryResize);
  }

  /** A container with OCI linux.resources joins: the VM grows to fit (or the container is refused beyond the maximum). */
  async containerJoins(id: string, resources: Parameters<typeof containerDemand>[0]): Promise<void> {
    if (!this.resizer) return;
    const d = containerDemand(resources);
    if (!this.o.memoryHotplug) d.memoryMiB = 0;
    if (d.vcpus === 0 && d.memoryMiB === 0) return;
    await this.resizer.add(id, d);
    this.log.info('sandbox resized', { sandbox: this.o.id, container: id, vcpus: this.resizer.vcpus, memoryMiB: this.resizer.memoryMiB });
  }

  /** A container left: the VM shrinks to what the others need (best effort). */
  async containerLeaves(id: string): Promise<void> {
    await this.resizer?.remove(id).catch((err) => this.log.warn('cannot shrink the sandbox', { sandbox: this.o.id, container: id, err: errorMessage(err) }));
  }

  static async start(o: SandboxMemoryOptions): Promise<SandboxMemory> {
    const m = new SandboxMemory(o);
    if (o.source) m.scanner = new PageScanner(o.source, { rateBytesPerSec: o.scanner.rateMiB * MIB });
    await m.balloonCtl?.start?.().catch((err) => m.log.warn('balloon statistics unavailable', { sandbox: o.id, err: errorMessage(err) }));
    m.ctl = await serveMemoryCtl(o.dir, (req) => m.handle(req));
    m.trim = holdProcessTrim();
    if (o.scanner.enabled && m.scanner) {
      const tick = () => {
        m.timer = setTimeout(() => void m.scan().catch((err) => m.log.warn('page scan failed', { sandbox: o.id, err: errorMessage(err) })).finally(tick), o.scanner.intervalSec * 1000);
        m.timer.unref();
      };
      // First pass soon after boot, then every interval.
      m.timer = setTimeout(() => void m.scan().catch(() => undefined).finally(tick), 1000);
      m.timer.unref();
    }
    return m;
  }

  private async handle(req: MemoryRequest): Promise<Record<string, unknown>> {
    if (req.op === 'scan') {
      if (!this.scanner) throw new SandboxMemoryError('unavailable', 'this sandbox\'s guest RAM is not mapped by the runtime: no page scanner');
      const r = req.fresh || !this.last ? await this.scan() : this.last;
      return { scan: r };
    }
    return { balloon: await this.balloon(req.setMiB) };
  }

  /** One pass now (joins a pass already running). */
  scan(): Promise<ScanReport> {
    if (!this.scanner) return Promise.reject(new SandboxMemoryError('unavailable', 'no page scanner'));
    this.inflight ??= this.runScan().finally(() => { this.inflight = undefined; });
    return this.inflight;
  }

  private async runScan(): Promise<ScanReport> {
    const h = monitorEventLoopDelay({ resolution: 5 });
    h.enable();
    let r: ScanResult;
    try {
      r = await this.scanner!.scan();
    } finally {
      h.disable();
    }
    const { fingerprints, counts, ...rest } = r;
    this.last = {
      ...rest, at: new Date().toISOString(),
      eventLoopDelayMaxMs: h.max / 1e6, eventLoopDelayP99Ms: h.percentile(99) / 1e6,
      fingerprints: Buffer.from(fingerprints.buffer, fingerprints.byteOffset, fingerprints.byteLength).toString('base64'),
      counts: Buffer.from(counts.buffer, counts.byteOffset, counts.byteLength).toString('base64'),
    };
    this.log.debug('page scan', { sandbox: this.o.id, residentPages: r.residentPages, zeroPages: r.zeroPages, duplicatePages: r.duplicatePages, ms: Math.round(r.durationMs) });
    return this.last;
  }

  /** Reads the balloon, or sets the guest's target size first. */
  async balloon(setMiB?: number): Promise<Record<string, unknown>> {
    const ctl = this.balloonCtl;
    if (!ctl) throw new SandboxMemoryError('unavailable', 'this sandbox has no balloon (reclaim_guest_freed_memory = true in [hypervisor.qemu], or [hypervisor.builtin] for the builtin VMM, adds one)');
    // The VM's RAM now: boot size plus hot-added DIMMs (a guest that reports
    // more than this is lying or broken).
    const ram = this.resizer?.memoryMiB ?? this.o.memoryMiB;
    if (setMiB !== undefined) {
      if (!Number.isFinite(setMiB) || setMiB <= 0) throw new SandboxMemoryError('config', `balloon target ${String(setMiB)} MiB: a positive number of MiB is required`);
      if (setMiB > ram) throw new SandboxMemoryError('config', `balloon target ${setMiB} MiB is beyond the VM's ${ram} MiB of RAM`);
      await ctl.setTarget(setMiB * MIB);
    }
    const q = await ctl.query();
    const warnings: string[] = [...(q.warnings ?? [])];
    let actualMiB: number | undefined = typeof q.actualBytes === 'number' ? q.actualBytes / MIB : undefined;
    if (actualMiB === undefined || !(actualMiB > 0) || actualMiB > ram) {
      warnings.push(`guest reported a balloon size of ${String(q.actualBytes)} bytes, outside the VM's ${ram} MiB: ignored`);
      actualMiB = undefined;
    }
    const stats: Record<string, number> = {};
    const raw = q.stats && typeof q.stats === 'object' && !Array.isArray(q.stats) ? q.stats as Record<string, unknown> : {};
    for (const [k, v] of Object.entries(raw)) {
      if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) continue; // -1: the guest did not report it
      // Byte counts beyond the VM's RAM are lies (or a broken driver); event counters are not bounded.
      if (/memory|cache/.test(k) && v > ram * MIB) {
        warnings.push(`guest statistic ${k} = ${v} bytes exceeds the VM's RAM: ignored`);
        continue;
      }
      stats[k] = v;
    }
    if (stats['stat-free-memory'] !== undefined && stats['stat-total-memory'] !== undefined && stats['stat-free-memory'] > stats['stat-total-memory']) {
      warnings.push('guest reports more free memory than total: statistics ignored');
      for (const k of Object.keys(stats)) delete stats[k];
    }
    for (const w of warnings) this.log.warn(w, { sandbox: this.o.id });
    return { ramMiB: ram, actualMiB, targetMiB: setMiB, stats, warnings, ...(q.counters ? { counters: q.counters } : {}) };
  }

  async close(): Promise<void> {
    this.resizer?.stop();
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.scanner?.stop();
    for (const c of this.o.companions ?? []) c.stop();
    this.trim?.stop();
    await this.inflight?.catch(() => undefined);
    await this.ctl?.close();
  }
}
