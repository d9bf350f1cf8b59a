/**
 * `kata-ctl metrics`: per-sandbox metrics in Prometheus text format, like
 * kata-monitor. Host side from /proc (CPU time, PSS, RSS, threads of the
 * owning runtime and of the VMM); guest side from the agent through the
 * sandbox's ctl channel (guest memory, load, CPU, and per-container cgroup
 * CPU/memory/pids/IO). A sandbox whose agent cannot be reached still gets
 * its host metrics, with kata_guest_up 0.
 */
import * as fs from 'node:fs';
import { dialSandboxAgent } from '../runtime/ctl-channel';
import { errorMessage } from '../common/errors';
import { Registry } from './prometheus';
import { memoryMetrics } from './memory-metrics';
import { listSandboxes, type SandboxRow } from './sandboxes';

const CLK_TCK = 100;

export interface ProcStats {
  cpuSeconds: number;
  pssBytes: number;
  rssBytes: number;
  threads: number;
}

/** CPU (utime+stime), PSS/RSS (smaps_rollup) and thread count of a pid, or undefined when it is gone. */
export function procStats(pid: number, proc = '/proc'): ProcStats | undefined {
  try {
    const stat = fs.readFileSync(`${proc}/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields after comm: state(3) ... utime(14) stime(15) ... num_threads(20)
    const cpuSeconds = (Number(f[11]) + Number(f[12])) / CLK_TCK;
    const threads = Number(f[17]);
    let pss = 0;
    let rss = 0;
    try {
      const roll = fs.readFileSync(`${proc}/${pid}/smaps_rollup`, 'utf8');
      pss = Number(/^Pss:\s+(\d+) kB/m.exec(roll)?.[1] ?? 0) * 1024;
      rss = Number(/^Rss:\s+(\d+) kB/m.exec(roll)?.[1] ?? 0) * 1024;
    } catch { /* no permission: leave 0 */ }
    return { cpuSeconds, pssBytes: pss, rssBytes: rss, threads };
  } catch {
    return undefined;
  }
}

function hostMetrics(reg: Registry, r: SandboxRow): void {
  const procs = new Map<number, string>();
  if (r.ownerPid) procs.set(r.ownerPid, 'runtime');
  for (const p of r.vmPids) procs.set(p, procs.has(p) ? 'runtime+vmm' : 'vmm');
  for (const [pid, role] of procs) {
    const s = procStats(pid);
    if (!s) continue;
    const l = { sandbox_id: r.id, role, pid: String(pid) };
    reg.add('kata_host_process_cpu_seconds_total', 'counter', 'CPU time (user+system) of a host process of the sandbox', l, s.cpuSeconds);
    reg.add('kata_host_process_pss_bytes', 'gauge', 'proportional set size of a host process of the sandbox', l, s.pssBytes);
    reg.add('kata_host_process_rss_bytes', 'gauge', 'resident set size of a host process of the sandbox', l, s.rssBytes);
    reg.add('kata_host_process_threads', 'gauge', 'threads of a host process of the sandbox', l, s.threads);
  }
}

async function guestMetrics(reg: Registry, r: SandboxRow, timeoutMs: number): Promise<string | undefined> {
  const agent = dialSandboxAgent(r.dir);
  const up = (v: number) => reg.add('kata_guest_up', 'gauge', 'whether the guest agent answered this scrape', { sandbox_id: r.id }, v);
  if (!agent) {
    up(0);
    return 'no ctl channel';
  }
  try {
    const g = await agent.guestStats(timeoutMs);
    up(1);
    const l = { sandbox_id: r.id };
    reg.add('kata_guest_memory_total_bytes', 'gauge', 'guest MemTotal', l, g.mem_total_bytes);
    reg.add('kata_guest_memory_available_bytes', 'gauge', 'guest MemAvailable', l, g.mem_available_bytes);
    reg.add('kata_guest_memory_free_bytes', 'gauge', 'guest MemFree', l, g.mem_free_bytes);
    for (const [period, v] of [['1m', g.load1], ['5m', g.load5], ['15m', g.load15]] as const) {
      reg.add('kata_guest_load_average', 'gauge', 'guest load average', { ...l, period }, v);
    }
    for (const [mode, v] of [['user', g.cpu_user_ms], ['system', g.cpu_system_ms], ['idle', g.cpu_idle_ms]] as const) {
      reg.add('kata_guest_cpu_seconds_total', 'counter', 'guest CPU time summed over vCPUs', { ...l, mode }, v / 1000);
    }
    reg.add('kata_guest_uptime_seconds', 'gauge', 'guest uptime', l, g.uptime_ms / 1000);
    reg.add('kata_guest_processes', 'gauge', 'processes (scheduling entities) in the guest', l, g.processes);
    for (const id of r.containerIds) {
      const s = await agent.statsContainer(id).catch(() => undefined);
      if (!s) continue;
      const c = { sandbox_id: r.id, container_id: id };
      reg.add('kata_container_cpu_seconds_total', 'counter', 'container CPU time (guest cgroup)', { ...c, mode: 'user' }, s.cpu_user_usec / 1e6);
      reg.add('kata_container_cpu_seconds_total', 'counter', 'container CPU time (guest cgroup)', { ...c, mode: 'system' }, s.cpu_system_usec / 1e6);
      reg.add('kata_container_memory_usage_bytes', 'gauge', 'container memory usage (guest cgroup)', c, s.memory_usage_bytes);
      reg.add('kata_container_memory_limit_bytes', 'gauge', 'container memory limit, 0 = none', c, s.memory_limit_bytes);
      reg.add('kata_container_pids', 'gauge', 'processes in the container', c, s.pids_current);
      reg.add('kata_container_io_bytes_total', 'counter', 'container block I/O', { ...c, direction: 'read' }, s.io_read_bytes);
      reg.add('kata_container_io_bytes_total', 'counter', 'container block I/O', { ...c, direction: 'write' }, s.io_write_bytes);
    }
    return undefined;
  } catch (err) {
    up(0);
    return errorMessage(err);
  } finally {
    agent.close();
  }
}

/** One scrape: every sandbox under runDir, or only `only`. */
export async function collectMetrics(runDir: string, opts: { only?: string; timeoutMs?: number } = {}): Promise<{ text: string; errors: string[] }> {
  const reg = new Registry();
  const errors: string[] = [];
  const rows = listSandboxes(runDir).filter((r) => !opts.only || r.id === opts.only);
  if (opts.only && rows.length === 0) throw new Error(`no sandbox "${opts.only}" under ${runDir}`);
  for (const status of ['running', 'stale'] as const) {
    reg.add('kata_sandboxes', 'gauge', 'sandboxes by status', { status }, rows.filter((r) => r.status === status).length);
  }
  for (const r of rows) {
    const l = { sandbox_id: r.id };
    reg.add('kata_sandbox_info', 'gauge', 'sandbox description (value is always 1)', { ...l, hypervisor: r.hypervisor, accel: r.accel, phase: r.phase, status: r.status }, 1);
    reg.add('kata_sandbox_vcpus', 'gauge', 'configured vCPUs', l, r.vcpus);
    reg.add('kata_sandbox_memory_bytes', 'gauge', 'configured guest memory', l, r.memoryMiB * 1048576);
    reg.add('kata_sandbox_containers', 'gauge', 'containers in the sandbox', l, r.containers);
    if (r.uptimeSeconds !== null) reg.add('kata_sandbox_uptime_seconds', 'gauge', 'time since the sandbox was created', l, r.uptimeSeconds);
  }
  for (const r of rows) {
    hostMetrics(reg, r);
    if (r.status === 'running') {
      const err = await guestMetrics(reg, r, opts.timeoutMs ?? 5000);
      if (err) errors.push(`${r.id}: ${err}`);
    }
  }
  // Page scanner (per sandbox and across them) and host KSM: src/ctl/memory-metrics.ts.
  for (const e of await memoryMetrics(reg, rows)) errors.push(`memory: ${e}`);
  return { text: reg.render(), errors };
}
