/**
 * virtio-balloon (src/virtio/balloon) as a hostile guest drives it: a
 * sequence of records — inflate / deflate PFN buffers, free page reports
 * (any guest address and length, including the hole between the two RAM
 * regions and past RAM's end), statistics buffers, config writes, host
 * targets, a held buffer handed back — on real split queues written by the
 * driver ring writer. Oracle: every madvise the device makes lies page
 * aligned inside ONE guest region (checked here against the layout, not by
 * the releaser's own check), the bytes it says it released are the bytes
 * advised, and the counters stay within what was fed in.
 *
 * Record: [op u8][len u8][payload len bytes]; op % 7 = 0 inflate, 1 deflate,
 * 2 report (6-byte entries: le32 GPA, le16 length / 64 KiB units … below),
 * 3 stats, 4 config write (payload[0] = offset), 5 setTarget (le32 pages),
 * 6 releaseHeld.
 */
import { HotMemory } from '../../../src/hot/memory';
import { VirtioModule, VirtqueueError, type Virtqueue } from '../../../src/hot/virtqueue';
import { VIRTIO_RING_FEATURES, type ActivateContext } from '../../../src/virtio/device';
import { BalloonDevice } from '../../../src/virtio/balloon/device';
import { BalloonError, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ } from '../../../src/virtio/balloon/constants';
import { DriverRing, ringLayout } from '../../unit/hot/driver-ring';
import { bucket, invariant, type Target } from '../engine';

const MIB = 1 << 20;
/** RAM [0, 4 MiB) and [8 MiB, 10 MiB): a hole between, like the PCI hole. */
const LAYOUT = [{ gpa: 0n, size: 4 * MIB }, { gpa: 8n * BigInt(MIB), size: 2 * MIB }];
const RAM = 6 * MIB;
const FEATURES = VIRTIO_RING_FEATURES | VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_DEFLATE_ON_OOM | VIRTIO_BALLOON_F_PAGE_REPORTING;
const QS = 16;
const DATA = 0x100000n, STATS = 0x180000n;

interface Rig { hot: HotMemory; module: VirtioModule; vqs: Virtqueue[]; dev: BalloonDevice; calls: Array<{ offset: number; length: number }>; resets: number }
let rig: Rig | undefined;

function getRig(): Rig {
  if (rig) return rig;
  const hot = new HotMemory({ scratchBytes: 1 << 20, guestRegions: LAYOUT });
  const module = new VirtioModule(hot);
  const calls: Rig['calls'] = [];
  const dev = new BalloonDevice({ ramBytes: RAM, backing: () => 'shared-memfd', madvise: (_b, offset, length) => { calls.push({ offset, length }); } });
  const vqs = [0, 1, 2, 3].map(() => module.createQueue({ maxSize: QS }));
  rig = { hot, module, vqs, dev, calls, resets: 0 };
  return rig;
}

/** A fresh driver session: rings zeroed, queues activated, the device activated. */
function start(r: Rig): DriverRing[] {
  r.dev.reset();
  r.dev.ackFeatures(FEATURES);
  const rings = r.vqs.map((vq, i) => {
    const l = ringLayout(0x10000n + BigInt(i) * 0x4000n, QS);
    const ring = new DriverRing(r.hot, { size: QS, ...l, eventIdx: false, indirect: false });
    vq.activate({ size: QS, features: FEATURES, ...l });
    return ring;
  });
  r.calls.length = 0;
  r.resets = 0;
  const ctx: ActivateContext = {
    memory: { hot: r.hot, module: r.module, translate: (g, n) => r.module.translate(g, n) },
    queues: r.vqs, features: FEATURES, interrupt: () => {}, configChanged: () => {}, needsReset: () => { r.resets++; },
  };
  r.dev.activate(ctx);
  return rings;
}

function insideOneRegion(hot: HotMemory, off: number, len: number): boolean {
  return hot.guestRegions.some((g) => off >= g.offset && off + len <= g.offset + g.size);
}

function run(input: Buffer): string {
  const r = getRig();
  const rings = start(r);
  const before = { ...r.dev.metrics };
  let pfnsFed = 0, reportBytesFed = 0, ops = 0;
  for (let p = 0; p + 2 <= input.length; ops++) {
    const op = input[p]! % 7, len = input[p + 1]!;
    const payload = input.subarray(p + 2, p + 2 + len);
    p += 2 + len;
    const q = op === 0 ? 0 : op === 1 ? 1 : op === 2 ? 3 : 2;
    if (op <= 3) {
      for (;;) if (!rings[q]!.getBuf()) break; // the driver collects what the device used
      if (op === 2) {
        const bufs: Array<{ gpa: bigint; len: number }> = [];
        for (let k = 0; k + 6 <= payload.length && bufs.length < 4; k += 6) {
          const gpa = BigInt(payload.readUInt32LE(k));
          const n = payload.readUInt16LE(k + 4);
          // Low bit set: a length in bytes (odd sizes); else in 4 KiB pages (4 MiB blocks as Linux reports).
          const bytes = n & 1 ? n : (n >> 1) * 4096;
          if (bytes === 0) continue;
          bufs.push({ gpa, len: bytes });
          reportBytesFed += bytes;
        }
        if (bufs.length === 0 || rings[3]!.add([], bufs, { direct: true }) === undefined) continue;
      } else {
        if (payload.length === 0) continue;
        const at = op === 3 ? STATS : DATA;
        r.hot.u8.set(payload, r.hot.gpaToOffset(at, payload.length));
        if (op <= 1) pfnsFed += Math.floor(payload.length / 4);
        if (rings[q]!.add([{ gpa: at, len: payload.length }], [], { direct: true }) === undefined) continue;
      }
      r.dev.queueNotify(q);
    } else if (op === 4) {
      if (payload.length > 0) r.dev.writeConfig(payload[0]! % 20, payload.subarray(1, 9));
    } else if (op === 5) {
      const pages = payload.length >= 4 ? payload.readUInt32LE(0) : 0;
      try { r.dev.setTarget(pages * 4096); } catch (err) { if (!(err instanceof BalloonError)) throw err; }
    } else {
      r.dev.releaseHeld();
    }
  }
  const m = r.dev.metrics;
  let advised = 0;
  for (const c of r.calls) {
    invariant(c.offset % 4096 === 0 && c.length % 4096 === 0 && c.length > 0, () => `madvise not page aligned: ${c.offset}+${c.length}`);
    invariant(insideOneRegion(r.hot, c.offset, c.length), () => `madvise outside one guest region: 0x${c.offset.toString(16)}+0x${c.length.toString(16)}`);
    advised += c.length;
  }
  invariant(m.releasedBytes - before.releasedBytes === advised, () => `released ${m.releasedBytes - before.releasedBytes} but advised ${advised}`);
  invariant(m.inflatedPages - before.inflatedPages + m.deflatedPages - before.deflatedPages <= pfnsFed, 'more pages counted than PFNs fed');
  invariant(m.reportedBytes - before.reportedBytes <= reportBytesFed, 'more reported bytes than ranges fed');
  invariant(r.dev.actualPages === undefined || r.dev.actualPages <= RAM / 4096, 'actual beyond RAM believed');
  return `o${bucket(ops)}:c${bucket(r.calls.length)}:bad${bucket(m.badPfns - before.badPfns + m.oddLengths - before.oddLengths)}:${r.resets ? 'reset' : 'ok'}`;
}

function rec(op: number, payload: Buffer): Buffer {
  return Buffer.concat([Buffer.from([op, payload.length]), payload]);
}
const pfns = (...xs: number[]) => Buffer.from(new Uint32Array(xs).buffer);
function report(...rs: Array<[number, number]>): Buffer {
  const b = Buffer.alloc(6 * rs.length);
  rs.forEach(([gpa, n], i) => { b.writeUInt32LE(gpa, 6 * i); b.writeUInt16LE(n, 6 * i + 4); });
  return b;
}
function stat(...e: Array<[number, bigint]>): Buffer {
  const b = Buffer.alloc(10 * e.length);
  e.forEach(([t, v], i) => { b.writeUInt16LE(t, 10 * i); b.writeBigUInt64LE(v, 10 * i + 2); });
  return b;
}

export const balloon: Target = {
  name: 'balloon',
  describe: 'virtio-balloon inflate/deflate/report/stats/config (src/virtio/balloon) on real split queues; every madvise page aligned inside one guest region',
  maxLen: 2048,
  dictionary: [pfns(0x3ff), pfns(0x400), pfns(0x800), pfns(0x9ff), pfns(0xa00), pfns(0xffffffff), Buffer.from([0, 0, 0x40, 0]), Buffer.from([0, 0xf0, 0x3f, 0]), Buffer.from([0, 0, 0x80, 0]), Buffer.from([0x00, 0x02])],
  seeds() {
    return [
      Buffer.concat([rec(0, pfns(0x100, 0x101, 0x102, 0x3ff, 0x800)), rec(1, pfns(0x100)), rec(5, pfns(256))]),
      Buffer.concat([rec(2, report([0x200000, 2048], [0x800000, 512])), rec(2, report([0x3ff000, 4])), rec(2, report([0x200800, 0x2001]))]),
      Buffer.concat([rec(3, stat([4, 1n << 20n], [5, 4n << 20n], [99, 1n])), rec(6, Buffer.alloc(0)), rec(3, Buffer.alloc(7, 1))]),
      Buffer.concat([rec(4, Buffer.from([4, 0xff, 0xff, 0xff, 0xff])), rec(4, Buffer.from([4, 1, 0, 0, 0])), rec(0, Buffer.alloc(10, 0x41)), rec(2, report([0x900000, 2]))]),
    ];
  },
  run,
  expected: (err) => err instanceof BalloonError || err instanceof VirtqueueError,
};
