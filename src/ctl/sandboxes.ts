/**
 * `kata-ctl list` and `kata-ctl cleanup` over the persisted sandbox state
 * (src/runtime/state.ts).
 *
 * A sandbox is live while its owner (the kata-ts CLI or shim that booted it)
 * is: the owner pid exists and, where recorded, has the same start time — a
 * recycled pid is not an owner. Otherwise it is stale: the owner crashed
 * before it could tear down. Cleanup kills a stale sandbox's VMM only after
 * checking that /proc/<pid>/cmdline names that sandbox's directory (QEMU's
 * -pidfile/-qmp paths do), so a pid that was reused by anything else is
 * never signalled; then it removes the directory. Live sandboxes are never
 * touched.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { listStates, pidAlive, processStartTime, type SandboxState } from '../runtime/state';
import { removeTreeSafely } from '../runtime/volumes';

export type Liveness = 'running' | 'stale';

export interface SandboxRow {
  id: string;
  /** running: owner alive; stale: owner gone (or no readable state). */
  status: Liveness;
  /** Lifecycle phase the owner last recorded ("unknown" without state). */
  phase: string;
  hypervisor: string;
  accel: string;
  ownerPid: number;
  vmPids: number[];
  vcpus: number;
  memoryMiB: number;
  createdAt: string | null;
  uptimeSeconds: number | null;
  containers: number;
  containerIds: string[];
  dir: string;
  /** Why it is stale (empty when running). */
  reason: string;
}

/** Whether the recorded owner still runs (same pid and, when known, same start time). */
export function ownerAlive(st: SandboxState): boolean {
  if (!pidAlive(st.ownerPid)) return false;
  if (st.ownerStartTime === undefined) return true;
  const now = processStartTime(st.ownerPid);
  return now === undefined || now === st.ownerStartTime;
}

/** A directory without state is only judged stale after this long (it may be being created). */
const NO_STATE_GRACE_MS = 30_000;

export function listSandboxes(runDir: string, now = Date.now()): SandboxRow[] {
  const rows: SandboxRow[] = [];
  for (const { dir, state } of listStates(runDir)) {
    const id = path.basename(dir);
    if (!state) {
      let age = Infinity;
      try {
        age = now - fs.statSync(dir).mtimeMs;
      } catch { /* vanished */ continue; }
      if (age < NO_STATE_GRACE_MS) continue;
      rows.push({ id, status: 'stale', phase: 'unknown', hypervisor: '', accel: '', ownerPid: 0, vmPids: [], vcpus: 0, memoryMiB: 0,
        createdAt: null, uptimeSeconds: null, containers: 0, containerIds: [], dir, reason: 'no readable state.json' });
      continue;
    }
    const alive = ownerAlive(state);
    const created = Date.parse(state.createdAt);
    rows.push({
      id: state.id || id, status: alive ? 'running' : 'stale', phase: state.phase, hypervisor: state.hypervisor, accel: state.accel,
      ownerPid: state.ownerPid, vmPids: state.vmPids ?? [], vcpus: state.vcpus, memoryMiB: state.memoryMiB,
      createdAt: state.createdAt ?? null, uptimeSeconds: Number.isFinite(created) ? Math.max(0, Math.round((now - created) / 1000)) : null,
      containers: state.containers?.length ?? 0, containerIds: (state.containers ?? []).map((c) => c.id), dir,
      reason: alive ? '' : `owner pid ${state.ownerPid} is gone`,
    });
  }
  return rows.sort((a, b) => a.id.localeCompare(b.id));
}

export function formatUptime(s: number | null): string {
  if (s === null) return '-';
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`;
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
}

export function listText(rows: SandboxRow[]): string {
  const head = ['ID', 'STATUS', 'HYPERVISOR', 'PIDS', 'VCPUS', 'MEMORY', 'UPTIME', 'CONTAINERS'];
  const body = rows.map((r) => [
    r.id, r.status === 'stale' ? 'stale' : r.phase, r.hypervisor ? `${r.hypervisor}/${r.accel || '-'}` : '-',
    [r.ownerPid, ...r.vmPids.filter((p) => p !== r.ownerPid)].filter(Boolean).join(',') || '-',
    String(r.vcpus || '-'), r.memoryMiB ? `${r.memoryMiB}MiB` : '-', formatUptime(r.uptimeSeconds), String(r.containers),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  const stale = rows.filter((r) => r.status === 'stale').length;
  return [line(head), ...body.map(line)].join('\n') + '\n' + (stale ? `${stale} stale sandbox(es): run \`kata-ctl cleanup\` to remove them\n` : '');
}

export interface CleanupEntry {
  id: string;
  dir: string;
  reason: string;
  /** VMM pids signalled (they named this sandbox's directory). */
  killed: number[];
  /** Pids left alone, and why. */
  skipped: { pid: number; why: string }[];
  removed: boolean;
}

function cmdline(pid: number): string | undefined {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return undefined;
  }
}

async function waitGone(pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!pidAlive(pid)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return !pidAlive(pid);
}

/** Remove every stale sandbox under runDir (dryRun: only report what would be done). */
export async function cleanupStale(runDir: string, opts: { dryRun?: boolean } = {}): Promise<{ removed: CleanupEntry[]; kept: string[] }> {
  const removed: CleanupEntry[] = [];
  const kept: string[] = [];
  for (const r of listSandboxes(runDir)) {
    if (r.status !== 'stale') {
      kept.push(r.id);
      continue;
    }
    const e: CleanupEntry = { id: r.id, dir: r.dir, reason: r.reason, killed: [], skipped: [], removed: false };
    for (const pid of r.vmPids) {
      if (pid <= 1 || pid === process.pid) {
        e.skipped.push({ pid, why: 'not a VMM pid' });
        continue;
      }
      const cl = cmdline(pid);
      if (cl === undefined) {
        e.skipped.push({ pid, why: 'not running' });
        continue;
      }
      if (!cl.includes(r.dir)) {
        e.skipped.push({ pid, why: `its command line does not name ${r.dir} (pid reused)` });
        continue;
      }
      e.killed.push(pid);
      if (opts.dryRun) continue;
      try {
        process.kill(pid, 'SIGTERM');
      } catch { /* already gone */ }
      if (!(await waitGone(pid, 3000))) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch { /* gone */ }
        await waitGone(pid, 3000);
      }
    }
    if (!opts.dryRun) {
      // Unmounts the sandbox's volumes first; never deletes through a mount.
      removeTreeSafely(r.dir);
      e.removed = !fs.existsSync(r.dir);
    }
    removed.push(e);
  }
  return { removed, kept };
}
