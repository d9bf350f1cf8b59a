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
import { guestAssets, defaultConfig } from '../src/runtime/config';
import { ROOT, writeResult } from './native';
import { median } from './stats';

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

function kataCtl(cfgFile: string, args: string[]): void {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'kata-ctl'), '--config', cfgFile, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`kata-ctl ${args.join(' ')}: ${r.stderr.trim()}`);
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

async function ctrBench(n: number, cold: boolean): Promise<Record<string, number[]>> {
  const why = containerdAvailable();
  if (why) throw new Error(why);
  const cd = new TestContainerd();
  const t: Record<string, number[]> = { runc: [], 'kata-ts template': [], 'kata-ts cold': [] };
  const cfgFile = path.join(cd.dir, 'kata-ts.toml');
  try {
    await cd.start(factoryConfig(cd.dir));
    await cd.importImage();
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
      await once('kata-ts template', `t${i}`, RUNTIME);
    }
    kataCtl(cfgFile, ['factory', 'destroy']);
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

async function criBench(n: number): Promise<Record<string, number[]>> {
  for (const h of ['runc', 'kata-ts'] as const) {
    const why = criUnavailable(h);
    if (why) throw new Error(`${h}: ${why}`);
  }
  const cd = new CriContainerd();
  const t: Record<string, number[]> = { runc: [], 'kata-ts template': [] };
  const cfgFile = path.join(cd.dir, 'kata-ts.toml');
  try {
    await cd.start({ kataExtraConfig: factoryConfig(cd.dir) });
    kataCtl(cfgFile, ['factory', 'init']);
    for (let i = 0; i < n; i++) {
      for (const [label, handler] of [['runc', 'runc'], ['kata-ts template', 'kata-ts']] as const) {
        const name = `${handler}-${i}`;
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
    try { kataCtl(cfgFile, ['factory', 'destroy']); } catch { /* already gone */ }
    const left = await cd.stop();
    if (left.pods.length || left.shims.length || left.qemu.length || left.mounts.length || left.cni.length) process.stdout.write(`cleaned up leftovers: ${JSON.stringify(left)}\n`);
  }
  return t;
}

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 3);
  const parts = (process.argv[3] ?? 'ctr,cri').split(',');
  const load0 = os.loadavg();
  const ctrParts = parts.filter((p) => p === 'ctr' || p === 'ctr-template');
  const ctr = ctrParts.length ? summary(await ctrBench(n, ctrParts.includes('ctr')), 'runc') : undefined;
  const cri = parts.includes('cri') ? summary(await criBench(n), 'runc') : undefined;
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
