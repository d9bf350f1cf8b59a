/**
 * Host memory of a process for benchmarks: its PSS from
 * /proc/<pid>/smaps_rollup. A figure that cannot be read is an error, never
 * 0 MiB: a benchmark that reports it must say it failed.
 */
import * as fs from 'node:fs';

export class PssError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PssError';
  }
}

/** PSS of `pid` in MiB; throws PssError when the process is gone or the file has no Pss line. */
export function pssMiB(pid: number, proc = '/proc'): number {
  if (!Number.isInteger(pid) || pid <= 0) throw new PssError(`no process to measure (pid ${pid})`);
  let text: string;
  try {
    text = fs.readFileSync(`${proc}/${pid}/smaps_rollup`, 'utf8');
  } catch (err) {
    throw new PssError(`cannot read ${proc}/${pid}/smaps_rollup: ${(err as Error).message}`, { cause: err });
  }
  const m = /^Pss:\s+(\d+) kB/m.exec(text);
  if (!m) throw new PssError(`${proc}/${pid}/smaps_rollup has no Pss line`);
  return Number(m[1]) / 1024;
}

/**
 * Bytes allocated in the memfds `pid` holds open (guest RAM, virtio-mem),
 * each counted once. PSS counts only pages mapped in a process's page
 * tables: a template clone's RAM copied by write(2) and not yet touched by
 * the guest is in its memfd and in nobody's PSS, so a footprint that
 * claims to be the host's memory must count the memfd, not PSS's shmem.
 * Reads of a closed fd are skipped (it went meanwhile).
 */
export function memfdBytes(pid: number): number {
  const seen = new Set<number>();
  let bytes = 0;
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (!fs.readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('/memfd:')) continue;
      const st = fs.statSync(`/proc/${pid}/fd/${fd}`);
      if (seen.has(st.ino)) continue;
      seen.add(st.ino);
      bytes += st.blocks * 512;
    } catch { /* closed meanwhile */ }
  }
  return bytes;
}
