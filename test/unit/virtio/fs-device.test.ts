/**
 * The virtio-fs device (src/virtio/fs/device.ts) through real split
 * virtqueues: a Linux-style driver ring (../hot/driver-ring.ts) posts FUSE
 * requests in guest memory, the device walks them with the WASM virtqueue and
 * answers into the guest's writable buffers. Config space (§5.11.4), hiprio
 * FORGET without reply, concurrency, interrupts, and a malformed ring →
 * NEEDS_RESET without a crash.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configureLogging } from '../../../src/common/log';
import { HotMemory } from '../../../src/hot/memory';
import { VirtioModule, Virtqueue, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from '../../../src/hot/virtqueue';
import type { ActivateContext } from '../../../src/virtio/device';
import { VirtioFsDevice } from '../../../src/virtio/fs/device';
import { DriverRing, ringLayout } from '../hot/driver-ring';
import { cstr, parseEntry, u32s, u64s } from './fs-client';

const GUEST = 0x4000_0000n;
const GUEST_SIZE = 16 << 20;
const QSIZE = 64;

class Guest {
  readonly mem = new HotMemory({ scratchBytes: 2 << 20, guestRegions: [{ gpa: GUEST, size: GUEST_SIZE }] });
  readonly module = new VirtioModule(this.mem);
  readonly queues: Virtqueue[] = [];
  readonly rings: DriverRing[] = [];
  interrupts = [0, 0];
  resets: string[] = [];
  private heap = GUEST + 0x10_0000n;
  private unique = 1n;
  ctx!: ActivateContext;

  constructor(readonly dev: VirtioFsDevice) {
    let base = GUEST;
    for (let i = 0; i < 2; i++) {
      const lay = ringLayout(base, QSIZE);
      const q = this.module.createQueue({ maxSize: QSIZE, name: `fs-test.q${i}` });
      const features = VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC;
      q.activate({ size: QSIZE, features: BigInt(1 << 28 | 1 << 29), descGpa: lay.descGpa, availGpa: lay.availGpa, usedGpa: lay.usedGpa });
      void features;
      this.queues.push(q);
      this.rings.push(new DriverRing(this.mem, { size: QSIZE, ...lay, eventIdx: true, indirect: true, indirectGpa: lay.end, maxIndirect: 16 }));
      base = lay.end + BigInt(QSIZE * 16 * 16) + 4096n;
    }
    this.ctx = {
      memory: { hot: this.mem, module: this.module, translate: (gpa, len) => this.module.translate(gpa, len) },
      queues: this.queues, features: BigInt(1 << 28 | 1 << 29) | (1n << 32n),
      interrupt: (i) => { this.interrupts[i]++; },
      configChanged: () => undefined,
      needsReset: (r) => { this.resets.push(r); },
    };
    dev.activate(this.ctx);
  }

  alloc(len: number): bigint {
    const p = this.heap;
    this.heap += BigInt((len + 4095) & ~4095);
    if (this.heap > GUEST + BigInt(GUEST_SIZE)) throw new Error('guest heap exhausted');
    return p;
  }

  write(gpa: bigint, b: Buffer): void { this.mem.u8.set(b, this.mem.gpaToOffset(gpa, b.length)); }
  read(gpa: bigint, len: number): Buffer { return Buffer.from(this.mem.buffer(this.mem.gpaToOffset(gpa, len), len)); }

  /** Posts a request (split in `pieces` readable descriptors) and returns a promise of the reply. */
  post(q: number, opcode: number, nodeid: bigint | number, body: Buffer, replyLen: number, pieces = 1): Promise<{ len: number; error: number; body: Buffer }> {
    const hdr = Buffer.alloc(40);
    const req = Buffer.concat([hdr, body]);
    req.writeUInt32LE(req.length, 0);
    req.writeUInt32LE(opcode, 4);
    req.writeBigUInt64LE(this.unique++, 8);
    req.writeBigUInt64LE(BigInt(nodeid), 16);
    const outs = [];
    const step = Math.ceil(req.length / pieces);
    for (let o = 0; o < req.length; o += step) {
      const part = req.subarray(o, Math.min(req.length, o + step));
      const gpa = this.alloc(part.length);
      this.write(gpa, part);
      outs.push({ gpa, len: part.length });
    }
    const ins = replyLen > 0 ? [{ gpa: this.alloc(replyLen), len: replyLen }] : [];
    const ring = this.rings[q];
    const head = ring.add(outs, ins);
    if (head === undefined) throw new Error('ring full');
    if (ring.kickPrepare()) this.dev.queueNotify(q);
    return this.wait(q, head, ins[0]?.gpa);
  }

  private pending = new Map<string, (u: { id: number; len: number }) => void>();

  private wait(q: number, head: number, replyGpa: bigint | undefined): Promise<{ len: number; error: number; body: Buffer }> {
    return new Promise((resolve, reject) => {
      const deadline = Date.now() + 5000;
      const poll = () => {
        let u;
        while ((u = this.rings[q].getBuf())) {
          const cb = this.pending.get(`${q}:${u.id}`);
          this.pending.delete(`${q}:${u.id}`);
          cb?.(u);
        }
        if (Date.now() > deadline) { reject(new Error(`no used buffer for head ${head}`)); return; }
        if (this.pending.has(`${q}:${head}`)) setImmediate(poll);
      };
      this.pending.set(`${q}:${head}`, (u) => {
        if (u.len === 0 || replyGpa === undefined) { resolve({ len: 0, error: 0, body: Buffer.alloc(0) }); return; }
        const r = this.read(replyGpa, u.len);
        resolve({ len: u.len, error: r.readInt32LE(4), body: r.subarray(16) });
      });
      setImmediate(poll);
    });
  }
}

describe('virtio-fs device over split virtqueues', function () {
  let dir: string;
  let dev: VirtioFsDevice;

  before(() => configureLogging({ level: 'error' }));
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-virtiofs-dev-'));
    dev = new VirtioFsDevice({ tag: 'kataShared', sharedDir: dir, queueSize: QSIZE });
  });
  afterEach(() => {
    dev.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('exposes §5.11.4 config space, device id 26 and one hiprio + N request queues', () => {
    expect(dev.deviceType).to.equal(26);
    expect(dev.queueMaxSizes).to.deep.equal([QSIZE, QSIZE]);
    const cfg = new Uint8Array(44);
    dev.readConfig(0, cfg);
    expect(Buffer.from(cfg.subarray(0, 10)).toString()).to.equal('kataShared');
    expect(cfg[10]).to.equal(0);
    expect(Buffer.from(cfg).readUInt32LE(36)).to.equal(1);
    expect(cfg[40]).to.equal(0); // past the end reads 0
    const d4 = new VirtioFsDevice({ tag: 'x'.repeat(36), sharedDir: dir, requestQueues: 4 });
    expect(d4.queueMaxSizes.length).to.equal(5);
    d4.close();
    expect(() => new VirtioFsDevice({ tag: 'x'.repeat(37), sharedDir: dir })).to.throw(/tag/);
  });

  it('serves INIT, CREATE, WRITE and READ through the ring into guest memory; FORGET on hiprio', async () => {
    const g = new Guest(dev);
    const init = await g.post(1, 26, 0, Buffer.concat([u32s(7, 38, 65536, 0x7fffffff, 0), Buffer.alloc(44)]), 16 + 64);
    expect(init.error).to.equal(0);
    expect(init.body.readUInt32LE(0)).to.equal(7);
    const cr = await g.post(1, 35, 1, Buffer.concat([u32s(2, 0o644, 0, 0), cstr('hello.txt')]), 16 + 144, 3);
    expect(cr.error).to.equal(0);
    const e = parseEntry(cr.body);
    const fh = cr.body.readBigUInt64LE(128);
    const data = Buffer.alloc(100_000, 'abc');
    const w = await g.post(1, 16, e.nodeid, Buffer.concat([u64s(fh, 0), u32s(data.length, 0), u64s(0), u32s(0, 0), data]), 24, 5);
    expect(w.error).to.equal(0);
    expect(w.body.readUInt32LE(0)).to.equal(data.length);
    expect(fs.readFileSync(path.join(dir, 'hello.txt')).equals(data)).to.equal(true);
    const r = await g.post(1, 15, e.nodeid, Buffer.concat([u64s(fh, 10), u32s(50_000, 0), u64s(0), u32s(0, 0)]), 16 + 50_000);
    expect(r.len).to.equal(16 + 50_000);
    expect(r.body.equals(data.subarray(10, 50_010))).to.equal(true);
    const f = await g.post(0, 2, e.nodeid, u64s(1), 0);
    expect(f.len).to.equal(0);
    expect(g.interrupts[1]).to.be.greaterThan(0);
    expect(g.resets).to.deep.equal([]);
  });

  it('keeps many requests in flight and completes them all', async () => {
    const g = new Guest(dev);
    await g.post(1, 26, 0, Buffer.concat([u32s(7, 38, 65536, 0, 0), Buffer.alloc(44)]), 80);
    for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(dir, `f${i}`), `content ${i}`);
    const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => g.post(1, 1, 1, cstr(`f${i}`), 16 + 128)));
    replies.forEach((r, i) => {
      expect(r.error).to.equal(0);
      expect(parseEntry(r.body).attr.size).to.equal(BigInt(`content ${i}`.length));
    });
    expect(dev.metrics.inFlight).to.equal(0);
  });

  it('a descriptor outside guest RAM sets NEEDS_RESET; the device stops and the host carries on', async () => {
    const g = new Guest(dev);
    const ring = g.rings[1];
    ring.add([{ gpa: 0x10n, len: 64 }], [{ gpa: GUEST + 0x20_0000n, len: 64 }], { direct: true });
    dev.queueNotify(1);
    expect(g.resets.length).to.equal(1);
    expect(g.resets[0]).to.match(/virtio-fs/);
    expect(dev.isActive).to.equal(false);
    dev.queueNotify(1); // ignored while broken
    expect(g.resets.length).to.equal(1);
    dev.reset();
    expect(dev.isActive).to.equal(false);
  });

  it('drops completions that finish after a reset', async () => {
    const g = new Guest(dev);
    await g.post(1, 26, 0, Buffer.concat([u32s(7, 38, 65536, 0, 0), Buffer.alloc(44)]), 80);
    fs.writeFileSync(path.join(dir, 'r'), Buffer.alloc(1 << 20, 1));
    const l = await g.post(1, 1, 1, cstr('r'), 16 + 128);
    const nodeid = parseEntry(l.body).nodeid;
    const o = await g.post(1, 14, nodeid, u32s(0, 0), 32);
    const fh = o.body.readBigUInt64LE(0);
    const ring = g.rings[1];
    const before = ring.lastUsedIdx;
    // Start a read and reset before it completes.
    const gpa = g.alloc(1 << 20);
    const req = Buffer.concat([Buffer.alloc(40), u64s(fh, 0), u32s(1 << 20, 0), u64s(0), u32s(0, 0)]);
    req.writeUInt32LE(req.length, 0); req.writeUInt32LE(15, 4);
    const rgpa = g.alloc(req.length);
    g.write(rgpa, req);
    ring.add([{ gpa: rgpa, len: req.length }], [{ gpa, len: 16 + (1 << 20) }]);
    dev.queueNotify(1);
    dev.reset();
    await new Promise((r) => setTimeout(r, 100));
    expect(ring.getBuf()).to.equal(undefined);
    expect(ring.lastUsedIdx).to.equal(before);
  });
});
