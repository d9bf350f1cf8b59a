/**
 * Memory density figures for kata-ctl (metrics, pages, ksm): each running
 * sandbox's page scanner report, fetched from its owner over mem.sock
 * (src/resource/memory/ctl-socket.ts), merged across sandboxes (the fingerprint
 * summaries, src/resource/memory/scanner.ts crossSandbox), and host KSM counters.
 */
import { crossSandbox, type SandboxPages } from '../resource/memory/scanner';
import { MemoryCtlError, memoryCtlCall } from '../resource/memory/ctl-socket';
import { processKsm, readKsm } from '../resource/memory/ksm';
import type { ScanReport } from '../resource/memory/service';
import { errorMessage } from '../common/errors';
import type { Registry } from './prometheus';
import type { SandboxRow } from './sandboxes';

const PAGE = 4096;

export interface SandboxScan {
  id: string;
  report?: ScanReport;
  error?: string;
  /** The sandbox has no memory service to ask (not an error for a scrape). */
  absent?: boolean;
}

/** Decodes the base64 summary a scan report carries (checked: lengths must agree). */
export function reportPages(id: string, r: ScanReport): SandboxPages {
  const fb = Buffer.from(r.fingerprints, 'base64');
  const cb = Buffer.from(r.counts, 'base64');
  if (fb.length % 8 !== 0 || cb.length * 2 !== fb.length) throw new Error(`sandbox ${id}: malformed fingerprint summary`);
  const fingerprints = new BigUint64Array(fb.length / 8);
  for (let i = 0; i < fingerprints.length; i++) fingerprints[i] = fb.readBigUInt64LE(i * 8);
  const counts = new Uint32Array(cb.length / 4);
  for (let i = 0; i < counts.length; i++) counts[i] = cb.readUInt32LE(i * 4);
  return { id, zeroPages: r.zeroPages, fingerprints, counts };
}

export async function fetchScans(rows: SandboxRow[], opts: { fresh?: boolean; timeoutMs?: number } = {}): Promise<SandboxScan[]> {
  const out: SandboxScan[] = [];
  for (const r of rows.filter((x) => x.status === 'running')) {
    try {
      const res = await memoryCtlCall(r.dir, { op: 'scan', fresh: opts.fresh }, opts.timeoutMs ?? 60000);
      out.push({ id: r.id, report: res.scan as ScanReport });
    } catch (err) {
      out.push({ id: r.id, error: errorMessage(err), absent: err instanceof MemoryCtlError && err.kind === 'absent' });
    }
  }
  return out;
}

export interface MemorySummary {
  sandboxes: Array<Omit<ScanReport, 'fingerprints' | 'counts'> & { id: string; sharedWithOtherSandboxesPages: number }>;
  errors: string[];
  hostWideSavingBytes: number;
  crossSandboxSavingBytes: number;
}

export function summarize(scans: SandboxScan[]): MemorySummary {
  const ok = scans.filter((s) => s.report);
  const errors = scans.filter((s) => s.error).map((s) => `${s.id}: ${s.error}`);
  const pages: SandboxPages[] = [];
  for (const s of ok) {
    try {
      pages.push(reportPages(s.id, s.report!));
    } catch (err) {
      errors.push(errorMessage(err));
    }
  }
  const cross = crossSandbox(pages);
  return {
    sandboxes: ok.filter((s) => pages.some((p) => p.id === s.id)).map((s) => {
      const { fingerprints: _f, counts: _c, ...rest } = s.report!;
      void _f; void _c;
      return { id: s.id, ...rest, sharedWithOtherSandboxesPages: cross.sharedPages.get(s.id) ?? 0 };
    }),
    errors,
    hostWideSavingBytes: cross.savingPages * PAGE,
    crossSandboxSavingBytes: cross.crossSavingPages * PAGE,
  };
}

/** Adds the page scanner and KSM series to a scrape. */
export async function memoryMetrics(reg: Registry, rows: SandboxRow[]): Promise<string[]> {
  // A sandbox without a memory service (its owner predates it, or is gone)
  // simply has no scanner series; its guest metrics already say whether it
  // is reachable. Builtin-VMM sandboxes have one (src/runtime/sandbox-memory.ts).
  const sum = summarize((await fetchScans(rows)).filter((s) => !s.absent));
  for (const s of sum.sandboxes) {
    const l = { sandbox_id: s.id };
    reg.add('kata_memory_scan_resident_bytes', 'gauge', 'guest RAM present in the host (page scanner)', l, s.residentPages * PAGE);
    reg.add('kata_memory_scan_zero_bytes', 'gauge', 'resident guest pages that are all zeros', l, s.zeroPages * PAGE);
    reg.add('kata_memory_scan_duplicate_bytes', 'gauge', 'resident guest pages duplicating another page of the same sandbox', l, s.duplicatePages * PAGE);
    reg.add('kata_memory_scan_cross_sandbox_bytes', 'gauge', 'resident guest pages whose content another sandbox also holds', l, s.sharedWithOtherSandboxesPages * PAGE);
    reg.add('kata_memory_scan_saving_bytes', 'gauge', 'what merging zero and duplicate pages within the sandbox would give back', l, s.savingBytes);
    reg.add('kata_memory_scan_duration_seconds', 'gauge', 'last page scanner pass', l, s.durationMs / 1000);
    reg.add('kata_memory_scan_event_loop_delay_max_seconds', 'gauge', 'largest event-loop delay of the owner while the pass ran', l, s.eventLoopDelayMaxMs / 1000);
  }
  reg.add('kata_memory_scan_host_saving_bytes', 'gauge', 'what merging zero and duplicate pages across all scanned sandboxes would give back', {}, sum.hostWideSavingBytes);
  reg.add('kata_memory_scan_cross_sandbox_saving_bytes', 'gauge', 'part of that only cross-sandbox merging finds', {}, sum.crossSandboxSavingBytes);
  if (readableKsm()) {
    const k = readKsm();
    reg.add('kata_host_ksm_run', 'gauge', 'host KSM state (0 stopped, 1 running, 2 unmerge)', {}, k.run);
    reg.add('kata_host_ksm_pages_shared', 'gauge', 'KSM pages in use (merged copies kept)', {}, k.pagesShared);
    reg.add('kata_host_ksm_pages_sharing', 'gauge', 'KSM: additional mappings of merged pages (pages saved)', {}, k.pagesSharing);
    reg.add('kata_host_ksm_saving_bytes', 'gauge', 'host memory KSM saves', {}, k.savingBytes);
    for (const r of rows) {
      for (const pid of r.vmPids) {
        const p = processKsm(pid);
        if (p) reg.add('kata_host_process_ksm_merging_bytes', 'gauge', 'memory of a VMM process merged by KSM', { sandbox_id: r.id, pid: String(pid) }, p.mergingPages * PAGE);
      }
    }
  }
  return sum.errors;
}

function readableKsm(): boolean {
  try {
    readKsm();
    return true;
  } catch {
    return false;
  }
}
