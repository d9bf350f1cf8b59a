/**
 * assembly/virtio/packed.ts through PackedVirtqueue, driven by a Linux-style
 * packed driver (driver-packed.ts): wrap counters, buffer ids, in-order and
 * out-of-order completion, indirect tables, off_wrap event suppression both
 * ways, 70000 requests through small rings, every hostile-guest case as its
 * own error kind, and a fuzz test.
 */
import { expect } from 'chai';
import { HotMemory } from '../../../src/hot/memory';
import {
  PACKED_START,
  PackedVirtqueue,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VQ_ERROR_CODES,
  VirtqueueError,
  VirtqueueErrorKind,
  VirtioModule,
} from '../../../src/hot/virtqueue';
import { Buf } from './driver-ring';
import { PackedRing, packedLayout } from './driver-packed';
import { configureLogging } from '../../../src/common/log';
import { expectVqError, features } from './vq-assert';

const GUEST = 0x4000_0000n;
const GUEST_SIZE = 8 << 20;
const HIGH = 0x1_0000_0000n;
const HIGH_SIZE = 1 << 20;
const MAX_IND = 16;

interface Rig { mem: HotMemory; mod: VirtioModule; q: PackedVirtqueue; drv: PackedRing; data: bigint; size: number }

let shared: { mem: HotMemory; mod: VirtioModule; queues: Map<number, PackedVirtqueue> } | undefined;

function rig(o: { size?: number; eventIdx?: boolean; indirect?: boolean; maxIndirect?: number } = {}): Rig {
  if (!shared) {
    const mem = new HotMemory({ scratchBytes: 4 << 20, guestRegions: [{ gpa: GUEST, size: GUEST_SIZE }, { gpa: HIGH, size: HIGH_SIZE }] });
    shared = { mem, mod: new VirtioModule(mem), queues: new Map() };
  }
  const { mem, mod } = shared;
  const size = o.size ?? 16;
  let q = shared.queues.get(size);
  if (!q) {
    q = mod.createPackedQueue({ maxSize: size, maxChains: Math.min(size, 256), name: `test.pq${size}` });
    shared.queues.set(size, q);
  }
  mem.u8.fill(0, mem.guestBase, mem.guestBase + (1 << 20));
  const lay = packedLayout(GUEST, size);
  const maxIndirect = o.maxIndirect ?? MAX_IND;
  const indirectGpa = lay.end;
  const data = (indirectGpa + BigInt(size * maxIndirect * 16) + 4095n) & ~4095n;
  const drv = new PackedRing(mem, { size, ...lay, eventIdx: !!o.eventIdx, indirect: !!o.indirect, indirectGpa, maxIndirect });
  q.reset();
  q.activate({ size, features: features(o), descGpa: lay.descGpa, driverGpa: lay.driverGpa, deviceGpa: lay.deviceGpa });
  return { mem, mod, q, drv, data, size };
}

function expectGuestError(r: Rig, kind: VirtqueueErrorKind): void {
  const e = expectVqError(() => r.q.popBatch(), kind);
  expect(e.sticky, 'sticky').to.equal(true);
  expect(r.q.error).to.equal(kind);
  expectVqError(() => r.q.popBatch(), kind);
  expectVqError(() => r.q.pushUsed(1 << 16, 0), kind);
  expect(r.q.needsNotification()).to.equal(false);
}

const off = (r: Rig, b: Buf) => r.mem.gpaToOffset(b.gpa, b.len);
const wsum = (bs: Buf[]) => bs.reduce((s, b) => s + b.len, 0);

describe('hot/virtqueue packed: pop and push', () => {
  it('pops direct chains: buffer ids, ring descriptors, iovecs, readable/writable split', () => {
    const r = rig({ size: 16 });
    const bufs: Array<{ out: Buf[]; inn: Buf[] }> = [
      { out: [{ gpa: r.data, len: 16 }], inn: [{ gpa: r.data + 4096n, len: 512 }, { gpa: r.data + 8192n, len: 1 }] },
      { out: [{ gpa: r.data + 16n, len: 100 }, { gpa: HIGH + 8n, len: 200 }], inn: [] },
      { out: [], inn: [{ gpa: HIGH, len: HIGH_SIZE }] },
    ];
    expect(r.q.pending()).to.equal(0);
    const ids = bufs.map((b) => r.drv.add(b.out, b.inn)!);
    expect(ids).to.deep.equal([0, 1, 2]);
    expect(r.q.pending()).to.equal(1);
    expect(r.q.popBatch()).to.equal(3);
    expect(r.q.nextAvail).to.equal(PACKED_START | 6);
    bufs.forEach((b, i) => {
      const c = r.q.chain(i);
      expect(c.head).to.equal(ids[i]);
      expect(c.ringDescs).to.equal(b.out.length + b.inn.length);
      expect(c.readable).to.deep.equal(b.out.map((x) => ({ offset: off(r, x), length: x.len })));
      expect(c.writable).to.deep.equal(b.inn.map((x) => ({ offset: off(r, x), length: x.len })));
      expect(c.readableBytes).to.equal(wsum(b.out));
      expect(c.writableBytes).to.equal(wsum(b.inn));
    });
    expect(r.q.popBatch()).to.equal(0);
    expect(r.q.pending()).to.equal(0);
  });

  it('pops indirect chains (table entries in order, NEXT ignored) and a direct prefix before one', () => {
    const r = rig({ size: 8, indirect: true });
    const out = [{ gpa: r.data, len: 16 }, { gpa: r.data + 16n, len: 32 }];
    const inn = [{ gpa: r.data + 4096n, len: 4096 }];
    const id = r.drv.add(out, inn)!;
    expect(r.drv.numFree).to.equal(7);
    expect(r.q.popBatch()).to.equal(1);
    const a = r.q.chain(0);
    expect([a.head, a.ringDescs]).to.deep.equal([id, 1]);
    expect(a.readable.map((v) => v.length)).to.deep.equal([16, 32]);
    expect(a.writable).to.deep.equal([{ offset: off(r, inn[0]), length: 4096 }]);
    // Hand-built at ring positions 1, 2: readable, then INDIRECT (id 5) → table of 2.
    const t = r.drv.indirectTable(5);
    r.drv.setDesc(0, r.data + 9000n, 4, 0, VIRTQ_DESC_F_NEXT, t);
    r.drv.setDesc(1, r.data + 9100n, 4, 0, VIRTQ_DESC_F_WRITE, t);
    r.drv.setDesc(2, t, 32, 5, VIRTQ_DESC_F_INDIRECT | PackedRing.availBits(1));
    r.drv.setDesc(1, r.data + 100n, 10, 5, VIRTQ_DESC_F_NEXT | PackedRing.availBits(1));
    expect(r.q.popBatch()).to.equal(1);
    const b = r.q.chain(0);
    expect([b.head, b.ringDescs]).to.deep.equal([5, 2]);
    expect(b.readable.map((v) => v.length)).to.deep.equal([10, 4]);
    expect(b.writable).to.deep.equal([{ offset: r.mem.gpaToOffset(r.data + 9100n, 4), length: 4 }]);
  });

  it('stops at max chains and before a chain that does not fit the iov table', () => {
    const r = rig({ size: 16 });
    for (let i = 0; i < 5; i++) r.drv.add([{ gpa: r.data, len: 1 }], [{ gpa: r.data + 8n, len: 1 }]);
    expect(r.q.popBatch(2)).to.equal(2);
    const w = r.mod.wasm;
    expect(w.vqp_pop_batch(r.q.q, r.q.chainsOff, 16, r.q.iovOff, 5)).to.equal(2);
    expect(w.vqp_pop_batch(r.q.q, r.q.chainsOff, 16, r.q.iovOff, 1)).to.equal(-VQ_ERROR_CODES['iov-too-small']);
    expect(r.q.error).to.equal(undefined);
    expect(r.q.popBatch()).to.equal(1);
    expect(r.q.popBatch()).to.equal(0);
  });

  it('completes out of order: used descriptors at consumption order positions, driver skips each buffer\'s own count', () => {
    const r = rig({ size: 8 });
    const a = r.drv.add([{ gpa: r.data, len: 1 }], [{ gpa: r.data + 64n, len: 10 }])!; // 2 descs
    const b = r.drv.add([{ gpa: r.data, len: 1 }], [])!; // 1
    const c = r.drv.add([{ gpa: r.data, len: 1 }], [{ gpa: r.data, len: 2 }, { gpa: r.data, len: 3 }])!; // 3
    expect(r.q.popBatch()).to.equal(3);
    const tok = [0, 1, 2].map((i) => r.q.chain(i).token);
    r.q.pushUsed(tok[2], 5); // c first: written at position 0, driver skips 3
    expect(r.drv.getBuf()).to.deep.equal({ id: c, len: 5 });
    expect(r.drv.getBuf()).to.equal(undefined);
    r.q.stageUsed(tok[0], 10);
    r.q.stageUsed(tok[1], 0);
    expect(r.drv.getBuf()).to.equal(undefined); // staged: not published
    expect(r.q.flushUsed()).to.equal(2);
    expect([r.drv.getBuf(), r.drv.getBuf(), r.drv.getBuf()]).to.deep.equal([{ id: a, len: 10 }, { id: b, len: 0 }, undefined]);
    expect(r.drv.numFree).to.equal(8);
    expect(r.q.nextUsed).to.equal(PACKED_START | 6);
    // More than in flight is a host error that publishes nothing.
    const e = expectVqError(() => r.q.pushUsed(1 << 16, 0), 'used-descs');
    expect(e.sticky).to.equal(false);
    expectVqError(() => r.q.pushUsed(0, 0), 'used-descs'); // zero descriptors
    expect(r.q.error).to.equal(undefined);
  });

  it('pushes the chains of a pop in one call (writable bytes or given lens); a bad batch publishes nothing', () => {
    const r = rig({ size: 8 });
    const ids = [0, 1, 2].map((i) => r.drv.add([{ gpa: r.data, len: 4 }], [{ gpa: r.data + 4096n, len: 10 + i }])!);
    expect(r.q.popBatch()).to.equal(3);
    expect(r.q.pushUsedChains(2)).to.equal(2);
    expect(r.q.pushUsedChains(0)).to.equal(0);
    expect([r.drv.getBuf(), r.drv.getBuf(), r.drv.getBuf()]).to.deep.equal([{ id: ids[0], len: 10 }, { id: ids[1], len: 11 }, undefined]);
    // Chain 2 is still in flight: pushing records 0..1 again (4 descs) exceeds it.
    expectVqError(() => r.q.pushUsedChains(2), 'used-descs');
    expect(r.drv.getBuf()).to.equal(undefined);
    r.q.stageUsed(r.q.chain(2).token, 77);
    r.q.flushUsed();
    expect(r.drv.getBuf()).to.deep.equal({ id: ids[2], len: 77 });
    const more = [3, 4].map(() => r.drv.add([], [{ gpa: r.data, len: 20 }])!);
    expect(r.q.popBatch()).to.equal(2);
    expect(r.q.pushUsedChains(2, [6, 7])).to.equal(2);
    expect([r.drv.getBuf(), r.drv.getBuf()]).to.deep.equal([{ id: more[0], len: 6 }, { id: more[1], len: 7 }]);
  });

  for (const size of [8, 5]) {
    it(`runs 70000 random requests through a size-${size} ring: wrap counters, ids, out-of-order completion`, function () {
      this.timeout(60000);
      const r = rig({ size, indirect: true, eventIdx: true });
      let seed = 4242 + size;
      const rnd = (n: number) => {
        seed = (seed * 1103515245 + 12345) >>> 0;
        return (seed >>> 8) % n;
      };
      const expected = new Map<number, { out: Buf[]; inn: Buf[] }>();
      const inFlight: Array<{ token: number; len: number }> = [];
      let done = 0, added = 0, wraps = 0, lastWrap = r.q.nextAvail >> 15;
      const TOTAL = 70000;
      while (done < TOTAL) {
        while (added < TOTAL) {
          const out: Buf[] = [], inn: Buf[] = [];
          for (let k = rnd(3); k > 0; k--) out.push({ gpa: r.data + BigInt(rnd(1 << 20)), len: 1 + rnd(4096) });
          for (let k = rnd(3) + (out.length === 0 ? 1 : 0); k > 0; k--) inn.push({ gpa: HIGH + BigInt(rnd(HIGH_SIZE - 4096)), len: rnd(4096) });
          const id = r.drv.add(out, inn, { direct: rnd(2) === 0 });
          if (id === undefined) break;
          expect(expected.has(id)).to.equal(false);
          expected.set(id, { out, inn });
          added++;
          if (rnd(3) === 0) break;
        }
        const n = r.q.popBatch(1 + rnd(size));
        for (let i = 0; i < n; i++) {
          const c = r.q.chain(i);
          const e = expected.get(c.head)!;
          expect(e, `id ${c.head}`).to.not.equal(undefined);
          expect(c.readable.map((v) => v.length)).to.deep.equal(e.out.map((b) => b.len));
          expect(c.writable.map((v) => v.offset)).to.deep.equal(e.inn.map((b) => off(r, b)));
          inFlight.push({ token: c.token, len: wsum(e.inn) });
        }
        if ((r.q.nextAvail >> 15) !== lastWrap) { wraps++; lastWrap = r.q.nextAvail >> 15; }
        // Complete a random subset in random order, singly or as a batch.
        for (let k = rnd(inFlight.length + 1); k > 0; k--) {
          const [u] = inFlight.splice(rnd(inFlight.length), 1);
          if (rnd(2) === 0) r.q.pushUsed(u.token, u.len);
          else r.q.stageUsed(u.token, u.len);
        }
        r.q.flushUsed();
        for (let b = r.drv.getBuf(); b; b = r.drv.getBuf()) {
          expect(b.len).to.equal(wsum(expected.get(b.id)!.inn));
          expected.delete(b.id);
          done++;
        }
        if (n === 0 && inFlight.length === 0 && added === done && added === TOTAL) break;
      }
      expect(done).to.equal(TOTAL);
      expect(wraps).to.be.greaterThan(1000);
      expect(r.drv.numFree).to.equal(size);
      expect(r.q.nextUsed).to.equal(r.q.nextAvail);
      expect(r.q.error).to.equal(undefined);
    });
  }
});

describe('hot/virtqueue packed: notification suppression', () => {
  it('driver event flags: ENABLE notifies, DISABLE does not, nothing used → no', () => {
    const r = rig({ size: 8 });
    expect(r.q.needsNotification()).to.equal(false);
    r.drv.add([{ gpa: r.data, len: 1 }], []);
    r.drv.add([{ gpa: r.data, len: 1 }], []);
    r.q.popBatch();
    r.q.pushUsed(r.q.chain(0).token, 0);
    expect(r.q.needsNotification()).to.equal(true);
    expect(r.q.needsNotification()).to.equal(false);
    r.drv.disableCb();
    r.q.pushUsed(r.q.chain(1).token, 0);
    expect(r.q.needsNotification()).to.equal(false);
    // DESC without EVENT_IDX is reserved: notify.
    r.drv.setDriverEvent(0x8000 | 7, RING_EVENT_FLAGS_DESC);
    r.drv.add([{ gpa: r.data, len: 1 }], []);
    r.q.popBatch();
    r.q.pushUsedChains(1);
    expect(r.q.needsNotification()).to.equal(true);
  });

  it('off_wrap with EVENT_IDX: notifies exactly when the used side passes the event, across ring wraps', () => {
    const r = rig({ size: 4, eventIdx: true });
    r.drv.enableCb();
    expect(r.drv.driverOffWrap).to.equal(0x8000);
    // Walk several laps: the driver re-arms at last_used (Linux), device must
    // notify for every completion the driver is waiting for.
    for (let lap = 0; lap < 20; lap++) {
      r.drv.add([{ gpa: r.data, len: 1 }], [{ gpa: r.data, len: 1 }]); // 2 descs
      r.drv.add([{ gpa: r.data, len: 1 }], []); // 1
      expect(r.q.popBatch()).to.equal(2);
      const t0 = r.q.chain(0).token, t1 = r.q.chain(1).token;
      r.q.pushUsed(t0, 1);
      expect(r.q.needsNotification(), `lap ${lap} first`).to.equal(true);
      // Driver has not consumed yet: its event still points at the old
      // position, which the device already passed → no second interrupt.
      r.q.pushUsed(t1, 0);
      expect(r.q.needsNotification(), `lap ${lap} second`).to.equal(false);
      expect(r.drv.getBuf()).to.not.equal(undefined);
      expect(r.drv.getBuf()).to.not.equal(undefined);
    }
    // Event set in the future: one used descriptor ahead.
    r.drv.add([{ gpa: r.data, len: 1 }], []);
    r.drv.add([{ gpa: r.data, len: 1 }], []);
    r.q.popBatch();
    const ta = r.q.chain(0).token, tb = r.q.chain(1).token;
    const pos = r.drv.lastUsedIdx, w = r.drv.usedWrap;
    const evPos = (pos + 1) % 4, evWrap = pos + 1 >= 4 ? w ^ 1 : w;
    r.drv.setDriverEvent(evPos | (evWrap << 15), RING_EVENT_FLAGS_DESC);
    r.q.pushUsed(ta, 0);
    expect(r.q.needsNotification()).to.equal(false);
    r.q.pushUsed(tb, 0);
    expect(r.q.needsNotification()).to.equal(true);
  });

  it('device event suppression: DISABLE / ENABLE without EVENT_IDX, DESC + off_wrap with it; enable reports the race', () => {
    const a = rig({ size: 8 });
    a.q.disableNotification();
    expect(a.drv.deviceFlags).to.equal(RING_EVENT_FLAGS_DISABLE);
    a.drv.add([{ gpa: a.data, len: 1 }], []);
    expect(a.drv.kickPrepare()).to.equal(false);
    expect(a.q.enableNotification()).to.equal(true);
    expect(a.drv.deviceFlags).to.equal(RING_EVENT_FLAGS_ENABLE);
    a.q.popBatch();
    expect(a.q.enableNotification()).to.equal(false);
    a.drv.add([{ gpa: a.data, len: 1 }], []);
    expect(a.drv.kickPrepare()).to.equal(true);

    const b = rig({ size: 4, eventIdx: true });
    for (let lap = 0; lap < 6; lap++) {
      expect(b.q.enableNotification()).to.equal(false);
      expect(b.drv.deviceFlags).to.equal(RING_EVENT_FLAGS_DESC);
      expect(b.drv.deviceOffWrap).to.equal(b.q.nextAvail);
      b.drv.add([{ gpa: b.data, len: 1 }], [{ gpa: b.data, len: 1 }]);
      expect(b.drv.kickPrepare(), `lap ${lap}`).to.equal(true);
      b.drv.add([{ gpa: b.data, len: 1 }], []); // device has not re-armed
      expect(b.drv.kickPrepare()).to.equal(false);
      expect(b.q.popBatch()).to.equal(2);
      b.q.pushUsedChains(2);
      b.drv.getBuf();
      b.drv.getBuf();
    }
  });
});

describe('hot/virtqueue packed: hostile guest', () => {
  const SZ = 8;
  before(() => configureLogging({ silent: true }));
  after(() => configureLogging());
  const A1 = PackedRing.availBits(1);

  it('set-up: queue-size (0, > 32768; non-powers of two allowed), ring-align, ring-addr, ring-pos', () => {
    const r = rig({ size: SZ });
    const lay = packedLayout(GUEST, SZ);
    const base = { features: 0n, descGpa: lay.descGpa, driverGpa: lay.driverGpa, deviceGpa: lay.deviceGpa };
    r.q.reset();
    expectVqError(() => r.q.activate({ size: 0, ...base }), 'queue-size');
    r.q.reset();
    r.q.activate({ size: 7, ...base });
    r.mem.view.setUint32(r.q.q, 32769, true);
    expect(r.mod.wasm.vqp_setup(r.q.q)).to.equal(-VQ_ERROR_CODES['queue-size']);
    const bad: Array<[Partial<typeof base>, VirtqueueErrorKind]> = [
      [{ descGpa: lay.descGpa + 8n }, 'ring-align'],
      [{ driverGpa: lay.driverGpa + 2n }, 'ring-align'],
      [{ deviceGpa: lay.deviceGpa + 1n }, 'ring-align'],
      [{ descGpa: 0x1000n }, 'ring-addr'],
      [{ deviceGpa: GUEST + BigInt(GUEST_SIZE) - 2n - 2n + 4n }, 'ring-addr'],
      [{ driverGpa: 0xffff_ffff_ffff_fffcn }, 'ring-addr'],
    ];
    for (const [patch, kind] of bad) {
      r.q.reset();
      expectVqError(() => r.q.activate({ size: SZ, ...base, ...patch }), kind);
      expectVqError(() => r.q.popBatch(), kind);
    }
    for (const pos of [{ nextAvail: SZ }, { nextUsed: 0x8000 | SZ }, { nextAvail: 0x10000 }]) {
      r.q.reset();
      expectVqError(() => r.q.activate({ size: SZ, ...base, ...pos }), 'ring-pos');
    }
    r.q.reset();
    r.q.activate({ size: SZ, ...base, nextAvail: 3, nextUsed: 3 }); // restore: position 3, wrap 0
    expect(r.q.popBatch()).to.equal(0);
  });

  it('desc-addr: outside guest RAM, straddling a region end, wrapping 2^64 (ring and indirect table)', () => {
    const cases: Array<[bigint, number]> = [
      [0n, 16], [GUEST + BigInt(GUEST_SIZE) - 8n, 16], [HIGH + BigInt(HIGH_SIZE) - 1n, 2], [0xffff_ffff_ffff_fff0n, 0x20], [GUEST, 0xffff_ffff],
    ];
    for (const [addr, len] of cases) {
      const r = rig({ size: SZ });
      r.drv.setDesc(1, addr, len, 0, VIRTQ_DESC_F_WRITE | A1);
      r.drv.setDesc(0, r.data, 1, 0, VIRTQ_DESC_F_NEXT | A1);
      expectGuestError(r, 'desc-addr');
      const s = rig({ size: SZ, indirect: true });
      const t = s.drv.indirectTable(0);
      s.drv.setDesc(0, s.data, 1, 0, 0, t);
      s.drv.setDesc(1, addr, len, 0, VIRTQ_DESC_F_WRITE, t);
      s.drv.setDesc(0, t, 32, 0, VIRTQ_DESC_F_INDIRECT | A1);
      expectGuestError(s, 'desc-addr');
    }
  });

  it('chain-not-avail: NEXT into a descriptor not made available (stale wrap bits, or used bits)', () => {
    for (const bad of [0, PackedRing.availBits(0), VIRTQ_DESC_F_NEXT | 0x8080]) {
      const r = rig({ size: SZ });
      r.drv.setDesc(1, r.data, 1, 0, bad);
      r.drv.setDesc(0, r.data, 1, 0, VIRTQ_DESC_F_NEXT | A1);
      expectGuestError(r, 'chain-not-avail');
      expect(r.q.nextAvail).to.equal(PACKED_START);
    }
    // Across the ring end the wrap counter flips: bits of counter 1 there are stale.
    const r = rig({ size: SZ });
    r.q.reset();
    const lay = packedLayout(GUEST, SZ);
    r.q.activate({ size: SZ, features: 0n, descGpa: lay.descGpa, driverGpa: lay.driverGpa, deviceGpa: lay.deviceGpa, nextAvail: 0x8000 | (SZ - 1), nextUsed: 0x8000 | (SZ - 1) });
    r.drv.setDesc(0, r.data, 1, 0, A1); // should carry counter 0's bits
    r.drv.setDesc(SZ - 1, r.data, 1, 0, VIRTQ_DESC_F_NEXT | A1);
    expectGuestError(r, 'chain-not-avail');
  });

  it('chain-too-long: a ring chain past Queue Size, an indirect table (or prefix + table) over Queue Size', () => {
    const r = rig({ size: SZ });
    // Every descriptor available with NEXT: after SZ the chain would reach its head.
    for (let i = 0; i < SZ; i++) r.drv.setDesc(i, r.data, 1, 0, VIRTQ_DESC_F_NEXT | A1);
    expectGuestError(r, 'chain-too-long');
    const s = rig({ size: SZ, indirect: true });
    const t = s.drv.indirectTable(0);
    s.drv.setDesc(0, t, (SZ + 1) * 16, 0, VIRTQ_DESC_F_INDIRECT | A1);
    expectGuestError(s, 'chain-too-long');
    const u = rig({ size: SZ, indirect: true });
    u.drv.setDesc(1, u.drv.indirectTable(0), SZ * 16, 0, VIRTQ_DESC_F_INDIRECT | A1);
    u.drv.setDesc(0, u.data, 1, 0, VIRTQ_DESC_F_NEXT | A1); // 1 + 8 > 8
    expectGuestError(u, 'chain-too-long');
    // A chain of exactly Queue Size ring descriptors is fine.
    const ok = rig({ size: SZ });
    for (let i = 0; i < SZ; i++) ok.drv.setDesc(i, ok.data, 1, 3, (i < SZ - 1 ? VIRTQ_DESC_F_NEXT : 0) | A1);
    expect(ok.q.popBatch()).to.equal(1);
    expect(ok.q.chain(0).ringDescs).to.equal(SZ);
    expect(ok.q.chain(0).head).to.equal(3);
    expect(ok.q.nextAvail).to.equal(0); // wrapped: position 0, counter 0
  });

  it('indirect-not-negotiated, nested-indirect, indirect-with-next, indirect-len, indirect-addr', () => {
    const a = rig({ size: SZ });
    a.drv.setDesc(0, a.data, 16, 0, VIRTQ_DESC_F_INDIRECT | A1);
    expectGuestError(a, 'indirect-not-negotiated');
    const b = rig({ size: SZ, indirect: true });
    const t = b.drv.indirectTable(0);
    b.drv.setDesc(0, b.drv.indirectTable(1), 16, 0, VIRTQ_DESC_F_INDIRECT, t);
    b.drv.setDesc(0, t, 16, 0, VIRTQ_DESC_F_INDIRECT | A1);
    expectGuestError(b, 'nested-indirect');
    const c = rig({ size: SZ, indirect: true });
    c.drv.setDesc(0, c.data, 1, 0, 0, c.drv.indirectTable(0));
    c.drv.setDesc(1, c.data, 1, 0, A1);
    c.drv.setDesc(0, c.drv.indirectTable(0), 16, 0, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT | A1);
    expectGuestError(c, 'indirect-with-next');
    for (const len of [0, 24, 15]) {
      const d = rig({ size: SZ, indirect: true });
      d.drv.setDesc(0, d.drv.indirectTable(0), len, 0, VIRTQ_DESC_F_INDIRECT | A1);
      expectGuestError(d, 'indirect-len');
    }
    for (const addr of [0x2000n, GUEST + BigInt(GUEST_SIZE) - 16n]) {
      const e = rig({ size: SZ, indirect: true });
      e.drv.setDesc(0, addr, 32, 0, VIRTQ_DESC_F_INDIRECT | A1);
      expectGuestError(e, 'indirect-addr');
    }
  });

  it('writable-order (ring and table) and chain-bytes', () => {
    const r = rig({ size: SZ });
    r.drv.setDesc(1, r.data, 1, 0, A1);
    r.drv.setDesc(0, r.data, 1, 0, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE | A1);
    expectGuestError(r, 'writable-order');
    const s = rig({ size: SZ, indirect: true });
    const t = s.drv.indirectTable(0);
    s.drv.setDesc(0, s.data, 1, 0, VIRTQ_DESC_F_WRITE, t);
    s.drv.setDesc(1, s.data, 1, 0, 0, t);
    s.drv.setDesc(0, t, 32, 0, VIRTQ_DESC_F_INDIRECT | A1);
    expectGuestError(s, 'writable-order');
    const size = 1024;
    const big = rig({ size, indirect: true, maxIndirect: 4 });
    const bt = big.drv.indirectTable(size - 1) + 4096n;
    const n = 600;
    for (let k = 0; k < n; k++) big.drv.setDesc(k, GUEST, GUEST_SIZE, 0, 0, bt);
    big.drv.setDesc(0, bt, n * 16, 0, VIRTQ_DESC_F_INDIRECT | A1);
    expectGuestError(big, 'chain-bytes');
  });

  it('re-activation clears a sticky error', () => {
    const r = rig({ size: SZ });
    r.drv.setDesc(0, 0n, 1, 0, A1);
    expectGuestError(r, 'desc-addr');
    const r2 = rig({ size: SZ });
    expect(r2.q.error).to.equal(undefined);
    r2.drv.add([{ gpa: r2.data, len: 1 }], []);
    expect(r2.q.popBatch()).to.equal(1);
  });

  it('fuzz: random rings never trap, hang or yield an iovec outside guest RAM', function () {
    this.timeout(60000);
    const guestKinds = new Set(Object.keys(VQ_ERROR_CODES).filter((k) => {
      const c = VQ_ERROR_CODES[k as keyof typeof VQ_ERROR_CODES];
      return (c >= 6 && c <= 18) || c === 21;
    }));
    const seen = new Map<string, number>();
    let seed = 77;
    const rnd = (n: number) => {
      seed = (seed * 1664525 + 1013904223) >>> 0;
      return seed % n;
    };
    const addrs = [GUEST, GUEST + BigInt(GUEST_SIZE) - 64n, HIGH, 0n, 0xffff_ffff_ffff_ff00n];
    const flagBits = [1, 2, 4, 0x80, 0x8000, 0x80, 0x80, 1, 0x8000];
    for (let it = 0; it < 3000; it++) {
      const size = [1, 2, 3, 4, 8, 16][rnd(6)];
      const r = rig({ size, indirect: rnd(2) === 0, eventIdx: rnd(2) === 0 });
      if (rnd(2) === 0) {
        const lay = packedLayout(GUEST, size);
        const p = rnd(size) | (rnd(2) << 15);
        r.q.reset();
        r.q.activate({ size, features: features({ indirect: true }), descGpa: lay.descGpa, driverGpa: lay.driverGpa, deviceGpa: lay.deviceGpa, nextAvail: p, nextUsed: p });
      }
      const tables = [r.drv.o.descGpa, r.drv.indirectTable(0), r.drv.indirectTable(1)];
      for (const [ti, table] of tables.entries()) {
        const entries = ti === 0 ? size : MAX_IND;
        for (let i = 0; i < entries; i++) {
          const kind = rnd(10);
          const addr = kind < 6 ? r.data + BigInt(rnd(4096)) : kind < 8 ? tables[1 + rnd(2)] : addrs[rnd(addrs.length)] + BigInt(rnd(64));
          const len = [1, 16, 32, 48, 4096, rnd(1 << 20), 0xffffffff][rnd(7)];
          let flags = 0;
          for (let k = rnd(5); k > 0; k--) flags |= flagBits[rnd(flagBits.length)];
          r.drv.setDesc(i, addr, len, rnd(65536), flags, table);
        }
      }
      try {
        for (let round = 0; round < 3; round++) {
          const n = r.q.popBatch();
          for (let i = 0; i < n; i++) {
            const c = r.q.chain(i);
            expect(c.ringDescs).to.be.within(1, size);
            for (const v of [...c.readable, ...c.writable]) {
              const inRam = r.mem.guestRegions.some((g) => v.offset >= g.offset && v.offset + v.length <= g.offset + g.size);
              expect(inRam, 'iovec inside guest RAM').to.equal(true);
            }
          }
          if (n > 0) r.q.pushUsedChains(n);
          r.q.needsNotification();
        }
        seen.set('ok', (seen.get('ok') ?? 0) + 1);
      } catch (e) {
        expect(e).to.be.instanceOf(VirtqueueError);
        const k = (e as VirtqueueError).kind;
        expect(guestKinds.has(k), k).to.equal(true);
        seen.set(k, (seen.get(k) ?? 0) + 1);
      }
    }
    expect(seen.get('ok') ?? 0).to.be.greaterThan(100);
    expect(seen.size).to.be.greaterThan(6);
  });
});
