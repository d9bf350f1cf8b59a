/**
 * The pre-started VM cache's directory (`[factory] vm_cache_endpoint`,
 * default `<run_dir>/vm-cache`): who holds which slot, which cached VMs are
 * ready to be claimed, and what each was made from. Files only; the
 * processes are vm-cache-fill.ts's (start, stop) and the claim protocol is
 * vm-cache-protocol.ts.
 *
 * Per slot i (0 ≤ i < vm_cache_number):
 *   slot-<i>.pid    the pre-start shim holding the slot: created with O_EXCL
 *                   (one holder per slot, whoever refills it), from the
 *                   holder's start until it is claimed or exits. A slot
 *                   with a pid file and no socket is "starting".
 *   slot-<i>.json   what its VM was made from (CacheEntryMeta), written
 *                   before the socket appears.
 *   slot-<i>.sock   its claim socket, bound only once its VM answered Check.
 *   slot-<i>.log    its log lines before a claim (afterwards they go to
 *                   containerd's log fifo of the pod it serves).
 *   vm-<slot>-<hex>/ its VM's directory (QEMU's sockets, console log),
 *                   removed when the process that owns the VM exits.
 * A claimed process removes its slot's .pid/.json/.sock at once, so the slot
 * can be refilled while the claimed VM runs its pod.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Config } from '../runtime/config';

export interface ConfigIdentity {
  /** The configuration file ('' for built-in defaults). */
  path: string;
  /** sha256 of its content ('' for built-in defaults). */
  sha256: string;
}

export interface CacheEntryMeta {
  schemaVersion: 1;
  slot: number;
  /** The pre-started shim's pid. */
  pid: number;
  qemuPid: number;
  config: ConfigIdentity;
  /** Started with the shim's -debug (the guest's kernel command line differs). */
  debug: boolean;
  /** The template it is a clone of (a rebuilt template makes it stale). */
  template: { key: string; createdAt: string };
  startedAt: string;
  readyAt: string;
  vmDir: string;
}

export type SlotState = { slot: number; state: 'free' } | { slot: number; state: 'starting'; pid: number } | { slot: number; state: 'ready'; pid: number; meta: CacheEntryMeta };

/** The cache directory of a configuration. */
export function cacheDir(cfg: Config): string {
  return cfg.factory.vm_cache_endpoint || path.join(cfg.runtime.run_dir, 'vm-cache');
}

/** The configuration a process runs with, as a cached VM must match it. */
export function configIdentity(cfg: Config): ConfigIdentity {
  if (!cfg.source) return { path: '', sha256: '' };
  let text: Buffer;
  try {
    text = fs.readFileSync(cfg.source);
  } catch {
    return { path: path.resolve(cfg.source), sha256: 'unreadable' };
  }
  return { path: path.resolve(cfg.source), sha256: crypto.createHash('sha256').update(text).digest('hex') };
}

export function slotFile(dir: string, slot: number, ext: 'pid' | 'json' | 'sock' | 'log'): string {
  return path.join(dir, `slot-${slot}.${ext}`);
}

export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Whether `pid` still is a pre-start shim (not a reused pid, not a claimed one that exec'd nothing else: its argv stays). */
export function isPrestartProcess(pid: number): boolean {
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv.some((a) => a.endsWith('containerd-shim-kata-ts-v2')) && argv.includes('prestart');
  } catch {
    return false;
  }
}

function readPid(file: string): number {
  try {
    return Number(fs.readFileSync(file, 'utf8').trim()) || 0;
  } catch {
    return 0;
  }
}

export function readMeta(dir: string, slot: number): CacheEntryMeta | undefined {
  try {
    const m = JSON.parse(fs.readFileSync(slotFile(dir, slot, 'json'), 'utf8')) as CacheEntryMeta;
    return m && m.schemaVersion === 1 && m.slot === slot && Number.isInteger(m.pid) ? m : undefined;
  } catch {
    return undefined;
  }
}

/** Removes a slot's registration files (not its log, which says why it went). */
export function clearSlot(dir: string, slot: number): void {
  for (const ext of ['sock', 'json', 'pid'] as const) fs.rmSync(slotFile(dir, slot, ext), { force: true });
}

/**
 * Takes slot `slot` for process `pid`: true when it is now ours. A holder
 * that died (its pid gone) is cleared first; a live holder keeps it.
 */
export function acquireSlot(dir: string, slot: number, pid = process.pid): boolean {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(slotFile(dir, slot, 'pid'), String(pid), { flag: 'wx', mode: 0o600 });
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = readPid(slotFile(dir, slot, 'pid'));
      // An empty file is a holder between open and write: alive.
      if (holder === 0 || pidAlive(holder)) return false;
      clearSlot(dir, slot);
    }
  }
  return false;
}

/** Gives up slot `slot` if `pid` holds it (a claim, an exit). */
export function releaseSlot(dir: string, slot: number, pid = process.pid): void {
  if (readPid(slotFile(dir, slot, 'pid')) === pid) clearSlot(dir, slot);
}

/** Slot numbers present in the directory (any, also beyond a lowered vm_cache_number). */
export function slotsIn(dir: string): number[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const out = new Set<number>();
  for (const n of names) {
    const m = /^slot-(\d+)\.(pid|json|sock)$/.exec(n);
    if (m) out.add(Number(m[1]));
  }
  return [...out].sort((a, b) => a - b);
}

/**
 * The state of slots 0..n-1 and of any other slot present; registrations of
 * dead holders are removed on the way (a stale entry never counts).
 */
export function listSlots(dir: string, n: number): SlotState[] {
  const all = new Set<number>([...Array.from({ length: n }, (_, i) => i), ...slotsIn(dir)]);
  const out: SlotState[] = [];
  for (const slot of [...all].sort((a, b) => a - b)) {
    const pid = readPid(slotFile(dir, slot, 'pid'));
    const hasPidFile = fs.existsSync(slotFile(dir, slot, 'pid'));
    if (hasPidFile && pid !== 0 && !pidAlive(pid)) {
      clearSlot(dir, slot);
      if (slot < n) out.push({ slot, state: 'free' });
      continue;
    }
    if (!hasPidFile) {
      // A socket or metadata without a holder: left by a crash.
      if (fs.existsSync(slotFile(dir, slot, 'sock')) || fs.existsSync(slotFile(dir, slot, 'json'))) clearSlot(dir, slot);
      if (slot < n) out.push({ slot, state: 'free' });
      continue;
    }
    const meta = readMeta(dir, slot);
    if (meta && meta.pid === pid && fs.existsSync(slotFile(dir, slot, 'sock'))) out.push({ slot, state: 'ready', pid, meta });
    else out.push({ slot, state: 'starting', pid });
  }
  return out;
}

/** VM directories of cached VMs whose owner is gone (left by a kill -9). */
export function orphanVmDirs(dir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const n of names) {
    if (!/^vm-\d+-[0-9a-f]+$/.test(n)) continue;
    const owner = readPid(path.join(dir, n, 'owner.pid'));
    if (!pidAlive(owner)) out.push(path.join(dir, n));
  }
  return out;
}
