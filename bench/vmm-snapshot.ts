/**
 * Builtin VMM snapshot/restore benchmark (issue 16, builtin part).
 * Reproduce: `npx tsc -p tsconfig.json && nice node dist/bench/vmm-snapshot.js [clones...]`
 * (needs /dev/kvm and gcc/ld for the test guest; default clones: 1 5).
 *
 * The guest is the test guest's `count` mode (test/fixtures/vmm-guest):
 * full Linux cannot run under the builtin VMM on a PVM host (KVM emulates
 * standard guests instruction by instruction), so every figure is for the
 * freestanding test guest, side by side with a cold boot of the same guest
 * in the same run:
 *  1. snapshot: time the vCPUs stay paused (state + sparse memory file), for
 *     a guest that touched ~60 KiB and one that filled 8 MiB;
 *  2. restore → first guest output: Machine.restore(dir) to the first new
 *     serial byte and to the first complete count line, against
 *     new Machine() to the first serial byte / first count line of a cold
 *     boot (median of 15, interleaved; the shared host makes single runs noisy);
 *  3. memory: PSS growth of this process with N restored clones of the 8 MiB
 *     guest against N cold VMs of it (everything is in-process: RAM mapped
 *     from the memory file is shared page cache, a cold VM's is its own
 *     memfd). Measured once every VM has read all of its 8 MiB again (the
 *     guest reads 64 of those pages per tick), so the clones' figure is not
 *     flattered by pages they never faulted in. Two figures per VM: PSS of
 *     the guest-RAM mappings alone (exact) and the growth of the whole
 *     process's PSS (includes the JS heap, so noisier); ratios for both.
 * Results: JSON on stdout and build/bench/vmm-snapshot.json.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from './native';
import { Machine } from '../src/vmm/machine';
import { buildGuest } from '../test/unit/vmm/guest-build';
import { countLines, startCountGuest } from '../test/unit/vmm/count-guest';
import { median } from './stats';

const TOUCH_MIB = 8;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const now = () => Number(process.hrtime.bigint()) / 1e6;
const pssKiB = () => Number(/^Pss:\s+(\d+)/m.exec(fs.readFileSync('/proc/self/smaps_rollup', 'utf8'))![1]);
/** PSS of the guest-RAM mappings only: cold VMs' memfds and clones' memory.bin (with their copy-on-write pages). */
function guestRamPssKiB(): number {
  let kib = 0;
  for (const block of fs.readFileSync('/proc/self/smaps', 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    const head = block.slice(0, block.indexOf('\n'));
    if (head.includes('kata-ts-guest-ram') || head.endsWith('/memory.bin')) kib += Number(/^Pss:\s+(\d+)/m.exec(block)?.[1] ?? 0);
  }
  return kib;
}

async function waitFor(what: string, cond: () => boolean, ms = 120000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) { if (Date.now() > end) throw new Error(`timed out waiting for ${what}`); await new Promise((r) => setImmediate(r)); }
}

/** A count guest snapshotted after `lines` lines (paused first, so the cut is exact). */
async function makeSnapshot(dir: string, touchMiB = 0, lines = 10): Promise<{ pausedMs: number; dataKiB: number }> {
  const g = startCountGuest(1_000_000, { touchMiB });
  try {
    await waitFor('count lines', () => countLines(g.out()).length >= lines);
    const info = await g.machine.snapshot(dir);
    return { pausedMs: info.pausedMs, dataKiB: info.memoryDataBytes >> 10 };
  } finally { await g.machine.stop(); g.machine.close(); }
}

async function coldFirst(elf: string): Promise<{ byte: number; line: number }> {
  let out = '';
  let byte = 0;
  const t0 = now();
  const m = new Machine({ memoryBytes: 64 << 20, vcpus: 1, kernel: elf, apsRunnable: true, cmdline: 'test=count n=1000000', serialOut: (b) => { if (!byte) byte = now() - t0; out += Buffer.from(b).toString('latin1'); } });
  m.start();
  await waitFor('first count line', () => countLines(out).length >= 1);
  const line = now() - t0;
  await m.stop(); m.close();
  return { byte, line };
}

async function restoreFirst(dir: string): Promise<{ byte: number; line: number }> {
  let out = '';
  let byte = 0;
  const t0 = now();
  const m = Machine.restore(dir, { serialOut: (b) => { if (!byte) byte = now() - t0; out += Buffer.from(b).toString('latin1'); } });
  m.start();
  // Output starts mid-stream: the first complete line is the first one after a newline.
  await waitFor('first full line after restore', () => /\n[^\n]*\n/.test(out) || /^count [^\n]*\n/.test(out));
  const line = now() - t0;
  await m.stop(); m.close();
  return { byte, line };
}

/** Ticks for the guest to read all TOUCH_MIB again (64 pages a tick), plus a margin. */
const REREAD_LINES = (TOUCH_MIB * 256) / 64 + 4;

async function pssOf(n: number, start: () => Promise<{ machine: Machine; lines: () => number }>): Promise<{ processMiB: number; guestRamMiB: number }> {
  await sleep(300);
  const base = pssKiB();
  const ms: Array<{ machine: Machine; lines: () => number }> = [];
  try {
    for (let i = 0; i < n; i++) { const v = await start(); ms.push(v); v.lines(); }
    const from = ms.map((v) => v.lines());
    await waitFor('every VM re-read its memory', () => ms.every((v, i) => v.lines() - from[i] >= REREAD_LINES));
    return { processMiB: (pssKiB() - base) / n / 1024, guestRamMiB: guestRamPssKiB() / n / 1024 };
  } finally {
    for (const { machine } of ms) { await machine.stop(); machine.close(); }
  }
}

async function main(): Promise<void> {
  const counts = process.argv.slice(2).map(Number).filter((x) => x > 0);
  const ns = counts.length ? counts : [1, 5];
  const g = buildGuest();
  if (!g.elf) throw new Error(g.reason);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-bench-snap-'));
  try {
    const small = path.join(tmp, 'small');
    const snaps = [];
    for (let i = 0; i < 5; i++) snaps.push(await makeSnapshot(path.join(tmp, `s${i}`)));
    await makeSnapshot(small);
    const big = path.join(tmp, 'big');
    const bigSnap = await makeSnapshot(big, TOUCH_MIB, 3);
    process.stderr.write('snapshots done\n');
    const cold: Array<{ byte: number; line: number }> = [];
    const warm: Array<{ byte: number; line: number }> = [];
    for (let i = 0; i < 15; i++) { cold.push(await coldFirst(g.elf)); warm.push(await restoreFirst(small)); }
    process.stderr.write('first-output timings done\n');
    const memory = [];
    for (const n of ns) {
      const coldMiB = await pssOf(n, async () => {
        const c = startCountGuest(1_000_000, { touchMiB: TOUCH_MIB });
        await waitFor('touched', () => c.out().includes('touched'));
        return { machine: c.machine, lines: () => countLines(c.out()).length };
      });
      const cloneMiB = await pssOf(n, async () => {
        let out = '';
        const m = Machine.restore(big, { serialOut: (b) => { out += Buffer.from(b).toString('latin1'); } });
        m.start();
        return { machine: m, lines: () => (out.match(/\n/g) ?? []).length };
      });
      memory.push({
        vms: n,
        guestRamPssMiBPerVm: { cold: +coldMiB.guestRamMiB.toFixed(2), restored: +cloneMiB.guestRamMiB.toFixed(2), ratio: +(cloneMiB.guestRamMiB / coldMiB.guestRamMiB).toFixed(3) },
        processPssGrowthMiBPerVm: { cold: +coldMiB.processMiB.toFixed(2), restored: +cloneMiB.processMiB.toFixed(2), ratio: +(cloneMiB.processMiB / coldMiB.processMiB).toFixed(3) },
      });
      process.stderr.write(`memory n=${n} done\n`);
    }
    const c = { byte: median(cold.map((x) => x.byte)), line: median(cold.map((x) => x.line)) };
    const w = { byte: median(warm.map((x) => x.byte)), line: median(warm.map((x) => x.line)) };
    const res = {
      host: { kernel: os.release(), cpus: os.cpus().length, pvm: fs.existsSync('/sys/module/kvm_pvm') },
      guest: 'test guest count mode (full Linux cannot run under the builtin VMM on a PVM host)',
      snapshotPausedMs: { touched60KiB: +median(snaps.map((s) => s.pausedMs)).toFixed(2), [`touched${TOUCH_MIB}MiB`]: +bigSnap.pausedMs.toFixed(2), bigDataKiB: bigSnap.dataKiB },
      firstOutputMs: {
        coldBootFirstByte: +c.byte.toFixed(2), restoreFirstByte: +w.byte.toFixed(2), ratioFirstByte: +(w.byte / c.byte).toFixed(3),
        coldBootFirstCountLine: +c.line.toFixed(2), restoreFirstCountLine: +w.line.toFixed(2), ratioFirstLine: +(w.line / c.line).toFixed(3),
      },
      memory,
    };
    fs.mkdirSync(path.join(ROOT, 'build', 'bench'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, 'build', 'bench', 'vmm-snapshot.json'), JSON.stringify(res, null, 2));
    console.log(JSON.stringify(res, null, 2));
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
