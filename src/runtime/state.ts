/**
 * Persisted sandbox state: <run_dir>/sandboxes/<id>/state.json, written
 * atomically (write + rename) at every lifecycle change, so `kata-ctl list`
 * sees running sandboxes and `kata-ctl cleanup` can recognise the leftovers
 * of a runtime that crashed (owner pid gone) and kill their VMM.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export type SandboxPhase = 'creating' | 'running' | 'paused' | 'stopping' | 'stopped';

export interface SandboxState {
  id: string;
  phase: SandboxPhase;
  hypervisor: 'qemu' | 'builtin';
  accel: string;
  /** The runtime process (CLI or shim) that owns the VM. */
  ownerPid: number;
  /**
   * The owner's start time (clock ticks after boot, /proc/<pid>/stat field
   * 22), so a recycled pid is not mistaken for a live owner.
   */
  ownerStartTime?: number;
  /** VMM pids (QEMU). */
  vmPids: number[];
  vcpus: number;
  memoryMiB: number;
  createdAt: string;
  containers: { id: string; state: string; pid: number; disk?: string }[];
}

export function sandboxesDir(runDir: string): string {
  return path.join(runDir, 'sandboxes');
}

export function writeState(dir: string, st: SandboxState): void {
  const tmp = path.join(dir, `.state.json.${process.pid}`);
  fs.writeFileSync(tmp, JSON.stringify(st, null, 2));
  fs.renameSync(tmp, path.join(dir, 'state.json'));
}

export function readState(dir: string): SandboxState | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, 'state.json'), 'utf8')) as SandboxState;
  } catch {
    return undefined;
  }
}

export function listStates(runDir: string): { dir: string; state: SandboxState | undefined }[] {
  const d = sandboxesDir(runDir);
  if (!fs.existsSync(d)) return [];
  return fs.readdirSync(d).map((id) => ({ dir: path.join(d, id), state: readState(path.join(d, id)) }));
}

/** Start time of a process in clock ticks after boot, or undefined when it does not exist. */
export function processStartTime(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may hold spaces and parentheses: split after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(rest[19]);
  } catch {
    return undefined;
  }
}

export function pidAlive(pid: number): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
