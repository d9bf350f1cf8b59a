/**
 * assembly/virtio through src/hot/virtqueue, driven by a Linux-style driver
 * ring writer (driver-ring.ts): direct and indirect chains, batch pop, used
 * ring, EVENT_IDX both ways with 16-bit wrap, and every hostile-guest case as
 * its own error kind.
 */
import { expect } from 'chai';
import { HotMemory, STATIC_END, WASM_PAGE } from '../../../src/hot/memory';
import { activeDataSegments, compileModule, wasmDir } from '../../../src/hot/loader';
import {
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  VQ_ERROR_CODES,
  Virtqueue,
  VirtqueueError,
  VirtqueueErrorKind,
  VirtioModule,
} from '../../../src/hot/virtqueue';
import { Buf, DriverRing, needEvent, ringLayout } from './driver-ring';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { configureLogging } from '../../../src/common/log';
import { expectVqError, features } from './vq-assert';

const GUEST = 0x4000_0000n; // 1 GiB: guest addresses never equal Memory offsets
const GUEST_SIZE = 8 << 20;
const HIGH = 0x1_0000_0000n; // a second region above 4 GiB
const HIGH_SIZE = 1 << 20;
const MAX_IND = 16;

interface Rig {
  mem: HotMemory;
  mod: VirtioModule;
  q: Virtqueue;
  drv: DriverRing;
  data: bigint;
  size: number;
}

let shared: { mem: HotMemory; mod: VirtioModule; queues: Map<number, Virtqueue> } | undefined;

/** One Memory + module for the file; one queue per size, re-activated per test. */
function rig(o: { size?: number; eventIdx?: boolean; indirect?: boolean; startIdx?: number; maxIndirect?: number } = {}): Rig {
  if (!shared) {
    const mem = new HotMemory({ scratchBytes: 4 << 20, guestRegions: [{ gpa: GUEST, size: GUEST_SIZE }, { gpa: HIGH, size: HIGH_SIZE }] });
    shared = { mem, mod: new VirtioModule(mem), queues: new Map() };
  }
  const { mem, mod } = shared;
  const size = o.size ?? 16;
  let q = shared.queues.get(size);
  if (!q) {
    q = mod.createQueue({ maxSize: size, maxChains: Math.min(size, 256) });
    shared.queues.set(size, q);
  }
  mem.u8.fill(0, mem.guestBase, mem.guestBase + 1 << 20);
  const lay = ringLayout(GUEST, size);
  const maxIndirect = o.maxIndirect ?? MAX_IND;
  const indirectGpa = lay.end;
  const data = (indirectGpa + BigInt(size * maxIndirect * 16) + 4095n) & ~4095n;
  const drv = new DriverRing(mem, {
    size, ...lay, eventIdx: !!o.eventIdx, indirect: !!o.indirect, indirectGpa, maxIndirect, startIdx: o.startIdx,
  });
  q.reset();
  q.activate({ size, features: features(o), ...lay, lastAvailIdx: o.startIdx, nextUsedIdx: o.startIdx });
  return { mem, mod, q, drv, data, size };
}

/** Hostile-guest assertion: error kind, sticky, and the queue stays broken. */
function expectGuestError(r: Rig, kind: VirtqueueErrorKind): void {
  const e = expectVqError(() => r.q.popBatch(), kind);
  expect(e.sticky, 'sticky').to.equal(true);
  expect(r.q.error).to.equal(kind);
  expectVqError(() => r.q.popBatch(), kind);
  expectVqError(() => r.q.pushUsed(0, 0), kind);
  expect(r.q.needsNotification()).to.equal(false);
}

describe('hot/memory + loader', () => {
  it('sizes the Memory once: initial = maximum, guest RAM 64 KiB aligned after scratch', () => {
    const mem = new HotMemory({ scratchBytes: 100_000, guestRegions: [{ gpa: 0n, size: 1 << 20 }, { gpa: 1n << 32n, size: 64 << 10 }] });
    expect(mem.guestBase % WASM_PAGE).to.equal(0);
    expect(mem.guestBase).to.be.at.least(STATIC_END + 100_000);
    expect(mem.byteLength).to.equal(mem.guestBase + (1 << 20) + (64 << 10));
    expect(() => mem.memory.grow(1)).to.throw(); // maximum reached: never grows
    expect(mem.gpaToOffset(1n << 32n, 16)).to.equal(mem.guestBase + (1 << 20));
    expect(() => mem.gpaToOffset((1n << 20n) - 8n, 16)).to.throw(/not in guest RAM/);
    const a = mem.reserve('a', 10, 64);
    const b = mem.reserve('b', 10, 64);
    expect(a % 64).to.equal(0);
    expect(b).to.be.at.least(a + 10);
    expect(mem.reserve('a', 10)).to.equal(a);
    expect(() => mem.reserve('huge', 1 << 20)).to.throw(/exhausted/);
  });

  it('refuses layouts past wasm32 and overlapping or unaligned regions', () => {
    expect(() => new HotMemory({ scratchBytes: 0, guestRegions: [{ gpa: 0n, size: 4096 * 1024 * 1024 }] })).to.throw(/wasm32/);
    expect(() => new HotMemory({ scratchBytes: 0, guestRegions: [{ gpa: 0n, size: 8192 }, { gpa: 4096n, size: 4096 }] })).to.throw(/overlap/);
    expect(() => new HotMemory({ scratchBytes: 0, guestRegions: [{ gpa: 100n, size: 4096 }] })).to.throw(/aligned/);
  });

  it('virtio.wasm keeps no static data (safe to share the Memory)', () => {
    compileModule('virtio');
    const bytes = fs.readFileSync(path.join(wasmDir(), 'virtio.wasm'));
    expect(activeDataSegments(bytes)).to.deep.equal([]);
  });
});

describe('hot/virtqueue: pop and push', () => {
  it('pops direct chains in one batch: heads, iovecs, readable/writable split', () => {
    const r = rig({ size: 16 });
    const bufs: Array<{ out: Buf[]; inn: Buf[] }> = [
      { out: [{ gpa: r.data, len: 16 }], inn: [{ gpa: r.data + 4096n, len: 512 }, { gpa: r.data + 8192n, len: 1 }] },
      { out: [{ gpa: r.data + 16n, len: 100 }, { gpa: HIGH + 8n, len: 200 }], inn: [] },
      { out: [], inn: [{ gpa: HIGH, len: HIGH_SIZE }] },
    ];
    const heads = bufs.map((b) => r.drv.add(b.out, b.inn));
    expect(r.q.pending()).to.equal(3);
    expect(r.q.popBatch()).to.equal(3);
    expect(r.q.lastAvailIdx).to.equal(3);
    bufs.forEach((b, i) => {
      const c = r.q.chain(i);
      expect(c.head).to.equal(heads[i]);
      expect(c.readable).to.deep.equal(b.out.map((x) => ({ offset: r.mem.gpaToOffset(x.gpa, x.len), length: x.len })));
      expect(c.writable).to.deep.equal(b.inn.map((x) => ({ offset: r.mem.gpaToOffset(x.gpa, x.len), length: x.len })));
      expect(c.readableBytes).to.equal(b.out.reduce((s, x) => s + x.len, 0));
      expect(c.writableBytes).to.equal(b.inn.reduce((s, x) => s + x.len, 0));
    });
    expect(r.q.popBatch()).to.equal(0);
  });

  it('buffers alias guest memory: device writes are seen by the driver without copies', () => {
    const r = rig({ size: 8 });
    const off = r.mem.gpaToOffset(r.data, 5);
    r.mem.u8.set(Buffer.from('hello'), off);
    r.drv.add([{ gpa: r.data, len: 5 }], [{ gpa: r.data + 64n, len: 5 }]);
    expect(r.q.popBatch()).to.equal(1);
    const b = r.q.buffers(0);
    expect(b.readable[0].toString()).to.equal('hello');
    b.readable[0].copy(b.writable[0]);
    r.q.pushUsed(b.head, 5);
    expect(r.drv.getBuf()).to.deep.equal({ id: b.head, len: 5 });
    expect(Buffer.from(r.mem.u8.subarray(off + 64, off + 69)).toString()).to.equal('hello');
  });

  it('pops indirect chains and a direct prefix followed by one indirect descriptor (§2.7.5.3.2)', () => {
    const r = rig({ size: 8, indirect: true });
    const out = [{ gpa: r.data, len: 16 }, { gpa: r.data + 16n, len: 32 }];
    const inn = [{ gpa: r.data + 4096n, len: 4096 }];
    const h = r.drv.add(out, inn)!;
    expect(r.drv.numFree).to.equal(7); // one descriptor for the whole request
    // Hand-built: desc 5 (readable) → desc 6 (INDIRECT, WRITE ignored) → table of 2.
    const table = r.drv.indirectTable(7);
    r.drv.setDesc(0, r.data + 8192n, 8, VIRTQ_DESC_F_WRITE, 0, table);
    r.drv.setDesc(0, r.data + 9000n, 4, VIRTQ_DESC_F_NEXT, 1, table); // readable …
    r.drv.setDesc(1, r.data + 9100n, 4, VIRTQ_DESC_F_WRITE, 0, table); // … then writable
    r.drv.setDesc(5, r.data + 100n, 10, VIRTQ_DESC_F_NEXT, 6);
    r.drv.setDesc(6, table, 32, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE, 0);
    r.drv.setAvailRing(1, 5);
    r.drv.setAvailIdx(2);
    expect(r.q.popBatch()).to.equal(2);
    const a = r.q.chain(0);
    expect(a.head).to.equal(h);
    expect(a.readable.map((v) => v.length)).to.deep.equal([16, 32]);
    expect(a.writable.map((v) => v.length)).to.deep.equal([4096]);
    const b = r.q.chain(1);
    expect(b.head).to.equal(5);
    expect(b.readable).to.deep.equal([
      { offset: r.mem.gpaToOffset(r.data + 100n, 10), length: 10 },
      { offset: r.mem.gpaToOffset(r.data + 9000n, 4), length: 4 },
    ]);
    expect(b.writable).to.deep.equal([{ offset: r.mem.gpaToOffset(r.data + 9100n, 4), length: 4 }]);
  });

  it('stops a batch at max chains and before a chain that does not fit the iov table', () => {
    const r = rig({ size: 16 });
    for (let i = 0; i < 5; i++) r.drv.add([{ gpa: r.data, len: 1 }], [{ gpa: r.data + 8n, len: 1 }]);
    expect(r.q.popBatch(2)).to.equal(2);
    expect(r.q.pending()).to.equal(3);
    // Raw call with room for 5 iovecs: two 2-buffer chains fit, the third waits.
    const w = r.mod.wasm;
    expect(w.vq_pop_batch(r.q.q, r.q.chainsOff, 16, r.q.iovOff, 5)).to.equal(2);
    expect(r.q.pending()).to.equal(1);
    // One iovec for a 2-buffer chain and nothing popped yet: a host error, not sticky.
    expect(w.vq_pop_batch(r.q.q, r.q.chainsOff, 16, r.q.iovOff, 1)).to.equal(-VQ_ERROR_CODES['iov-too-small']);
    expect(r.q.error).to.equal(undefined);
    expect(r.q.popBatch()).to.equal(1);
  });

  it('pushes used elements singly and in one batch; the driver reclaims descriptors', () => {
    const r = rig({ size: 4 });
    const heads = [0, 1, 2, 3].map((i) => r.drv.add([{ gpa: r.data + BigInt(i), len: 1 }], [])!);
    expect(r.drv.add([{ gpa: r.data, len: 1 }], [])).to.equal(undefined); // full
    expect(r.q.popBatch()).to.equal(4);
    r.q.pushUsed(heads[2], 7);
    r.q.stageUsed(heads[0], 1);
    r.q.stageUsed(heads[3], 2);
    r.q.stageUsed(heads[1], 3);
    expect(r.drv.usedIdx).to.equal(1);
    expect(r.q.flushUsed()).to.equal(3);
    expect(r.drv.usedIdx).to.equal(4);
    const got = [r.drv.getBuf(), r.drv.getBuf(), r.drv.getBuf(), r.drv.getBuf(), r.drv.getBuf()];
    expect(got).to.deep.equal([
      { id: heads[2], len: 7 }, { id: heads[0], len: 1 }, { id: heads[3], len: 2 }, { id: heads[1], len: 3 }, undefined,
    ]);
    expect(r.drv.numFree).to.equal(4);
  });

  it('pushes the chains of a pop in one call: writable bytes or given lens, after staged elements', () => {
    const r = rig({ size: 8 });
    const heads = [0, 1, 2].map((i) => r.drv.add([{ gpa: r.data + BigInt(i * 64), len: 4 }], [{ gpa: r.data + 4096n + BigInt(i * 64), len: 10 + i }])!);
    expect(r.q.popBatch()).to.equal(3);
    r.q.stageUsed(heads[2], 99); // staged first, published first
    expect(r.q.pushUsedChains(2)).to.equal(2);
    expect(r.drv.usedIdx).to.equal(3);
    expect([r.drv.getBuf(), r.drv.getBuf(), r.drv.getBuf()]).to.deep.equal([
      { id: heads[2], len: 99 }, { id: heads[0], len: 10 }, { id: heads[1], len: 11 },
    ]);
    const more = [3, 4].map((i) => r.drv.add([], [{ gpa: r.data + 4096n + BigInt(i * 64), len: 20 }])!);
    expect(r.q.popBatch()).to.equal(2);
    expect(r.q.pushUsedChains(2, [6, 7])).to.equal(2);
    expect([r.drv.getBuf(), r.drv.getBuf(), r.drv.getBuf()]).to.deep.equal([
      { id: more[0], len: 6 }, { id: more[1], len: 7 }, undefined,
    ]);
    // A corrupted chain record (host scratch) is refused and publishes nothing.
    const idx = r.drv.usedIdx;
    r.drv.add([], [{ gpa: r.data + 4096n, len: 1 }]);
    expect(r.q.popBatch()).to.equal(1);
    r.q.chainWords[0] = 8;
    expectVqError(() => r.q.pushUsedChains(1), 'used-id');
    expect(r.drv.usedIdx).to.equal(idx);
    expect(r.q.error).to.equal(undefined);
  });

  it('refuses a used id outside the queue (host bug) without poisoning the queue', () => {
    const r = rig({ size: 4 });
    const e = expectVqError(() => r.q.pushUsed(4, 0), 'used-id');
    expect(e.sticky).to.equal(false);
    r.q.stageUsed(0, 0);
    r.q.stageUsed(9, 0);
    expectVqError(() => r.q.flushUsed(), 'used-id');
    expect(r.drv.usedIdx).to.equal(0); // nothing of the bad batch was published
    expect(r.q.error).to.equal(undefined);
  });

  for (const startIdx of [0, 65530]) {
    it(`runs 70000 random requests through a size-8 queue, 16-bit indices wrapping (start ${startIdx})`, function () {
      this.timeout(60000);
      const r = rig({ size: 8, indirect: true, eventIdx: true, startIdx });
      let seed = 12345 + startIdx;
      const rnd = (n: number) => {
        seed = (seed * 1103515245 + 12345) >>> 0;
        return (seed >>> 8) % n;
      };
      const expected = new Map<number, { out: Buf[]; inn: Buf[] }>();
      let done = 0, added = 0;
      const TOTAL = 70000;
      while (done < TOTAL) {
        // Driver: add what fits.
        while (added < TOTAL) {
          const out: Buf[] = [], inn: Buf[] = [];
          for (let k = rnd(3); k > 0; k--) out.push({ gpa: r.data + BigInt(rnd(1 << 20)), len: 1 + rnd(4096) });
          for (let k = rnd(3) + (out.length === 0 ? 1 : 0); k > 0; k--) inn.push({ gpa: HIGH + BigInt(rnd(HIGH_SIZE - 4096)), len: rnd(4096) });
          const h = r.drv.add(out, inn, { direct: rnd(2) === 0 });
          if (h === undefined) break;
          expected.set(h, { out, inn });
          added++;
        }
        // Device: pop a batch, check every chain, complete in random order.
        const n = r.q.popBatch();
        expect(n).to.be.greaterThan(0);
        const order: number[] = [];
        for (let i = 0; i < n; i++) {
          const c = r.q.chain(i);
          const e = expected.get(c.head)!;
          expect(c.readable.map((v) => v.length)).to.deep.equal(e.out.map((b) => b.len));
          expect(c.writable.map((v) => v.offset)).to.deep.equal(e.inn.map((b) => r.mem.gpaToOffset(b.gpa, b.len)));
          order.splice(rnd(order.length + 1), 0, c.head);
        }
        for (const h of order) r.q.stageUsed(h, expected.get(h)!.inn.reduce((s, b) => s + b.len, 0));
        r.q.flushUsed();
        for (let b = r.drv.getBuf(); b; b = r.drv.getBuf()) {
          expect(b.len).to.equal(expected.get(b.id)!.inn.reduce((s, x) => s + x.len, 0));
          expected.delete(b.id);
          done++;
        }
      }
      expect(r.q.lastAvailIdx).to.equal((startIdx + TOTAL) & 0xffff);
      expect(r.q.nextUsedIdx).to.equal((startIdx + TOTAL) & 0xffff);
      expect(r.drv.numFree).to.equal(8);
    });
  }
});

describe('hot/virtqueue: notification suppression', () => {
  it('vring_need_event matches the driver-side formula, including wrap-around', () => {
    const w = rig().mod.wasm;
    const cases: Array<[number, number, number, boolean]> = [
      [0, 1, 0, true], // used_event 0: notify after the first buffer
      [0, 2, 1, false],
      [5, 6, 3, true],
      [5, 5, 3, false],
      [65535, 0, 65534, true], // crossing 65535 → 0
      [65535, 1, 65530, true],
      [2, 1, 65534, false],
      [0, 1, 65535, true],
      [100, 100, 100, false],
    ];
    for (const [e, n, o, want] of cases) {
      expect(w.vring_need_event(e, n, o), `${e},${n},${o}`).to.equal(want ? 1 : 0);
      expect(needEvent(e, n, o)).to.equal(want);
    }
    let s = 1;
    for (let i = 0; i < 20000; i++) {
      s = (s * 48271) % 2147483647;
      const e = s & 0xffff, o = (s >>> 8) & 0xffff, n = (o + (s % 300)) & 0xffff;
      expect(w.vring_need_event(e, n, o) === 1).to.equal(needEvent(e, n, o));
    }
  });

  it('without EVENT_IDX honours VIRTQ_AVAIL_F_NO_INTERRUPT and notifies only after new used entries', () => {
    const r = rig({ size: 8 });
    expect(r.q.needsNotification()).to.equal(false); // nothing used yet
    r.drv.add([{ gpa: r.data, len: 1 }], []);
    r.drv.add([{ gpa: r.data, len: 1 }], []);
    r.q.popBatch();
    r.q.pushUsed(r.q.chain(0).head, 0);
    expect(r.q.needsNotification()).to.equal(true);
    expect(r.q.needsNotification()).to.equal(false);
    r.drv.availFlags = VIRTQ_AVAIL_F_NO_INTERRUPT;
    r.q.pushUsed(r.q.chain(1).head, 0);
    expect(r.q.needsNotification()).to.equal(false);
  });

  it('with EVENT_IDX notifies exactly when used idx passes used_event, across 65535 → 0', () => {
    const r = rig({ size: 8, eventIdx: true, startIdx: 65533 });
    r.drv.availFlags = VIRTQ_AVAIL_F_NO_INTERRUPT; // MUST be ignored with EVENT_IDX
    const heads: number[] = [];
    for (let i = 0; i < 6; i++) heads.push(r.drv.add([{ gpa: r.data, len: 1 }], [])!);
    expect(r.q.popBatch()).to.equal(6);
    r.drv.usedEvent = 65535; // "interrupt me when entry 65535 is used"
    r.q.pushUsed(heads[0], 0); // used idx 65534
    expect(r.q.needsNotification()).to.equal(false);
    r.q.pushUsed(heads[1], 0); // idx 65535
    r.q.pushUsed(heads[2], 0); // entry 65535 written → idx 0
    expect(r.drv.usedIdx).to.equal(0);
    expect(r.q.needsNotification()).to.equal(true);
    r.drv.usedEvent = 2;
    r.q.pushUsed(heads[3], 0); // idx 1
    expect(r.q.needsNotification()).to.equal(false);
    r.q.stageUsed(heads[4], 0);
    r.q.stageUsed(heads[5], 0); // idx 3: entry 2 written within the batch
    r.q.flushUsed();
    expect(r.q.needsNotification()).to.equal(true);
  });

  it('device suppression: used flags without EVENT_IDX, avail_event with it; enable reports the race', () => {
    const a = rig({ size: 8 });
    a.q.disableNotification();
    expect(a.drv.usedFlags).to.equal(VIRTQ_USED_F_NO_NOTIFY);
    a.drv.add([{ gpa: a.data, len: 1 }], []);
    expect(a.drv.kickPrepare()).to.equal(false);
    expect(a.q.enableNotification()).to.equal(true); // a chain slipped in: pop again
    expect(a.drv.usedFlags).to.equal(0);
    a.q.popBatch();
    expect(a.q.enableNotification()).to.equal(false);
    a.drv.add([{ gpa: a.data, len: 1 }], []);
    expect(a.drv.kickPrepare()).to.equal(true);

    const b = rig({ size: 8, eventIdx: true, startIdx: 65534 });
    b.q.disableNotification();
    expect(b.drv.usedFlags).to.equal(0); // §2.7.10.2: flags stay 0 with EVENT_IDX
    expect(b.q.enableNotification()).to.equal(false);
    expect(b.drv.availEvent).to.equal(65534);
    b.drv.add([{ gpa: b.data, len: 1 }], []); // avail idx 65534 → 65535
    expect(b.drv.kickPrepare()).to.equal(true);
    b.drv.add([{ gpa: b.data, len: 1 }], []); // → 0; device has not re-armed
    expect(b.drv.kickPrepare()).to.equal(false);
    expect(b.q.popBatch()).to.equal(2);
    expect(b.q.enableNotification()).to.equal(false);
    expect(b.drv.availEvent).to.equal(0);
    b.drv.add([{ gpa: b.data, len: 1 }], []);
    expect(b.drv.kickPrepare()).to.equal(true);
  });
});

describe('hot/virtqueue: hostile guest', () => {
  const SZ = 8;
  // Each broken queue logs one warning by design; keep the report readable.
  before(() => configureLogging({ silent: true }));
  after(() => configureLogging());

  it('queue-size: zero, not a power of two, above 32768', () => {
    const r = rig({ size: SZ });
    const lay = ringLayout(GUEST, SZ);
    for (const size of [0, 3, 6]) {
      r.q.reset();
      const e = expectVqError(() => r.q.activate({ size, features: 0n, ...lay }), 'queue-size');
      expect(e.sticky).to.equal(true);
    }
    const big = r.mod.createQueue({ maxSize: 32768, maxChains: 1, maxIov: 32768, name: 'test.big' });
    const mem = r.mem;
    mem.view.setUint32(big.q, 65536, true);
    mem.view.setUint32(big.q + 32, r.mod.memMap, true);
    expect(r.mod.wasm.vq_setup(big.q)).to.equal(-VQ_ERROR_CODES['queue-size']);
    expect(big.ready).to.equal(false);
    expectVqError(() => big.popBatch(), 'queue-size');
  });

  it('ring-align and ring-addr: misaligned areas, areas outside or straddling guest RAM', () => {
    const r = rig({ size: SZ });
    const lay = ringLayout(GUEST, SZ);
    const bad: Array<[Partial<typeof lay>, VirtqueueErrorKind]> = [
      [{ descGpa: lay.descGpa + 8n }, 'ring-align'],
      [{ availGpa: lay.availGpa + 1n }, 'ring-align'],
      [{ usedGpa: lay.usedGpa + 2n }, 'ring-align'],
      [{ descGpa: 0x1000n }, 'ring-addr'],
      [{ usedGpa: GUEST + BigInt(GUEST_SIZE) - 8n }, 'ring-addr'], // straddles the end
      [{ availGpa: 0xffff_ffff_ffff_fff0n }, 'ring-addr'], // would wrap u64
      [{ descGpa: HIGH - 16n }, 'ring-addr'], // hole between regions
    ];
    for (const [patch, kind] of bad) {
      r.q.reset();
      expectVqError(() => r.q.activate({ size: SZ, features: 0n, ...lay, ...patch }), kind);
      expectVqError(() => r.q.popBatch(), kind);
    }
    r.q.reset();
    r.q.activate({ size: SZ, features: 0n, ...lay });
    expect(r.q.popBatch()).to.equal(0);
  });

  it('mem-map: empty, too many regions, or regions outside the Memory', () => {
    const r = rig({ size: SZ });
    const w = r.mod.wasm;
    const mm = r.mem.reserve('test.mm', 8 + 8 * 24, 8);
    const v = r.mem.view;
    v.setUint32(mm, 0, true);
    expect(w.mem_map_check(mm)).to.equal(-VQ_ERROR_CODES['mem-map']);
    v.setUint32(mm, 9, true);
    expect(w.mem_map_check(mm)).to.equal(-VQ_ERROR_CODES['mem-map']);
    v.setUint32(mm, 1, true);
    v.setBigUint64(mm + 8, 0n, true);
    v.setBigUint64(mm + 16, BigInt(r.mem.byteLength), true);
    v.setUint32(mm + 24, 4096, true); // runs past the end of the Memory
    expect(w.mem_map_check(mm)).to.equal(-VQ_ERROR_CODES['mem-map']);
    expect(w.mem_translate(mm, 0n, 1n)).to.equal(-1n);
    v.setBigUint64(mm + 16, 65536n, true);
    expect(w.mem_map_check(mm)).to.equal(0);
    expect(w.mem_translate(mm, 100n, 10n)).to.equal(4196n);
    expect(w.mem_translate(mm, 65530n, 10n)).to.equal(-1n);
    expect(w.mem_map_check(r.mem.byteLength - 8)).to.equal(-VQ_ERROR_CODES['mem-map']); // struct itself out of range
  });

  it('avail-idx-ahead: avail idx more than Queue Size ahead of the device', () => {
    const r = rig({ size: SZ, startIdx: 65530 });
    r.drv.setAvailIdx(65530 + SZ); // exactly full: fine (wraps to 2)
    expect(r.q.pending()).to.equal(SZ);
    r.drv.setAvailIdx(65530 + SZ + 1);
    expectGuestError(r, 'avail-idx-ahead');
    expect(r.q.lastAvailIdx).to.equal(65530);
  });

  it('head-range: an avail ring entry ≥ Queue Size', () => {
    const r = rig({ size: SZ });
    r.drv.add([{ gpa: r.data, len: 1 }], []);
    r.drv.setAvailRing(1, SZ);
    r.drv.setAvailIdx(2);
    expectGuestError(r, 'head-range');
    expect(r.q.lastAvailIdx).to.equal(0); // the good chain before it is not consumed either
  });

  it('next-range: next ≥ Queue Size, and next past the end of an indirect table', () => {
    const r = rig({ size: SZ });
    r.drv.setDesc(0, r.data, 1, VIRTQ_DESC_F_NEXT, SZ);
    r.drv.setAvailRing(0, 0);
    r.drv.setAvailIdx(1);
    expectGuestError(r, 'next-range');
    const s = rig({ size: SZ, indirect: true });
    const t = s.drv.indirectTable(0);
    s.drv.setDesc(0, s.data, 1, VIRTQ_DESC_F_NEXT, 2, t); // table has 2 entries: 0, 1
    s.drv.setDesc(0, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
    s.drv.setAvailRing(0, 0);
    s.drv.setAvailIdx(1);
    expectGuestError(s, 'next-range');
  });

  it('desc-addr: buffers outside guest RAM, straddling a region end, or wrapping 2^64', () => {
    const cases: Array<[bigint, number]> = [
      [0n, 16],
      [GUEST + BigInt(GUEST_SIZE) - 8n, 16],
      [GUEST + BigInt(GUEST_SIZE), 1],
      [HIGH + BigInt(HIGH_SIZE) - 1n, 2],
      [0xffff_ffff_ffff_fff0n, 0x20],
      [GUEST, 0xffff_ffff],
    ];
    for (const [addr, len] of cases) {
      const r = rig({ size: SZ });
      r.drv.setDesc(0, r.data, 1, VIRTQ_DESC_F_NEXT, 1);
      r.drv.setDesc(1, addr, len, VIRTQ_DESC_F_WRITE, 0);
      r.drv.setAvailRing(0, 0);
      r.drv.setAvailIdx(1);
      expectGuestError(r, 'desc-addr');
      expect(r.q.error).to.equal('desc-addr');
    }
    // Exactly to the end of RAM and an empty buffer at its last byte are fine.
    const ok = rig({ size: SZ });
    ok.drv.setDesc(0, GUEST + BigInt(GUEST_SIZE) - 16n, 16, VIRTQ_DESC_F_NEXT, 1);
    ok.drv.setDesc(1, HIGH + BigInt(HIGH_SIZE) - 1n, 0, 0, 0);
    ok.drv.setAvailRing(0, 0);
    ok.drv.setAvailIdx(1);
    expect(ok.q.popBatch()).to.equal(1);
  });

  it('loop: a cycle in the descriptor table and in an indirect table', () => {
    const r = rig({ size: SZ });
    r.drv.setDesc(0, r.data, 1, VIRTQ_DESC_F_NEXT, 1);
    r.drv.setDesc(1, r.data, 1, VIRTQ_DESC_F_NEXT, 2);
    r.drv.setDesc(2, r.data, 1, VIRTQ_DESC_F_NEXT, 1);
    r.drv.setAvailRing(0, 0);
    r.drv.setAvailIdx(1);
    expectGuestError(r, 'loop');
    const self = rig({ size: SZ });
    self.drv.setDesc(3, self.data, 1, VIRTQ_DESC_F_NEXT, 3);
    self.drv.setAvailRing(0, 3);
    self.drv.setAvailIdx(1);
    expectGuestError(self, 'loop');
    const s = rig({ size: SZ, indirect: true });
    const t = s.drv.indirectTable(0);
    s.drv.setDesc(0, s.data, 1, VIRTQ_DESC_F_NEXT, 1, t);
    s.drv.setDesc(1, s.data, 1, VIRTQ_DESC_F_NEXT, 0, t);
    s.drv.setDesc(0, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
    s.drv.setAvailRing(0, 0);
    s.drv.setAvailIdx(1);
    expectGuestError(s, 'loop');
  });

  it('chain-too-long: an indirect table, or a direct prefix plus one, longer than Queue Size', () => {
    const r = rig({ size: SZ, indirect: true, maxIndirect: 16 });
    const t = r.drv.indirectTable(0);
    for (let k = 0; k < SZ + 1; k++) r.drv.setDesc(k, r.data, 1, k < SZ ? VIRTQ_DESC_F_NEXT : 0, k + 1, t);
    r.drv.setDesc(0, t, (SZ + 1) * 16, VIRTQ_DESC_F_INDIRECT, 0);
    r.drv.setAvailRing(0, 0);
    r.drv.setAvailIdx(1);
    expectGuestError(r, 'chain-too-long');
    const s = rig({ size: SZ, indirect: true, maxIndirect: 16 });
    const u = s.drv.indirectTable(4);
    for (let k = 0; k < SZ - 2; k++) s.drv.setDesc(k, s.data, 1, k < SZ - 3 ? VIRTQ_DESC_F_NEXT : 0, k + 1, u);
    for (let i = 0; i < 3; i++) s.drv.setDesc(i, s.data, 1, VIRTQ_DESC_F_NEXT, i + 1);
    s.drv.setDesc(3, u, (SZ - 2) * 16, VIRTQ_DESC_F_INDIRECT, 0); // 3 + 6 = 9 > 8
    s.drv.setAvailRing(0, 0);
    s.drv.setAvailIdx(1);
    expectGuestError(s, 'chain-too-long');
    // 2 + 6 = 8 = Queue Size is allowed.
    const ok = rig({ size: SZ, indirect: true, maxIndirect: 16 });
    for (let k = 0; k < SZ - 2; k++) ok.drv.setDesc(k, ok.data, 1, k < SZ - 3 ? VIRTQ_DESC_F_NEXT : 0, k + 1, u);
    ok.drv.setDesc(1, ok.data, 1, VIRTQ_DESC_F_NEXT, 2);
    ok.drv.setDesc(2, u, (SZ - 2) * 16, VIRTQ_DESC_F_INDIRECT, 0);
    ok.drv.setAvailRing(0, 1);
    ok.drv.setAvailIdx(1);
    expect(ok.q.popBatch()).to.equal(1);
    expect(ok.q.chain(0).readable.length).to.equal(SZ - 1);
  });

  it('indirect-not-negotiated, nested-indirect, indirect-with-next', () => {
    const a = rig({ size: SZ, indirect: false });
    a.drv.setDesc(0, a.drv.indirectTable(0), 16, VIRTQ_DESC_F_INDIRECT, 0);
    a.drv.setAvailRing(0, 0);
    a.drv.setAvailIdx(1);
    expectGuestError(a, 'indirect-not-negotiated');

    const b = rig({ size: SZ, indirect: true });
    const t = b.drv.indirectTable(0);
    b.drv.setDesc(0, b.drv.indirectTable(1), 16, VIRTQ_DESC_F_INDIRECT, 0, t);
    b.drv.setDesc(0, t, 16, VIRTQ_DESC_F_INDIRECT, 0);
    b.drv.setAvailRing(0, 0);
    b.drv.setAvailIdx(1);
    expectGuestError(b, 'nested-indirect');

    const c = rig({ size: SZ, indirect: true });
    c.drv.setDesc(0, c.data, 1, 0, 0, c.drv.indirectTable(0));
    c.drv.setDesc(0, c.drv.indirectTable(0), 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
    c.drv.setDesc(1, c.data, 1, 0, 0);
    c.drv.setAvailRing(0, 0);
    c.drv.setAvailIdx(1);
    expectGuestError(c, 'indirect-with-next');
  });

  it('indirect-len (zero, not a multiple of 16) and indirect-addr', () => {
    for (const len of [0, 24, 15]) {
      const r = rig({ size: SZ, indirect: true });
      r.drv.setDesc(0, r.drv.indirectTable(0), len, VIRTQ_DESC_F_INDIRECT, 0);
      r.drv.setAvailRing(0, 0);
      r.drv.setAvailIdx(1);
      expectGuestError(r, 'indirect-len');
    }
    for (const addr of [0x2000n, GUEST + BigInt(GUEST_SIZE) - 16n]) {
      const r = rig({ size: SZ, indirect: true });
      r.drv.setDesc(0, addr, 32, VIRTQ_DESC_F_INDIRECT, 0);
      r.drv.setAvailRing(0, 0);
      r.drv.setAvailIdx(1);
      expectGuestError(r, 'indirect-addr');
    }
  });

  it('writable-order: a device-readable buffer after a device-writable one (§2.7.4.2)', () => {
    const r = rig({ size: SZ });
    r.drv.setDesc(0, r.data, 1, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
    r.drv.setDesc(1, r.data, 1, 0, 0);
    r.drv.setAvailRing(0, 0);
    r.drv.setAvailIdx(1);
    expectGuestError(r, 'writable-order');
  });

  it('chain-bytes: a chain longer than 2^32 bytes in total (§2.7.5.2)', () => {
    const size = 1024;
    const r = rig({ size, indirect: true, maxIndirect: 4 });
    const t = r.drv.indirectTable(size - 1) + 4096n;
    const n = 600; // 600 × 8 MiB − … > 4 GiB, all inside guest RAM
    for (let k = 0; k < n; k++) r.drv.setDesc(k, GUEST, GUEST_SIZE, VIRTQ_DESC_F_NEXT, k + 1, t);
    r.drv.setDesc(n - 1, GUEST, GUEST_SIZE, 0, 0, t);
    r.drv.setDesc(0, t, n * 16, VIRTQ_DESC_F_INDIRECT, 0);
    r.drv.setAvailRing(0, 0);
    r.drv.setAvailIdx(1);
    expectGuestError(r, 'chain-bytes');
  });

  it('re-activation clears a sticky error (driver reset)', () => {
    const r = rig({ size: SZ });
    r.drv.setAvailIdx(SZ + 1);
    expectGuestError(r, 'avail-idx-ahead');
    const r2 = rig({ size: SZ });
    expect(r2.q.error).to.equal(undefined);
    r2.drv.add([{ gpa: r2.data, len: 1 }], []);
    expect(r2.q.popBatch()).to.equal(1);
  });

  it('fuzz: random rings never trap, hang or yield an iovec outside guest RAM', function () {
    this.timeout(60000);
    const guestKinds = new Set(Object.keys(VQ_ERROR_CODES).filter((k) => VQ_ERROR_CODES[k as keyof typeof VQ_ERROR_CODES] >= 6 && VQ_ERROR_CODES[k as keyof typeof VQ_ERROR_CODES] <= 18));
    const seen = new Map<string, number>();
    let seed = 99;
    const rnd = (n: number) => {
      seed = (seed * 1664525 + 1013904223) >>> 0;
      return seed % n;
    };
    const addrs = [GUEST, GUEST + BigInt(GUEST_SIZE) - 64n, HIGH, 0n, 0xffff_ffff_ffff_ff00n];
    for (let it = 0; it < 3000; it++) {
      const size = [1, 2, 4, 8, 16][rnd(5)];
      const r = rig({ size, indirect: rnd(2) === 0, eventIdx: rnd(2) === 0, startIdx: rnd(65536) });
      const tables = [r.drv.o.descGpa, r.drv.indirectTable(0), r.drv.indirectTable(1)];
      for (const [ti, table] of tables.entries()) {
        const entries = ti === 0 ? size : MAX_IND;
        for (let i = 0; i < entries; i++) {
          const kind = rnd(10);
          const addr = kind < 6 ? r.data + BigInt(rnd(4096)) : kind < 8 ? tables[1 + rnd(2)] : addrs[rnd(addrs.length)] + BigInt(rnd(64));
          const len = [1, 16, 32, 48, 4096, rnd(1 << 20), 0xffffffff][rnd(7)];
          r.drv.setDesc(i, addr, len, rnd(8), rnd(size + 2), table);
        }
      }
      for (let s = 0; s < size; s++) r.drv.setAvailRing(s, rnd(size + 1));
      r.drv.setAvailIdx((r.q.lastAvailIdx + rnd(size + 2)) & 0xffff);
      try {
        const n = r.q.popBatch();
        for (let i = 0; i < n; i++) {
          const c = r.q.chain(i);
          for (const v of [...c.readable, ...c.writable]) {
            const inRam = r.mem.guestRegions.some((g) => v.offset >= g.offset && v.offset + v.length <= g.offset + g.size);
            expect(inRam, 'iovec inside guest RAM').to.equal(true);
          }
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
