/**
 * virtio-net device (virtio 1.2 §5.1), one queue pair: queue 0 receiveq
 * (host → guest), queue 1 transmitq (guest → host). No offloads: the only
 * device feature offered is VIRTIO_NET_F_MAC (§5.1.3), the MAC in config
 * space (§5.1.4 struct virtio_net_config: mac[6], status, max_virtqueue_pairs,
 * mtu). With VERSION_1 every buffer starts with the 12-byte struct
 * virtio_net_hdr (§5.1.6: flags, gso_type, hdr_len, gso_size, csum_start,
 * csum_offset, num_buffers); we send it zeroed (no checksum/GSO) with
 * num_buffers 1, and ignore what the driver puts in it on tx (no offloads
 * negotiated, so it must be zero anyway).
 *
 * Firecracker-style roles: the device model only moves frames between the
 * queues and a NetBackend (backend.ts): a tap through the native addon
 * (tap.ts) or a test double. Frames from the backend wait in a bounded
 * queue until the guest posts rx buffers; beyond it they are dropped (a NIC
 * drops when its ring is full). Guest input is hostile: a malformed chain
 * puts the device in DEVICE_NEEDS_RESET, oversize frames are dropped.
 */
import { KataError, errorMessage } from '../../common/errors';
import { logger } from '../../common/log';
import { VirtqueueError, type Virtqueue } from '../../hot/virtqueue';
import { ConfigSpace, VIRTIO_ID_NET, VIRTIO_RING_FEATURES, type ActivateContext, type VirtioDevice } from '../device';
import { NeedsResetLatch } from '../needs-reset';
import type { NetBackend } from './backend';

export type NetErrorKind = 'config' | 'malformed' | 'io';
export class NetError extends KataError<NetErrorKind> {}

/** §5.1.3 feature bits. */
export const VIRTIO_NET_F_MAC = 1n << 5n;
export const VIRTIO_NET_F_STATUS = 1n << 16n;
/** §5.1.4 status bit. */
export const VIRTIO_NET_S_LINK_UP = 1;
/** §5.1.6 header size with VERSION_1 (num_buffers always present). */
export const NET_HDR_SIZE = 12;
export const RX_Q = 0, TX_Q = 1;
/** Largest frame we move: 1514-byte Ethernet plus a VLAN tag (no GSO). */
export const MAX_FRAME = 1518;
const DEFAULT_RX_BACKLOG = 256;

export interface NetDeviceOptions {
  /** "aa:bb:cc:dd:ee:ff"; default a locally administered address. */
  mac?: string;
  backend: NetBackend;
  queueSize?: number;
  /** Frames from the backend kept while the guest has no rx buffers. */
  rxBacklog?: number;
}

export interface NetMetrics { txFrames: number; txBytes: number; rxFrames: number; rxBytes: number; rxDropped: number; txDropped: number; needsReset: number }

export function parseMac(mac: string): Uint8Array {
  const m = /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i.exec(mac);
  if (!m) throw new NetError('config', `bad MAC address ${JSON.stringify(mac)}`);
  const b = Uint8Array.from(m.slice(1).map((x) => parseInt(x, 16)));
  if (b[0] & 1) throw new NetError('config', `MAC ${mac} is a multicast address`);
  return b;
}

export class NetDevice implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_NET;
  readonly queueMaxSizes: ReadonlyArray<number>;
  readonly availableFeatures = VIRTIO_RING_FEATURES | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;
  readonly mac: Uint8Array;
  readonly metrics: NetMetrics = { txFrames: 0, txBytes: 0, rxFrames: 0, rxBytes: 0, rxDropped: 0, txDropped: 0, needsReset: 0 };
  private readonly config = new ConfigSpace(12);
  private readonly log = logger('virtio.net');
  private readonly backlog: Buffer[] = [];
  private readonly rxBacklog: number;
  private ctx: ActivateContext | undefined;
  /** A malformed rx/tx chain or ring: VirtqueueError from the walker, NetError 'malformed' from processRx/processTx. */
  private readonly needsReset = new NeedsResetLatch({ log: this.log, name: 'virtio-net', guestErrors: [VirtqueueError, NetError], metrics: this.metrics });
  private closed = false;

  constructor(private readonly opts: NetDeviceOptions) {
    this.mac = parseMac(opts.mac ?? '02:6b:74:73:00:01');
    this.config.setBytes(0, this.mac);
    this.config.setU16(6, VIRTIO_NET_S_LINK_UP);
    this.config.setU16(8, 1); // max_virtqueue_pairs
    const qs = opts.queueSize ?? 256;
    this.queueMaxSizes = [qs, qs];
    this.rxBacklog = opts.rxBacklog ?? DEFAULT_RX_BACKLOG;
    opts.backend.onFrame((f) => this.fromBackend(f));
  }

  get backend(): NetBackend { return this.opts.backend; }
  get macString(): string { return [...this.mac].map((b) => b.toString(16).padStart(2, '0')).join(':'); }

  get configSize(): number { return this.config.size; }
  ackFeatures(_features: bigint): void { /* MAC/STATUS change nothing on the data path */ }
  readConfig(offset: number, out: Uint8Array): void { this.config.read(offset, out); }
  writeConfig(_offset: number, _data: Uint8Array): void { /* VIRTIO_NET_F_CTRL_MAC_ADDR not offered: read-only */ }

  activate(ctx: ActivateContext): void {
    if (!ctx.queues[RX_Q] || !ctx.queues[TX_Q]) throw new NetError('config', 'virtio-net needs its receive and transmit queues');
    this.ctx = ctx;
    this.needsReset.clear();
  }

  queueNotify(index: number): void {
    if (!this.ctx || this.needsReset.tripped) return;
    try {
      if (index === TX_Q) this.processTx(this.ctx);
      else if (index === RX_Q) this.processRx(this.ctx);
    } catch (err) {
      this.fail(err);
    }
  }

  reset(): void {
    this.ctx = undefined;
    this.needsReset.clear();
    this.backlog.length = 0;
  }

  close(): void {
    this.reset();
    if (!this.closed) { this.closed = true; this.opts.backend.close(); }
  }

  // guest → host
  private processTx(ctx: ActivateContext): void {
    const vq = ctx.queues[TX_Q]!;
    for (;;) {
      vq.disableNotification();
      let n: number;
      while ((n = vq.popBatch()) > 0) {
        for (let i = 0; i < n; i++) {
          const b = vq.buffers(i);
          if (b.writable.length) throw new NetError('malformed', `tx chain ${b.head} has device-writable buffers`);
          const all = b.readable.length === 1 ? b.readable[0] : Buffer.concat(b.readable);
          if (all.length < NET_HDR_SIZE) throw new NetError('malformed', `tx chain ${b.head}: ${all.length} bytes, shorter than virtio_net_hdr`);
          const frame = all.subarray(NET_HDR_SIZE);
          if (frame.length > MAX_FRAME || frame.length < 14) this.metrics.txDropped++;
          else {
            // The backend must copy or finish with the frame before returning: it aliases guest memory.
            try { this.opts.backend.send(frame); this.metrics.txFrames++; this.metrics.txBytes += frame.length; }
            catch (err) { this.metrics.txDropped++; this.log.warn('backend send failed', { err: errorMessage(err) }); }
          }
          vq.stageUsed(b.head, 0);
        }
        vq.flushUsed();
      }
      if (!vq.enableNotification()) break;
    }
    if (vq.needsNotification()) ctx.interrupt(TX_Q);
  }

  // host → guest
  private fromBackend(frame: Buffer): void {
    if (frame.length > MAX_FRAME) { this.metrics.rxDropped++; return; }
    if (this.backlog.length >= this.rxBacklog) { this.metrics.rxDropped++; return; }
    this.backlog.push(Buffer.from(frame));
    if (this.ctx && !this.needsReset.tripped) {
      try { this.processRx(this.ctx); } catch (err) { this.fail(err); }
    }
  }

  private processRx(ctx: ActivateContext): void {
    const vq: Virtqueue = ctx.queues[RX_Q]!;
    let delivered = 0;
    while (this.backlog.length > 0) {
      if (vq.popBatch(1) === 0) {
        // Out of buffers: ask for a kick when the guest posts more.
        if (!vq.enableNotification()) break;
        continue;
      }
      const b = vq.buffers(0);
      if (b.readable.length) throw new NetError('malformed', `rx chain ${b.head} has device-readable buffers`);
      const frame = this.backlog[0];
      const cap = b.writable.reduce((a, x) => a + x.length, 0);
      if (cap < NET_HDR_SIZE + frame.length) {
        // No MRG_RXBUF: a buffer must hold the whole frame. Drop the frame, give the buffer back empty.
        this.backlog.shift();
        this.metrics.rxDropped++;
        vq.stageUsed(b.head, 0);
        continue;
      }
      const hdr = Buffer.alloc(NET_HDR_SIZE);
      hdr.writeUInt16LE(1, 10); // num_buffers
      const src = Buffer.concat([hdr, frame]);
      let o = 0;
      for (const w of b.writable) { o += src.copy(w, 0, o); if (o >= src.length) break; }
      this.backlog.shift();
      vq.stageUsed(b.head, src.length);
      this.metrics.rxFrames++;
      this.metrics.rxBytes += frame.length;
      delivered++;
    }
    vq.flushUsed();
    if (delivered > 0 && vq.needsNotification()) ctx.interrupt(RX_Q);
  }

  private fail(err: unknown): void {
    this.needsReset.trip(this.ctx, err);
  }
}
