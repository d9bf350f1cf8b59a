/**
 * virtio-balloon device (virtio 1.2 §5.5) for the builtin VMM: inflateq,
 * deflateq, statsq (VIRTIO_BALLOON_F_STATS_VQ), the free page reporting
 * queue (VIRTIO_BALLOON_F_PAGE_REPORTING) and VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
 * QEMU's virtio-balloon-pci does the same for QEMU sandboxes; this one is
 * transport-agnostic (src/virtio/device.ts) and runs on virtio-mmio.
 *
 * What it does with guest pages: inflated PFNs and reported ranges are
 * given back to the host through GuestRamReleaser (release.ts: MADV_REMOVE
 * on the shared memfd, MADV_DONTNEED on private RAM). Deflated pages need
 * nothing: we do not offer MUST_TELL_HOST, so the guest may touch a page
 * again at any time and gets a fresh one (§5.5.6.1).
 *
 * Host side: setTarget() writes num_pages and raises a configuration change
 * (§5.5.6: the device asks, the driver inflates or deflates at its pace and
 * reports `actual`); requestStats() hands the held statistics buffer back so
 * the driver refills it (§5.5.6.3). MUST_TELL_HOST is not offered (so the
 * §5.5.3.2 FEATURES_OK refusal never applies) nor PAGE_POISON, nor
 * FREE_PAGE_HINT (QEMU's migration aid; nothing here migrates).
 *
 * Untrusted input (a hostile or broken driver): a PFN outside guest RAM, a
 * reported range outside RAM or straddling a region end (the PCI hole), an
 * odd buffer length, a lying `actual`, garbage statistics — each is one
 * warning (the first few per kind) and a counter in `metrics`; never a
 * madvise outside the guest region (release.ts checks every range again).
 * A chain the WASM queue walker rejects (descriptor outside RAM, loops …)
 * puts the device in DEVICE_NEEDS_RESET as with the other devices.
 */
import { errorMessage } from '../../common/errors';
import { logger } from '../../common/log';
import { CHAIN_HEAD, CHAIN_IOV_FIRST, CHAIN_N_READABLE, CHAIN_N_WRITABLE, CHAIN_WORDS, Virtqueue, VirtqueueError } from '../../hot/virtqueue';
import { ConfigSpace, VIRTIO_ID_BALLOON, VIRTIO_RING_FEATURES, type ActivateContext, type VirtioDevice } from '../device';
import { NeedsResetLatch } from '../needs-reset';
import {
  BALLOON_PAGE, BalloonError, CONFIG_ACTUAL, CONFIG_NUM_PAGES, CONFIG_SIZE, queueRoles, VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
  VIRTIO_BALLOON_F_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_BALLOON_PFN_SHIFT, type BalloonQueue,
} from './constants';
import { GuestRamReleaser, nativeMadvise, type MadviseFn, type RamBacking } from './release';
import { parseStats } from './stats';

export interface BalloonMetrics {
  inflatedPages: number;
  deflatedPages: number;
  reportedBytes: number;
  /** Bytes given back to the host (inflate + reporting) and the madvise calls. */
  releasedBytes: number;
  releaseCalls: number;
  /** Untrusted input, counted (see the module header). */
  badPfns: number;
  badRanges: number;
  oddLengths: number;
  badStats: number;
  lyingActual: number;
  releaseErrors: number;
  statsUpdates: number;
  needsReset: number;
}

export interface BalloonDeviceOptions {
  /** The guest's RAM in bytes (the bound for num_pages, actual and statistics). */
  ramBytes: number;
  /** What backs the guest RAM now (release.ts picks the madvise from it); asked at every release. */
  backing: () => RamBacking;
  /** The addon's madvise; tests substitute a recorder (default: native().madvise). */
  madvise?: MadviseFn;
  queueSize?: number;
}

export interface BalloonStatsSnapshot {
  stats: Record<string, number>;
  /** When the driver last filled the buffer (ms since the epoch); 0: never. */
  at: number;
  warnings: string[];
}

/** Warnings logged per kind before only the counter moves (a hostile guest must not flood the log). */
const WARN_LIMIT = 5;

export class BalloonDevice implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_BALLOON;
  readonly queueMaxSizes: ReadonlyArray<number>;
  readonly availableFeatures = VIRTIO_RING_FEATURES | VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_DEFLATE_ON_OOM | VIRTIO_BALLOON_F_PAGE_REPORTING;
  readonly metrics: BalloonMetrics = {
    inflatedPages: 0, deflatedPages: 0, reportedBytes: 0, releasedBytes: 0, releaseCalls: 0,
    badPfns: 0, badRanges: 0, oddLengths: 0, badStats: 0, lyingActual: 0, releaseErrors: 0, statsUpdates: 0, needsReset: 0,
  };
  private readonly config = new ConfigSpace(CONFIG_SIZE);
  private readonly log = logger('virtio.balloon');
  private readonly needsReset = new NeedsResetLatch({ log: this.log, name: 'virtio-balloon', guestErrors: [VirtqueueError], metrics: this.metrics });
  private readonly warned = new Map<string, number>();
  /** The VM's RAM: opts.ramBytes until activate() learns the real size from guest memory. */
  private ramBytes: number;
  private ramPages: number;
  private roles: BalloonQueue[] = queueRoles(this.availableFeatures);
  private ctx: ActivateContext | undefined;
  private releaser: GuestRamReleaser | undefined;
  private readonly madvise: MadviseFn;
  /** The statistics buffer the device holds until it wants fresh figures (§5.5.6.3). */
  private statsHead: number | undefined;
  private statsWaiters: Array<() => void> = [];
  private lastStats: BalloonStatsSnapshot = { stats: {}, at: 0, warnings: [] };

  constructor(readonly opts: BalloonDeviceOptions) {
    if (!Number.isSafeInteger(opts.ramBytes) || opts.ramBytes <= 0 || opts.ramBytes % BALLOON_PAGE !== 0) {
      throw new BalloonError('config', `balloon: RAM of ${opts.ramBytes} bytes is not a positive multiple of 4 KiB`);
    }
    this.ramBytes = opts.ramBytes;
    this.ramPages = opts.ramBytes / BALLOON_PAGE;
    // Resolved now, so a missing binding is an error at VM start, not at the first inflate.
    this.madvise = opts.madvise ?? nativeMadvise();
    const qs = opts.queueSize ?? 128;
    this.queueMaxSizes = [qs, qs, qs, qs];
  }

  get configSize(): number { return this.config.size; }

  ackFeatures(features: bigint): void {
    this.roles = queueRoles(features);
  }

  readConfig(offset: number, out: Uint8Array): void { this.config.read(offset, out); }

  /** The driver writes `actual` (§5.5.4); every other field is the device's. */
  writeConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const p = offset + i;
      if (p >= CONFIG_ACTUAL && p < CONFIG_ACTUAL + 4) this.config.bytes[p] = data[i];
    }
    const actual = this.rawActual;
    if (actual > this.ramPages) {
      this.metrics.lyingActual++;
      this.warn('actual', `guest says ${actual} pages are in the balloon, more than the VM's ${this.ramPages}: ignored`);
    }
  }

  /** `actual` as the driver wrote it, unchecked (a lying driver may exceed RAM). */
  get rawActual(): number { return new DataView(this.config.bytes.buffer).getUint32(CONFIG_ACTUAL, true); }
  /** Pages the host asked for (num_pages). */
  get targetPages(): number { return new DataView(this.config.bytes.buffer).getUint32(CONFIG_NUM_PAGES, true); }
  /** Pages in the balloon as the driver says, or undefined when that figure is impossible (more than RAM). */
  get actualPages(): number | undefined {
    const a = this.rawActual;
    return a <= this.ramPages ? a : undefined;
  }

  /**
   * Host: the guest should keep `guestBytes` of its RAM (QEMU's `balloon`
   * value): num_pages = RAM − target, then a configuration change
   * notification (§5.5.6: the driver SHOULD then inflate or deflate).
   */
  setTarget(guestBytes: number): void {
    if (!Number.isSafeInteger(guestBytes) || guestBytes <= 0 || guestBytes > this.ramBytes) {
      throw new BalloonError('config', `balloon target ${guestBytes} bytes: must be in 1..${this.ramBytes} (the VM's RAM)`);
    }
    const pages = this.ramPages - Math.floor(guestBytes / BALLOON_PAGE);
    this.config.setU32(CONFIG_NUM_PAGES, pages);
    this.ctx?.configChanged();
  }

  /**
   * Host: fresh statistics. Returns the held buffer to the driver, which
   * refills it and gives it back (§5.5.6.3); resolves with the figures once
   * it has, or with the last ones after `timeoutMs`.
   */
  async requestStats(timeoutMs = 2000): Promise<BalloonStatsSnapshot> {
    const ctx = this.ctx;
    const qi = this.roles.indexOf('stats');
    const vq = qi >= 0 ? ctx?.queues[qi] : undefined;
    if (!ctx || !vq || this.statsHead === undefined || this.needsReset.tripped) return this.lastStats;
    const fresh = new Promise<void>((resolve) => {
      this.statsWaiters.push(resolve);
      setTimeout(resolve, timeoutMs).unref();
    });
    this.releaseHeld();
    await fresh;
    return this.lastStats;
  }

  get stats(): BalloonStatsSnapshot { return this.lastStats; }

  /** Snapshot: the held statistics buffer goes back to the driver (it refills it after the resume or restore). */
  releaseHeld(): void {
    const ctx = this.ctx;
    const qi = this.roles.indexOf('stats');
    const vq = qi >= 0 ? ctx?.queues[qi] : undefined;
    if (!ctx || !vq || this.statsHead === undefined || this.needsReset.tripped) return;
    const head = this.statsHead;
    this.statsHead = undefined;
    try {
      vq.pushUsed(head, 0);
      if (vq.needsNotification()) ctx.interrupt(qi);
    } catch (err) {
      this.fail(err);
    }
  }

  activate(ctx: ActivateContext): void {
    this.roles = queueRoles(ctx.features);
    if (!ctx.queues[0] || !ctx.queues[1]) throw new BalloonError('config', 'virtio-balloon needs its inflate and deflate queues');
    // The guest memory is the truth (a VM restored from a snapshot has the snapshot's RAM size).
    const have = ctx.memory.hot.guestBytes;
    if (have > 0 && have !== this.ramBytes) {
      this.log.warn('virtio-balloon: guest RAM differs from the configured size; using the guest\'s', { configured: this.ramBytes, guest: have });
      this.ramBytes = have;
      this.ramPages = Math.floor(have / BALLOON_PAGE);
    }
    this.ctx = ctx;
    this.releaser = new GuestRamReleaser(ctx.memory.hot, this.opts.backing, this.madvise);
    this.needsReset.clear();
    this.statsHead = undefined;
  }

  reset(): void {
    this.ctx = undefined;
    this.releaser = undefined;
    this.statsHead = undefined;
    this.needsReset.clear();
    // §5.5.4: the driver starts again from an empty balloon.
    this.config.setU32(CONFIG_ACTUAL, 0);
    for (const w of this.statsWaiters.splice(0)) w();
  }

  close(): void { this.reset(); }

  queueNotify(index: number): void {
    const ctx = this.ctx;
    const role = this.roles[index];
    const vq = ctx?.queues[index];
    if (!ctx || !vq || !role || this.needsReset.tripped) return;
    try {
      for (;;) {
        vq.disableNotification();
        let n: number;
        while ((n = vq.popBatch()) > 0) {
          for (let i = 0; i < n; i++) this.handle(ctx, vq, role, i, index);
          if (this.ctx !== ctx || this.needsReset.tripped) return;
        }
        if (!vq.enableNotification()) break;
      }
      if (role !== 'stats' && vq.needsNotification()) ctx.interrupt(index);
    } catch (err) {
      this.fail(err);
    }
  }

  /** Chain i of the last pop on a queue of `role`. */
  private handle(ctx: ActivateContext, vq: Virtqueue, role: BalloonQueue, i: number, index: number): void {
    const w = vq.chainWords, b = i * CHAIN_WORDS;
    const head = w[b + CHAIN_HEAD];
    switch (role) {
      case 'inflate':
      case 'deflate': {
        const pfns = this.readablePfns(ctx, vq, i);
        if (role === 'inflate') this.inflate(ctx, pfns);
        else this.deflate(ctx, pfns);
        // §5.5.6.2 (device requirements): the device MAY modify a page after
        // seeing its number in an inflate request and before acknowledging it
        // by using the descriptor — so the release above comes first, and the
        // guest MUST NOT touch the page until then (§5.5.6.1).
        vq.pushUsed(head, 0);
        return;
      }
      case 'stats': {
        this.takeStats(ctx, vq, i);
        // Held until requestStats(): using it is how the device asks for fresh
        // figures (§5.5.6.3, "retaining it to initiate a subsequent request").
        if (this.statsHead !== undefined) {
          // A driver that queues a second buffer gets the older one back unread.
          vq.pushUsed(this.statsHead, 0);
          if (vq.needsNotification()) ctx.interrupt(index);
        }
        this.statsHead = head;
        return;
      }
      case 'reporting':
        this.report(vq, i);
        // §5.5.6.7.2: without PAGE_POISON (never offered, so the "MUST NOT
        // modify to other than poison_val" case cannot arise) the device MAY
        // modify reported pages before acknowledging the request: release,
        // then use the descriptor.
        vq.pushUsed(head, 0);
        return;
    }
  }

  /** The le32 PFNs of chain i's device-readable buffers (odd trailing bytes counted and ignored). */
  private readablePfns(ctx: ActivateContext, vq: Virtqueue, i: number): Uint32Array {
    const w = vq.chainWords, b = i * CHAIN_WORDS, io = vq.iovWords;
    const first = w[b + CHAIN_IOV_FIRST], nr = w[b + CHAIN_N_READABLE];
    let total = 0;
    for (let k = first; k < first + nr; k++) total += io[2 * k + 1];
    const bytes = new Uint8Array(total);
    let p = 0;
    for (let k = first; k < first + nr; k++) {
      bytes.set(ctx.memory.hot.u8.subarray(io[2 * k], io[2 * k] + io[2 * k + 1]), p);
      p += io[2 * k + 1];
    }
    if (total % 4 !== 0) {
      this.metrics.oddLengths++;
      this.warn('odd', `PFN buffer of ${total} bytes is not a multiple of 4: the last ${total % 4} bytes ignored`);
    }
    const n = Math.floor(total / 4);
    const out = new Uint32Array(n);
    const v = new DataView(bytes.buffer);
    for (let k = 0; k < n; k++) out[k] = v.getUint32(4 * k, true);
    return out;
  }

  private inflate(ctx: ActivateContext, pfns: Uint32Array): void {
    // Coalesce PFNs whose pages are adjacent in the Memory into one madvise.
    // Both the guest pages and their Memory offsets must follow on: regions
    // sit back to back in the Memory, so the last page below the PCI hole
    // and the first above it are adjacent there but not in the guest.
    let runOff = -1, runLen = 0, lastPfn = -2;
    const flush = () => {
      if (runLen > 0) this.release(runOff, runLen);
      runOff = -1; runLen = 0;
    };
    for (const pfn of pfns) {
      const off = this.pageOffset(ctx, pfn);
      if (off === undefined) { flush(); lastPfn = -2; continue; }
      this.metrics.inflatedPages++;
      if (runLen > 0 && pfn === lastPfn + 1 && off === runOff + runLen) { runLen += BALLOON_PAGE; lastPfn = pfn; continue; }
      flush();
      runOff = off; runLen = BALLOON_PAGE; lastPfn = pfn;
    }
    flush();
  }

  private deflate(ctx: ActivateContext, pfns: Uint32Array): void {
    // Nothing to undo: without MUST_TELL_HOST the driver MAY re-use the
    // pages even before we acknowledge (§5.5.6.1); its next access gets a fresh page.
    for (const pfn of pfns) if (this.pageOffset(ctx, pfn) !== undefined) this.metrics.deflatedPages++;
  }

  /** Memory offset of the 4 KiB page `pfn`, or undefined (counted, warned) when it is not guest RAM. */
  private pageOffset(ctx: ActivateContext, pfn: number): number | undefined {
    const gpa = BigInt(pfn) << VIRTIO_BALLOON_PFN_SHIFT;
    const off = ctx.memory.translate(gpa, BALLOON_PAGE);
    if (off === undefined) {
      this.metrics.badPfns++;
      this.warn('pfn', `PFN 0x${pfn.toString(16)} (GPA 0x${gpa.toString(16)}) is not guest RAM: ignored`);
    }
    return off;
  }

  /** Free page reporting: every buffer of the chain is a free guest range (§5.5.6.7). */
  private report(vq: Virtqueue, i: number): void {
    const w = vq.chainWords, b = i * CHAIN_WORDS, io = vq.iovWords;
    const first = w[b + CHAIN_IOV_FIRST], n = w[b + CHAIN_N_READABLE] + w[b + CHAIN_N_WRITABLE];
    for (let k = first; k < first + n; k++) {
      const off = io[2 * k], len = io[2 * k + 1];
      // Only whole pages go back: round the start up and the end down.
      const start = Math.ceil(off / BALLOON_PAGE) * BALLOON_PAGE;
      const end = Math.floor((off + len) / BALLOON_PAGE) * BALLOON_PAGE;
      if (start !== off || end !== off + len) {
        this.metrics.oddLengths++;
        this.warn('odd', `reported range at offset 0x${off.toString(16)} of ${len} bytes is not whole 4 KiB pages: only the whole pages inside are released`);
      }
      if (end <= start) continue;
      this.metrics.reportedBytes += end - start;
      this.release(start, end - start);
    }
  }

  private release(off: number, len: number): void {
    const r = this.releaser!;
    try {
      r.release(off, len);
      this.metrics.releasedBytes += len;
      this.metrics.releaseCalls++;
    } catch (err) {
      if (err instanceof BalloonError && err.kind === 'malformed') {
        this.metrics.badRanges++;
        this.warn('range', `not released: ${err.message}`);
      } else {
        this.metrics.releaseErrors++;
        this.warn('madvise', `giving pages back failed: ${errorMessage(err)}`);
      }
    }
  }

  private takeStats(ctx: ActivateContext, vq: Virtqueue, i: number): void {
    const w = vq.chainWords, b = i * CHAIN_WORDS, io = vq.iovWords;
    const first = w[b + CHAIN_IOV_FIRST], nr = w[b + CHAIN_N_READABLE];
    const parts: Uint8Array[] = [];
    for (let k = first; k < first + nr; k++) parts.push(ctx.memory.hot.u8.subarray(io[2 * k], io[2 * k] + io[2 * k + 1]));
    const buf = Buffer.concat(parts);
    const { stats, warnings } = parseStats(buf, this.ramBytes);
    if (warnings.length) {
      this.metrics.badStats++;
      for (const m of warnings) this.warn('stats', m);
    }
    this.metrics.statsUpdates++;
    this.lastStats = { stats, at: Date.now(), warnings };
    for (const wake of this.statsWaiters.splice(0)) wake();
  }

  private warn(kind: string, msg: string): void {
    const n = (this.warned.get(kind) ?? 0) + 1;
    this.warned.set(kind, n);
    if (n <= WARN_LIMIT) this.log.warn(`virtio-balloon: ${msg}`, n === WARN_LIMIT ? { note: 'further warnings of this kind are only counted' } : undefined);
  }

  private fail(err: unknown): void {
    this.needsReset.trip(this.ctx, err);
  }
}
