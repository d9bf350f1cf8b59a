/**
 * Device-level targets: vsock packets through the real VsockDevice on real
 * split queues, and vhost-user messages through the real VhostUserBackend's
 * message handler.
 */
import { PassThrough, type Duplex } from 'node:stream';
import { HotMemory } from '../../../src/hot/memory';
import { Virtqueue, VirtqueueError, VirtioModule } from '../../../src/hot/virtqueue';
import type { ActivateContext } from '../../../src/virtio/device';
import { VsockDevice } from '../../../src/virtio/vsock/device';
import {
  decodeHdr, encodeHdr, HDR_SIZE, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
  RX_Q, TX_Q, VIRTIO_VSOCK_TYPE_STREAM, VsockError, type VsockHdr,
} from '../../../src/virtio/vsock/packet';
import {
  encodeConfig, encodeMessage, encodeU64, encodeVringState, HEADER_SIZE, MAX_PAYLOAD, Req, VHOST_USER_VERSION,
  VHOST_USER_VERSION_MASK, VhostUserError, decodeHeader, decodeMemTable,
} from '../../../src/vhost-user/protocol';
import { native } from '../../../src/common/native';
import { VhostUserBackend } from '../../../src/vhost-user/backend';
import { DriverRing } from '../../unit/hot/driver-ring';
import { bucket, invariant, type Target } from '../engine';

// ───────────────────────────── vsock ─────────────────────────────

const GUEST_CID = 3n;
const G = 0x100000n;
const G_SIZE = 1 << 20;
const QS = 64;
/** Guest layout: rx ring, tx ring, rx buffers, tx buffers. */
const RX_RING = G, TX_RING = G + 0x4000n, RX_BUFS = G + 0x8000n, TX_BUFS = G + 0x60000n;
const RX_BUF = 4096;

interface VsockRig {
  mem: HotMemory;
  mod: VirtioModule;
  rx: Virtqueue;
  tx: Virtqueue;
  dev: VsockDevice;
  resets: string[];
}
let vrig: VsockRig | undefined;

function ringAt(base: bigint) {
  const descGpa = base, availGpa = base + BigInt(16 * QS), usedGpa = (availGpa + BigInt(6 + 2 * QS) + 3n) & ~3n;
  return { descGpa, availGpa, usedGpa };
}

function getVsock(): VsockRig {
  if (vrig) return vrig;
  const mem = new HotMemory({ scratchBytes: 1 << 20, guestRegions: [{ gpa: G, size: G_SIZE }] });
  const mod = new VirtioModule(mem);
  const rx = mod.createQueue({ maxSize: QS }), tx = mod.createQueue({ maxSize: QS });
  const dev = new VsockDevice({
    guestCid: GUEST_CID,
    // Odd ports accept with an in-memory stream that echoes; even ports refuse.
    dialHost: (port) => (port & 1 ? Promise.resolve(echo()) : Promise.reject(new Error('connection refused'))),
  });
  vrig = { mem, mod, rx, tx, dev, resets: [] };
  return vrig;
}

function echo(): Duplex {
  const s = new PassThrough();
  return s;
}

/**
 * Input: packets, each [u8 flags][u16 length][bytes]: bytes are the tx
 * packet (virtio_vsock_hdr + payload) as the guest wrote it, split over 1–3
 * descriptors at points from flags; flags bit 7 = kick now (and let the
 * event loop run, so dials finish and rx replies go out) before the next.
 */
function vsockPackets(input: Buffer): Array<{ flags: number; bytes: Buffer }> {
  const out: Array<{ flags: number; bytes: Buffer }> = [];
  let p = 0;
  while (p + 3 <= input.length && out.length < QS / 2) {
    const flags = input[p]!, len = input.readUInt16LE(p + 1);
    out.push({ flags, bytes: input.subarray(p + 3, p + 3 + Math.min(len, 8192)) });
    p += 3 + len;
  }
  return out;
}

function pkt(op: number, srcPort: number, dstPort: number, payload = Buffer.alloc(0), flags = 0, kick = true, opts: Partial<VsockHdr> = {}): Buffer {
  const h: VsockHdr = {
    srcCid: GUEST_CID, dstCid: 2n, srcPort, dstPort, len: payload.length, type: VIRTIO_VSOCK_TYPE_STREAM, op, flags,
    bufAlloc: 65536, fwdCnt: 0, ...opts,
  };
  const bytes = Buffer.concat([Buffer.from(encodeHdr(h)), payload]);
  const f = Buffer.alloc(3);
  f[0] = (kick ? 0x80 : 0) | (payload.length ? 1 : 0);
  f.writeUInt16LE(bytes.length, 1);
  return Buffer.concat([f, bytes]);
}

const tick = () => new Promise<void>((r) => setImmediate(r));

async function vsockCase(input: Buffer): Promise<string> {
  const r = getVsock();
  const { mem, rx, tx, dev } = r;
  dev.reset();
  rx.reset();
  tx.reset();
  mem.u8.fill(0, mem.guestBase, mem.guestBase + 0x8000);
  const rxDrv = new DriverRing(mem, { size: QS, ...ringAt(RX_RING), eventIdx: false, indirect: false });
  const txDrv = new DriverRing(mem, { size: QS, ...ringAt(TX_RING), eventIdx: false, indirect: false });
  // Linux's rx buffers: a header descriptor and a 4 KiB payload descriptor.
  for (let i = 0; i < QS / 2; i++) rxDrv.add([], [{ gpa: RX_BUFS + BigInt(i * 8192), len: HDR_SIZE }, { gpa: RX_BUFS + BigInt(i * 8192 + 64), len: RX_BUF }]);
  rx.activate({ size: QS, features: 0n, ...ringAt(RX_RING) });
  tx.activate({ size: QS, features: 0n, ...ringAt(TX_RING) });
  const resets: string[] = [];
  const ctx: ActivateContext = {
    memory: { hot: mem, module: r.mod, translate: (gpa, len) => r.mod.translate(gpa, len) },
    queues: [rx, tx, undefined], features: 0n, interrupt: () => { /* the test driver polls */ },
    configChanged: () => { /* static */ },
    needsReset: (reason) => { resets.push(reason); },
  } as ActivateContext;
  dev.activate(ctx);
  const packets = vsockPackets(input);
  let slot = 0;
  for (const p of packets) {
    const base = TX_BUFS + BigInt(slot++ * 8448);
    const b = p.bytes;
    mem.u8.set(b, mem.gpaToOffset(base, Math.max(1, b.length)));
    // Split at hostile points: header across descriptors, empty descriptors.
    const parts = 1 + (p.flags & 3) % 3;
    const cut1 = parts > 1 ? (p.flags >> 2) & 0x1f : b.length;
    const bufs = parts === 1 ? [{ gpa: base, len: b.length }]
      : parts === 2 ? [{ gpa: base, len: Math.min(cut1, b.length) }, { gpa: base + BigInt(Math.min(cut1, b.length)), len: b.length - Math.min(cut1, b.length) }]
        : [{ gpa: base, len: Math.min(cut1, b.length) }, { gpa: base + BigInt(Math.min(cut1, b.length)), len: 0 }, { gpa: base + BigInt(Math.min(cut1, b.length)), len: b.length - Math.min(cut1, b.length) }];
    if (txDrv.add(bufs, [], { direct: true }) === undefined) break;
    if (p.flags & 0x80) {
      dev.queueNotify(TX_Q);
      await tick();
      await tick();
    }
  }
  dev.queueNotify(TX_Q);
  await tick();
  await tick();
  dev.queueNotify(RX_Q);
  await tick();
  // Replies: every used rx buffer holds a well-formed packet for our guest.
  let replies = 0;
  for (let u = rxDrv.getBuf(); u; u = rxDrv.getBuf()) {
    replies++;
    invariant(u.len >= HDR_SIZE && u.len <= HDR_SIZE + RX_BUF, `rx used length ${u.len}`);
    const at = mem.gpaToOffset(RX_BUFS + BigInt(u.id >> 1) * 8192n, HDR_SIZE);
    void at;
  }
  // Headers of what the device wrote, scanned in place.
  for (let i = 0; i < QS / 2; i++) {
    const off = mem.gpaToOffset(RX_BUFS + BigInt(i * 8192), HDR_SIZE);
    const h = decodeHdr(mem.u8.subarray(off, off + HDR_SIZE));
    if (h.op === 0 && h.srcCid === 0n) continue; // never written
    invariant(h.srcCid === 2n && h.dstCid === GUEST_CID, `rx packet with cids ${h.srcCid}→${h.dstCid}`);
    invariant(h.op >= OP_REQUEST && h.op <= OP_CREDIT_REQUEST && h.type === VIRTIO_VSOCK_TYPE_STREAM, `rx packet op ${h.op} type ${h.type}`);
    invariant(h.len <= RX_BUF, `rx packet claims ${h.len} payload bytes`);
  }
  invariant(dev.connectionCount <= 1023, `connections ${dev.connectionCount}`);
  invariant(dev.queuedControlPackets <= 256 + dev.connectionCount, `queued control packets ${dev.queuedControlPackets}`);
  const conns = dev.connectionCount;
  dev.reset();
  return `p${bucket(packets.length)}:r${bucket(replies)}:c${bucket(conns)}:${resets.length ? `reset:${resets[0]!.replace(/\d+/g, 'N').slice(0, 60)}` : 'ok'}`;
}

export const vsock: Target = {
  name: 'vsock',
  describe: 'virtio-vsock tx packets (src/virtio/vsock packet.ts + device.ts) on real split queues; replies well-formed, bounded state',
  maxLen: 16 << 10,
  dictionary: [Buffer.from([3, 0, 0, 0, 0, 0, 0, 0]), Buffer.from([2, 0, 0, 0, 0, 0, 0, 0]), Buffer.from([1, 0]), Buffer.from([2, 0]), Buffer.from([3, 0]), Buffer.from([4, 0]), Buffer.from([5, 0]),
    Buffer.from([6, 0]), Buffer.from([7, 0]), Buffer.from([0x2c, 0]), Buffer.from([0xff, 0xff, 0, 0]), Buffer.from([0, 0, 1, 0]), Buffer.from([0x80])],
  seeds() {
    const P = 40001; // odd host port: accepted
    return [
      Buffer.concat([pkt(OP_REQUEST, 50000, P), pkt(OP_RW, 50000, P, Buffer.from('hello')), pkt(OP_CREDIT_REQUEST, 50000, P), pkt(OP_CREDIT_UPDATE, 50000, P),
        pkt(OP_SHUTDOWN, 50000, P, Buffer.alloc(0), 3), pkt(OP_RST, 50000, P)]),
      Buffer.concat([pkt(OP_REQUEST, 50002, 40000), pkt(OP_RW, 50004, 9, Buffer.alloc(300, 7)), pkt(OP_RESPONSE, 50006, 9)]),
      Buffer.concat([pkt(OP_REQUEST, 50000, P, Buffer.alloc(0), 0, false), pkt(OP_RW, 50000, P, Buffer.from('x'.repeat(100)), 0, true), pkt(OP_SHUTDOWN, 50000, P, Buffer.alloc(0), 1)]),
      Buffer.concat([pkt(9, 1, 2), pkt(OP_RW, 1, 2, Buffer.alloc(0), 0, true, { type: 2 }), pkt(OP_RW, 1, 2, Buffer.alloc(0), 0, true, { srcCid: 7n })]),
    ];
  },
  run: vsockCase,
  expected: (err) => err instanceof VsockError || err instanceof VirtqueueError,
};

// ───────────────────────────── vhost-user ─────────────────────────────

/** Bytes of each memfd a SET_MEM_TABLE brings. */
const MEMFD_SIZE = 0x40000;
let backend: VhostUserBackend | undefined;
function getBackend(): VhostUserBackend {
  if (backend) return backend;
  const dev = new VsockDevice({ guestCid: GUEST_CID, dialHost: () => Promise.reject(new Error('refused')) });
  backend = new VhostUserBackend({ socketPath: '/nonexistent/fuzz.sock', device: dev, guestBytes: 1 << 20, queues: 2, name: 'fuzz' });
  return backend;
}

type BackendInternals = {
  handle(request: number, p: Buffer, fds: number[]): Buffer | undefined;
  resetRings(): void;
  resetConnectionState(): void;
  mem: { unmapAll(): void };
  module: VirtioModule;
  active: boolean;
};

/**
 * Input: the byte stream a front end writes on the socket. Each message is
 * framed as the backend frames it (12-byte header, then `size` payload
 * bytes); a header the backend would refuse (version, size > 4096) ends the
 * case as the backend would end the connection. Messages go to the
 * backend's own handler. SET_MEM_TABLE brings one 256 KiB memfd per region
 * (the table's offsets and sizes are the hostile part), so rings can start
 * and the vsock device activate on the mapped guest memory; kick/call/err
 * messages without the 'no fd' flag bring an eventfd.
 * Oracle: the handler throws only VhostUserError (the dispatcher turns
 * those into a failed reply); replies are well-formed; GET_CONFIG answers
 * with exactly the size asked; every region mapped lies inside its memfd
 * (past the end, the first access is SIGBUS: the process dies).
 */
function vhostCase(input: Buffer): string {
  const b = getBackend();
  const bi = b as unknown as BackendInternals;
  // A new connection: everything the last case negotiated is gone.
  bi.resetRings();
  bi.mem.unmapAll();
  bi.module.writeMemoryMap([]);
  bi.resetConnectionState();
  let p = 0, n = 0, refused = 0;
  const seen: string[] = [];
  while (p + HEADER_SIZE <= input.length && n < 64) {
    const h = decodeHeader(input.subarray(p, p + HEADER_SIZE));
    if ((h.flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION || h.size > MAX_PAYLOAD) { seen.push('bad-header'); break; }
    if (p + HEADER_SIZE + h.size > input.length) { seen.push('truncated'); break; }
    const payload = Buffer.from(input.subarray(p + HEADER_SIZE, p + HEADER_SIZE + h.size));
    p += HEADER_SIZE + h.size;
    n++;
    let reply: Buffer | undefined;
    // SET_MEM_TABLE carries one memfd per region (as QEMU sends them), each
    // MEMFD_SIZE bytes: the table's offsets and sizes are the hostile part.
    const fds: number[] = [];
    if (h.request === Req.SET_MEM_TABLE && payload.length >= 4) {
      for (let i = 0; i < Math.min(payload.readUInt32LE(0), 8); i++) fds.push(native().memfdCreate('fuzz-vu', MEMFD_SIZE));
    }
    // SET_VRING_KICK/CALL/ERR without the 'no fd' flag carry an eventfd.
    if ((h.request === Req.SET_VRING_KICK || h.request === Req.SET_VRING_CALL || h.request === Req.SET_VRING_ERR) && payload.length >= 8 && !(payload[1]! & 1)) {
      fds.push(native().eventfdCreate(0));
    }
    try {
      reply = bi.handle(h.request, payload, fds);
    } catch (err) {
      if (err instanceof VhostUserError) { refused++; continue; }
      throw err;
    } finally {
      // Those the handler did not take (it splices them off when it does).
      for (const fd of fds) try { native().closeFd(fd); } catch { /* taken */ }
    }
    if (h.request === Req.SET_MEM_TABLE) {
      // Every mapped region lies inside its file: a page past the end would
      // be SIGBUS on first access (the guest's rings live there).
      const table = decodeMemTable(payload);
      for (const t of table) invariant(t.mmapOffset + t.size <= BigInt(MEMFD_SIZE), `region at offset 0x${t.mmapOffset.toString(16)}+0x${t.size.toString(16)} mapped past the end of its ${MEMFD_SIZE}-byte memfd`);
    }
    if (h.request === Req.GET_CONFIG) {
      invariant(reply !== undefined && reply.length === 12 + payload.readUInt32LE(4), 'GET_CONFIG reply size');
    } else if (reply !== undefined) {
      invariant(reply.length <= MAX_PAYLOAD, `reply of ${reply.length} bytes`);
    }
  }
  const active = bi.active;
  bi.resetRings();
  return `m${bucket(n)}:r${bucket(refused)}:${seen.join(',')}:${active ? 'active' : 'idle'}`;
}

function vmsg(req: number, payload: Buffer = Buffer.alloc(0), flags = VHOST_USER_VERSION): Buffer {
  return encodeMessage(req, flags, payload);
}
function vaddr(index: number, desc: bigint, used: bigint, avail: bigint): Buffer {
  const b = Buffer.alloc(40);
  b.writeUInt32LE(index, 0);
  b.writeBigUInt64LE(desc, 8);
  b.writeBigUInt64LE(used, 16);
  b.writeBigUInt64LE(avail, 24);
  return b;
}
function memTable(regions: Array<[bigint, bigint, bigint, bigint]>): Buffer {
  const b = Buffer.alloc(8 + 32 * regions.length);
  b.writeUInt32LE(regions.length, 0);
  regions.forEach(([gpa, size, uva, off], i) => {
    b.writeBigUInt64LE(gpa, 8 + 32 * i);
    b.writeBigUInt64LE(size, 16 + 32 * i);
    b.writeBigUInt64LE(uva, 24 + 32 * i);
    b.writeBigUInt64LE(off, 32 + 32 * i);
  });
  return b;
}

export const vhostUser: Target = {
  name: 'vhost-user',
  describe: 'vhost-user front-end messages (src/vhost-user/protocol.ts decoders + VhostUserBackend handler state machine), QEMU 7.2 sequences as seeds',
  maxLen: 16 << 10,
  dictionary: [...[1, 2, 3, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 25, 34, 36, 39].map((r) => { const x = Buffer.alloc(4); x.writeUInt32LE(r); return x; }),
    Buffer.from([1, 0, 0, 0]), Buffer.from([9, 0, 0, 0]), Buffer.from([0, 1, 0, 0, 0, 0, 0, 0]), Buffer.from([0, 0x10, 0, 0]), Buffer.from([0xff, 0xff, 0xff, 0xff])],
  seeds() {
    const init = [
      vmsg(Req.GET_FEATURES), vmsg(Req.SET_OWNER), vmsg(Req.GET_PROTOCOL_FEATURES), vmsg(Req.SET_PROTOCOL_FEATURES, encodeU64(0x2209n)),
      vmsg(Req.GET_QUEUE_NUM), vmsg(Req.SET_FEATURES, encodeU64((1n << 32n) | (1n << 30n))),
      vmsg(Req.GET_CONFIG, encodeConfig(0, new Uint8Array(8))),
      vmsg(Req.SET_MEM_TABLE, memTable([[0n, 0x100000n, 0x7f0000000000n, 0n]])),
      vmsg(Req.SET_MEM_TABLE, memTable([])),
      vmsg(Req.SET_MEM_TABLE, memTable([[0n, 0x20000n, 0x7f0000000000n, 0n], [0x100000n, 0x10000n, 0x7f0000100000n, 0x20000n]])),
      vmsg(Req.SET_MEM_TABLE, memTable([[0n, 0x40000n, 0x7f0000000000n, 0n]])),
    ];
    const rings = [0, 1].flatMap((i) => [
      vmsg(Req.SET_VRING_NUM, encodeVringState({ index: i, num: 64 })),
      vmsg(Req.SET_VRING_BASE, encodeVringState({ index: i, num: 0 })),
      vmsg(Req.SET_VRING_ADDR, vaddr(i, 0x7f0000000000n + BigInt(i) * 0x4000n, 0x7f0000000800n + BigInt(i) * 0x4000n, 0x7f0000000400n + BigInt(i) * 0x4000n)),
      vmsg(Req.SET_VRING_KICK, encodeU64(BigInt(i))),
      vmsg(Req.SET_VRING_CALL, encodeU64(BigInt(i))),
      vmsg(Req.SET_VRING_ERR, encodeU64(BigInt(i) | 0x100n)),
      vmsg(Req.SET_VRING_ENABLE, encodeVringState({ index: i, num: 1 }), VHOST_USER_VERSION | 0x8),
    ]);
    const stop = [vmsg(Req.GET_VRING_BASE, encodeVringState({ index: 0, num: 0 })), vmsg(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 })), vmsg(Req.RESET_DEVICE), vmsg(Req.SET_CONFIG, encodeConfig(0, new Uint8Array([1, 2, 3, 4]))), vmsg(Req.GET_MAX_MEM_SLOTS), vmsg(Req.SET_STATUS, encodeU64(15n))];
    return [Buffer.concat(init), Buffer.concat([...init, ...rings]), Buffer.concat([...init, ...rings, ...stop]), Buffer.concat([vmsg(Req.GET_CONFIG, encodeConfig(4, new Uint8Array(200))), vmsg(Req.RESET_OWNER)])];
  },
  run: vhostCase,
  expected: (err) => err instanceof VhostUserError,
};
