/**
 * VM templates through containerd (issue 16): `ctr run --rm IMAGE id true`
 * and a CRI pod start, kata-ts against runc side by side in one run.
 *
 *   ctr run --rm … true   runc | kata-ts from the template | kata-ts cold
 *                         (the shim's configuration has [factory]
 *                         enable_template; "cold" is the same shim after
 *                         `kata-ctl factory destroy`, i.e. the one-warning
 *                         fallback). Wall time of the ctr process.
 *   CRI pod start         RunPodSandbox → CreateContainer → StartContainer
 *                         of one busybox container (what a kubelet waits
 *                         for), runc | kata-ts from the template.
 *
 * Runtimes are interleaved run by run so background load hits them alike;
 * median of N (bench/stats.ts). Writes build/bench/factory-pods.json.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/factory-pods.js [runs=3] [ctr,cri]
 *
 * `ctr-template` in place of `ctr` leaves out the cold runs (for before/after
 * comparisons of the templated path, which take a few minutes otherwise).
 *
 * `cache` (e.g. `3 ctr-template,cri,cache`) adds "kata-ts cache" to both: the
 * pre-started VM cache (`[factory] vm_cache_number = 1`): each such run
 * claims the cached VM, and the next waits until the refill (started by the
 * claim, nice'd) is ready again; the template runs of the same iteration
 * use the same file with vm_cache_number = 0 (the cached VM idles
 * meanwhile). KATA_TS_VM_CACHE_DELAY_MS / KATA_TS_VM_CACHE_NICE in the
 * environment reach the refill through containerd.
 *
 * `lifecycle` (e.g. `6 lifecycle`, alone): a CRI pod's whole life per call,
 * kata-ts from the VM cache (vm_cache_number = LIFECYCLE_CACHE, default 2,
 * as the critest runs) against runc, N pods back to back per handler as
 * critest runs them (refill contention included); bench/cri-lifecycle.ts.
 *
 * `warm-ab` (e.g. `4 warm-ab`, alone) compares a cached VM with and without
 * its container-path warm-up (`[factory] vm_cache_warm_container`,
 * src/agent/warm-container.ts), alternating: for each run the cache is
 * emptied and refilled with the setting, then `ctr run --rm` claims the
 * cached VM; kept per run are the ctr wall time and the claimed shim's
 * StartContainer (its `agent rpc` debug line: KATA_TS_LOG_LEVEL=debug and
 * containerd's log are set up here), and the guest's warm-up time from
 * the entry's log.
 *
 * Needs root (containerd, the template's tmpfs, the CRI netns).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { IMAGE, RUNTIME, TestContainerd, containerdAvailable } from '../test/helpers/containerd';
import { BUSYBOX, CriContainerd, criUnavailable } from '../test/helpers/cri-containerd';
import type { PodSandboxConfig } from '../test/helpers/cri';
import { CACHE } from '../test/helpers/guest';
import { guestAssets, defaultConfig, loadConfig } from '../src/runtime/config';
import { fillCache, stopCache } from '../src/factory/vm-cache-fill';
import { cacheDir, slotFile } from '../src/factory/vm-cache-store';
import { ROOT, writeResult } from './native';
import { median } from './stats';
import { lifecycleBench, printLifecycle } from './cri-lifecycle';

const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

/** [factory] lines with the kernel and image pinned as copies in `dir` (a guest rebuilt meanwhile cannot stale the template). */
function factoryConfig(dir: string): string {
  const c = defaultConfig();
  c.runtime.cache_dir = CACHE;
  const assets = guestAssets(c, 'qemu');
  fs.copyFileSync(assets.kernel, path.join(dir, 'vmlinux'));
  fs.copyFileSync(assets.image, path.join(dir, 'rootfs.erofs'));
  return `[hypervisor.qemu]\nkernel = "${path.join(dir, 'vmlinux')}"\nimage = "${path.join(dir, 'rootfs.erofs')}"\n[factory]\nenable_template = true\ntemplate_path = "${path.join(dir, 'tpl')}"\n`;
}

function kataCtl(cfgFile: string, args: string[]): string {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'kata-ctl'), '--config', cfgFile, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`kata-ctl ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** The VM cache on (1 entry) or off in the shim's configuration file (its [factory] section is last). */
function setCache(cfgFile: string, on: boolean | number): void {
  const t = fs.readFileSync(cfgFile, 'utf8').replace(/\nvm_cache_number = \d+\n/, '\n');
  fs.writeFileSync(cfgFile, `${t}vm_cache_number = ${typeof on === 'number' ? on : on ? 1 : 0}\n`);
}

/** Waits until the cache holds `count` ready VMs (the refill after a claim). */
async function cacheReady(cfgFile: string, timeoutMs = 180000, count = 1): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const st = JSON.parse(kataCtl(cfgFile, ['factory', 'status', '--json'])) as { vmCache?: { ready: unknown[] } };
    if ((st.vmCache?.ready.length ?? 0) >= count) return;
    if (Date.now() > end) throw new Error('the VM cache did not refill');
    await new Promise((r) => setTimeout(r, 250));
  }
}

function summary(runs: Record<string, number[]>, base: string): Record<string, { medianMs: number; xRunc: number; minMs: number; maxMs: number }> {
  const out: Record<string, { medianMs: number; xRunc: number; minMs: number; maxMs: number }> = {};
  const b = median(runs[base]!);
  for (const [k, v] of Object.entries(runs)) {
    if (!v.length) continue;
    out[k] = { medianMs: Math.round(median(v)), xRunc: Math.round((median(v) / b) * 10) / 10, minMs: Math.round(Math.min(...v)), maxMs: Math.round(Math.max(...v)) };
  }
  return out;
}

function printTable(title: string, s: ReturnType<typeof summary>, n: number): void {
  process.stdout.write(`\n| ${title} (median of ${n}) | ms | × runc | range |\n|---|---|---|---|\n`);
  for (const [k, v] of Object.entries(s)) process.stdout.write(`| ${k} | ${v.medianMs} | ${v.xRunc} | ${v.minMs}–${v.maxMs} |\n`);
}

async function ctrBench(n: number, cold: boolean, cache: boolean): Promise<Record<string, number[]>> {
  const why = containerdAvailable();
  if (why) throw new Error(why);
  const cd = new TestContainerd();
  const t: Record<string, number[]> = { runc: [], 'kata-ts template': [], ...(cache ? { 'kata-ts cache': [] } : {}), 'kata-ts cold': [] };
  const cfgFile = path.join(cd.dir, 'kata-ts.toml');
  try {
    await cd.start(factoryConfig(cd.dir));
    await cd.importImage();
    if (cache) setCache(cfgFile, true);
    kataCtl(cfgFile, ['factory', 'init']);
    const once = async (label: string, id: string, runtime?: string) => {
      const t0 = process.hrtime.bigint();
      const r = await cd.ctr(['run', '--rm', ...(runtime ? ['--runtime', runtime] : []), IMAGE, id, 'true']);
      const m = ms(t0);
      if (r.code !== 0) throw new Error(`${label}: ctr run exited ${r.code}: ${r.stderr.trim()}`);
      t[label]!.push(m);
      process.stdout.write(`ctr ${label} ${id}: ${m.toFixed(0)} ms\n`);
    };
    for (let i = 0; i < n; i++) {
      await once('runc', `r${i}`);
      if (cache) setCache(cfgFile, false);
      await once('kata-ts template', `t${i}`, RUNTIME);
      if (cache) {
        setCache(cfgFile, true);
        await cacheReady(cfgFile);
        await once('kata-ts cache', `k${i}`, RUNTIME);
      }
    }
    if (cache) setCache(cfgFile, true); // destroy stops the cache of this configuration
    kataCtl(cfgFile, ['factory', 'destroy']);
    if (cache) setCache(cfgFile, false);
    for (let i = 0; i < (cold ? n : 0); i++) {
      await once('runc', `r2${i}`);
      await once('kata-ts cold', `c${i}`, RUNTIME);
    }
  } finally {
    try { kataCtl(cfgFile, ['factory', 'destroy']); } catch { /* already gone */ }
    const left = await cd.stop();
    if (left.shims.length || left.qemu.length || left.mounts.length) process.stdout.write(`cleaned up leftovers: ${JSON.stringify(left)}\n`);
  }
  return t;
}

async function criBench(n: number, cache: boolean): Promise<Record<string, number[]>> {
  for (const h of ['runc', 'kata-ts'] as const) {
    const why = criUnavailable(h);
    if (why) throw new Error(`${h}: ${why}`);
  }
  const cd = new CriContainerd();
  const t: Record<string, number[]> = { runc: [], 'kata-ts template': [], ...(cache ? { 'kata-ts cache': [] } : {}) };
  const cfgFile = path.join(cd.dir, 'kata-ts.toml');
  try {
    await cd.start({ kataExtraConfig: factoryConfig(cd.dir) });
    if (cache) setCache(cfgFile, true);
    kataCtl(cfgFile, ['factory', 'init']);
    const kinds = [['runc', 'runc'], ['kata-ts template', 'kata-ts'], ...(cache ? [['kata-ts cache', 'kata-ts']] : [])] as const;
    for (let i = 0; i < n; i++) {
      for (const [label, handler] of kinds) {
        if (cache && handler === 'kata-ts') {
          setCache(cfgFile, label === 'kata-ts cache');
          if (label === 'kata-ts cache') await cacheReady(cfgFile);
        }
        const name = `${label.replace(/ /g, '-')}-${i}`;
        const logDir = path.join(cd.dir, 'pods', name);
        fs.mkdirSync(logDir, { recursive: true });
        const config: PodSandboxConfig = { metadata: { name, uid: name, namespace: 'bench' }, hostname: name, log_directory: logDir, linux: {} };
        const t0 = process.hrtime.bigint();
        const pod = await cd.cri.runPodSandbox(config, handler);
        const ctr = await cd.cri.createContainer(pod, { metadata: { name: 'c' }, image: { image: BUSYBOX }, command: ['sleep', '3600'], log_path: 'c.log', linux: {} }, config);
        await cd.cri.startContainer(ctr);
        const m = ms(t0);
        await cd.cri.stopPodSandbox(pod);
        await cd.cri.removePodSandbox(pod);
        t[label]!.push(m);
        process.stdout.write(`CRI ${label} ${name}: ${m.toFixed(0)} ms\n`);
      }
    }
  } finally {
    if (cache) setCache(cfgFile, true);
    try { kataCtl(cfgFile, ['factory', 'destroy']); } catch { /* already gone */ }
    const left = await cd.stop();
    if (left.pods.length || left.shims.length || left.qemu.length || left.mounts.length || left.cni.length) process.stdout.write(`cleaned up leftovers: ${JSON.stringify(left)}\n`);
  }
  return t;
}

/** The cached VMs' container-path warm-up on or off in the shim's configuration file (appended after [factory]'s last key). */
function setWarm(cfgFile: string, on: boolean): void {
  const t = fs.readFileSync(cfgFile, 'utf8').replace(/\nvm_cache_warm_container = \w+\n/, '\n');
  fs.writeFileSync(cfgFile, `${t}vm_cache_warm_container = ${on}\n`);
}

async function warmAbBench(n: number): Promise<Record<string, number[]>> {
  const why = containerdAvailable();
  if (why) throw new Error(why);
  // The claimed shim's debug lines reach containerd's log, which TestContainerd copies to our stderr: keep them.
  process.env.KATA_TS_LOG_LEVEL = 'debug';
  process.env.KATA_TS_E2E_LOG = '1';
  let logText = '';
  const stderrWrite = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array) => { logText += chunk.toString(); return true; }) as typeof process.stderr.write;
  const cd = new TestContainerd();
  const t: Record<string, number[]> = {};
  const cfgFile = path.join(cd.dir, 'kata-ts.toml');
  try {
    // The refill a claim starts (through containerd's environment) waits long enough to be
    // stopped before it starts a VM; the cache is refilled here, with the setting of the next run.
    process.env.KATA_TS_VM_CACHE_DELAY_MS = '600000';
    await cd.start(factoryConfig(cd.dir));
    process.env.KATA_TS_VM_CACHE_DELAY_MS = '0';
    await cd.importImage();
    setCache(cfgFile, true);
    setWarm(cfgFile, true);
    kataCtl(cfgFile, ['factory', 'init']);
    for (let i = 0; i < 2 * n; i++) {
      const on = i % 2 === 0;
      const label = on ? 'warm-up' : 'no warm-up';
      const cfg = loadConfig(cfgFile);
      if (i > 0) {
        setWarm(cfgFile, on);
        await stopCache(cacheDir(cfg));
        fillCache(loadConfig(cfgFile), { configPath: cfgFile, debug: false, nice: 0 });
      }
      await cacheReady(cfgFile);
      const entryLog = fs.readFileSync(slotFile(cacheDir(cfg), 0, 'log'), 'utf8');
      const guestWarm = /"msg":"cached VM: container path warmed".*?"totalMs":(\d+)/.exec(entryLog)?.[1];
      const warnWarm = /container-path warm-up (went wrong|failed)[^\n]*/.exec(entryLog)?.[0];
      if (on && !guestWarm) throw new Error(`the cached VM did not warm up: ${warnWarm ?? 'no line in its log'}`);
      const from = logText.length;
      const t0 = process.hrtime.bigint();
      const r = await cd.ctr(['run', '--rm', '--runtime', RUNTIME, IMAGE, `w${i}`, 'true']);
      const wall = ms(t0);
      if (r.code !== 0) throw new Error(`${label}: ctr run exited ${r.code}: ${r.stderr.trim()}`);
      const start = /"rpc":"StartContainer"[^\n]*?"ms":(\d+)|"ms":(\d+)[^\n]*?"rpc":"StartContainer"/.exec(logText.slice(from));
      const startMs = Number(start?.[1] ?? start?.[2] ?? NaN);
      (t[`ctr ${label}`] ??= []).push(wall);
      (t[`StartContainer ${label}`] ??= []).push(startMs);
      if (guestWarm) (t['guest warm-up'] ??= []).push(Number(guestWarm));
      process.stdout.write(`${label} w${i}: ctr ${wall.toFixed(0)} ms, StartContainer ${startMs} ms${guestWarm ? `, guest warm-up ${guestWarm} ms` : ''}\n`);
      logText = logText.slice(-4096);
    }
  } finally {
    try { kataCtl(cfgFile, ['factory', 'destroy']); } catch { /* already gone */ }
    const left = await cd.stop();
    process.stderr.write = stderrWrite;
    fs.mkdirSync(path.join(ROOT, 'build', 'bench'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, 'build', 'bench', 'factory-pods-warm-ab.log'), logText);
    if (left.shims.length || left.qemu.length || left.mounts.length) process.stdout.write(`cleaned up leftovers: ${JSON.stringify(left)}\n`);
  }
  return t;
}

function printAb(runs: Record<string, number[]>, n: number): void {
  process.stdout.write(`\n| cached VM (median of ${n}) | ms | range |\n|---|---|---|\n`);
  for (const [k, v] of Object.entries(runs)) process.stdout.write(`| ${k} | ${Math.round(median(v))} | ${Math.round(Math.min(...v))}–${Math.round(Math.max(...v))} |\n`);
}

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 3);
  const parts = (process.argv[3] ?? 'ctr,cri').split(',');
  const load0 = os.loadavg();
  if (parts.includes('warm-ab')) {
    const ab = await warmAbBench(n);
    const load1 = os.loadavg();
    printAb(ab, n);
    process.stdout.write(`\nload average ${load0.map((l) => l.toFixed(1)).join(' ')} at the start, ${load1.map((l) => l.toFixed(1)).join(' ')} at the end\n`);
    writeResult('factory-pods-warm-ab', { runs: n, ab, load: { start: load0, end: load1 } });
    return;
  }
  if (parts.includes('lifecycle')) {
    const lc = await lifecycleBench(n, Number(process.env.LIFECYCLE_CACHE ?? 2), { factoryConfig, kataCtl, setCache, cacheReady });
    const load1 = os.loadavg();
    printLifecycle(lc, n);
    process.stdout.write(`\nload average ${load0.map((l) => l.toFixed(1)).join(' ')} at the start, ${load1.map((l) => l.toFixed(1)).join(' ')} at the end\n`);
    writeResult('factory-pods-lifecycle', { runs: n, ...lc, load: { start: load0, end: load1 } });
    return;
  }
  const ctrParts = parts.filter((p) => p === 'ctr' || p === 'ctr-template');
  const cache = parts.includes('cache');
  const ctr = ctrParts.length ? summary(await ctrBench(n, ctrParts.includes('ctr'), cache), 'runc') : undefined;
  const cri = parts.includes('cri') ? summary(await criBench(n, cache), 'runc') : undefined;
  const load1 = os.loadavg();
  if (ctr) printTable('`ctr run --rm IMAGE id true`', ctr, n);
  if (cri) printTable('CRI pod start (RunPodSandbox → StartContainer)', cri, n);
  const load = `load average ${load0.map((l) => l.toFixed(1)).join(' ')} at the start, ${load1.map((l) => l.toFixed(1)).join(' ')} at the end`;
  process.stdout.write(`\n${load}\n`);
  writeResult(`factory-pods-${parts.join('-')}`, { runs: n, ctr, cri, load: { start: load0, end: load1 } });
}

main().catch((err) => {
  process.stderr.write(`bench/factory-pods: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
