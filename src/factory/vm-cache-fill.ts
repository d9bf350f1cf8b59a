/**
 * Filling, emptying and reporting the pre-started VM cache: the processes.
 * A cached VM is a pre-started shim (`containerd-shim-kata-ts-v2 prestart`,
 * src/shim/vm-cache-serve.ts) holding one slot; `kata-ctl factory init`
 * starts one per free slot, each claim starts one for the slot it freed (no
 * cache daemon: the claiming `start` refills), `kata-ctl factory destroy`
 * stops them. The slot files (vm-cache-store.ts) keep the count at
 * vm_cache_number whoever refills: a second pre-start for a taken slot exits.
 *
 * A refill would start while the claimed pod starts, on the same CPUs: it
 * waits first (KATA_TS_VM_CACHE_DELAY_MS, default 2000 for a claim's
 * refill: a pod from the cache is up by then on a quiet machine) and runs
 * nice'd (KATA_TS_VM_CACHE_NICE, default 10; its QEMU inherits it, and a
 * claimed shim goes back to 0). README Performance, "VM cache", has the
 * measurements.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import type { Config } from '../runtime/config';
import { OWNER_NODE_FLAGS, ownerEnv } from '../runtime/owner-flags';
import { cacheDir, clearSlot, isPrestartProcess, listSlots, orphanVmDirs, pidAlive, slotFile, slotsIn, type SlotState } from './vm-cache-store';

/** bin/containerd-shim-kata-ts-v2 of this installation (dist/src/factory → bin). */
export function shimLauncher(): string {
  return path.resolve(__dirname, '..', '..', '..', 'bin', 'containerd-shim-kata-ts-v2');
}

export interface PrestartOptions {
  /** The shim's launcher script. */
  launcher?: string;
  /** The configuration file the pre-started shim loads ('' for defaults). */
  configPath: string;
  /** As the shim's -debug (a cached VM serves only shims started alike). */
  debug: boolean;
  /** Niceness of the pre-start process and its QEMU until claimed. */
  nice?: number;
  /** Wait this long before cloning. */
  delayMs?: number;
  env?: NodeJS.ProcessEnv;
}

export const DEFAULT_REFILL_NICE = 10;
export const DEFAULT_REFILL_DELAY_MS = 2000;

/** Starts one detached pre-start shim for `slot`; returns its pid. */
export function spawnPrestart(slot: number, o: PrestartOptions): number {
  const env: NodeJS.ProcessEnv = ownerEnv({ ...(o.env ?? process.env), UV_THREADPOOL_SIZE: (o.env ?? process.env).UV_THREADPOOL_SIZE ?? '32', KATA_TS_VM_CACHE_SLOT: String(slot) });
  if (o.configPath) env.KATA_TS_CONFIG = o.configPath;
  else delete env.KATA_TS_CONFIG;
  env.KATA_TS_VM_CACHE_NICE = String(o.nice ?? env.KATA_TS_VM_CACHE_NICE ?? DEFAULT_REFILL_NICE);
  env.KATA_TS_VM_CACHE_DELAY_MS = String(o.delayMs ?? env.KATA_TS_VM_CACHE_DELAY_MS ?? 0);
  const child = spawn(process.execPath, [...OWNER_NODE_FLAGS, o.launcher ?? shimLauncher(), ...(o.debug ? ['-debug'] : []), 'prestart'], {
    cwd: '/', detached: true, stdio: 'ignore', env,
  });
  child.on('error', () => undefined);
  child.unref();
  return child.pid ?? 0;
}

/** Starts a pre-start shim for every free slot of the cache; returns the slots. */
export function fillCache(cfg: Config, o: PrestartOptions): number[] {
  const n = cfg.factory.vm_cache_number;
  if (n <= 0) return [];
  const dir = cacheDir(cfg);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const free = listSlots(dir, n).filter((s) => s.slot < n && s.state === 'free').map((s) => s.slot);
  for (const slot of free) spawnPrestart(slot, o);
  return free;
}

export interface CacheStatus {
  number: number;
  dir: string;
  ready: { slot: number; pid: number; qemuPid: number; readyAt: string; templateKey: string }[];
  starting: { slot: number; pid: number }[];
}

export function cacheStatus(cfg: Config): CacheStatus {
  const dir = cacheDir(cfg);
  const slots = listSlots(dir, cfg.factory.vm_cache_number);
  return {
    number: cfg.factory.vm_cache_number, dir,
    ready: slots.flatMap((s) => (s.state === 'ready' ? [{ slot: s.slot, pid: s.pid, qemuPid: s.meta.qemuPid, readyAt: s.meta.readyAt, templateKey: s.meta.template.key }] : [])),
    starting: slots.flatMap((s) => (s.state === 'starting' ? [{ slot: s.slot, pid: s.pid }] : [])),
  };
}

/** Waits until every slot is ready or its pre-start gave up; returns the last states. */
export async function waitCacheSettled(cfg: Config, timeoutMs: number, spawned: number[]): Promise<SlotState[]> {
  const dir = cacheDir(cfg);
  const end = Date.now() + timeoutMs;
  // A spawned pre-start takes its slot within its module load: give it that long to appear.
  const graceEnd = Date.now() + 15000;
  for (;;) {
    const slots = listSlots(dir, cfg.factory.vm_cache_number);
    const pending = slots.filter((s) => s.state === 'starting' || (s.state === 'free' && spawned.includes(s.slot) && Date.now() < graceEnd));
    if (!pending.length || Date.now() >= end) return slots;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Stops every cached (unclaimed) VM in the cache directory and removes the
 * registrations, logs and leftover VM directories; the directory too when
 * empty. Claimed shims are pods now and are left alone. Returns the pids stopped.
 */
export async function stopCache(dir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const slot of slotsIn(dir)) {
    let pid = 0;
    try {
      pid = Number(fs.readFileSync(slotFile(dir, slot, 'pid'), 'utf8').trim()) || 0;
    } catch { /* no holder */ }
    if (pid && pidAlive(pid) && isPrestartProcess(pid)) {
      try {
        process.kill(pid, 'SIGTERM');
        pids.push(pid);
      } catch { /* gone */ }
    }
  }
  const end = Date.now() + 15000;
  while (pids.some(pidAlive) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  for (const pid of pids.filter(pidAlive)) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
  for (const slot of slotsIn(dir)) clearSlot(dir, slot);
  let names: string[] = [];
  try { names = fs.readdirSync(dir); } catch { /* none */ }
  for (const n of names) if (/^slot-\d+\.log$/.test(n)) fs.rmSync(path.join(dir, n), { force: true });
  for (const d of orphanVmDirs(dir)) fs.rmSync(d, { recursive: true, force: true });
  try { fs.rmdirSync(dir); } catch { /* claimed VMs' directories, or gone */ }
  return pids;
}

/** How long a refill waits after a claim: KATA_TS_VM_CACHE_DELAY_MS, else DEFAULT_REFILL_DELAY_MS. */
export function refillDelayMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.KATA_TS_VM_CACHE_DELAY_MS;
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : DEFAULT_REFILL_DELAY_MS;
}

/**
 * After a claim (taken or not): refills the free slots in the background,
 * nice'd and after refillDelayMs() (or `delayMs`: a caller that waited
 * already), when a VM template exists to clone. Returns the slots.
 */
export function refillAfterClaim(cfg: Config, o: { launcher?: string; configPath: string; debug: boolean; delayMs?: number }): number[] {
  if (!fs.existsSync(path.join(cfg.factory.template_path, 'manifest.json'))) return [];
  return fillCache(cfg, { ...o, delayMs: o.delayMs ?? refillDelayMs() });
}
