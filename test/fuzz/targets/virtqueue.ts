/**
 * Virtqueue targets (split §2.7, packed §2.8): assembly/virtio through
 * src/hot/virtqueue, fed a whole hostile guest — ring configuration and the
 * bytes of guest RAM holding descriptor tables, rings and indirect tables.
 *
 * Input: a 24-byte header, then the first bytes of guest region 1 (the rest
 * zero):
 *   +0 u16 queue size   +2 u8 flags (1 EVENT_IDX, 2 INDIRECT_DESC)
 *   +3 u8 device script +4 u16 avail start  +6 u16 used start
 *   +8 u16 pop max      +12 u32 desc offset +16 u32 avail/driver offset
 *   +20 u32 used/device offset (offsets are from region 1's base GPA)
 * Seeds are rings written by the Linux-style driver writers the unit tests
 * use (test/unit/hot/driver-ring.ts, driver-packed.ts).
 *
 * The device side activates the queue, pops (batch sizes from the script),
 * completes chains in one of three ways, and exercises notification calls.
 * Oracle, besides "only VirtqueueError is thrown, no trap":
 *  - every iovec lies inside guest RAM (one region, never the scratch);
 *  - readable/writable byte counts equal their iovecs' sums;
 *  - the device wrote nothing in guest RAM but the used ring (split) or the
 *    descriptor ring and device event area (packed), and nothing in the
 *    host scratch around the queue (canaries).
 */
import { HotMemory } from '../../../src/hot/memory';
import {
  CHAIN_IOV_FIRST, CHAIN_N_READABLE, CHAIN_N_WRITABLE, CHAIN_READABLE_BYTES, CHAIN_WRITABLE_BYTES, CHAIN_WORDS,
  PACKED_START, PackedVirtqueue, Virtqueue, VirtqueueError, VirtioModule,
} from '../../../src/hot/virtqueue';
import { DriverRing } from '../../unit/hot/driver-ring';
import { PackedRing } from '../../unit/hot/driver-packed';
import { features } from '../../unit/hot/vq-assert';
import { bucket, invariant, type Target } from '../engine';

const R1 = 0x10000n;
const R1_SIZE = 64 << 10;
const R2 = 0x1_0000_0000n;
const R2_SIZE = 64 << 10;
const HDR = 24;
const MAX_SIZE = 1024;
const CANARY = 4096;

interface Rig {
  mem: HotMemory;
  split: Virtqueue;
  packed: PackedVirtqueue;
  canaries: number[];
}

let rig: Rig | undefined;
function getRig(): Rig {
  if (rig) return rig;
  const mem = new HotMemory({ scratchBytes: 2 << 20, guestRegions: [{ gpa: R1, size: R1_SIZE }, { gpa: R2, size: R2_SIZE }] });
  const mod = new VirtioModule(mem);
  const canaries: number[] = [];
  canaries.push(mem.reserve('canary.0', CANARY, 64));
  const split = mod.createQueue({ maxSize: MAX_SIZE, maxChains: 64 });
  canaries.push(mem.reserve('canary.1', CANARY, 64));
  const packed = mod.createPackedQueue({ maxSize: MAX_SIZE, maxChains: 64 });
  canaries.push(mem.reserve('canary.2', CANARY, 64));
  for (const c of canaries) mem.u8.fill(0xa5, c, c + CANARY);
  rig = { mem, split, packed, canaries };
  return rig;
}

interface Header {
  size: number; flags: number; script: number; availStart: number; usedStart: number; popMax: number;
  descOff: number; availOff: number; usedOff: number;
}

function encodeHeader(h: Header): Buffer {
  const b = Buffer.alloc(HDR);
  b.writeUInt16LE(h.size, 0);
  b[2] = h.flags;
  b[3] = h.script;
  b.writeUInt16LE(h.availStart, 4);
  b.writeUInt16LE(h.usedStart, 6);
  b.writeUInt16LE(h.popMax, 8);
  b.writeUInt32LE(h.descOff, 12);
  b.writeUInt32LE(h.availOff, 16);
  b.writeUInt32LE(h.usedOff, 20);
  return b;
}

function decodeHeader(b: Buffer): Header {
  const h = Buffer.alloc(HDR);
  b.copy(h, 0, 0, Math.min(HDR, b.length));
  return {
    size: h.readUInt16LE(0), flags: h[2]!, script: h[3]!, availStart: h.readUInt16LE(4), usedStart: h.readUInt16LE(6),
    popMax: h.readUInt16LE(8), descOff: h.readUInt32LE(12), availOff: h.readUInt32LE(16), usedOff: h.readUInt32LE(20),
  };
}

/** Loads the guest image; returns the guest region bytes (for snapshots). */
function loadGuest(r: Rig, input: Buffer): void {
  const mem = r.mem;
  const g = mem.guestBase;
  mem.u8.fill(0, g, g + mem.guestBytes);
  const body = input.subarray(HDR, HDR + R1_SIZE);
  mem.u8.set(body, g);
}

/** Memory ranges [start, end) of guest RAM the device may write, from GPA ranges. */
function allowedRanges(mem: HotMemory, gpaRanges: Array<[bigint, bigint]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [a, b] of gpaRanges) {
    for (const reg of mem.guestRegions) {
      const lo = a > reg.gpa ? a : reg.gpa;
      const hiEnd = reg.gpa + BigInt(reg.size);
      const hi = b < hiEnd ? b : hiEnd;
      if (lo < hi) out.push([reg.offset + Number(lo - reg.gpa), reg.offset + Number(hi - reg.gpa)]);
    }
  }
  return out.sort((x, y) => x[0] - y[0]);
}

/** Checks guest RAM equals the snapshot outside the allowed ranges. */
function checkUnchanged(mem: HotMemory, snap: Buffer, allowed: Array<[number, number]>, what: string): void {
  const g = mem.guestBase;
  const now = Buffer.from(mem.memory.buffer, g, mem.guestBytes);
  let pos = 0;
  const cmp = (from: number, to: number): void => {
    if (to <= from) return;
    if (now.compare(snap, from, to, from, to) !== 0) {
      let i = from;
      while (i < to && now[i] === snap[i]) i++;
      invariant(false, `${what}: device wrote guest RAM outside its areas, at region offset ${i}`);
    }
  };
  for (const [a, b] of allowed) {
    cmp(pos, a - g);
    pos = Math.max(pos, b - g);
  }
  cmp(pos, mem.guestBytes);
}

function checkCanaries(r: Rig): void {
  for (const c of r.canaries) {
    const u = r.mem.u8;
    for (let i = c; i < c + CANARY; i += 1) if (u[i] !== 0xa5) invariant(false, `host scratch canary at ${c} overwritten at +${i - c}`);
  }
}

function checkChains(r: Rig, q: Virtqueue | PackedVirtqueue, n: number, max: number): void {
  invariant(n <= max, `popped ${n} chains, asked for at most ${max}`);
  const w = q.chainWords, io = q.iovWords;
  const regions = r.mem.guestRegions;
  let lastIov = -1;
  for (let i = 0; i < n; i++) {
    const b = i * CHAIN_WORDS;
    const first = w[b + CHAIN_IOV_FIRST]!, nr = w[b + CHAIN_N_READABLE]!, nw = w[b + CHAIN_N_WRITABLE]!;
    invariant(first + nr + nw <= q.maxIov, `chain ${i}: iovecs ${first}+${nr + nw} past the table of ${q.maxIov}`);
    invariant(first > lastIov, `chain ${i}: iovecs overlap the previous chain's`);
    invariant(nr + nw >= 1, `chain ${i}: no buffers`);
    lastIov = first + nr + nw - 1;
    let rb = 0, wb = 0;
    for (let k = first; k < first + nr + nw; k++) {
      const off = io[2 * k]!, len = io[2 * k + 1]!;
      const inRam = regions.some((g) => off >= g.offset && off + len <= g.offset + g.size);
      invariant(inRam, `chain ${i} iovec ${k}: [${off}, +${len}) is not inside guest RAM`);
      if (k < first + nr) rb += len; else wb += len;
    }
    invariant(rb === w[b + CHAIN_READABLE_BYTES], `chain ${i}: readable_bytes ${w[b + CHAIN_READABLE_BYTES]} != ${rb}`);
    invariant(wb === w[b + CHAIN_WRITABLE_BYTES], `chain ${i}: writable_bytes ${w[b + CHAIN_WRITABLE_BYTES]} != ${wb}`);
  }
}

/**
 * The device's side of one case. Returns a label: chains popped (log2
 * bucket), rounds completed, and the completion style.
 */
function drive(r: Rig, q: Virtqueue | PackedVirtqueue, h: Header, packed: boolean): string {
  const rounds = 1 + (h.script & 3);
  const style = (h.script >> 2) & 3;
  const max = h.popMax === 0 ? q.maxChains : Math.min(h.popMax, q.maxChains);
  let total = 0;
  for (let round = 0; round < rounds; round++) {
    if (h.script & 0x10) q.disableNotification();
    const pending = q.pending();
    invariant(pending >= 0, 'negative pending count');
    const n = q.popBatch(max);
    checkChains(r, q, n, max);
    total += n;
    const w = q.chainWords;
    const lenOf = (i: number) => (h.script & 0x20 ? w[i * CHAIN_WORDS + CHAIN_WRITABLE_BYTES]! : (h.script * 31 + i) & 0xfff);
    if (style === 0) {
      for (let i = 0; i < n; i++) q.pushUsed(w[i * CHAIN_WORDS]!, lenOf(i));
    } else if (style === 1) {
      for (let i = n - 1; i >= 0; i--) q.stageUsed(w[i * CHAIN_WORDS]!, lenOf(i));
      q.flushUsed();
    } else if (style === 2) {
      q.pushUsedChains(n, Array.from({ length: n }, (_, i) => lenOf(i)));
    } else if (n > 0) {
      // Only the first half now: the rest stays in flight (the guest sees a
      // partially completed kick).
      for (let i = 0; i < Math.ceil(n / 2); i++) q.pushUsed(w[i * CHAIN_WORDS]!, lenOf(i));
    }
    q.needsNotification();
    if (h.script & 0x40) q.enableNotification();
    if (n === 0) break;
  }
  return `${packed ? 'p' : 's'}:chains${bucket(total)}:style${style}:${q.error ?? 'ok'}`;
}

function runCase(input: Buffer, packed: boolean): string {
  const r = getRig();
  const h = decodeHeader(input);
  loadGuest(r, input);
  const snap = Buffer.from(Buffer.from(r.mem.memory.buffer, r.mem.guestBase, r.mem.guestBytes));
  const desc = R1 + BigInt(h.descOff), area2 = R1 + BigInt(h.availOff), area3 = R1 + BigInt(h.usedOff);
  const eventIdx = (h.flags & 1) !== 0, indirect = (h.flags & 2) !== 0;
  // Split: the device writes only the used ring (flags, idx, ring[size],
  // avail_event). Packed: used descriptors in the ring, and its event area.
  const allowed = !packed
    ? allowedRanges(r.mem, [[area3, area3 + BigInt(6 + 8 * h.size)]])
    : allowedRanges(r.mem, [[desc, desc + BigInt(16 * h.size)], [area3, area3 + 4n]]);
  let label: string;
  try {
    if (!packed) {
      const q = r.split;
      q.reset();
      q.activate({ size: h.size, features: features({ eventIdx, indirect }), descGpa: desc, availGpa: area2, usedGpa: area3, lastAvailIdx: h.availStart, nextUsedIdx: h.usedStart });
      label = drive(r, q, h, false);
    } else {
      const q = r.packed;
      q.reset();
      q.activate({ size: h.size, features: features({ eventIdx, indirect }), descGpa: desc, driverGpa: area2, deviceGpa: area3, nextAvail: h.availStart, nextUsed: h.usedStart });
      label = drive(r, q, h, true);
    }
  } finally {
    // Whatever was thrown, the bounds must have held.
    checkUnchanged(r.mem, snap, allowed, packed ? 'packed' : 'split');
    checkCanaries(r);
  }
  return label;
}

// ───────────────────────────── seeds ─────────────────────────────

function splitSeeds(): Buffer[] {
  const r = getRig();
  const out: Buffer[] = [];
  const shapes: Array<{ size: number; eventIdx: boolean; indirect: boolean; start: number; chains: Array<[number, number]>; direct?: boolean; high?: boolean }> = [
    { size: 1, eventIdx: false, indirect: false, start: 0, chains: [[1, 0]] },
    { size: 4, eventIdx: false, indirect: false, start: 0, chains: [[1, 1], [0, 1], [2, 0]] },
    { size: 16, eventIdx: true, indirect: false, start: 65530, chains: [[1, 2], [1, 1], [1, 0], [0, 3], [2, 2], [1, 1], [1, 1], [1, 1]] },
    { size: 16, eventIdx: false, indirect: true, start: 0, chains: [[2, 2], [1, 3], [1, 0], [4, 4]] },
    { size: 16, eventIdx: true, indirect: true, start: 100, chains: [[1, 1], [3, 1], [1, 5]], direct: true },
    { size: 64, eventIdx: true, indirect: true, start: 65535, chains: Array.from({ length: 40 }, (_, i) => [1 + (i % 3), i % 2] as [number, number]) },
    { size: 8, eventIdx: false, indirect: false, start: 7, chains: [[1, 1], [1, 1]], high: true },
  ];
  for (const s of shapes) {
    const descOff = 0;
    const availOff = 16 * s.size;
    const usedOff = (availOff + 6 + 2 * s.size + 3) & ~3;
    const indOff = (usedOff + 6 + 8 * s.size + 15) & ~15;
    const maxInd = 8;
    const dataOff = indOff + s.size * maxInd * 16;
    loadGuest(r, Buffer.alloc(HDR));
    const drv = new DriverRing(r.mem, {
      size: s.size, descGpa: R1 + BigInt(descOff), availGpa: R1 + BigInt(availOff), usedGpa: R1 + BigInt(usedOff),
      eventIdx: s.eventIdx, indirect: s.indirect, indirectGpa: R1 + BigInt(indOff), maxIndirect: maxInd, startIdx: s.start,
    });
    let d = 0;
    const buf = (len: number) => { const gpa = (s.high ? R2 : R1 + BigInt(dataOff)) + BigInt(d); d += len; return { gpa, len }; };
    for (const [o, i] of s.chains) {
      const outs = Array.from({ length: o }, () => buf(16 + 8 * o));
      const ins = Array.from({ length: i }, () => buf(64));
      if (drv.add(outs, ins, { direct: s.direct }) === undefined) break;
    }
    if (s.eventIdx) drv.usedEvent = s.start;
    const end = s.high ? dataOff : dataOff + d;
    const image = Buffer.from(r.mem.u8.subarray(r.mem.guestBase, r.mem.guestBase + end));
    for (const script of [0x00, 0x25, 0x4a, 0x7f]) {
      out.push(Buffer.concat([encodeHeader({ size: s.size, flags: (s.eventIdx ? 1 : 0) | (s.indirect ? 2 : 0), script, availStart: s.start, usedStart: s.start, popMax: 0, descOff, availOff, usedOff }), image]));
    }
  }
  return out;
}

function packedSeeds(): Buffer[] {
  const r = getRig();
  const out: Buffer[] = [];
  const shapes: Array<{ size: number; eventIdx: boolean; indirect: boolean; chains: Array<[number, number]>; direct?: boolean; wrap?: boolean }> = [
    { size: 1, eventIdx: false, indirect: false, chains: [[1, 0]] },
    { size: 5, eventIdx: false, indirect: false, chains: [[1, 1], [0, 1], [2, 0]] },
    { size: 16, eventIdx: true, indirect: false, chains: [[1, 2], [1, 1], [1, 0], [0, 3], [2, 2]] },
    { size: 16, eventIdx: false, indirect: true, chains: [[2, 2], [1, 3], [1, 0], [4, 4]] },
    { size: 12, eventIdx: true, indirect: true, chains: [[1, 1], [3, 1], [1, 5]], direct: true },
    { size: 8, eventIdx: true, indirect: false, chains: [[1, 1], [2, 1], [1, 2], [1, 1], [2, 0]], wrap: true },
  ];
  for (const s of shapes) {
    const descOff = 0;
    const driverOff = 16 * s.size;
    const deviceOff = driverOff + 4;
    const indOff = (deviceOff + 4 + 15) & ~15;
    const maxInd = 8;
    const dataOff = indOff + s.size * maxInd * 16;
    loadGuest(r, Buffer.alloc(HDR));
    const drv = new PackedRing(r.mem, {
      size: s.size, descGpa: R1 + BigInt(descOff), driverGpa: R1 + BigInt(driverOff), deviceGpa: R1 + BigInt(deviceOff),
      eventIdx: s.eventIdx, indirect: s.indirect, indirectGpa: R1 + BigInt(indOff), maxIndirect: maxInd,
    });
    let d = 0;
    const buf = (len: number) => { const gpa = R1 + BigInt(dataOff + d); d += len; return { gpa, len }; };
    let availStart = PACKED_START, usedStart = PACKED_START;
    if (s.wrap) {
      // Run the device once over part of the ring so the seed starts mid-ring
      // with the wrap counters and used descriptors a real ring has.
      const q = r.packed;
      q.reset();
      q.activate({ size: s.size, features: features(s), descGpa: R1 + BigInt(descOff), driverGpa: R1 + BigInt(driverOff), deviceGpa: R1 + BigInt(deviceOff) });
      for (let k = 0; k < 6; k++) drv.add([buf(16)], [buf(32)]);
      const n = q.popBatch();
      for (let i = 0; i < n; i++) q.stageUsed(q.chainWords[i * CHAIN_WORDS]!, 8);
      q.flushUsed();
      while (drv.getBuf()) { /* reclaim */ }
      availStart = q.nextAvail;
      usedStart = q.nextUsed;
    }
    for (const [o, i] of s.chains) {
      const outs = Array.from({ length: o }, () => buf(16 + 8 * o));
      const ins = Array.from({ length: i }, () => buf(64));
      if (drv.add(outs, ins, { direct: s.direct }) === undefined) break;
    }
    if (s.eventIdx) drv.enableCb();
    const image = Buffer.from(r.mem.u8.subarray(r.mem.guestBase, r.mem.guestBase + dataOff + d));
    for (const script of [0x00, 0x25, 0x4a, 0x7f]) {
      out.push(Buffer.concat([encodeHeader({ size: s.size, flags: (s.eventIdx ? 1 : 0) | (s.indirect ? 2 : 0), script, availStart, usedStart, popMax: 0, descOff, availOff: driverOff, usedOff: deviceOff }), image]));
    }
  }
  return out;
}

const DICT = [
  [0x01, 0x00], [0x02, 0x00], [0x03, 0x00], [0x04, 0x00], [0x05, 0x00], [0x06, 0x00], // desc flags NEXT/WRITE/INDIRECT
  [0x80, 0x00], [0x00, 0x80], [0x81, 0x80], [0x81, 0x00], [0x83, 0x00], [0x84, 0x00], // packed AVAIL/USED
  [0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00], // gpa 0x10000
  [0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00], // gpa 4 GiB (region 2)
  [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
  [0xf0, 0xff, 0x00, 0x00], [0x10, 0x00, 0x00, 0x00], [0x00, 0x10, 0x00, 0x00],
].map((a) => Uint8Array.from(a));

function isExpected(err: unknown): boolean {
  return err instanceof VirtqueueError;
}

export const virtqueueSplit: Target = {
  name: 'virtqueue-split',
  describe: 'split virtqueue (assembly/virtio via src/hot/virtqueue): hostile ring config + guest RAM; iovecs in guest RAM, writes only to the used ring',
  seeds: splitSeeds,
  dictionary: DICT,
  maxLen: HDR + (24 << 10),
  run: (input) => runCase(input, false),
  expected: isExpected,
};

export const virtqueuePacked: Target = {
  name: 'virtqueue-packed',
  describe: 'packed virtqueue (assembly/virtio/packed.ts): hostile ring config + guest RAM; iovecs in guest RAM, writes only to ring + device area',
  seeds: packedSeeds,
  dictionary: DICT,
  maxLen: HDR + (24 << 10),
  run: (input) => runCase(input, true),
  expected: isExpected,
};
