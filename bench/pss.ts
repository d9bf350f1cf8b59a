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
