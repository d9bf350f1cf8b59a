/**
 * OnlineCPUMem (Kata's agent API): after the host hotplugged vCPUs or
 * memory (src/resource/memory/resize.ts), online them through sysfs —
 * /sys/devices/system/cpu/cpuN/online and /sys/devices/system/memory/
 * memoryN/state — as Kata's agent does. A hot-added vCPU appears a moment
 * after the ACPI event, so with `wait` the agent retries until nb_cpus were
 * onlined (5 s at most), then fails with how many it found.
 *
 * Memory: the runtime needs none of this (the guest kernel onlines DIMMs
 * and virtio-mem blocks itself, memhp_default_state, and it calls with
 * cpu_only); for a caller that does ask, a block that may go to
 * ZONE_MOVABLE (its valid_zones lists Movable) is onlined there, so it can
 * be emptied and unplugged again — 'online' would put it in ZONE_NORMAL,
 * where kernel allocations pin it and a virtio-mem shrink fails.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError } from '../common/errors';

export class OnlineError extends KataError<'invalid' | 'timeout'> {}

const MAX_CPUS = 256;

function onlineCpus(sys: string, want: number): number {
  const dir = path.join(sys, 'devices/system/cpu');
  let done = 0;
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir).filter((n) => /^cpu\d+$/.test(n)).sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  } catch { /* no sysfs: nothing to online */ }
  for (const n of names) {
    if (done >= want) break;
    const f = path.join(dir, n, 'online');
    try {
      if (fs.readFileSync(f, 'utf8').trim() !== '0') continue;
      fs.writeFileSync(f, '1');
      done++;
    } catch { /* cpu0 has no online file; a CPU going away: skip */ }
  }
  return done;
}

function onlineMemory(sys: string): number {
  const dir = path.join(sys, 'devices/system/memory');
  let done = 0;
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir).filter((n) => /^memory\d+$/.test(n));
  } catch { return 0; }
  for (const n of names) {
    const f = path.join(dir, n, 'state');
    try {
      if (fs.readFileSync(f, 'utf8').trim() !== 'offline') continue;
      let zones = '';
      try { zones = fs.readFileSync(path.join(dir, n, 'valid_zones'), 'utf8'); } catch { /* older kernels: no such file */ }
      fs.writeFileSync(f, /\bMovable\b/.test(zones) ? 'online_movable' : 'online');
      done++;
    } catch { /* a block that cannot go online stays offline */ }
  }
  return done;
}

export async function onlineCpuMem(r: { wait: boolean; nb_cpus: number; cpu_only: boolean }, sys = '/sys', timeoutMs = 5000): Promise<{ cpus: number; memoryBlocks: number }> {
  if (!Number.isInteger(r.nb_cpus) || r.nb_cpus < 0 || r.nb_cpus > MAX_CPUS) throw new OnlineError('invalid', `OnlineCPUMem: nb_cpus ${r.nb_cpus} out of 0..${MAX_CPUS}`);
  let cpus = onlineCpus(sys, r.nb_cpus);
  const deadline = Date.now() + timeoutMs;
  while (r.wait && cpus < r.nb_cpus) {
    if (Date.now() > deadline) throw new OnlineError('timeout', `OnlineCPUMem: onlined ${cpus} of ${r.nb_cpus} vCPUs within ${timeoutMs} ms (no more offline vCPUs appeared)`);
    await new Promise((res) => setTimeout(res, 50));
    cpus += onlineCpus(sys, r.nb_cpus - cpus);
  }
  const memoryBlocks = r.cpu_only ? 0 : onlineMemory(sys);
  return { cpus, memoryBlocks };
}
