/**
 * Soak (issue 11, "Figures"): many sandbox start/stop cycles, then many
 * sandboxes at once, through the runtime's Sandbox API in this process (QEMU,
 * TCG here), counting before and after what a sandbox may leave behind:
 *
 *   fds       open fds of this (the runtime) process: /proc/self/fd
 *   memfds    of those, links to /memfd:…, and memfd mappings in
 *             /proc/self/maps (guest RAM mapped into WebAssembly memory)
 *   processes QEMU or anything else whose command line or environment names
 *             our private run dir, and children of this process (zombies too)
 *   mounts    /proc/self/mountinfo mount points under the run dir or rootfs
 *   taps      links in each pod netns other than its CNI eth0 and lo, and
 *             ingress qdiscs left on eth0 (the tc mirror)
 *   sockets   unix socket files under the run dir, and bound unix sockets
 *             (/proc/net/unix) whose path is under it
 *   dirs      sandbox directories left under the run dir
 *
 * Each cycle: boot a sandbox in its pod netns (a veth set up as CNI would,
 * mirrored to a tap), its container on a boot-time virtio-fs share, an exec
 * whose output is checked, remove the container, stop the sandbox. Then
 * `concurrent` sandboxes are started together, each runs the same checks,
 * and all are stopped together. The baseline is taken after one warm-up
 * cycle (Node opens some fds once, lazily — e.g. the first child process's
 * signal pipe); the warm-up's own difference is printed too.
 *
 *   node dist/bench/soak.js [cycles=100] [concurrent=10]
 *
 * Prints progress, writes build/bench/soak.json, exits 1 on any leak or a
 * failed cycle. Needs root (network namespaces, virtio-fs mounts) and the
 * guest built by scripts/setup.sh.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { writeResult } from './native';
import { defaultConfig, type Config } from '../src/runtime/config';
import { configureLogging } from '../src/common/log';
import { selectHypervisor } from '../src/hypervisor';
import { Sandbox } from '../src/runtime/sandbox';
import { defaultProcess, defaultSpec } from '../src/runtime/spec';
import { attachProcess } from '../src/runtime/stdio';
import { PodNetns, ip } from '../test/helpers/netns';

const CACHE = process.env.KATA_TS_CACHE ?? '/var/cache/kata-ts';

export interface Counts {
  fds: number;
  memfds: number;
  memfdMaps: number;
  processes: string[];
  mounts: string[];
  taps: string[];
  sockets: string[];
  dirs: string[];
  threads: number;
}

function safe<T>(fn: () => T, dflt: T): T {
  try {
    return fn();
  } catch {
    return dflt;
  }
}

function walkSockets(dir: string, out: string[]): string[] {
  for (const e of safe(() => fs.readdirSync(dir, { withFileTypes: true }), [] as fs.Dirent[])) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walkSockets(p, out);
    else if (e.isSocket()) out.push(p);
  }
  return out;
}

/** Everything the soak counts, for a run dir, a rootfs and the pod netns. */
export function count(runDir: string, rootfs: string, netns: PodNetns[]): Counts {
  const fdNames = fs.readdirSync('/proc/self/fd');
  const links = fdNames.map((n) => safe(() => fs.readlinkSync(`/proc/self/fd/${n}`), ''));
  const memfdMaps = new Set(fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('/memfd:')).map((l) => l.split(/\s+/).slice(5).join(' ')));
  const processes: string[] = [];
  const runMark = Buffer.from(runDir);
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    const stat = safe(() => fs.readFileSync(`/proc/${d}/stat`, 'utf8'), '');
    if (!stat) continue;
    const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cmd = safe(() => fs.readFileSync(`/proc/${d}/cmdline`), Buffer.alloc(0));
    const env = safe(() => fs.readFileSync(`/proc/${d}/environ`), Buffer.alloc(0));
    if (Number(ppid) === process.pid || cmd.includes(runMark) || env.includes(runMark)) {
      processes.push(`${d} ${state} ${cmd.toString().split('\0').join(' ').trim().slice(0, 120)}`);
    }
  }
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith(runDir + '/') || m === runDir || m.startsWith(rootfs));
  const taps: string[] = [];
  for (const ns of netns) {
    for (const l of ip('-n', ns.pod, '-o', 'link').split('\n').filter(Boolean)) {
      const name = l.split(':')[1]?.trim().split('@')[0] ?? l;
      if (name !== 'lo' && name !== 'eth0') taps.push(`${ns.pod}: ${name}`);
    }
    const qd = safe(() => execFileSync('tc', ['-n', ns.pod, 'qdisc', 'show', 'dev', 'eth0'], { encoding: 'utf8' }), '');
    if (/ingress/.test(qd)) taps.push(`${ns.pod}: ingress qdisc on eth0`);
  }
  const bound = fs.readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1).map((l) => l.trim().split(/\s+/)[7] ?? '').filter((p) => p.startsWith(runDir));
  const sockets = [...walkSockets(runDir, []), ...bound.map((p) => `bound: ${p}`)];
  const sbDir = path.join(runDir, 'sandboxes');
  const dirs = safe(() => fs.readdirSync(sbDir), [] as string[]);
  const threads = Number(/Threads:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1] ?? 0);
  return { fds: fdNames.length, memfds: links.filter((l) => l.startsWith('/memfd:')).length, memfdMaps: memfdMaps.size, processes, mounts, taps, sockets, dirs, threads };
}

/** What `after` has more of than `before` (lists: entries not in before). */
export function leaks(before: Counts, after: Counts): Record<string, number | string[]> {
  const out: Record<string, number | string[]> = {};
  for (const k of ['fds', 'memfds', 'memfdMaps'] as const) if (after[k] > before[k]) out[k] = after[k] - before[k];
  for (const k of ['processes', 'mounts', 'taps', 'sockets', 'dirs'] as const) {
    const extra = after[k].filter((x) => !before[k].includes(x));
    if (extra.length) out[k] = extra;
  }
  return out;
}

function rssKiB(pid: number | 'self'): number {
  return Number(/VmRSS:\s+(\d+)/.exec(safe(() => fs.readFileSync(`/proc/${pid}/status`, 'utf8'), ''))?.[1] ?? 0);
}

function stats(xs: number[]): { n: number; mean: number; median: number; p95: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? 0;
  return { n: s.length, mean: s.reduce((a, b) => a + b, 0) / Math.max(1, s.length), median: at(0.5), p95: at(0.95), max: s[s.length - 1] ?? 0 };
}

interface Soak {
  cfg: Config;
  rootfs: string;
  runDir: string;
}

let peakQemuRssKiB = 0;

/** One sandbox's life: boot in `ns`, container, exec checked, remove, stop. Returns ms. */
async function lifecycle(s: Soak, id: string, ns: PodNetns | undefined, during?: () => void): Promise<number> {
  const t0 = Date.now();
  const hv = (await selectHypervisor(s.cfg, 'qemu')).hv;
  const sb = new Sandbox({ id, config: s.cfg, hypervisor: hv, netns: ns?.podPath, bootContainers: [{ id: 'c', rootfs: s.rootfs }] });
  try {
    await sb.start();
    await sb.createContainer('c', defaultSpec({ args: ['sh', '-c', 'trap "exit 0" TERM; while :; do sleep 0.2; done'] }), s.rootfs);
    await sb.startContainer('c');
    await sb.exec('c', 'e1', defaultProcess({ args: ['sh', '-c', `echo ${id}; ip -o link show eth0 >/dev/null 2>&1 && echo net`] }));
    const out = new PassThrough();
    let o = '';
    out.on('data', (d: Buffer) => (o += d.toString()));
    const st = await attachProcess(sb.agent, 'c', 'e1', { stdout: out, stderr: out, terminal: false }).done;
    const want = `${id}\n${ns ? 'net\n' : ''}`;
    if (st.status !== 0 || o !== want) throw new Error(`exec in ${id}: status ${st.status}, output ${JSON.stringify(o)} (wanted ${JSON.stringify(want)})`);
    during?.();
    for (const pid of sb.vmInfo?.pids ?? []) peakQemuRssKiB = Math.max(peakQemuRssKiB, rssKiB(pid));
    await sb.removeContainer('c', 10);
  } finally {
    await sb.stop();
  }
  return Date.now() - t0;
}

async function main(): Promise<void> {
  const cycles = Number(process.argv[2] ?? 100);
  const concurrent = Number(process.argv[3] ?? 10);
  if (!Number.isInteger(cycles) || cycles < 0 || !Number.isInteger(concurrent) || concurrent < 0) throw new Error('usage: node dist/bench/soak.js [cycles=100] [concurrent=10]');
  for (const f of [path.join(CACHE, 'kernel', 'vmlinux'), path.join(CACHE, 'image', 'rootfs.erofs'), path.join(CACHE, 'rootfs', 'busybox', 'bin', 'busybox')]) {
    if (!fs.existsSync(f)) throw new Error(`guest asset ${f} missing (run scripts/setup.sh)`);
  }
  configureLogging({ silent: true });
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-soak-'));
  const runDir = path.join(work, 'run');
  const rootfs = path.join(work, 'rootfs');
  fs.mkdirSync(runDir);
  fs.cpSync(path.join(CACHE, 'rootfs', 'busybox'), rootfs, { recursive: true, verbatimSymlinks: true });
  const cfg = defaultConfig();
  cfg.runtime.run_dir = runDir;
  cfg.runtime.cache_dir = CACHE;
  cfg['agent.kata'].dial_timeout = 180;
  const s: Soak = { cfg, rootfs, runDir };
  const useNet = process.getuid?.() === 0 && process.env.KATA_TS_SOAK_NET !== '0';
  const nets: PodNetns[] = [];
  const failures: string[] = [];
  const cycleMs: number[] = [];
  let exitCode = 0;
  const t0 = Date.now();
  const log = (m: string) => process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(5)} s] ${m}\n`);
  try {
    for (let i = 0; i < Math.max(1, concurrent); i++) if (useNet) nets.push(new PodNetns({ podCidr: '10.98.0.2/24', prefix: 'ksk' }).create());
    log(`soak: ${cycles} cycles, then ${concurrent} concurrent sandboxes; QEMU (TCG), ${os.cpus().length} CPUs; pod netns ${useNet ? 'yes' : 'no (not root or KATA_TS_SOAK_NET=0)'}; work dir ${work}`);
    const initial = count(runDir, rootfs, nets);
    // The counters see a live sandbox (so a 0 after it is a real 0).
    let live: Counts | undefined;
    const warm = await lifecycle(s, 'soak-warmup', nets[0], () => (live = count(runDir, rootfs, nets)));
    log(`while the warm-up sandbox ran: fds ${live!.fds}, memfds ${live!.memfds} (+${live!.memfdMaps} mapped), processes ${live!.processes.length}, mounts ${live!.mounts.length}, taps ${live!.taps.length}, sockets ${live!.sockets.length}, sandbox dirs ${live!.dirs.length}`);
    const baseline = count(runDir, rootfs, nets);
    const warmDiff = leaks(initial, baseline);
    log(`warm-up cycle ${(warm / 1000).toFixed(1)} s; baseline fds ${baseline.fds}, memfds ${baseline.memfds}, threads ${baseline.threads}; warm-up difference ${JSON.stringify(warmDiff)}`);
    let worst = 0;
    for (let i = 1; i <= cycles; i++) {
      let took = 'FAILED';
      try {
        const ms = await lifecycle(s, `soak-${i}`, nets[0]);
        cycleMs.push(ms);
        took = `${(ms / 1000).toFixed(1)} s`;
      } catch (err) {
        failures.push(`cycle ${i}: ${(err as Error).message}`);
        log(`cycle ${i} FAILED: ${(err as Error).message}`);
      }
      const c = count(runDir, rootfs, nets);
      const l = leaks(baseline, c);
      worst = Math.max(worst, c.fds - baseline.fds);
      log(`cycle ${i}/${cycles}: ${took}; fds ${c.fds} (${c.fds - baseline.fds >= 0 ? '+' : ''}${c.fds - baseline.fds}), memfds ${c.memfds}, threads ${c.threads}, rss ${(rssKiB('self') / 1024).toFixed(0)} MiB${Object.keys(l).length ? `; LEAK so far ${JSON.stringify(l)}` : ''}${failures.length ? `; ${failures.length} failed` : ''}`);
    }
    const afterCycles = count(runDir, rootfs, nets);
    const cycleLeaks = leaks(baseline, afterCycles);
    let concurrentMs = 0;
    let concurrentLeaks: Record<string, number | string[]> = {};
    let peakConcurrent = 0;
    if (concurrent > 0) {
      log(`${concurrent} sandboxes at once`);
      const tc = Date.now();
      let live = 0;
      const results = await Promise.allSettled(Array.from({ length: concurrent }, async (_, k) => {
        live++;
        peakConcurrent = Math.max(peakConcurrent, live);
        try {
          return await lifecycle(s, `soak-c${k}`, nets[k]);
        } finally {
          live--;
        }
      }));
      concurrentMs = Date.now() - tc;
      results.forEach((r, k) => {
        if (r.status === 'rejected') failures.push(`concurrent ${k}: ${(r.reason as Error).message}`);
      });
      concurrentLeaks = leaks(afterCycles, count(runDir, rootfs, nets));
      log(`concurrent: ${results.filter((r) => r.status === 'fulfilled').length}/${concurrent} ok in ${(concurrentMs / 1000).toFixed(1)} s; leaks ${JSON.stringify(concurrentLeaks)}`);
    }
    const final = count(runDir, rootfs, nets);
    const total = leaks(baseline, final);
    const result = {
      cycles, concurrent, cpus: os.cpus().length, net: useNet,
      cycleSeconds: Object.fromEntries(Object.entries(stats(cycleMs)).map(([k, v]) => [k, k === 'n' ? v : Math.round(v / 100) / 10])),
      concurrentSeconds: Math.round(concurrentMs / 100) / 10,
      peakRssMiB: { runtime: Math.round(process.resourceUsage().maxRSS / 1024), qemuPerVm: Math.round(peakQemuRssKiB / 1024) },
      baseline: { fds: baseline.fds, memfds: baseline.memfds, threads: baseline.threads },
      final: { fds: final.fds, memfds: final.memfds, threads: final.threads },
      warmupDifference: warmDiff, leaksAfterCycles: cycleLeaks, leaksAfterConcurrent: concurrentLeaks, leaks: total,
      failures, totalSeconds: Math.round((Date.now() - t0) / 1000),
    };
    const file = writeResult('soak', result);
    log(`cycle time: ${JSON.stringify(result.cycleSeconds)} s; peak RSS runtime ${result.peakRssMiB.runtime} MiB, QEMU ${result.peakRssMiB.qemuPerVm} MiB per VM`);
    log(`leaks: ${Object.keys(total).length ? JSON.stringify(total) : 'none'} (fds ${baseline.fds} → ${final.fds}, memfds ${baseline.memfds} → ${final.memfds}, processes/mounts/taps/sockets/dirs 0)`);
    log(`failures: ${failures.length ? failures.join('; ') : 'none'}; written ${file}`);
    if (Object.keys(total).length || Object.keys(cycleLeaks).length || Object.keys(concurrentLeaks).length || failures.length) exitCode = 1;
  } finally {
    for (const n of nets) n.destroy();
    if (exitCode === 0) fs.rmSync(work, { recursive: true, force: true });
  }
  process.exit(exitCode);
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`soak failed: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  });
}
