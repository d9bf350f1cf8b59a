/**
 * A CRI pod's whole life per call (issue 16, "CRI validation suite wall time
 * ≤ 3× runc"): the `lifecycle` part of bench/factory-pods.ts.
 *
 * Each pod is what a typical critest spec does, timed call by call:
 *   RunPodSandbox → CreateContainer (busybox, a `sleep` under sh) →
 *   StartContainer → ExecSync(`true`) → StopContainer (SIGTERM, grace 10 s)
 *   → StopPodSandbox → RemovePodSandbox
 * N pods back to back per handler, the next starting right after the
 * previous is removed, as critest's specs follow each other: for kata-ts
 * that includes the VM cache's refill (a nice'd clone + warm-up started 2 s
 * after each claim) competing with the next pods for the two cores.
 * Handlers run in blocks (kata-ts's N pods, then runc's N), alternating
 * block by block when `rounds` > 1 (LIFECYCLE_ROUNDS), so load drifts hit
 * both.
 *
 * StopContainer: the container runs `sh -c 'trap "exit 0" TERM; sleep 3600
 * & wait'`, so SIGTERM ends it at once, as critest's containers end; a
 * plain `sleep` as pid 1 ignores SIGTERM and would wait out the grace on
 * both runtimes, which measures the grace, not the runtime.
 *
 * CPU: a sampler reads /proc/PID/stat (utime + stime) of every kata-ts shim
 * and QEMU of this containerd every 100 ms (a shim by its command line or,
 * for a cache entry, its environment's KATA_TS_CONFIG under containerd's
 * dir; a QEMU by its run dir). Per pod: the CPU its own shim
 * (the claimed cache entry, `shimPid` in the bundle's kata-ts-shim.json)
 * and its QEMU (the shim's child) used from just before RunPodSandbox to
 * just before StopPodSandbox (their last ~100 ms are not seen: they exit in
 * StopPodSandbox). Refill: the CPU of every other kata-ts process (cache
 * entries before their claim and their QEMUs) over the whole block. Before
 * each kata-ts block, the ready entries' idle CPU over 3 s.
 *
 * Environment: LIFECYCLE_CACHE (vm_cache_number, default 2), LIFECYCLE_ROUNDS
 * (blocks per handler, default 1), LIFECYCLE_NO_REFILL=1 (claims refill only
 * after an hour: with LIFECYCLE_CACHE ≥ N, the pods without refill contention).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BUSYBOX, CriContainerd, criUnavailable, CRI_NAMESPACE } from '../test/helpers/cri-containerd';
import type { PodSandboxConfig } from '../test/helpers/cri';
import { median } from './stats';

export interface LifecycleHelpers {
  factoryConfig(dir: string): string;
  kataCtl(cfgFile: string, args: string[]): string;
  setCache(cfgFile: string, on: boolean | number): void;
  cacheReady(cfgFile: string, timeoutMs?: number, count?: number): Promise<void>;
}

export const CALLS = ['RunPodSandbox', 'CreateContainer', 'StartContainer', 'ExecSync', 'StopContainer', 'StopPodSandbox', 'RemovePodSandbox'] as const;

export interface LifecycleResult {
  /** handler → call (and 'total', 'shim CPU', 'QEMU CPU') → ms per pod */
  calls: Record<string, Record<string, number[]>>;
  /** kata-ts: CPU ms of everything else (refill) per block, and the block's wall time */
  refillCpuMs: number[];
  /** CPU ms per second of the ready entries while they wait, before each kata-ts block */
  idleCpuMsPerS: number[];
  blockWallMs: Record<string, number[]>;
}

const CLK_TCK = 100;

/** utime + stime of pid in ms, and its parent, or undefined if gone. */
function cpuOf(pid: number): { ms: number; ppid: number } | undefined {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return { ms: ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK, ppid: Number(f[1]) };
  } catch {
    return undefined;
  }
}

function environOf(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/environ`, 'utf8');
  } catch {
    return '';
  }
}

/** Last-seen CPU of every kata-ts shim and QEMU of one containerd (their command lines name its socket or the run dir). */
class CpuSampler {
  readonly seen = new Map<number, { ms: number; ppid: number; first: number }>();
  private timer: NodeJS.Timeout | undefined;
  constructor(private readonly marks: string[]) {}

  sample(): void {
    for (const d of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      const pid = Number(d);
      let cmd: string;
      try {
        cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      } catch {
        continue;
      }
      if (!(cmd.includes('containerd-shim-kata-ts-v2') || cmd.includes('qemu-system'))) continue;
      if (!this.marks.some((m) => cmd.includes(m) || (cmd.includes('containerd-shim-kata-ts-v2') && environOf(pid).includes(m)))) continue;
      const c = cpuOf(pid);
      if (!c) continue;
      const prev = this.seen.get(pid);
      this.seen.set(pid, { ms: c.ms, ppid: c.ppid, first: prev?.first ?? c.ms });
    }
  }

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), 100);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** CPU now (last seen) of pid and its children. */
  tree(pid: number): { self: number; children: number } {
    let children = 0;
    for (const [p, v] of this.seen) if (v.ppid === pid && p !== pid) children += v.ms;
    return { self: this.seen.get(pid)?.ms ?? 0, children };
  }

  total(): number {
    let t = 0;
    for (const v of this.seen.values()) t += v.ms - v.first;
    return t;
  }
}

/** The threads of pid and its children whose nice value is not 0 ("comm:nice"). */
function nicedThreads(pid: number): string[] {
  const out: string[] = [];
  const pids = [pid];
  try {
    pids.push(...fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
  } catch { /* gone */ }
  for (const p of pids) {
    let tasks: string[] = [];
    try {
      tasks = fs.readdirSync(`/proc/${p}/task`);
    } catch { continue; }
    for (const t of tasks) {
      try {
        const st = fs.readFileSync(`/proc/${p}/task/${t}/stat`, 'utf8');
        const comm = st.slice(st.indexOf('(') + 1, st.lastIndexOf(')'));
        const nice = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[16]);
        if (nice !== 0) out.push(`${comm}:${nice}`);
      } catch { /* gone */ }
    }
  }
  return out;
}

function shimPidOf(cd: CriContainerd, podId: string): number | undefined {
  try {
    const m = JSON.parse(fs.readFileSync(path.join(cd.dir, 'state', 'io.containerd.runtime.v2.task', CRI_NAMESPACE, podId, 'kata-ts-shim.json'), 'utf8')) as { shimPid?: number };
    return m.shimPid;
  } catch {
    return undefined;
  }
}

export async function lifecycleBench(n: number, cacheN: number, h: LifecycleHelpers): Promise<LifecycleResult> {
  for (const hd of ['runc', 'kata-ts'] as const) {
    const why = criUnavailable(hd);
    if (why) throw new Error(`${hd}: ${why}`);
  }
  const rounds = Number(process.env.LIFECYCLE_ROUNDS ?? 1);
  const cd = new CriContainerd();
  const cfgFile = path.join(cd.dir, 'kata-ts.toml');
  const res: LifecycleResult = { calls: { runc: {}, 'kata-ts': {} }, refillCpuMs: [], idleCpuMsPerS: [], blockWallMs: { runc: [], 'kata-ts': [] } };
  const push = (hd: string, k: string, v: number) => (res.calls[hd]![k] ??= []).push(v);
  try {
    // LIFECYCLE_NO_REFILL=1: a claim's refill (its delay comes through containerd's
    // environment) waits past the run, so the pods meet no refill: with a cache as
    // large as the pods, what refill contention costs.
    const noRefill = process.env.LIFECYCLE_NO_REFILL === '1';
    const delay0 = process.env.KATA_TS_VM_CACHE_DELAY_MS;
    if (noRefill) process.env.KATA_TS_VM_CACHE_DELAY_MS = '3600000';
    await cd.start({ kataExtraConfig: h.factoryConfig(cd.dir) });
    if (delay0 === undefined) delete process.env.KATA_TS_VM_CACHE_DELAY_MS;
    else process.env.KATA_TS_VM_CACHE_DELAY_MS = delay0;
    if (cacheN > 0) h.setCache(cfgFile, cacheN);
    h.kataCtl(cfgFile, ['factory', 'init']);
    let podNo = 0;
    for (let r = 0; r < rounds; r++) {
      for (const hd of ['kata-ts', 'runc'] as const) {
        if (hd === 'kata-ts' && cacheN > 0) await h.cacheReady(cfgFile, 180000, cacheN);
        const sampler = new CpuSampler([cd.socket, cd.runDir, cd.dir]);
        if (hd === 'kata-ts') {
          // What the ready entries cost while they wait (their guests idle under TCG).
          sampler.sample();
          const i0 = sampler.total();
          await new Promise((res) => setTimeout(res, 3000));
          sampler.sample();
          const idle = (sampler.total() - i0) / 3;
          res.idleCpuMsPerS.push(idle);
          process.stdout.write(`kata-ts: ${cacheN} ready entries idle: ${idle.toFixed(0)} ms CPU per s\n`);
          for (const v of sampler.seen.values()) v.first = v.ms;
          sampler.start();
        }
        const podCpu: number[] = [];
        const b0 = process.hrtime.bigint();
        for (let i = 0; i < n; i++) {
          const name = `lc-${hd}-${podNo++}`;
          const logDir = path.join(cd.dir, 'pods', name);
          fs.mkdirSync(logDir, { recursive: true });
          const config: PodSandboxConfig = { metadata: { name, uid: name, namespace: 'bench' }, hostname: name, log_directory: logDir, linux: {} };
          const t: Record<string, number> = {};
          const timed = async <T>(call: string, f: () => Promise<T>): Promise<T> => {
            const t0 = process.hrtime.bigint();
            const v = await f();
            t[call] = Number(process.hrtime.bigint() - t0) / 1e6;
            return v;
          };
          const p0 = process.hrtime.bigint();
          const before = new Map([...sampler.seen].map(([p, v]) => [p, v.ms]));
          const pod = await timed('RunPodSandbox', () => cd.cri.runPodSandbox(config, hd));
          const ctr = await timed('CreateContainer', () => cd.cri.createContainer(pod, {
            metadata: { name: 'c' }, image: { image: BUSYBOX }, command: ['sh', '-c', 'trap "exit 0" TERM; sleep 3600 & wait'], log_path: 'c.log', linux: {},
          }, config));
          await timed('StartContainer', () => cd.cri.startContainer(ctr));
          if (hd === 'kata-ts') {
            const shim = shimPidOf(cd, pod);
            const niced = shim ? nicedThreads(shim) : [];
            if (niced.length) process.stdout.write(`${name}: threads of the pod's shim and QEMU still nice'd after the claim: ${niced.join(', ')}\n`);
            push(hd, 'nice\'d threads', niced.length);
          }
          const ex = await timed('ExecSync', () => cd.cri.execSync(ctr, ['true'], 10));
          if (ex.exit_code !== 0) throw new Error(`${name}: ExecSync true exited ${ex.exit_code}`);
          await timed('StopContainer', () => cd.cri.stopContainer(ctr, 10));
          let shimMs = NaN;
          let qemuMs = NaN;
          if (hd === 'kata-ts') {
            sampler.sample();
            const shim = shimPidOf(cd, pod);
            if (shim) {
              const now = sampler.tree(shim);
              let childBefore = 0;
              for (const [p, v] of sampler.seen) if (v.ppid === shim) childBefore += before.get(p) ?? 0;
              shimMs = now.self - (before.get(shim) ?? 0);
              qemuMs = now.children - childBefore;
              podCpu.push(shimMs + qemuMs);
            }
          }
          await timed('StopPodSandbox', () => cd.cri.stopPodSandbox(pod));
          await timed('RemovePodSandbox', () => cd.cri.removePodSandbox(pod));
          const total = Number(process.hrtime.bigint() - p0) / 1e6;
          for (const c of CALLS) push(hd, c, t[c]!);
          push(hd, 'total', total);
          if (hd === 'kata-ts') {
            push(hd, 'shim CPU', shimMs);
            push(hd, 'QEMU CPU', qemuMs);
          }
          process.stdout.write(`${name}: ${CALLS.map((c) => `${c} ${t[c]!.toFixed(0)}`).join(', ')}; total ${total.toFixed(0)} ms${hd === 'kata-ts' ? `; CPU shim ${shimMs.toFixed(0)} QEMU ${qemuMs.toFixed(0)} ms` : ''}\n`);
        }
        res.blockWallMs[hd]!.push(Number(process.hrtime.bigint() - b0) / 1e6);
        if (hd === 'kata-ts') {
          sampler.sample();
          sampler.stop();
          const refill = sampler.total() - podCpu.reduce((a, b) => a + b, 0);
          res.refillCpuMs.push(refill);
          process.stdout.write(`kata-ts block ${r}: refill and other kata-ts CPU ${refill.toFixed(0)} ms over ${n} pods\n`);
        }
      }
    }
  } finally {
    if (cacheN > 0) h.setCache(cfgFile, cacheN);
    try { h.kataCtl(cfgFile, ['factory', 'destroy']); } catch { /* already gone */ }
    const left = await cd.stop();
    if (left.pods.length || left.shims.length || left.qemu.length || left.mounts.length || left.cni.length) process.stdout.write(`cleaned up leftovers: ${JSON.stringify(left)}\n`);
  }
  return res;
}

export function printLifecycle(r: LifecycleResult, n: number): void {
  process.stdout.write(`\n| call (median of ${n} × rounds) | runc ms | kata-ts ms | × runc | kata-ts range |\n|---|---|---|---|---|\n`);
  const keys = [...CALLS, 'total', 'shim CPU', 'QEMU CPU'];
  for (const k of keys) {
    const a = r.calls.runc![k];
    const b = r.calls['kata-ts']![k]?.filter((v) => Number.isFinite(v));
    if (!b?.length) continue;
    const mb = median(b);
    const ma = a?.length ? median(a) : NaN;
    process.stdout.write(`| ${k} | ${Number.isFinite(ma) ? ma.toFixed(0) : ''} | ${mb.toFixed(0)} | ${Number.isFinite(ma) ? (mb / ma).toFixed(1) : ''} | ${Math.min(...b).toFixed(0)}–${Math.max(...b).toFixed(0)} |\n`);
  }
  const per = (hd: string) => r.blockWallMs[hd]!.map((w) => (w / n).toFixed(0)).join(', ');
  process.stdout.write(`\nwall per pod (block wall / ${n}): runc ${per('runc')} ms; kata-ts ${per('kata-ts')} ms; refill and other kata-ts CPU per block: ${r.refillCpuMs.map((v) => v.toFixed(0)).join(', ')} ms; ready entries idle: ${r.idleCpuMsPerS.map((v) => v.toFixed(0)).join(', ')} ms CPU per s\n`);
}
