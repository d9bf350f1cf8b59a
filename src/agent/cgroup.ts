/**
 * A container's cgroup v2 directory in the guest (crun puts each container
 * at /sys/fs/cgroup/kata-ts/<id>, bundle.ts): freezer (cgroup.freeze, then
 * cgroup.events "frozen 1"/"frozen 0"), resource updates (OCI LinuxResources
 * onto memory.max, cpu.max, cpu.weight, pids.max, ...) and OOM kill counts
 * (memory.events). The root is a parameter so unit tests use a plain
 * directory.
 */
import * as fs from 'node:fs/promises';
import { constants, watch, type FSWatcher } from 'node:fs';
import * as path from 'node:path';
import { AgentError } from './container';

export const DEFAULT_CGROUP_ROOT = '/sys/fs/cgroup/kata-ts';

/** OCI runtime-spec LinuxResources, the parts cgroup v2 applies here. */
export interface LinuxResources {
  memory?: { limit?: number; reservation?: number; swap?: number };
  cpu?: { shares?: number; quota?: number; period?: number; cpus?: string; mems?: string };
  pids?: { limit?: number };
  unified?: Record<string, string>;
}

/** cgroup v1 cpu.shares [2, 262144] → cgroup v2 cpu.weight [1, 10000] (the runc/crun formula). */
export function sharesToWeight(shares: number): number {
  if (shares <= 0) return 0;
  return Math.max(1, Math.min(10000, 1 + Math.floor(((shares - 2) * 9999) / 262142)));
}

/**
 * The file writes that apply `r`, in order. `currentCpuMax` is today's
 * cpu.max ("quota period"), for a quota or period given alone.
 */
export function resourceWrites(r: LinuxResources, currentCpuMax = 'max 100000'): [string, string][] {
  const w: [string, string][] = [];
  const lim = (v: number) => (v > 0 ? String(v) : 'max');
  const m = r.memory;
  if (m) {
    if (m.reservation !== undefined && m.reservation !== null) w.push(['memory.low', String(Math.max(0, m.reservation))]);
    if (m.limit !== undefined && m.limit !== null) w.push(['memory.max', lim(m.limit)]);
    // OCI swap is memory + swap; cgroup v2 swap.max is swap alone.
    if (m.swap !== undefined && m.swap !== null && m.limit !== undefined) {
      w.push(['memory.swap.max', m.swap > 0 && m.limit > 0 ? String(Math.max(0, m.swap - m.limit)) : 'max']);
    }
  }
  const c = r.cpu;
  if (c) {
    if (c.shares) w.push(['cpu.weight', String(sharesToWeight(c.shares))]);
    if ((c.quota !== undefined && c.quota !== null) || c.period) {
      const [q0, p0] = currentCpuMax.trim().split(/\s+/);
      const quota = c.quota !== undefined && c.quota !== null ? (c.quota > 0 ? String(c.quota) : 'max') : (q0 ?? 'max');
      const period = c.period ? String(c.period) : (p0 ?? '100000');
      w.push(['cpu.max', `${quota} ${period}`]);
    }
    if (c.cpus) w.push(['cpuset.cpus', c.cpus]);
    if (c.mems) w.push(['cpuset.mems', c.mems]);
  }
  if (r.pids && r.pids.limit !== undefined && r.pids.limit !== null) w.push(['pids.max', lim(r.pids.limit)]);
  for (const [k, v] of Object.entries(r.unified ?? {})) {
    if (!/^[a-z0-9_]+\.[a-z0-9_.]+$/.test(k)) throw new AgentError('invalid', `bad unified cgroup key "${k}"`);
    w.push([k, v]);
  }
  return w;
}

export function parseKeyed(txt: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of txt.split('\n')) {
    const [k, v] = l.trim().split(/\s+/);
    if (k && v !== undefined) out[k] = Number(v);
  }
  return out;
}

export class ContainerCgroup {
  readonly dir: string;

  constructor(root: string, readonly id: string) {
    this.dir = path.join(root, id);
  }

  read(file: string): Promise<string> {
    return fs.readFile(path.join(this.dir, file), 'utf8').catch(() => '');
  }

  private async write(file: string, value: string): Promise<void> {
    try {
      // Never create: a missing file is a missing controller (or cgroup).
      await fs.writeFile(path.join(this.dir, file), value, { flag: constants.O_WRONLY | constants.O_TRUNC });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const code = e.code === 'ENOENT' ? 'failed-precondition' : e.code === 'EINVAL' || e.code === 'EBUSY' ? 'invalid' : 'internal';
      throw new AgentError(code, `cgroup ${this.id}: ${file} = ${value}: ${e.message}`);
    }
  }

  /** Freeze (true) or thaw, returning once cgroup.events reports it. */
  async freeze(on: boolean, timeoutMs = 10000): Promise<void> {
    await this.write('cgroup.freeze', on ? '1' : '0');
    const want = on ? 1 : 0;
    const deadline = Date.now() + timeoutMs;
    for (let delay = 2; ; delay = Math.min(delay * 2, 50)) {
      if (parseKeyed(await this.read('cgroup.events')).frozen === want) return;
      if (Date.now() > deadline) throw new AgentError('internal', `cgroup ${this.id}: not ${on ? 'frozen' : 'thawed'} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  async update(r: LinuxResources): Promise<void> {
    const writes = resourceWrites(r, await this.read('cpu.max'));
    for (const [f, v] of writes) await this.write(f, v);
  }

  async oomKills(): Promise<number> {
    return parseKeyed(await this.read('memory.events')).oom_kill ?? 0;
  }

  /**
   * Calls `onOom` each time memory.events' oom_kill goes up (inotify on the
   * file, which cgroup v2 signals on change, plus a slow poll as a fallback).
   */
  watchOom(onOom: () => void, pollMs = 2000): () => void {
    let last = -1;
    let stopped = false;
    const check = async () => {
      const n = await this.oomKills();
      if (stopped) return;
      if (last >= 0 && n > last) onOom();
      last = Math.max(last, n);
    };
    void check();
    let w: FSWatcher | undefined;
    try {
      w = watch(path.join(this.dir, 'memory.events'), () => void check());
      w.on('error', () => undefined);
    } catch {
      /* no file (yet) / no inotify: the poll still runs */
    }
    const t = setInterval(() => void check(), pollMs);
    t.unref();
    return () => {
      stopped = true;
      clearInterval(t);
      w?.close();
    };
  }
}
