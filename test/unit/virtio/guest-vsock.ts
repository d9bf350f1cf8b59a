/**
 * A minimal guest-side virtio-vsock driver for tests, shaped like Linux 6.1's
 * net/vmw_vsock/virtio_transport*.c: rx buffers are a 44-byte header
 * descriptor plus a 4 KiB payload descriptor; tx packets are header + payload
 * descriptors; stream sockets keep buf_alloc/fwd_cnt and send CREDIT_UPDATE
 * after consuming, and never send beyond the host's credit.
 *
 * It runs on the fake front end's rings (driver side) in the same process
 * as the device, reacting to the device's call eventfds.
 */
import { native } from '../../../src/common/native';
import {
  decodeHdr, encodeHdr, HDR_SIZE, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
  SHUTDOWN_RCV, SHUTDOWN_SEND, VIRTIO_VSOCK_TYPE_STREAM, type VsockHdr,
} from '../../../src/virtio/vsock/packet';
import type { FakeFrontEnd, RingSet } from '../vhost-user/fake-frontend';

const RX_BUF = 4096;
export const GUEST_BUF_ALLOC = 64 * 1024;

export class GuestConn {
  data: Buffer[] = [];
  bytes = 0;
  txCnt = 0;
  fwdCnt = 0;
  lastFwdSent = 0;
  peerBufAlloc = 0;
  peerFwdCnt = 0;
  established = false;
  peerShutdown = 0;
  reset = false;
  closed = false;
  waiters: Array<() => void> = [];
  /** This socket's buffer (the buf_alloc it advertises); `capCredit`: send no more than it ahead of the peer's credit, as Linux 6.1.192 does. */
  constructor(readonly localPort: number, readonly peerPort: number, readonly bufAlloc = GUEST_BUF_ALLOC, readonly capCredit = false) {}
  get credit(): number {
    const window = this.capCredit ? Math.min(this.peerBufAlloc, this.bufAlloc) : this.peerBufAlloc;
    return window - ((this.txCnt - this.peerFwdCnt) >>> 0);
  }
  wake(): void { const w = this.waiters; this.waiters = []; for (const f of w) f(); }
  until(pred: () => boolean, ms = 5000): Promise<void> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('guest conn wait timed out')), ms);
      const check = () => { if (pred()) { clearTimeout(t); resolve(); } else this.waiters.push(check); };
      check();
    });
  }
}

export class GuestVsock {
  readonly conns = new Map<string, GuestConn>();
  readonly listening = new Set<number>();
  private rxHeads = new Map<number, bigint>();
  private txFree: bigint[] = [];
  private txPending: Array<{ h: VsockHdr; payload?: Buffer }> = [];
  private txHeads = new Map<number, bigint>();
  private polls: number[] = [];
  private nextPort = 50000;
  packetsIn = 0;
  /** Packets received, by op. */
  readonly opsIn = new Map<number, number>();
  /** A guest that stops taking rx buffers (a flooding or stuck driver): pollRx reads nothing while set. */
  rxPaused = false;

  constructor(readonly fe: FakeFrontEnd, readonly rx: RingSet, readonly tx: RingSet, readonly cid: bigint, readonly area: bigint) {
    const n = native();
    // rx buffers: [hdr 44][payload 4096] per slot, 8 KiB apart.
    for (let i = 0; i < rx.ring.size; i++) this.addRx(area + BigInt(i) * 8192n);
    // tx slots after the rx area.
    const txBase = area + BigInt(rx.ring.size) * 8192n;
    for (let i = 0; i < tx.ring.size; i++) this.txFree.push(txBase + BigInt(i) * 8192n);
    n.eventfdWrite(rx.kick, 1);
    this.polls.push(n.pollStart(rx.call, 1, () => { n.eventfdRead(rx.call); this.pollRx(); }, true));
    this.polls.push(n.pollStart(tx.call, 1, () => { n.eventfdRead(tx.call); this.pollTx(); }, true));
  }

  private addRx(gpa: bigint): void {
    const head = this.rx.ring.add([], [{ gpa, len: HDR_SIZE }, { gpa: gpa + 64n, len: RX_BUF }])!;
    this.rxHeads.set(head, gpa);
  }

  pollRx(): void {
    if (this.rxPaused) return;
    const u8 = this.fe.mem.u8;
    let refilled = false;
    for (let b = this.rx.ring.getBuf(); b; b = this.rx.ring.getBuf()) {
      const gpa = this.rxHeads.get(b.id)!;
      this.rxHeads.delete(b.id);
      const h = decodeHdr(u8.subarray(this.fe.off(gpa, HDR_SIZE), this.fe.off(gpa) + HDR_SIZE));
      const payload = h.len ? Buffer.from(u8.subarray(this.fe.off(gpa + 64n), this.fe.off(gpa + 64n) + h.len)) : undefined;
      this.packetsIn++;
      this.opsIn.set(h.op, (this.opsIn.get(h.op) ?? 0) + 1);
      this.onPacket(h, payload);
      this.addRx(gpa);
      refilled = true;
    }
    if (refilled && this.rx.ring.kickPrepare()) native().eventfdWrite(this.rx.kick, 1);
  }

  pollTx(): void {
    for (let b = this.tx.ring.getBuf(); b; b = this.tx.ring.getBuf()) {
      this.txFree.push(this.txHeads.get(b.id)!);
      this.txHeads.delete(b.id);
    }
    this.flushTx();
  }

  private onPacket(h: VsockHdr, payload: Buffer | undefined): void {
    const key = `${h.dstPort}:${h.srcPort}`;
    let c = this.conns.get(key);
    if (c) { c.peerBufAlloc = h.bufAlloc; c.peerFwdCnt = h.fwdCnt; }
    switch (h.op) {
      case OP_REQUEST:
        if (!this.listening.has(h.dstPort)) { this.send(this.hdr(h.dstPort, h.srcPort, OP_RST)); return; }
        c = new GuestConn(h.dstPort, h.srcPort);
        c.peerBufAlloc = h.bufAlloc; c.peerFwdCnt = h.fwdCnt; c.established = true;
        this.conns.set(key, c);
        this.send(this.hdr(c.localPort, c.peerPort, OP_RESPONSE, c));
        break;
      case OP_RESPONSE:
        if (c) c.established = true;
        break;
      case OP_RW:
        if (!c || !payload) return;
        c.data.push(payload);
        c.bytes += payload.length;
        // The application reads at once: consumed bytes are forwarded.
        c.fwdCnt = (c.fwdCnt + payload.length) >>> 0;
        if (((c.fwdCnt - c.lastFwdSent) >>> 0) >= c.bufAlloc / 4) this.send(this.hdr(c.localPort, c.peerPort, OP_CREDIT_UPDATE, c));
        break;
      case OP_SHUTDOWN:
        if (!c) return;
        c.peerShutdown |= h.flags;
        if ((c.peerShutdown & 3) === 3) { this.send(this.hdr(c.localPort, c.peerPort, OP_RST, c)); c.closed = true; this.conns.delete(key); }
        break;
      case OP_RST:
        if (c) { c.reset = true; c.closed = true; this.conns.delete(key); }
        break;
    }
    c?.wake();
    this.flushTx();
  }

  hdr(src: number, dst: number, op: number, c?: GuestConn, len = 0, flags = 0): VsockHdr {
    if (c) c.lastFwdSent = c.fwdCnt;
    return { srcCid: this.cid, dstCid: 2n, srcPort: src, dstPort: dst, len, type: VIRTIO_VSOCK_TYPE_STREAM, op, flags, bufAlloc: c ? c.bufAlloc : 0, fwdCnt: c?.fwdCnt ?? 0 };
  }

  /** Packets queued by send() that have not reached the tx ring yet. */
  get txBacklog(): number { return this.txPending.length; }

  /** Queues a packet; it goes when a tx slot is free. */
  send(h: VsockHdr, payload?: Buffer): void {
    this.txPending.push({ h, payload });
    this.flushTx();
  }

  private flushTx(): void {
    let added = false;
    // A packet takes 1 or 2 descriptors: stop while the ring has no room.
    while (this.txPending.length && this.txFree.length && this.tx.ring.numFree >= 2) {
      const { h, payload } = this.txPending.shift()!;
      const gpa = this.txFree.pop()!;
      const u8 = this.fe.mem.u8;
      encodeHdr(h, u8.subarray(this.fe.off(gpa, HDR_SIZE), this.fe.off(gpa) + HDR_SIZE));
      const out = [{ gpa, len: HDR_SIZE }];
      if (payload && payload.length) {
        u8.set(payload, this.fe.off(gpa + 64n, payload.length));
        out.push({ gpa: gpa + 64n, len: payload.length });
      }
      const head = this.tx.ring.add(out, [])!;
      this.txHeads.set(head, gpa);
      added = true;
    }
    if (added && this.tx.ring.kickPrepare()) native().eventfdWrite(this.tx.kick, 1);
  }

  /** Guest connect() to the host (CID 2) port; `bufAlloc`/`capCredit` as GuestConn's. */
  async connect(port: number, bufAlloc = GUEST_BUF_ALLOC, capCredit = false): Promise<GuestConn> {
    const c = new GuestConn(this.nextPort++, port, bufAlloc, capCredit);
    this.conns.set(`${c.localPort}:${port}`, c);
    this.send(this.hdr(c.localPort, port, OP_REQUEST, c));
    await c.until(() => c.established || c.reset);
    if (c.reset) throw new Error('connection refused');
    return c;
  }

  /** Guest write(): respects the host's credit; up to 4 KiB per packet. */
  async write(c: GuestConn, data: Buffer): Promise<void> {
    let off = 0;
    while (off < data.length) {
      await c.until(() => c.credit > 0 || c.reset, 10000);
      if (c.reset) throw new Error('connection reset');
      const n = Math.min(c.credit, 4096, data.length - off);
      c.txCnt = (c.txCnt + n) >>> 0;
      this.send(this.hdr(c.localPort, c.peerPort, OP_RW, c, n), data.subarray(off, off + n));
      off += n;
      // Let the event loop run the device between packets, like a guest vCPU would.
      if (this.txPending.length > 64) await new Promise((r) => setImmediate(r));
    }
  }

  shutdown(c: GuestConn, flags = SHUTDOWN_RCV | SHUTDOWN_SEND): void {
    this.send(this.hdr(c.localPort, c.peerPort, OP_SHUTDOWN, c, 0, flags));
  }

  close(): void {
    const n = native();
    for (const p of this.polls) n.pollStop(p);
    this.polls = [];
  }
}

export { SHUTDOWN_SEND };
