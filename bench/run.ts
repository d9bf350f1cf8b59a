/**
 * `npm run bench` (issue 3): runs the hot-path benchmarks one after another,
 * each in its own Node process exactly as it runs on its own
 * (node dist/bench/<name>.js), then writes a chart per result set
 * (build/bench/<name>.svg, bench/chart.ts) next to its JSON.
 *
 *   hot-virtqueue  virtqueue pop+push: AS vs plain TS vs C (gcc -O2)
 *   hot-lz4        LZ4 block encode/decode: AS vs liblz4, lz4 -b, lz4-napi, lz4js
 *   hot-pagehash   page hashing: AS vs C/libxxhash, xxhsum -b, xxhash-wasm, hash-wasm
 *   hot-erofs      EROFS read-everything: AS reader vs kernel erofs, fsck.erofs
 *
 * With --all, also the VM/device benchmarks (slow: they boot TCG guests):
 *   boot, virtiofs, blk, vsock (--vm), vmm, shim, cri-start — each with its defaults.
 *
 *   bash scripts/setup.sh && node dist/bench/run.js [--all] [name ...]
 *
 * Names pick a subset (e.g. `node dist/bench/run.js hot-lz4 vsock`). A bench
 * that fails is reported and the rest still run; the exit code is 1 then.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { writeCharts } from './chart';

const HOT: Array<[string, string[]]> = [['hot-virtqueue', []], ['hot-lz4', []], ['hot-pagehash', []], ['hot-erofs', []]];
const VM: Array<[string, string[]]> = [['boot', []], ['virtiofs', []], ['blk', []], ['vsock', ['--vm']], ['vmm', []], ['shim', []], ['cri-start', []]];

function main(): void {
  const args = process.argv.slice(2);
  const all = args.includes('--all');
  const picked = args.filter((a) => !a.startsWith('--'));
  const known = [...HOT, ...VM];
  for (const p of picked) if (!known.some(([n]) => n === p)) throw new Error(`unknown bench ${p} (known: ${known.map(([n]) => n).join(', ')})`);
  const plan = picked.length ? known.filter(([n]) => picked.includes(n)) : all ? known : HOT;
  const summary: Array<[string, string]> = [];
  for (const [name, benchArgs] of plan) {
    process.stdout.write(`\n=== ${name} ${'='.repeat(Math.max(0, 70 - name.length))}\n`);
    const t = Date.now();
    const r = spawnSync(process.execPath, [path.join(__dirname, `${name}.js`), ...benchArgs], { stdio: 'inherit' });
    const s = ((Date.now() - t) / 1000).toFixed(0);
    summary.push([name, r.status === 0 ? `ok (${s} s)` : `FAILED (${r.signal ?? `exit ${r.status}`}, ${s} s)`]);
  }
  const charts = writeCharts(plan.map(([n]) => n));
  process.stdout.write('\n=== summary\n');
  for (const [n, st] of summary) process.stdout.write(`  ${n.padEnd(14)} ${st}\n`);
  for (const f of charts) process.stdout.write(`  chart: ${f}\n`);
  if (summary.some(([, st]) => st.startsWith('FAILED'))) process.exitCode = 1;
}

main();
