/**
 * Guest-wide numbers for `kata-ctl metrics` (GetGuestStats), read from the
 * guest's /proc: meminfo, loadavg, the aggregate `cpu` line of stat, uptime.
 * Parsing is separate from reading so it is unit-tested against fixed text.
 */
import * as fs from 'node:fs/promises';
import type { GuestStatsResponse } from '../protocols/agent-api';

/** USER_HZ: the unit of /proc/stat times (100 on every Linux we build). */
const USER_HZ = 100;

export function parseGuestStats(meminfo: string, loadavg: string, stat: string, uptime: string): GuestStatsResponse {
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(meminfo)?.[1] ?? 0) * 1024;
  const [l1, l5, l15, procs] = loadavg.trim().split(/\s+/);
  const cpu = (/^cpu\s+(.*)$/m.exec(stat)?.[1] ?? '').trim().split(/\s+/).map(Number);
  const ms = (ticks: number | undefined) => Math.round(((ticks ?? 0) * 1000) / USER_HZ);
  return {
    mem_total_bytes: kb('MemTotal'), mem_available_bytes: kb('MemAvailable'), mem_free_bytes: kb('MemFree'),
    load1: Number(l1 ?? 0), load5: Number(l5 ?? 0), load15: Number(l15 ?? 0),
    // user + nice, system + irq + softirq, idle + iowait (proc(5) field order)
    cpu_user_ms: ms((cpu[0] ?? 0) + (cpu[1] ?? 0)), cpu_system_ms: ms((cpu[2] ?? 0) + (cpu[5] ?? 0) + (cpu[6] ?? 0)),
    cpu_idle_ms: ms((cpu[3] ?? 0) + (cpu[4] ?? 0)),
    uptime_ms: Math.round(Number(uptime.trim().split(/\s+/)[0] ?? 0) * 1000),
    processes: Number(procs?.split('/')[1] ?? 0),
  };
}

export async function readGuestStats(proc = '/proc'): Promise<GuestStatsResponse> {
  const read = (f: string) => fs.readFile(`${proc}/${f}`, 'utf8').catch(() => '');
  return parseGuestStats(await read('meminfo'), await read('loadavg'), await read('stat'), await read('uptime'));
}
