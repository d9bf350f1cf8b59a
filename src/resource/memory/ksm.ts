/**
 * Host KSM (kernel samepage merging, Documentation/admin-guide/mm/ksm.rst):
 * reading /sys/kernel/mm/ksm and /proc/<pid>/ksm_stat, and writing the
 * scan settings the throttler drives.
 *
 * What KSM can merge here: only private anonymous memory that its owner
 * advised MADV_MERGEABLE. QEMU advises guest RAM by default (-machine
 * mem-merge), but our guest RAM is a shared memfd (vhost-user needs it) and
 * KSM skips shared mappings, so it merges QEMU's private memory (TCG
 * translation buffers, heap) and nothing of the guest's. README "Memory
 * density" has the measured numbers.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError } from '../../common/errors';

export class KsmError extends KataError<'unavailable' | 'io'> {}

export const KSM_DIR = '/sys/kernel/mm/ksm';
const PAGE = 4096;

export interface KsmStatus {
  run: number;
  pagesToScan: number;
  sleepMillisecs: number;
  pagesShared: number;
  pagesSharing: number;
  pagesUnshared: number;
  pagesVolatile: number;
  fullScans: number;
  /** Zero pages KSM mapped to the kernel zero page (use_zero_pages), where the kernel reports it. */
  zeroPages: number;
  /** Bytes saved: pages_sharing (+ ksm_zero_pages) × 4 KiB. */
  savingBytes: number;
}

/** Why KSM cannot be used here, or undefined. */
export function ksmUnavailable(dir = KSM_DIR): string | undefined {
  if (!fs.existsSync(path.join(dir, 'run'))) return `KSM is not available on this host (${dir} missing: kernel built without CONFIG_KSM)`;
  try {
    fs.accessSync(path.join(dir, 'run'), fs.constants.W_OK);
  } catch {
    return `KSM settings in ${dir} are not writable (needs root)`;
  }
  return undefined;
}

function num(dir: string, name: string): number {
  try {
    return Number(fs.readFileSync(path.join(dir, name), 'utf8').trim()) || 0;
  } catch {
    return 0;
  }
}

export function readKsm(dir = KSM_DIR): KsmStatus {
  if (!fs.existsSync(path.join(dir, 'run'))) throw new KsmError('unavailable', `KSM is not available on this host (${dir} missing)`);
  const s = {
    run: num(dir, 'run'), pagesToScan: num(dir, 'pages_to_scan'), sleepMillisecs: num(dir, 'sleep_millisecs'),
    pagesShared: num(dir, 'pages_shared'), pagesSharing: num(dir, 'pages_sharing'), pagesUnshared: num(dir, 'pages_unshared'),
    pagesVolatile: num(dir, 'pages_volatile'), fullScans: num(dir, 'full_scans'), zeroPages: num(dir, 'ksm_zero_pages'),
  };
  return { ...s, savingBytes: (s.pagesSharing + s.zeroPages) * PAGE };
}

export interface KsmSettings {
  run: number;
  pagesToScan: number;
  sleepMillisecs: number;
}

export function readSettings(dir = KSM_DIR): KsmSettings {
  const s = readKsm(dir);
  return { run: s.run, pagesToScan: s.pagesToScan, sleepMillisecs: s.sleepMillisecs };
}

export function writeSettings(s: KsmSettings, dir = KSM_DIR): void {
  try {
    // Scan parameters first, run last: KSM starts with the intended pace.
    fs.writeFileSync(path.join(dir, 'pages_to_scan'), String(s.pagesToScan));
    fs.writeFileSync(path.join(dir, 'sleep_millisecs'), String(s.sleepMillisecs));
    fs.writeFileSync(path.join(dir, 'run'), String(s.run));
  } catch (err) {
    throw new KsmError('io', `cannot set KSM in ${dir}: ${(err as Error).message}`, { cause: err });
  }
}

/** Pages of one process KSM has merged (/proc/<pid>/ksm_stat, Linux ≥ 6.1), or undefined. */
export function processKsm(pid: number, proc = '/proc'): { mergingPages: number; zeroPages: number; profitBytes: number } | undefined {
  try {
    const t = fs.readFileSync(`${proc}/${pid}/ksm_stat`, 'utf8');
    const g = (k: string) => Number(new RegExp(`^${k} (-?\\d+)`, 'm').exec(t)?.[1] ?? 0);
    return { mergingPages: g('ksm_merging_pages'), zeroPages: g('ksm_zero_pages'), profitBytes: g('ksm_process_profit') };
  } catch {
    try {
      return { mergingPages: Number(fs.readFileSync(`${proc}/${pid}/ksm_merging_pages`, 'utf8').trim()) || 0, zeroPages: 0, profitBytes: 0 };
    } catch {
      return undefined;
    }
  }
}
