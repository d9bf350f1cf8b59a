/**
 * Two guest images side by side from VM templates: `kata-ts run -- echo
 * MARK` alternating between a template made from image A and one made from
 * image B (same kernel, same host code), so an agent change is measured
 * against the agent before it in the same minutes (README Performance, VM
 * templates). Per run: time to the first output, to exit, and the host's
 * latency of each agent RPC (its debug `agent rpc` lines).
 *
 *   node dist/bench/factory-ab.js RUNS IMAGE_A IMAGE_B [CMD...]
 *
 * CMD (default `echo MARK`) must print the marker (boot.ts MARK) on stdout.
 *
 * Build the images with `KATA_TS_CACHE=DIR bash guest/image/build.sh` from
 * two trees (the shared cache is left alone). Prints medians (and ranges)
 * and the B/A ratio of each, with the load average before and after.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { median } from './stats';
import { MARK, timeToMarker } from './boot';
import { defaultConfig, guestAssets } from '../src/runtime/config';

const ROOT = path.join(__dirname, '..', '..');

type Sample = Record<string, number>;

/** One `kata-ts run`: first output, exit, and each agent RPC's latency (ms, summed per RPC). */
async function runOnce(cfg: string, cmd: string[]): Promise<Sample> {
  const r = await timeToMarker(process.execPath, [path.join(ROOT, 'bin', 'kata-ts'), 'run', '--log-level', 'debug', '--config', cfg, '--', ...cmd], 'stdout');
  if (!/-incoming/.test(r.other)) throw new Error(`the run did not clone its template: ${r.other.slice(-600)}`);
  const s: Sample = { 'first output': r.ms, exit: r.totalMs };
  for (const line of r.other.split('\n')) {
    if (!line.includes('"agent rpc"')) continue;
    try {
      const j = JSON.parse(line) as { rpc?: string; ms?: number };
      if (j.rpc && typeof j.ms === 'number') s[j.rpc] = (s[j.rpc] ?? 0) + j.ms;
    } catch { /* not a log line */ }
  }
  return s;
}

function load(): string {
  return os.loadavg().map((l) => l.toFixed(1)).join(' ');
}

async function main(): Promise<void> {
  const [runsArg, imageA, imageB, ...rest] = process.argv.slice(2);
  const runs = Number(runsArg);
  if (!Number.isInteger(runs) || runs < 1 || !imageA || !imageB) {
    throw new Error('usage: factory-ab.js RUNS IMAGE_A IMAGE_B [CMD...]');
  }
  for (const img of [imageA, imageB]) if (!fs.statSync(img).isFile()) throw new Error(`${img} is not an image file`);
  const cmd = rest.length ? rest : ['echo', MARK];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-fab-'));
  const kernel = path.join(dir, 'vmlinux');
  fs.copyFileSync(guestAssets(defaultConfig(), 'qemu').kernel, kernel);
  const cfgs: Record<'A' | 'B', string> = { A: '', B: '' };
  try {
    for (const [k, img] of [['A', imageA], ['B', imageB]] as const) {
      const pinned = path.join(dir, `${k}.erofs`);
      fs.copyFileSync(img, pinned);
      cfgs[k] = path.join(dir, `${k}.toml`);
      fs.writeFileSync(cfgs[k], `[runtime]\nrun_dir = "${path.join(dir, `run-${k}`)}"\n[hypervisor.qemu]\nkernel = "${kernel}"\nimage = "${pinned}"\n` +
        `[factory]\ntemplate_path = "${path.join(dir, `template-${k}`)}"\nenable_template = true\n`);
      process.stderr.write(`template ${k} (${img})…\n`);
      execFileSync(process.execPath, [path.join(ROOT, 'bin', 'kata-ctl'), 'factory', 'init', '--config', cfgs[k]], { stdio: ['ignore', 'ignore', 'inherit'] });
    }
    const loadBefore = load();
    const samples: Record<'A' | 'B', Sample[]> = { A: [], B: [] };
    for (let i = 0; i < runs; i++) {
      const order: ('A' | 'B')[] = i % 2 === 0 ? ['A', 'B'] : ['B', 'A'];
      for (const k of order) {
        const s = await runOnce(cfgs[k], cmd);
        samples[k].push(s);
        process.stderr.write(`run ${i + 1} ${k}: first output ${Math.round(s['first output']!)} ms, StartContainer ${s.StartContainer ?? '-'} ms (load ${load()})\n`);
      }
    }
    const keys = [...new Set([...samples.A, ...samples.B].flatMap((s) => Object.keys(s)))];
    const stat = (k: 'A' | 'B', key: string) => {
      const v = samples[k].map((s) => s[key]).filter((x): x is number => typeof x === 'number');
      return v.length ? { med: median(v), min: Math.min(...v), max: Math.max(...v) } : undefined;
    };
    const rows = keys.map((key) => {
      const a = stat('A', key);
      const b = stat('B', key);
      const f = (x?: { med: number; min: number; max: number }) => (x ? `${Math.round(x.med)} (${Math.round(x.min)}-${Math.round(x.max)})` : '-');
      return { what: key, A: f(a), B: f(b), 'B/A': a && b ? (b.med / a.med).toFixed(2) : '-' };
    });
    console.log(JSON.stringify({ runs, cmd, imageA, imageB, load: { before: loadBefore, after: load() }, ms: rows }, null, 1));
  } finally {
    for (const k of ['A', 'B'] as const) {
      if (cfgs[k]) {
        try {
          execFileSync(process.execPath, [path.join(ROOT, 'bin', 'kata-ctl'), 'factory', 'destroy', '--config', cfgs[k]], { stdio: 'ignore' });
        } catch { /* nothing to destroy */ }
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exit(1);
});
