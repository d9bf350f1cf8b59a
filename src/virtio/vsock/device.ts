/**
 * virtio-vsock device (virtio 1.2 §5.10): stream sockets between the guest
 * (CID from config space) and the host (CID 2), with credit-based flow
 * control (§5.10.6.3), connection set-up (REQUEST/RESPONSE), shutdown and
 * reset. Transport-agnostic (src/virtio/device.ts): served to QEMU through
 * src/vhost-user and to the builtin VMM through virtio-mmio.
 *
 * Host side is a set of byte streams, one per connection. The hybrid-vsock
 * listener (hybrid.ts, Firecracker's unix-socket scheme) hands host-initiated
 * streams to connectToGuest(); guest-initiated connections are dialled with
 * the dialHost option (hybrid: `<socket>_<port>`). Tests plug in any Duplex.
 *
 * Data path: tx (guest→host) payloads are gathered out of guest memory into
 * one Buffer per packet and written to the host stream (corked for the
 * whole tx pass: one writev per kick); our fwd_cnt only advances when the
 * stream has taken the bytes, so the guest can never have more than
 * buf_alloc bytes in flight per connection — one that sends more is reset.
 * Each connection's buf_alloc is fixed when it opens: DEFAULT_BUF_ALLOC
 * while a device-wide budget lasts, FLOOR_BUF_ALLOC beyond it. rx (host→guest) data
 * is queued per connection, bounded by buf_alloc (the stream is paused
 * beyond it), and copied into the guest's rx buffers only while the guest
 * has credit for it (peer_buf_alloc - (rx_cnt - peer_fwd_cnt) > 0).
 *
 * Guest input is hostile: a chain too short for a header, a length larger
 * than the chain, or a broken ring sets NEEDS_RESET (ctx.needsReset) and the
 * device stops; a well-formed packet for an unknown connection gets RST
 * (§5.10.6.3). Nothing a guest sends grows host memory without bound, even
 * when it stops taking rx buffers: RST replies wait in a queue of at most
 * MAX_QUEUED_RST and are dropped (counted, logged) beyond it, as
 * Firecracker's muxer does with its bounded rx queue; a connection has at
 * most one CREDIT_UPDATE pending (built when sent, so it carries the latest
 * fwd_cnt); guest connection requests beyond MAX_CONNECTIONS get RST.
 * Queues are walked by the WASM virtqueue (src/hot/virtqueue).
 */
import type { Duplex } from 'node:stream';
import { logger } from '../../common/log';
import { errorMessage } from '../../common/errors';
import { CHAIN_HEAD, CHAIN_IOV_FIRST, CHAIN_N_READABLE, CHAIN_N_WRITABLE, CHAIN_READABLE_BYTES, CHAIN_WORDS, CHAIN_WRITABLE_BYTES, Virtqueue, VirtqueueError } from '../../hot/virtqueue';
import { ConfigSpace, VIRTIO_ID_VSOCK, VIRTIO_RING_FEATURES, type ActivateContext, type VirtioDevice } from '../device';
import { NeedsResetLatch } from '../needs-reset';
import {
  decodeHdr, encodeHdr, gather, HDR_SIZE, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_NAMES, OP_REQUEST, OP_RESPONSE, OP_RST,
  OP_RW, OP_SHUTDOWN, RX_Q, scatter, SHUTDOWN_RCV, SHUTDOWN_SEND, TX_Q, VIRTIO_VSOCK_TYPE_STREAM, VSOCK_HOST_CID, VsockError,
  type Iovs, type VsockHdr,
} from './packet';

/** Largest payload we accept in one tx packet (Linux: VIRTIO_VSOCK_MAX_PKT_BUF_SIZE). */
export const MAX_PKT_PAYLOAD = 64 * 1024;
/**
 * Per-connection receive window we advertise (buf_alloc): how much a guest
 * may send before we say the host took it. 256 KiB (Linux's default socket
 * buffer) kept a TCG guest waiting for credit every few packets (README
 * Performance, vsock); a larger window lets it keep writing while the host
 * drains.
 */
export const DEFAULT_BUF_ALLOC = 2 * 1024 * 1024;
/** The window every connection gets at least (the old default), whatever the budget says. */
export const FLOOR_BUF_ALLOC = 256 * 1024;
/** bufAlloc option bounds: at least one full packet, at most what a u32 credit field and host memory sensibly allow. */
export const MIN_BUF_ALLOC = MAX_PKT_PAYLOAD;
export const MAX_BUF_ALLOC = 64 * 1024 * 1024;
/**
 * Device-wide sum of windows beyond which a new connection gets only
 * FLOOR_BUF_ALLOC: guest→host bytes the host has not taken yet live in
 * host memory (the host stream's write queue), so the worst case is this
 * budget plus MAX_CONNECTIONS floors, not MAX_CONNECTIONS full windows.
 */
export const DEFAULT_WINDOW_BUDGET = 64 * 1024 * 1024;
/**
 * A CREDIT_UPDATE goes once the host has taken this fraction of the window
 * in use (Conn.creditUpdateAfter) since the guest last heard our fwd_cnt
 * (every packet we send carries it). Linux's virtio_transport waits longer (until less than one 64 KiB
 * packet of credit is left, virtio_transport_stream_do_dequeue); an update
 * a quarter into the window keeps a guest that is writing from ever
 * running dry while the update is on its way, at a few updates per window.
 */
export const CREDIT_UPDATE_DIVISOR = 4;
/** Host-initiated connections use local ports from here (as Firecracker does). */
const FIRST_LOCAL_PORT = 1 << 30;
/** RST replies waiting for a guest rx buffer; more are dropped (Firecracker: MUXER_RXQ_SIZE). */
export const MAX_QUEUED_RST = 256;
/** Connections at once; a guest REQUEST beyond gets RST (Firecracker: MAX_CONNECTIONS). */
export const MAX_CONNECTIONS = 1023;
/** A closing connection whose guest never sends RST is dropped after this. */
const CLOSE_TIMEOUT_MS = 5000;

export interface VsockDeviceOptions {
  guestCid: number | bigint;
  /** Connect a guest-initiated connection to host port `port`; reject to refuse (RST). */
  dialHost?: (port: number) => Promise<Duplex>;
  /** Per-connection window (buf_alloc) in bytes, MIN_BUF_ALLOC..MAX_BUF_ALLOC; default DEFAULT_BUF_ALLOC. */
  bufAlloc?: number;
  /** Sum of full windows over open connections (default DEFAULT_WINDOW_BUDGET); beyond it new ones get FLOOR_BUF_ALLOC. */
  windowBudget?: number;
  /** Max queue size offered per queue. */
  queueSize?: number;
}

type ConnState = 'requested' | 'dialling' | 'established' | 'closing';

class Conn {
  state: ConnState;
  stream: Duplex | undefined;
  /** Guest→host bytes the host stream has taken (our fwd_cnt, u32 wrap). */
  fwdCnt = 0;
  lastFwdSent = 0;
  /** Guest→host payload bytes received (the guest's tx_cnt, u32 wrap): recvCnt - fwdCnt is held on the host. */
  recvCnt = 0;
  /** Guest's receive buffer and how much of what we sent it has consumed. */
  peerBufAlloc = 0;
  peerFwdCnt = 0;
  /** Host→guest bytes sent (rx_cnt, u32 wrap). */
  rxCnt = 0;
  pending: Buffer[] = [];
  pendingBytes = 0;
  paused = false;
  hostEof = false;
  hostClosed = false;
  guestNoRecv = false;
  shutdownSent = false;
  /** A CREDIT_UPDATE waits in the device's creditDue set. */
  creditDue = false;
  closeTimer: NodeJS.Timeout | undefined;
  onEstablished: ((localPort: number) => void) | undefined;
  /** `bufAlloc`: this connection's window (buf_alloc), fixed for its life. */
  constructor(readonly hostPort: number, readonly guestPort: number, state: ConnState, readonly bufAlloc: number) {
    this.state = state;
  }
  get key(): string { return `${this.hostPort}:${this.guestPort}`; }
  /**
   * Forwarded bytes after which the guest hears our fwd_cnt: a part of the
   * window the guest can actually use, min(ours, its own buf_alloc) —
   * Linux (6.1.192 and later) never sends more than its own buffer ahead
   * of our credit, whatever window we offer, so a threshold over that would
   * never be reached by a guest that waits for credit.
   */
  get creditUpdateAfter(): number {
    return Math.min(this.bufAlloc, this.peerBufAlloc) / CREDIT_UPDATE_DIVISOR;
  }
  /** Credit the guest has left for us (§5.10.6.3.1). */
  get peerCredit(): number {
    return Math.max(0, this.peerBufAlloc - ((this.rxCnt - this.peerFwdCnt) >>> 0));
  }
}

interface RxChain { head: number; iovs: Iovs; cap: number }

export interface VsockMetrics {
  txPackets: number; rxPackets: number; txBytes: number; rxBytes: number;
  connsOpened: number; connsReset: number; needsReset: number;
  /** RST replies dropped because MAX_QUEUED_RST were already waiting. */
  rstDropped: number;
  /** Connections reset because the guest sent beyond the credit we gave it. */
  creditViolations: number;
  /** tx queue passes (one per guest kick or re-check) and CREDIT_UPDATEs sent. */
  txPasses: number; creditUpdates: number;
  /** Interrupts raised on the rx and tx queues. */
  rxInterrupts: number; txInterrupts: number;
}

export class VsockDevice implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_VSOCK;
  readonly queueMaxSizes: ReadonlyArray<number>;
  readonly availableFeatures = VIRTIO_RING_FEATURES;
  readonly guestCid: bigint;
  /** The full per-connection window; see windowFor(). */
  readonly bufAlloc: number;
  readonly windowBudget: number;
  /** Sum of the windows of open connections. */
  private committedWindow = 0;
  readonly metrics: VsockMetrics = { txPackets: 0, rxPackets: 0, txBytes: 0, rxBytes: 0, connsOpened: 0, connsReset: 0, needsReset: 0, rstDropped: 0, creditViolations: 0,
    txPasses: 0, creditUpdates: 0, rxInterrupts: 0, txInterrupts: 0 };
  private readonly config = new ConfigSpace(8);
  private readonly log = logger('virtio.vsock');
  private ctx: ActivateContext | undefined;
  /** A malformed ring or chain (decision 2): VirtqueueError from the walker, VsockError 'malformed' from txChain/popRx. */
  private readonly needsReset = new NeedsResetLatch({ log: this.log, name: 'vsock', guestErrors: [VirtqueueError, VsockError], metrics: this.metrics });
  private readonly conns = new Map<string, Conn>();
  /** Control packets for the guest, sent before any data (REQUEST, RESPONSE, RST). */
  private readonly ctrl: VsockHdr[] = [];
  /** RSTs in ctrl (bounded by MAX_QUEUED_RST). */
  private queuedRsts = 0;
  /** Dropping RSTs since the queue was last below its bound (logs once per burst). */
  private droppingRsts = false;
  /** Connections owed a CREDIT_UPDATE (each at most once). */
  private readonly creditDue = new Set<Conn>();
  private readonly ready = new Set<Conn>();
  private readonly spare: RxChain[] = [];
  /** Host streams corked during the current tx pass. */
  private readonly corked = new Set<Duplex>();
  private nextLocalPort = FIRST_LOCAL_PORT;
  private rxScheduled = false;
  private readonly hdrBuf = new Uint8Array(HDR_SIZE);

  constructor(private readonly opts: VsockDeviceOptions) {
    this.guestCid = BigInt(opts.guestCid);
    if (this.guestCid < 3n || this.guestCid >= 0xffff_ffffn) throw new VsockError('config', `guest CID ${this.guestCid} must be in 3..2^32-2`);
    this.config.setU64(0, this.guestCid); // §5.10.4 le64 guest_cid
    this.bufAlloc = opts.bufAlloc ?? DEFAULT_BUF_ALLOC;
    if (!Number.isInteger(this.bufAlloc) || this.bufAlloc < MIN_BUF_ALLOC || this.bufAlloc > MAX_BUF_ALLOC) {
      throw new VsockError('config', `vsock bufAlloc ${this.bufAlloc} must be an integer in ${MIN_BUF_ALLOC}..${MAX_BUF_ALLOC}`);
    }
    this.windowBudget = opts.windowBudget ?? DEFAULT_WINDOW_BUDGET;
    if (!Number.isInteger(this.windowBudget) || this.windowBudget < 0) throw new VsockError('config', `vsock windowBudget ${this.windowBudget} must be a non-negative integer`);
    const qs = opts.queueSize ?? 256;
    this.queueMaxSizes = [qs, qs, qs];
  }

  get isActive(): boolean { return this.ctx !== undefined && !this.needsReset.tripped; }
  get connectionCount(): number { return this.conns.size; }
  /** Sum of the windows (buf_alloc) of open connections. */
  get committedWindowBytes(): number { return this.committedWindow; }
  /** Control packets waiting for guest rx buffers (RSTs, responses, credit updates). */
  get queuedControlPackets(): number { return this.ctrl.length + this.creditDue.size; }

  get configSize(): number { return this.config.size; }
  ackFeatures(_features: bigint): void { /* no device-specific feature bits used (no SEQPACKET) */ }
  readConfig(offset: number, out: Uint8Array): void { this.config.read(offset, out); }
  writeConfig(_offset: number, _data: Uint8Array): void { /* §5.10.4: config is read-only */ }

  activate(ctx: ActivateContext): void {
    if (!ctx.queues[RX_Q] || !ctx.queues[TX_Q]) throw new VsockError('config', 'vsock needs its rx and tx queues');
    this.ctx = ctx;
    this.needsReset.clear();
    this.scheduleRx();
  }

  queueNotify(index: number): void {
    if (!this.ctx || this.needsReset.tripped) return;
    if (index === TX_Q) this.processTx();
    else if (index === RX_Q) this.processRx();
    // EVENT_Q: the driver only refills event buffers; we send no events.
  }

  reset(): void {
    this.ctx = undefined;
    this.needsReset.clear();
    for (const c of [...this.conns.values()]) this.drop(c, 'device reset');
    this.ctrl.length = 0;
    this.queuedRsts = 0;
    this.droppingRsts = false;
    this.creditDue.clear();
    this.spare.length = 0;
    this.ready.clear();
  }

  close(): void {
    this.reset();
  }

  /**
   * Host-initiated connection to guest port `port` (hybrid vsock CONNECT).
   * `early` holds bytes the client sent after its CONNECT line. onEstablished
   * runs when the guest accepts; if it refuses, the stream is destroyed.
   */
  connectToGuest(port: number, stream: Duplex, early: Buffer | undefined, onEstablished: (localPort: number) => void): void {
    let hostPort = this.nextLocalPort;
    while (this.conns.has(`${hostPort}:${port}`)) hostPort = hostPort >= 0xfffffffe ? FIRST_LOCAL_PORT : hostPort + 1;
    this.nextLocalPort = hostPort >= 0xfffffffe ? FIRST_LOCAL_PORT : hostPort + 1;
    const c = this.newConn(hostPort, port >>> 0, 'requested');
    c.stream = stream;
    c.onEstablished = onEstablished;
    if (early && early.length) { c.pending.push(early); c.pendingBytes += early.length; }
    stream.pause();
    stream.once('close', () => { if (c.state === 'requested' && this.conns.get(c.key) === c) this.sendRst(c, true); });
    this.conns.set(c.key, c);
    this.metrics.connsOpened++;
    this.queueCtrl(c, OP_REQUEST);
  }

  // ───────────────────────── tx: guest → host ─────────────────────────

  private processTx(): void {
    const ctx = this.ctx!;
    const vq = ctx.queues[TX_Q]!;
    this.metrics.txPasses++;
    try {
      this.txPass(ctx, vq);
    } finally {
      this.uncorkPass();
    }
    if (this.ctx === ctx && !this.needsReset.tripped) this.scheduleRx();
  }

  private txPass(ctx: ActivateContext, vq: Virtqueue): void {
    try {
      for (;;) {
        vq.disableNotification();
        let n: number;
        while ((n = vq.popBatch()) > 0) {
          // A malformed chain stops the device (and the transport may reset
          // it synchronously): check after every chain.
          for (let i = 0; i < n && this.ctx === ctx && !this.needsReset.tripped; i++) this.txChain(vq, i);
          if (this.ctx !== ctx || this.needsReset.tripped) return;
          vq.flushUsed();
        }
        if (!vq.enableNotification()) break;
      }
      if (vq.needsNotification()) { this.metrics.txInterrupts++; ctx.interrupt(TX_Q); }
    } catch (err) {
      this.fail(err);
    }
  }

  /**
   * Host streams written during this tx pass are corked until its end, so
   * the packets a kick brought (up to a ring's worth) reach each stream as
   * one writev instead of one write(2) per packet.
   */
  private corkForPass(s: Duplex): void {
    if (this.corked.has(s)) return;
    this.corked.add(s);
    s.cork();
  }

  private uncorkPass(): void {
    for (const s of this.corked) s.uncork();
    this.corked.clear();
  }

  /** The guest sent beyond its credit (a broken or hostile driver): RST that connection only. */
  private creditViolation(c: Conn, held: number, len: number): void {
    this.metrics.creditViolations++;
    this.log.warn('guest sent beyond its vsock credit: connection reset', { host: c.hostPort, guest: c.guestPort, held, len, bufAlloc: c.bufAlloc });
    this.sendRst(c, true);
  }

  /** A new connection with its window: the full bufAlloc while the budget lasts, else the floor. */
  private newConn(hostPort: number, guestPort: number, state: ConnState): Conn {
    const left = this.windowBudget - this.committedWindow;
    const window = Math.max(Math.min(FLOOR_BUF_ALLOC, this.bufAlloc), Math.min(this.bufAlloc, left));
    this.committedWindow += window;
    return new Conn(hostPort, guestPort, state, window);
  }

  private txChain(vq: Virtqueue, i: number): void {
    const w = vq.chainWords, b = i * CHAIN_WORDS;
    const head = w[b + CHAIN_HEAD];
    const readable = w[b + CHAIN_READABLE_BYTES];
    if (w[b + CHAIN_N_WRITABLE] !== 0 || readable < HDR_SIZE) {
      this.fail(new VsockError('malformed', `tx chain ${head}: ${readable} readable bytes, ${w[b + CHAIN_N_WRITABLE]} writable descriptors`));
      return;
    }
    const iovs = this.iovs(vq, w[b + CHAIN_IOV_FIRST], w[b + CHAIN_N_READABLE]);
    const u8 = this.ctx!.memory.hot.u8;
    const hdr = decodeHdr(gather(u8, iovs, 0, HDR_SIZE, this.hdrBuf));
    if (hdr.len > MAX_PKT_PAYLOAD || hdr.len > readable - HDR_SIZE) {
      this.fail(new VsockError('malformed', `tx packet ${OP_NAMES[hdr.op] ?? hdr.op} claims ${hdr.len} payload bytes, chain has ${readable - HDR_SIZE}`));
      return;
    }
    // The payload leaves guest memory here (one copy), so the buffer can be
    // returned to the guest right away.
    const payload = hdr.op === OP_RW && hdr.len > 0 ? gather(u8, iovs, HDR_SIZE, hdr.len, Buffer.allocUnsafe(hdr.len)) as Buffer : undefined;
    vq.stageUsed(head, 0);
    this.metrics.txPackets++;
    this.onGuestPacket(hdr, payload);
  }

  private onGuestPacket(h: VsockHdr, payload: Buffer | undefined): void {
    // §5.10.6: drop what is not from our guest to the host (spoofed CIDs).
    if (h.srcCid !== this.guestCid || h.dstCid !== VSOCK_HOST_CID) {
      this.log.debug('dropping packet with foreign CIDs', { src: String(h.srcCid), dst: String(h.dstCid), op: h.op });
      return;
    }
    const key = `${h.dstPort}:${h.srcPort}`;
    const c = this.conns.get(key);
    if (h.type !== VIRTIO_VSOCK_TYPE_STREAM) {
      if (h.op !== OP_RST) this.rstFor(h);
      return;
    }
    if (c) {
      c.peerBufAlloc = h.bufAlloc;
      c.peerFwdCnt = h.fwdCnt;
    }
    switch (h.op) {
      case OP_REQUEST:
        if (c || this.conns.size >= MAX_CONNECTIONS) { this.rstFor(h); return; }
        this.guestConnect(h);
        return;
      case OP_RESPONSE:
        if (!c || c.state !== 'requested') { this.rstFor(h); if (c) this.drop(c, 'unexpected RESPONSE'); return; }
        c.state = 'established';
        this.attach(c);
        c.onEstablished?.(c.hostPort);
        this.markReady(c);
        return;
      case OP_RW:
        if (!c || c.state !== 'established') { this.rstFor(h); return; }
        if (payload) {
          const len = payload.length;
          // §5.10.6.3.1: the driver sends no more than its credit. A guest
          // that does would have the host hold more than the window.
          const held = (c.recvCnt - c.fwdCnt) >>> 0;
          if (len > c.bufAlloc - held) { this.creditViolation(c, held, len); return; }
          c.recvCnt = (c.recvCnt + len) >>> 0;
          if (!c.stream || c.stream.destroyed) return;
          this.metrics.txBytes += len;
          this.corkForPass(c.stream);
          c.stream.write(payload, (err) => {
            if (err) return;
            c.fwdCnt = (c.fwdCnt + len) >>> 0;
            // Tell the guest about freed space before it runs dry.
            if (((c.fwdCnt - c.lastFwdSent) >>> 0) >= c.creditUpdateAfter && this.conns.get(c.key) === c) this.queueCreditUpdate(c);
          });
        }
        return;
      case OP_CREDIT_UPDATE:
        if (!c) { this.rstFor(h); return; }
        this.markReady(c);
        return;
      case OP_CREDIT_REQUEST:
        if (!c) { this.rstFor(h); return; }
        this.queueCreditUpdate(c);
        return;
      case OP_SHUTDOWN:
        if (!c) { this.rstFor(h); return; }
        if (h.flags & SHUTDOWN_RCV) {
          c.guestNoRecv = true;
          c.pending = [];
          c.pendingBytes = 0;
        }
        if (h.flags & SHUTDOWN_SEND) c.stream?.end();
        if ((h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND)) === (SHUTDOWN_RCV | SHUTDOWN_SEND)) {
          // Both directions closed: the connection is over; RST tells the
          // guest we agree (what Linux's own transport does).
          this.sendRst(c, false);
        } else this.markReady(c);
        return;
      case OP_RST:
        if (c) this.drop(c, 'guest reset');
        return;
      default:
        this.rstFor(h);
    }
  }

  private guestConnect(h: VsockHdr): void {
    const c = this.newConn(h.dstPort, h.srcPort, 'dialling');
    c.peerBufAlloc = h.bufAlloc;
    c.peerFwdCnt = h.fwdCnt;
    this.conns.set(c.key, c);
    this.metrics.connsOpened++;
    const dial = this.opts.dialHost;
    if (!dial) { this.sendRst(c, false); return; }
    dial(h.dstPort).then((stream) => {
      if (this.conns.get(c.key) !== c) { stream.destroy(); return; }
      c.stream = stream;
      c.state = 'established';
      this.attach(c);
      this.queueCtrl(c, OP_RESPONSE);
    }, (err: unknown) => {
      this.log.debug('guest-initiated connection refused on the host', { port: h.dstPort, err: errorMessage(err) });
      if (this.conns.get(c.key) === c) this.sendRst(c, false);
    });
  }

  /** Wires an established connection's host stream. */
  private attach(c: Conn): void {
    const s = c.stream!;
    s.on('data', (d: Buffer) => {
      if (this.conns.get(c.key) !== c || c.guestNoRecv) return;
      c.pending.push(d);
      c.pendingBytes += d.length;
      if (c.pendingBytes >= c.bufAlloc && !c.paused) { c.paused = true; s.pause(); }
      this.markReady(c);
    });
    s.on('end', () => { c.hostEof = true; this.markReady(c); });
    s.on('close', () => { c.hostEof = true; c.hostClosed = true; this.markReady(c); });
    s.on('error', (err: Error) => this.log.debug('host stream error', { port: c.hostPort, err: err.message }));
    s.resume();
  }

  // ───────────────────────── rx: host → guest ─────────────────────────

  private markReady(c: Conn): void {
    if (this.conns.get(c.key) !== c) return;
    this.ready.add(c);
    this.scheduleRx();
  }

  private queueCtrl(c: Conn, op: number, flags = 0): void {
    this.pushCtrl(this.hdrFor(c, op, 0, flags));
  }

  /** Queues a control packet; an RST only while fewer than MAX_QUEUED_RST wait (decision 2: bounded host memory). */
  private pushCtrl(h: VsockHdr): void {
    if (h.op === OP_RST) {
      if (this.queuedRsts >= MAX_QUEUED_RST) {
        this.metrics.rstDropped++;
        if (!this.droppingRsts) {
          this.droppingRsts = true;
          this.log.warn('rx queue full: dropping RST packets (the guest is not taking rx buffers)', { queued: this.queuedRsts, port: h.dstPort });
        }
        return;
      }
      this.queuedRsts++;
    }
    this.ctrl.push(h);
    this.scheduleRx();
  }

  /** At most one CREDIT_UPDATE per connection waits; its header is built when it is sent. */
  private queueCreditUpdate(c: Conn): void {
    if (c.creditDue) return;
    c.creditDue = true;
    this.creditDue.add(c);
    this.scheduleRx();
  }

  private hdrFor(c: Conn, op: number, len: number, flags: number): VsockHdr {
    c.lastFwdSent = c.fwdCnt;
    return {
      srcCid: VSOCK_HOST_CID, dstCid: this.guestCid, srcPort: c.hostPort, dstPort: c.guestPort, len,
      type: VIRTIO_VSOCK_TYPE_STREAM, op, flags, bufAlloc: c.bufAlloc, fwdCnt: c.fwdCnt,
    };
  }

  /** RST for a packet that matches no connection (§5.10.6.3). */
  private rstFor(h: VsockHdr): void {
    this.pushCtrl({
      srcCid: VSOCK_HOST_CID, dstCid: this.guestCid, srcPort: h.dstPort, dstPort: h.srcPort, len: 0,
      type: VIRTIO_VSOCK_TYPE_STREAM, op: OP_RST, flags: 0, bufAlloc: 0, fwdCnt: 0,
    });
  }

  private sendRst(c: Conn, destroyStream: boolean): void {
    this.queueCtrl(c, OP_RST);
    this.metrics.connsReset++;
    this.forget(c);
    if (destroyStream) c.stream?.destroy();
    else c.stream?.end();
  }

  private drop(c: Conn, why: string): void {
    this.log.debug('connection closed', { host: c.hostPort, guest: c.guestPort, why });
    this.forget(c);
    c.stream?.destroy();
  }

  private forget(c: Conn): void {
    if (this.conns.get(c.key) === c) {
      this.conns.delete(c.key);
      this.committedWindow -= c.bufAlloc;
    }
    this.ready.delete(c);
    this.creditDue.delete(c);
    c.creditDue = false;
    if (c.closeTimer) clearTimeout(c.closeTimer);
  }

  private scheduleRx(): void {
    if (this.rxScheduled || !this.ctx) return;
    this.rxScheduled = true;
    // Coalesce: many stream 'data' events in one tick fill rx buffers in one pass.
    setImmediate(() => {
      this.rxScheduled = false;
      this.processRx();
    });
  }

  private hasWork(): boolean {
    return this.ctrl.length > 0 || this.creditDue.size > 0 || this.ready.size > 0;
  }

  private processRx(): void {
    const ctx = this.ctx;
    if (!ctx || this.needsReset.tripped) return;
    const vq = ctx.queues[RX_Q]!;
    let used = 0;
    try {
      while (this.hasWork()) {
        if (this.spare.length === 0 && !this.popRx(vq)) break;
        const ch = this.spare[0];
        const len = this.nextPacket(ch);
        if (len < 0) break; // only connections without credit left
        this.spare.shift();
        vq.stageUsed(ch.head, len);
        used++;
      }
      if (used) {
        vq.flushUsed();
        if (vq.needsNotification()) { this.metrics.rxInterrupts++; ctx.interrupt(RX_Q); }
      }
    } catch (err) {
      this.fail(err);
    }
  }

  /** Pops every available rx buffer into `spare`; re-arms the kick when none. */
  private popRx(vq: Virtqueue): boolean {
    for (;;) {
      const n = vq.popBatch();
      if (n > 0) {
        const w = vq.chainWords;
        for (let i = 0; i < n; i++) {
          const b = i * CHAIN_WORDS;
          const cap = w[b + CHAIN_WRITABLE_BYTES];
          if (w[b + CHAIN_N_READABLE] !== 0 || cap < HDR_SIZE) {
            throw new VsockError('malformed', `rx chain ${w[b + CHAIN_HEAD]}: ${cap} writable bytes, ${w[b + CHAIN_N_READABLE]} readable descriptors`);
          }
          this.spare.push({ head: w[b + CHAIN_HEAD], iovs: this.iovs(vq, w[b + CHAIN_IOV_FIRST], w[b + CHAIN_N_WRITABLE]), cap });
        }
        return true;
      }
      // No buffers: ask for a kick, unless some arrived meanwhile.
      if (!vq.enableNotification()) return false;
    }
  }

  /** Writes the next packet into `ch`; its total length, or -1 if nothing can go now. */
  private nextPacket(ch: RxChain): number {
    const u8 = this.ctx!.memory.hot.u8;
    const ctl = this.ctrl.shift();
    if (ctl) {
      if (ctl.op === OP_RST && --this.queuedRsts < MAX_QUEUED_RST / 2) this.droppingRsts = false;
      scatter(u8, ch.iovs, 0, encodeHdr(ctl, this.hdrBuf));
      this.metrics.rxPackets++;
      return HDR_SIZE;
    }
    for (const c of this.creditDue) {
      this.creditDue.delete(c);
      c.creditDue = false;
      scatter(u8, ch.iovs, 0, encodeHdr(this.hdrFor(c, OP_CREDIT_UPDATE, 0, 0), this.hdrBuf));
      this.metrics.rxPackets++;
      this.metrics.creditUpdates++;
      return HDR_SIZE;
    }
    for (const c of this.ready) {
      const room = Math.min(c.peerCredit, ch.cap - HDR_SIZE, MAX_PKT_PAYLOAD);
      if (c.pendingBytes > 0 && room > 0 && c.state === 'established') {
        let n = 0;
        let skip = HDR_SIZE;
        while (n < room && c.pending.length) {
          const d = c.pending[0];
          const take = Math.min(d.length, room - n);
          scatter(u8, ch.iovs, skip, take === d.length ? d : d.subarray(0, take));
          skip += take;
          n += take;
          if (take === d.length) c.pending.shift();
          else c.pending[0] = d.subarray(take);
        }
        c.pendingBytes -= n;
        c.rxCnt = (c.rxCnt + n) >>> 0;
        scatter(u8, ch.iovs, 0, encodeHdr(this.hdrFor(c, OP_RW, n, 0), this.hdrBuf));
        this.metrics.rxPackets++;
        this.metrics.rxBytes += n;
        if (c.paused && c.pendingBytes < c.bufAlloc / 2) { c.paused = false; c.stream?.resume(); }
        if (c.pendingBytes === 0 && !c.hostEof) this.ready.delete(c);
        return HDR_SIZE + n;
      }
      if (c.pendingBytes === 0 && c.hostEof && !c.shutdownSent && c.state === 'established') {
        // Everything the host sent has reached the guest: pass the EOF on.
        c.shutdownSent = true;
        this.ready.delete(c);
        const flags = c.hostClosed ? SHUTDOWN_RCV | SHUTDOWN_SEND : SHUTDOWN_SEND;
        scatter(u8, ch.iovs, 0, encodeHdr(this.hdrFor(c, OP_SHUTDOWN, 0, flags), this.hdrBuf));
        this.metrics.rxPackets++;
        c.state = 'closing';
        c.closeTimer = setTimeout(() => { if (this.conns.get(c.key) === c) this.sendRst(c, true); }, CLOSE_TIMEOUT_MS);
        c.closeTimer.unref();
        return HDR_SIZE;
      }
      // No credit (wait for CREDIT_UPDATE) or nothing to send.
      this.ready.delete(c);
    }
    return -1;
  }

  private iovs(vq: Virtqueue, first: number, count: number): Iovs {
    const io = vq.iovWords;
    const out: Iovs = [];
    for (let k = first; k < first + count; k++) out.push([io[2 * k], io[2 * k + 1]]);
    return out;
  }

  /** A malformed ring or chain: NEEDS_RESET, log, stop (decision 2). */
  private fail(err: unknown): void {
    this.needsReset.trip(this.ctx, err);
  }
}
