/**
 * Two builds of the shim side by side (issue 16): `ctr run --rm IMAGE id
 * true` from one VM template through ONE private containerd, runc, the
 * baseline shim and this checkout's shim interleaved run by run (the order
 * of the two shims alternates), so background load hits both alike. For
 * before/after comparisons of a shim change, where whole bench runs minutes
 * apart differ by more than the change under a shared machine's load.
 *
 *   node dist/bench/factory-pods-ab.js BASELINE_CHECKOUT [runs=8]
 *
 * BASELINE_CHECKOUT is another built checkout (bin/ and dist/), e.g.
 * `git archive <commit> | tar -x -C DIR`, node_modules and native/build
 * linked from here, `npx tsc -p tsconfig.json` there. containerd resolves
 * the runtime io.containerd.kata-ts-v2-base.v2 to the binary
 * containerd-shim-kata-ts-v2-base-v2, linked to the baseline's shim (the
 * name keeps "containerd-shim-kata-ts-v2", which `shim delete` and the
 * test helpers look for). The template is made by this checkout's kata-ctl;
 * a run that logs a cold boot fails the bench.
 *
 * Per run it also prints, from the times in containerd's log (the shim's
 * lines included): ctr start → the shim's 'sandbox ready' → containerd's
 * 'shim disconnected' → ctr exit. Medians via
 * bench/stats.ts; writes build/bench/factory-pods-ab.json. Needs root.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { IMAGE, RUNTIME, TestContainerd, containerdAvailable } from '../test/helpers/containerd';
import { CACHE } from '../test/helpers/guest';
import { guestAssets, defaultConfig } from '../src/runtime/config';
import { ROOT, writeResult } from './native';
import { median } from './stats';

const BASE_RUNTIME = 'io.containerd.kata-ts-v2-base.v2';
type Side = 'runc' | 'base' | 'this';
interface Phases { toReadyMs?: number; readyToDisconnectMs?: number; disconnectToExitMs?: number }

function kataCtl(cfgFile: string, args: string[]): void {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'kata-ctl'), '--config', cfgFile, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`kata-ctl ${args.join(' ')}: ${r.stderr.trim()}`);
}

/**
 * The time (ms since the epoch) of the first line of containerd's log that
 * matches `what` and contains `id`: the shim's JSON lines carry "time":"…Z",
 * containerd's own time="…Z" (nanoseconds, cut to ms).
 */
function logTime(log: string, what: RegExp, id: string): number | undefined {
  const line = log.split('\n').find((l) => what.test(l) && l.includes(id));
  const iso = line && (/"time":"([^"]+)"/.exec(line)?.[1] ?? /time="([^"]+)"/.exec(line)?.[1]);
  const t = iso ? Date.parse(iso.replace(/(\.\d{3})\d*Z$/, '$1Z')) : NaN;
  return Number.isFinite(t) ? t : undefined;
}

async function main(): Promise<void> {
  const base = path.resolve(process.argv[2] ?? '');
  const n = Number(process.argv[3] ?? 8);
  const baseShim = path.join(base, 'bin', 'containerd-shim-kata-ts-v2');
  if (!process.argv[2] || !fs.existsSync(baseShim) || !fs.existsSync(path.join(base, 'dist', 'src', 'cli', 'containerd-shim-kata-ts-v2.js'))) {
    throw new Error(`usage: factory-pods-ab.js BASELINE_CHECKOUT [runs]: ${base} has no built shim (bin/containerd-shim-kata-ts-v2 and dist/)`);
  }
  if (!Number.isInteger(n) || n < 1) throw new Error(`runs must be a positive integer, not ${process.argv[3]}`);
  const why = containerdAvailable();
  if (why) throw new Error(why);
  const cd = new TestContainerd();
  const dir = cd.dir;
  const cfgFile = path.join(dir, 'kata-ts.toml');
  const c = defaultConfig();
  c.runtime.cache_dir = CACHE;
  const assets = guestAssets(c, 'qemu');
  fs.copyFileSync(assets.kernel, path.join(dir, 'vmlinux'));
  fs.copyFileSync(assets.image, path.join(dir, 'rootfs.erofs'));
  const t: Record<Side, number[]> = { runc: [], base: [], this: [] };
  const phases: Record<'base' | 'this', Phases[]> = { base: [], this: [] };
  const load0 = os.loadavg();
  try {
    await cd.start(`[hypervisor.qemu]\nkernel = "${path.join(dir, 'vmlinux')}"\nimage = "${path.join(dir, 'rootfs.erofs')}"\n[factory]\nenable_template = true\ntemplate_path = "${path.join(dir, 'tpl')}"\n`);
    fs.symlinkSync(baseShim, path.join(dir, 'bin', 'containerd-shim-kata-ts-v2-base-v2'));
    await cd.importImage();
    kataCtl(cfgFile, ['factory', 'init']);
    for (let i = 0; i < n; i++) {
      const order: Side[] = i % 2 ? ['runc', 'this', 'base'] : ['runc', 'base', 'this'];
      for (const side of order) {
        const w0 = Date.now();
        const t0 = process.hrtime.bigint();
        const runtime = side === 'runc' ? [] : ['--runtime', side === 'base' ? BASE_RUNTIME : RUNTIME];
        const r = await cd.ctr(['run', '--rm', ...runtime, IMAGE, `${side}${i}`, 'true']);
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        const w1 = Date.now();
        if (r.code !== 0) throw new Error(`${side} run ${i}: ctr exited ${r.code}: ${r.stderr.trim()}`);
        // containerd's log tail (20 kB): run ids are unique, so lines are found by id.
        const log = cd.log;
        if (log.split('\n').some((l) => l.includes('cold boot') && l.includes(`"sandbox":"${side}${i}"`))) throw new Error(`${side} run ${i}: the sandbox was not a clone (cold boot in containerd's log)`);
        t[side].push(ms);
        let p: Phases = {};
        const tReady = logTime(log, /"sandbox ready"/, `"sandbox":"${side}${i}"`);
        const tDisconnect = logTime(log, /msg="shim disconnected"/, `id=${side}${i}`);
        if (side !== 'runc' && tReady && tDisconnect) {
          p = { toReadyMs: tReady - w0, readyToDisconnectMs: tDisconnect - tReady, disconnectToExitMs: w1 - tDisconnect };
          phases[side].push(p);
        }
        process.stdout.write(`${side} ${i}: ${ms.toFixed(0)} ms ${JSON.stringify(p)} (load ${os.loadavg()[0].toFixed(1)})\n`);
      }
    }
  } finally {
    try { kataCtl(cfgFile, ['factory', 'destroy']); } catch { /* already gone */ }
    const left = await cd.stop();
    if (left.shims.length || left.qemu.length || left.mounts.length) process.stdout.write(`cleaned up leftovers: ${JSON.stringify(left)}\n`);
  }
  const m = (v: number[]) => Math.round(median(v));
  const phaseMedians = (ps: Phases[]) => Object.fromEntries((['toReadyMs', 'readyToDisconnectMs', 'disconnectToExitMs'] as const).map((k) => [k, m(ps.map((p) => p[k]!).filter((v) => v !== undefined))]));
  const faster = t.this.filter((v, i) => v < t.base[i]!).length;
  const result = {
    runs: n, runcMs: m(t.runc), baseMs: m(t.base), thisMs: m(t.this),
    baseXRunc: Math.round((median(t.base) / median(t.runc)) * 10) / 10, thisXRunc: Math.round((median(t.this) / median(t.runc)) * 10) / 10,
    thisOverBase: Math.round((median(t.this) / median(t.base)) * 100) / 100, thisFasterInPairs: faster,
    phases: { base: phaseMedians(phases.base), this: phaseMedians(phases.this) }, load: { start: load0, end: os.loadavg() },
  };
  process.stdout.write(`\nmedians of ${n}: runc ${result.runcMs} ms; baseline ${result.baseMs} ms (${result.baseXRunc}x); this ${result.thisMs} ms (${result.thisXRunc}x); this/baseline ${result.thisOverBase}, faster in ${faster} of ${n} pairs\n`);
  process.stdout.write(`phases (medians): baseline ${JSON.stringify(result.phases.base)}; this ${JSON.stringify(result.phases.this)}\n`);
  process.stdout.write(`load average ${load0.map((l) => l.toFixed(1)).join(' ')} at the start, ${result.load.end.map((l) => l.toFixed(1)).join(' ')} at the end\n`);
  writeResult('factory-pods-ab', result);
}

main().catch((err) => {
  process.stderr.write(`bench/factory-pods-ab: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
