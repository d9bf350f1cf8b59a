/**
 * virtio-fs device (virtio 1.2 §5.11): FUSE requests on virtqueues, served
 * by our FUSE server (server.ts) over a passthrough host directory
 * (passthrough.ts). Transport-agnostic (src/virtio/device.ts): QEMU reaches
 * it as vhost-user-fs-pci through src/vhost-user, the builtin VMM through
 * virtio-mmio.
 *
 * §5.11.2 queues: 0 is hiprio (FORGET/INTERRUPT without replies), 1..N are
 * request queues; all are served alike here — each chain is one request
 * (device-readable part) and its reply buffer (device-writable part),
 * §5.11.6. Requests run concurrently (READ/WRITE are async on libuv's pool);
 * each completion is staged on its queue's used ring and flushed once per
 * event-loop turn, so a burst of completions costs one used-idx update and
 * at most one interrupt (§2.7.7.2 via Virtqueue.needsNotification()).
 *
 * A ring the WASM walker rejects (decision 2) puts the device in
 * NEEDS_RESET via ctx.needsReset and it stops serving until reset(); a
 * malformed FUSE request inside a well-formed chain is only that request's
 * error (EINVAL/EIO reply).
 */
import { logger } from '../../common/log';
import { Virtqueue } from '../../hot/virtqueue';
import { ConfigSpace, VIRTIO_ID_FS, VIRTIO_RING_FEATURES, type ActivateContext, type VirtioDevice } from '../device';
import { NeedsResetLatch } from '../needs-reset';
import { FsError, VIRTIO_FS_CONFIG_SIZE, VIRTIO_FS_TAG_LEN } from './constants';
import { PassthroughFs, type PassthroughOptions } from './passthrough';
import { FuseServer, type FuseServerOptions } from './server';

export interface VirtioFsOptions extends PassthroughOptions, FuseServerOptions {
  /** The mount tag the guest uses (`mount -t virtiofs <tag> <dir>`), ≤ 36 bytes UTF-8. */
  tag: string;
  /** Host directory to share. */
  sharedDir: string;
  /** Request queues (num_request_queues); default 1. */
  requestQueues?: number;
  /** Max size of every queue; default 1024. */
  queueSize?: number;
}

export interface VirtioFsMetrics {
  requests: number;
  errors: number;
  malformed: number;
  inFlight: number;
  inodes: number;
  handles: number;
}

export class VirtioFsDevice implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_FS;
  readonly queueMaxSizes: ReadonlyArray<number>;
  readonly availableFeatures = VIRTIO_RING_FEATURES;
  readonly fs: PassthroughFs;
  readonly server: FuseServer;
  private readonly config = new ConfigSpace(VIRTIO_FS_CONFIG_SIZE);
  private readonly log = logger('virtio.fs');
  private ctx: ActivateContext | undefined;
  /** Bumped on every activate/reset: completions of an older cycle are dropped. */
  private generation = 0;
  /**
   * Only ring-level failures reach it (a bad FUSE request is that request's
   * error reply), so every error counts, and it keeps virtio-fs's own log
   * line: warn "device needs reset" {reason: "virtio-fs: …"}.
   */
  private readonly needsReset = new NeedsResetLatch({
    log: this.log,
    name: 'virtio-fs',
    report: (log, message) => {
      const reason = `virtio-fs: ${message}`;
      log.warn('device needs reset', { reason });
      return reason;
    },
  });
  private inFlight = 0;
  private readonly flushPending = new Set<number>();
  private closed = false;

  constructor(readonly opts: VirtioFsOptions) {
    const tag = Buffer.from(opts.tag, 'utf8');
    if (tag.length === 0 || tag.length > VIRTIO_FS_TAG_LEN) {
      throw new FsError('config', 0, `virtio-fs tag must be 1..${VIRTIO_FS_TAG_LEN} bytes, got ${tag.length}`);
    }
    const nreq = opts.requestQueues ?? 1;
    if (!Number.isInteger(nreq) || nreq < 1 || nreq > 64) throw new FsError('config', 0, `requestQueues ${nreq} out of 1..64`);
    const qs = opts.queueSize ?? 1024;
    this.queueMaxSizes = new Array<number>(1 + nreq).fill(qs);
    // §5.11.4: tag[36] (NUL padded, not NUL terminated when full), le32 num_request_queues.
    this.config.setBytes(0, tag);
    this.config.setU32(VIRTIO_FS_TAG_LEN, nreq);
    this.fs = new PassthroughFs(opts.sharedDir, opts);
    this.server = new FuseServer(this.fs, opts);
  }

  get isActive(): boolean { return this.ctx !== undefined && !this.needsReset.tripped; }

  get metrics(): VirtioFsMetrics {
    const c = this.server.counters;
    return { requests: c.requests, errors: c.errors, malformed: c.malformed, inFlight: this.inFlight, inodes: this.fs.inodes.size, handles: this.fs.handles.size };
  }

  get configSize(): number { return this.config.size; }
  ackFeatures(_features: bigint): void { /* no device-specific feature bits (no VIRTIO_FS_F_NOTIFICATION) */ }
  readConfig(offset: number, out: Uint8Array): void { this.config.read(offset, out); }
  writeConfig(_offset: number, _data: Uint8Array): void { /* §5.11.4: read-only */ }

  activate(ctx: ActivateContext): void {
    this.ctx = ctx;
    this.needsReset.clear();
    this.generation++;
    // Chains may have been posted before DRIVER_OK reached us.
    ctx.queues.forEach((q, i) => { if (q) this.process(i); });
  }

  queueNotify(index: number): void {
    if (!this.ctx || this.needsReset.tripped) return;
    this.process(index);
  }

  reset(): void {
    this.ctx = undefined;
    this.needsReset.clear();
    this.generation++;
    this.flushPending.clear();
    // FUSE state (nodeids, handles) is kept: vhost-user stops and restarts
    // rings around a VM pause without the guest re-mounting. A new driver
    // instance sends INIT again, which starts the server afresh.
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.reset();
    this.fs.close();
  }

  private process(index: number): void {
    const ctx = this.ctx!;
    const vq = ctx.queues[index];
    if (!vq) return;
    try {
      for (;;) {
        vq.disableNotification();
        let n: number;
        while ((n = vq.popBatch()) > 0) {
          for (let i = 0; i < n; i++) this.start(vq, index, i);
        }
        if (!vq.enableNotification()) break;
      }
    } catch (err) {
      this.fail(err);
    }
  }

  /** Starts one request; its chain's buffers alias guest memory until we push it used. */
  private start(vq: Virtqueue, index: number, i: number): void {
    const { head, readable, writable } = vq.buffers(i);
    const gen = this.generation;
    this.inFlight++;
    void this.server.handle(readable, writable).then((len) => {
      this.inFlight--;
      if (gen !== this.generation || this.needsReset.tripped) return; // reset meanwhile: the ring is gone
      vq.stageUsed(head, len);
      this.scheduleFlush(vq, index);
    });
  }

  private scheduleFlush(vq: Virtqueue, index: number): void {
    if (this.flushPending.has(index)) return;
    this.flushPending.add(index);
    const gen = this.generation;
    setImmediate(() => {
      this.flushPending.delete(index);
      if (gen !== this.generation || this.needsReset.tripped || !this.ctx) return;
      try {
        vq.flushUsed();
        if (vq.needsNotification()) this.ctx.interrupt(index);
      } catch (err) {
        this.fail(err);
      }
    });
  }

  private fail(err: unknown): void {
    this.needsReset.trip(this.ctx, err);
  }
}
