/**
 * KSM on the builtin VMM's guest RAM (issue 13), side by side: two test
 * guests (test/fixtures/vmm-guest `test=fill`) write the same `mib` MiB
 * (each page its own content, so pages merge only across the two VMs:
 * all merged, both copies count as merging, 2 × mib × 256 pages, and half
 * of that is saved),
 * once with the default shared-memfd RAM and once with `mergeableRam`
 * (private anonymous, MADV_MERGEABLE). KSM runs at an aggressive pace for
 * at most `seconds` per case; the figure is this process's merged pages
 * (/proc/self/ksm_merging_pages; both VMs are in this process, so the
 * saving is half of it). When KSM was off with nothing merged before, the
 * bench ends with run = 2 (unmerge everything: back to that state, and
 * KSM's counters are not left stale by the closed VMs) and then run = 0. KSM's settings are saved first and put
 * back in `finally` (and on SIGINT/SIGTERM): `run` as it was, so KSM is
 * never left running by this bench.
 *
 *   sudo node dist/bench/builtin-ksm.js [mib=32] [seconds=30]
 */
import * as fs from 'node:fs';
import { Machine } from '../src/vmm/machine';
import { buildGuest } from '../test/unit/vmm/guest-build';

const KSM = '/sys/kernel/mm/ksm';
const KEYS = ['run', 'pages_to_scan', 'sleep_millisecs'] as const;
const read = (k: string) => fs.readFileSync(`${KSM}/${k}`, 'utf8').trim();
const write = (k: string, v: string) => fs.writeFileSync(`${KSM}/${k}`, v);
const merging = () => Number(fs.readFileSync('/proc/self/ksm_merging_pages', 'utf8').trim());
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function bootFilled(elf: string, mib: number, mergeableRam: boolean): Promise<Machine> {
  let out = '';
  const m = new Machine({ memoryBytes: (mib + 32) << 20, vcpus: 1, kernel: elf, cmdline: `test=fill mib=${mib}`, mergeableRam, serialOut: (b) => (out += Buffer.from(b).toString('latin1')) });
  m.start();
  for (const t0 = Date.now(); !out.includes('fill done'); await sleep(20)) {
    if (Date.now() - t0 > 60000 || m.endReason) throw new Error(`guest did not fill its RAM: ${out.slice(-200)}`);
  }
  return m;
}

async function measure(elf: string, mib: number, seconds: number, mergeableRam: boolean): Promise<{ pages: number; seconds: number }> {
  const vms = [await bootFilled(elf, mib, mergeableRam), await bootFilled(elf, mib, mergeableRam)];
  try {
    const base = merging();
    write('pages_to_scan', '5000');
    write('sleep_millisecs', '10');
    write('run', '1');
    const t0 = Date.now();
    let best = 0, stableSince = Date.now();
    while (Date.now() - t0 < seconds * 1000) {
      await sleep(500);
      const n = merging() - base;
      if (n > best) { best = n; stableSince = Date.now(); }
      // Done when everything expected merged, or nothing moved for 5 s.
      if (best >= 2 * mib * 256 || Date.now() - stableSince > 5000) break;
    }
    write('run', '0');
    return { pages: best, seconds: (Date.now() - t0) / 1000 };
  } finally {
    for (const m of vms) { await m.stop(); m.close(); }
  }
}

async function main(): Promise<void> {
  const args = Object.fromEntries(process.argv.slice(2).map((a) => a.split('=')));
  const mib = Number(args.mib ?? 32), seconds = Number(args.seconds ?? 30);
  if (!fs.existsSync(KSM)) { console.log('KSM is not available on this host (/sys/kernel/mm/ksm missing)'); return; }
  const g = buildGuest();
  if (!g.elf) throw new Error(g.reason);
  const saved = Object.fromEntries(KEYS.map((k) => [k, read(k)]));
  const cleanSlate = saved.run === '0' && read('pages_sharing') === '0';
  const restore = () => {
    try { if (cleanSlate) write('run', '2'); } catch { /* best effort */ }
    for (const k of ['pages_to_scan', 'sleep_millisecs', 'run'] as const) { try { write(k, saved[k]); } catch { /* best effort */ } }
  };
  const onSignal = () => { restore(); process.exit(130); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const load = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  try {
    const shared = await measure(g.elf, mib, seconds, false);
    const merged = await measure(g.elf, mib, seconds, true);
    const expected = mib * 256;
    console.log(JSON.stringify({
      mib, expectedPages: expected, load,
      sharedMemfd: { mergingPages: shared.pages, savedMiB: shared.pages / 512, seconds: shared.seconds },
      mergeableRam: { mergingPages: merged.pages, savedMiB: merged.pages / 512, seconds: merged.seconds, savedOfWritten: +(merged.pages / 2 / expected).toFixed(3) },
      ksmRestored: saved,
    }));
  } finally {
    restore();
  }
}

main().catch((err) => { console.error(err); process.exitCode = 1; });
