/**
 * A fake vhost-user front end for tests: speaks the QEMU 7.2 message
 * sequence (vhost-user.rst) to a VhostUserBackend over a real unix socket,
 * passes a real memfd as guest RAM with SCM_RIGHTS, and drives the rings as
 * a guest driver would through DriverRing (test/unit/hot/driver-ring.ts),
 * writing into its own WebAssembly.Memory with the same memfd mapped in —
 * so the backend only ever sees what QEMU and a guest would give it.
 */
import { native } from '../../../src/common/native';
import { HotMemory } from '../../../src/hot/memory';
import {
  encodeConfig, encodeMessage, encodeU64, encodeVringState, HEADER_SIZE, PROTOCOL_F_CONFIG, PROTOCOL_F_MQ,
  PROTOCOL_F_REPLY_ACK, Req, VHOST_USER_F_PROTOCOL_FEATURES, VHOST_USER_NEED_REPLY_MASK, VHOST_USER_VERSION,
} from '../../../src/vhost-user/protocol';
import { DriverRing, ringLayout } from '../hot/driver-ring';

/** QEMU's virtual address of guest-physical 0 in this fake. */
export const UVA_BASE = 0x7f12_0000_0000n;
export const GUEST_RAM = 16 << 20;

const HAS_REPLY = new Set<number>([Req.GET_FEATURES, Req.GET_PROTOCOL_FEATURES, Req.GET_VRING_BASE, Req.GET_QUEUE_NUM, Req.GET_CONFIG]);

export interface RingSet {
  ring: DriverRing;
  kick: number;
  call: number;
  err: number;
}

export class FakeFrontEnd {
  readonly mem: HotMemory;
  readonly memfd: number;
  fd = -1;
  private rxBuf = Buffer.alloc(HEADER_SIZE + 4096);
  closed = false;

  constructor(ramBytes = GUEST_RAM) {
    const n = native();
    this.mem = new HotMemory({ scratchBytes: 64 << 10, guestRegions: [{ gpa: 0n, size: ramBytes }] });
    this.memfd = n.memfdCreate('fake-guest-ram', ramBytes);
    n.mapFileOver(this.mem.memory.buffer, this.mem.guestBase, ramBytes, this.memfd, 0);
  }

  connect(path: string): void {
    this.fd = native().unixConnect(path);
  }

  /** Sends one message; resolves with the reply payload when one is expected. */
  async request(req: number, payload: Buffer = Buffer.alloc(0), fds: number[] = [], needReply = false): Promise<Buffer | undefined> {
    const flags = VHOST_USER_VERSION | (needReply ? VHOST_USER_NEED_REPLY_MASK : 0);
    this.sendRaw(encodeMessage(req, flags, payload), fds);
    if (!HAS_REPLY.has(req) && !needReply) return undefined;
    return this.readReply(req);
  }

  sendRaw(msg: Buffer, fds: number[] = []): void {
    const sent = native().sendMsg(this.fd, msg, fds);
    if (sent !== msg.length) throw new Error(`short send ${sent}/${msg.length}`);
  }

  async readReply(req: number, timeoutMs = 2000): Promise<Buffer> {
    const hdr = await this.readExact(HEADER_SIZE, timeoutMs);
    const r = hdr.readUInt32LE(0), size = hdr.readUInt32LE(8);
    if (r !== req) throw new Error(`reply to ${r}, expected ${req}`);
    return size ? this.readExact(size, timeoutMs) : Buffer.alloc(0);
  }

  async readExact(len: number, timeoutMs: number): Promise<Buffer> {
    const n = native();
    let have = 0;
    const deadline = Date.now() + timeoutMs;
    while (have < len) {
      const r = n.recvMsg(this.fd, this.rxBuf, have, len - have);
      for (const fd of r.fds) n.closeFd(fd);
      if (r.bytes === 0) throw new Error('backend closed the connection');
      if (r.bytes > 0) { have += r.bytes; continue; }
      if (Date.now() > deadline) throw new Error('timed out waiting for a reply');
      await new Promise((res) => setImmediate(res));
    }
    return Buffer.from(this.rxBuf.subarray(0, len));
  }

  /** Negotiation as QEMU does it; returns the backend's feature bits. */
  async negotiate(wantFeatures?: bigint): Promise<bigint> {
    const feats = (await this.request(Req.GET_FEATURES))!.readBigUInt64LE(0);
    const proto = (await this.request(Req.GET_PROTOCOL_FEATURES))!.readBigUInt64LE(0);
    await this.request(Req.SET_PROTOCOL_FEATURES, encodeU64(proto & (PROTOCOL_F_MQ | PROTOCOL_F_REPLY_ACK | PROTOCOL_F_CONFIG)));
    await this.request(Req.SET_OWNER);
    const f = (wantFeatures ?? feats) | VHOST_USER_F_PROTOCOL_FEATURES;
    await this.ack(Req.SET_FEATURES, encodeU64(f & feats));
    return feats;
  }

  /** A request with NEED_REPLY; throws if the backend nacks it. */
  async ack(req: number, payload: Buffer = Buffer.alloc(0), fds: number[] = []): Promise<void> {
    const r = await this.request(req, payload, fds, true);
    if (!r || r.length !== 8 || r.readBigUInt64LE(0) !== 0n) throw new Error(`request ${req} nacked`);
  }

  /** Nack expected: resolves with the status (non-zero). */
  async nack(req: number, payload: Buffer = Buffer.alloc(0), fds: number[] = []): Promise<bigint> {
    const r = await this.request(req, payload, fds, true);
    return r!.readBigUInt64LE(0);
  }

  async getConfig(offset: number, size: number): Promise<Buffer> {
    const r = (await this.request(Req.GET_CONFIG, encodeConfig(offset, new Uint8Array(size))))!;
    return r.subarray(12);
  }

  /** SET_MEM_TABLE with the whole memfd as one region at gpa 0 (as QEMU does below the PCI hole). */
  async setMemTable(regions: Array<{ gpa: bigint; size: number; offset: number }> = [{ gpa: 0n, size: this.mem.guestBytes, offset: 0 }]): Promise<void> {
    const p = Buffer.alloc(8 + 32 * regions.length);
    p.writeUInt32LE(regions.length, 0);
    regions.forEach((r, i) => {
      p.writeBigUInt64LE(r.gpa, 8 + 32 * i);
      p.writeBigUInt64LE(BigInt(r.size), 16 + 32 * i);
      p.writeBigUInt64LE(UVA_BASE + BigInt(r.offset), 24 + 32 * i);
      p.writeBigUInt64LE(BigInt(r.offset), 32 + 32 * i);
    });
    // QEMU sends the same memfd once per region.
    await this.ack(Req.SET_MEM_TABLE, p, regions.map(() => this.memfd));
  }

  /** Starts ring `index` at guest address `base` (vhost_virtqueue_start), enabled. */
  async startRing(index: number, size: number, base: bigint, o: { eventIdx?: boolean; indirect?: boolean } = {}): Promise<RingSet> {
    const n = native();
    const lay = ringLayout(base, size);
    const ring = new DriverRing(this.mem, { size, ...lay, eventIdx: !!o.eventIdx, indirect: !!o.indirect, indirectGpa: lay.end, maxIndirect: 4 });
    await this.ack(Req.SET_VRING_NUM, encodeVringState({ index, num: size }));
    await this.ack(Req.SET_VRING_BASE, encodeVringState({ index, num: 0 }));
    const a = Buffer.alloc(40);
    a.writeUInt32LE(index, 0);
    a.writeBigUInt64LE(UVA_BASE + lay.descGpa, 8);
    a.writeBigUInt64LE(UVA_BASE + lay.usedGpa, 16);
    a.writeBigUInt64LE(UVA_BASE + lay.availGpa, 24);
    await this.ack(Req.SET_VRING_ADDR, a);
    const kick = n.eventfdCreate(), call = n.eventfdCreate(), err = n.eventfdCreate();
    // The backend gets its own copies of the eventfds (dup semantics of SCM_RIGHTS).
    await this.ack(Req.SET_VRING_KICK, encodeU64(BigInt(index)), [kick]);
    await this.ack(Req.SET_VRING_CALL, encodeU64(BigInt(index)), [call]);
    await this.ack(Req.SET_VRING_ERR, encodeU64(BigInt(index)), [err]);
    return { ring, kick, call, err };
  }

  async enable(index: number, on = true): Promise<void> {
    await this.ack(Req.SET_VRING_ENABLE, encodeVringState({ index, num: on ? 1 : 0 }));
  }

  async getVringBase(index: number): Promise<number> {
    const r = (await this.request(Req.GET_VRING_BASE, encodeVringState({ index, num: 0 })))!;
    return r.readUInt32LE(4);
  }

  /** Guest-physical → offset in our own Memory. */
  off(gpa: bigint, len = 1): number {
    return this.mem.gpaToOffset(gpa, len);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    const n = native();
    if (this.fd >= 0) n.closeFd(this.fd);
    this.fd = -1;
    n.unmapOver(this.mem.memory.buffer, this.mem.guestBase, this.mem.guestBytes);
    n.closeFd(this.memfd);
  }
}
