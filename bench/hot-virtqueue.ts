/**
 * Virtqueue pop+push chains/s, side by side in one run (issue 3): the
 * AssemblyScript queue through src/hot/virtqueue, the same algorithm in
 * plain TypeScript (bench/virtqueue-plain.ts), and a C reference compiled
 * with gcc -O2 at bench time (bench/c/virtqueue.c). Same rings, same checks:
 *   direct    queue size 256, 128 chains of 2 descriptors (16 B header
 *             readable + 4 KiB writable) per kick
 *   indirect  queue size 256, 256 chains of 1 indirect descriptor → 3
 *             (header, 4 KiB data, status byte) per kick
 * Each kick: the driver bumps avail idx, the device pops the whole batch,
 * pushes every chain to the used ring with one idx update and asks whether
 * to notify (EVENT_IDX on). AS and plain TS push the popped chain records
 * directly (pushUsedChains: len = writable bytes, no per-chain copy into
 * used elements); the C reference copies (head, wbytes) pairs, which costs
 * it next to nothing.
 *
 *   npx tsc -p tsconfig.json && bash scripts/build-wasm.sh && node dist/bench/hot-virtqueue.js
 *
 * packed (AS only: the plain-TS and C peers exist for split only) runs the
 * same two shapes on a packed ring (§2.8, assembly/virtio/packed.ts): the
 * driver re-marks the ring's 256 descriptors available each kick (each kick
 * takes the whole ring, so the wrap counter flips every time) outside the
 * timed part; the timed part is pop + pushUsedChains + needsNotification.
 *
 * Writes build/bench/hot-virtqueue.json.
 */
import { HotMemory } from '../src/hot/memory';
import { RING_EVENT_FLAGS_DESC, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED, VirtioModule } from '../src/hot/virtqueue';
import { PlainQueue } from './virtqueue-plain';
import { best, compileC, machine, runJson, table, writeResult } from './native';

const SIZE = 256;
const G = 0x4000_0000n;
const GS = 8 << 20;

type Mode = 'direct' | 'indirect';

function setupRings(mem: HotMemory, mode: Mode): { perBatch: number; desc: bigint; avail: bigint; used: bigint } {
  const desc = G, avail = G + BigInt(16 * SIZE), used = G + 8192n, ind = G + 16384n, data = G + (1n << 20n);
  const v = mem.view;
  const at = (gpa: bigint) => mem.gpaToOffset(gpa, 1);
  mem.u8.fill(0, mem.guestBase, mem.guestBase + (1 << 20));
  const setDesc = (p: number, addr: bigint, len: number, flags: number, next: number) => {
    v.setBigUint64(p, addr, true); v.setUint32(p + 8, len, true); v.setUint16(p + 12, flags, true); v.setUint16(p + 14, next, true);
  };
  if (mode === 'direct') {
    for (let c = 0; c < 128; c++) {
      setDesc(at(desc) + 16 * 2 * c, data + BigInt(c * 8192), 16, 1, 2 * c + 1);
      setDesc(at(desc) + 16 * (2 * c + 1), data + BigInt(c * 8192 + 4096), 4096, 2, 0);
    }
    for (let s = 0; s < SIZE; s++) v.setUint16(at(avail) + 4 + 2 * s, 2 * (s % 128), true);
    return { perBatch: 128, desc, avail, used };
  }
  for (let c = 0; c < 256; c++) {
    const t = at(ind + BigInt(48 * c));
    setDesc(t, data + BigInt(c * 8192), 16, 1, 1);
    setDesc(t + 16, data + BigInt(c * 8192 + 4096), 4096, 3, 2);
    setDesc(t + 32, data + BigInt(c * 8192 + 16), 1, 2, 0);
    setDesc(at(desc) + 16 * c, ind + BigInt(48 * c), 48, 4, 0);
    v.setUint16(at(avail) + 4 + 2 * c, c, true);
  }
  return { perBatch: 256, desc, avail, used };
}

function main(): void {
  const mem = new HotMemory({ scratchBytes: 1 << 20, guestRegions: [{ gpa: G, size: GS }] });
  const mod = new VirtioModule(mem);
  const q = mod.createQueue({ maxSize: SIZE, maxIov: 4 * SIZE });
  const bin = compileC('virtqueue');
  const results: Record<string, unknown> = { machine: machine(), unit: 'chains/s', modes: {} };
  console.log('virtqueue pop + push + notify check, chains/s (best of 7 interleaved rounds)');
  for (const mode of ['direct', 'indirect'] as Mode[]) {
    const r = setupRings(mem, mode);
    const features = (1n << BigInt(VIRTIO_F_EVENT_IDX)) | (1n << BigInt(VIRTIO_F_INDIRECT_DESC));
    const availIdxOff = mem.gpaToOffset(r.avail + 2n, 2);
    const v = mem.view;
    const batches = mode === 'direct' ? 20000 : 10000;

    // AssemblyScript, through the typed wrapper as a device model would use it.
    q.reset();
    q.activate({ size: SIZE, features, descGpa: r.desc, availGpa: r.avail, usedGpa: r.used });
    let aidx = 0;
    const runAs = () => {
      for (let b = 0; b < batches; b++) {
        aidx = (aidx + r.perBatch) & 0xffff;
        v.setUint16(availIdxOff, aidx, true);
        const n = q.popBatch();
        if (n !== r.perBatch) throw new Error(`AS popped ${n}`);
        q.pushUsedChains(n);
        q.needsNotification();
      }
    };
    const syncAs = () => q.activate({ size: SIZE, features, descGpa: r.desc, availGpa: r.avail, usedGpa: r.used, lastAvailIdx: aidx, nextUsedIdx: aidx });
    runAs(); // warm-up

    // Plain TypeScript, same algorithm over the same Memory.
    const region = mem.guestRegions[0];
    const pq = new PlainQueue(mem.memory.buffer, [{ gpa: Number(region.gpa), size: region.size, offset: region.offset }], SIZE,
      mem.gpaToOffset(r.desc, 16 * SIZE), mem.gpaToOffset(r.avail, 6 + 2 * SIZE), mem.gpaToOffset(r.used, 6 + 8 * SIZE), true, true, 4 * SIZE);
    const runTs = () => {
      for (let b = 0; b < batches; b++) {
        aidx = (aidx + r.perBatch) & 0xffff;
        v.setUint16(availIdxOff, aidx, true);
        const n = pq.popBatch(SIZE);
        if (n !== r.perBatch) throw new Error(`TS popped ${n}`);
        pq.pushUsedChains(n);
        pq.needsNotification();
      }
    };
    const syncTs = () => { pq.lastAvail = pq.nextUsed = pq.signalled = aidx; };
    syncTs();
    runTs(); // warm-up

    // Rounds interleaved (AS, TS, C, AS, …), best of each: on a shared,
    // noisy machine every peer then sees the same spells of contention.
    let asRate = 0, tsRate = 0, cRate = 0;
    for (let k = 0; k < 7; k++) {
      syncAs();
      asRate = Math.max(asRate, (batches * r.perBatch) / best(1, runAs));
      syncTs();
      tsRate = Math.max(tsRate, (batches * r.perBatch) / best(1, runTs));
      cRate = Math.max(cRate, runJson<{ chains_per_s: number }>(bin, [mode, String(batches)]).chains_per_s);
    }

    const ratios = { 'as / c': asRate / cRate, 'as / plain-ts': asRate / tsRate };
    (results.modes as Record<string, unknown>)[mode] = { rates: { as: asRate, 'plain-ts': tsRate, c: cRate }, ratios };
    console.log(`\n${mode} (${r.perBatch} chains per kick)`);
    console.log(table([
      ['as (src/hot/virtqueue)', (asRate / 1e6).toFixed(2) + ' M', ''],
      ['plain-ts', (tsRate / 1e6).toFixed(2) + ' M', ''],
      ['c (gcc -O2)', (cRate / 1e6).toFixed(2) + ' M', ''],
      ['as / c', ratios['as / c'].toFixed(2) + '×', 'goal ≥ 0.7×'],
      ['as / plain-ts', ratios['as / plain-ts'].toFixed(2) + '×', 'goal ≥ 3×'],
    ]));
  }
  runPacked(mem, mod, results);
  console.log(`\nwrote ${writeResult('hot-virtqueue', results)}`);
}

/** Packed ring, AS only (no plain-TS or C packed peer exists). */
function runPacked(mem: HotMemory, mod: VirtioModule, results: Record<string, unknown>): void {
  const pq = mod.createPackedQueue({ maxSize: SIZE, maxIov: 4 * SIZE, name: 'bench.packed' });
  const desc = G, driver = G + BigInt(16 * SIZE), device = driver + 4n, ind = G + 16384n, data = G + (1n << 20n);
  const v = mem.view;
  const at = (gpa: bigint) => mem.gpaToOffset(gpa, 1);
  const features = (1n << BigInt(VIRTIO_F_EVENT_IDX)) | (1n << BigInt(VIRTIO_F_INDIRECT_DESC));
  const ringFlags = new Uint16Array(mem.memory.buffer, at(desc), 8 * SIZE);
  const out: Record<string, unknown> = {};
  for (const mode of ['direct', 'indirect'] as Mode[]) {
    mem.u8.fill(0, mem.guestBase, mem.guestBase + (1 << 20));
    const setDesc = (p: number, addr: bigint, len: number, id: number, flags: number) => {
      v.setBigUint64(p, addr, true); v.setUint32(p + 8, len, true); v.setUint16(p + 12, id, true); v.setUint16(p + 14, flags, true);
    };
    const base = new Uint16Array(SIZE); // flags without AVAIL/USED, per ring slot
    const ids = new Uint16Array(SIZE);
    if (mode === 'direct') {
      for (let c = 0; c < 128; c++) {
        base[2 * c] = 1; ids[2 * c] = c; base[2 * c + 1] = 2; ids[2 * c + 1] = c;
      }
    } else {
      for (let c = 0; c < 256; c++) {
        const t = at(ind + BigInt(48 * c));
        setDesc(t, data + BigInt(c * 8192), 16, 0, 0);
        setDesc(t + 16, data + BigInt(c * 8192 + 4096), 4096, 0, 2);
        setDesc(t + 32, data + BigInt(c * 8192 + 16), 1, 0, 2);
        base[c] = 4; ids[c] = c;
      }
    }
    const perBatch = mode === 'direct' ? 128 : 256;
    const batches = mode === 'direct' ? 20000 : 10000;
    // The driver's work per kick: rewrite addr/len/id (the device's used
    // descriptors overwrote some), then flags with the wrap counter's bits.
    const mark = (w: number) => {
      const bits = w ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
      for (let i = 0; i < SIZE; i++) {
        const p = at(desc) + 16 * i;
        if (mode === 'direct') {
          const c = i >> 1;
          v.setBigUint64(p, data + BigInt(c * 8192 + (i & 1) * 4096), true);
          v.setUint32(p + 8, i & 1 ? 4096 : 16, true);
        } else {
          v.setBigUint64(p, ind + BigInt(48 * i), true);
          v.setUint32(p + 8, 48, true);
        }
        v.setUint16(p + 12, ids[i], true);
      }
      for (let i = 0; i < SIZE; i++) ringFlags[8 * i + 7] = base[i] | bits;
    };
    pq.reset();
    pq.activate({ size: SIZE, features, descGpa: desc, driverGpa: driver, deviceGpa: device });
    v.setUint16(at(driver) + 2, RING_EVENT_FLAGS_DESC, true); // off_wrap 0: notify at most once a lap
    let w = 1;
    const run = (): number => {
      let ns = 0n;
      for (let b = 0; b < batches; b++) {
        mark(w);
        const t0 = process.hrtime.bigint();
        const n = pq.popBatch();
        if (n !== perBatch) throw new Error(`packed popped ${n}`);
        pq.pushUsedChains(n);
        pq.needsNotification();
        ns += process.hrtime.bigint() - t0;
        w ^= 1;
      }
      return (batches * perBatch) / (Number(ns) / 1e9);
    };
    run(); // warm-up
    let rate = 0;
    for (let k = 0; k < 7; k++) rate = Math.max(rate, run());
    out[mode] = { rates: { as: rate } };
    console.log(`\npacked ${mode} (${perBatch} chains per kick, the whole ring; AS only — plain-TS and C peers exist only for split)`);
    console.log(table([['as (src/hot/virtqueue PackedVirtqueue)', (rate / 1e6).toFixed(2) + ' M', '']]));
  }
  results.packed = out;
}

main();
