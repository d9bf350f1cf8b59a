/**
 * The nice value of a whole process: every thread of it. On Linux the nice
 * value is per thread, and setpriority(PRIO_PROCESS, pid) (Node's
 * os.setPriority) changes only the thread whose id is `pid`. A cached VM's
 * QEMU was started nice'd (vm-cache-fill.ts), so its vCPU thread ("CPU
 * 0/TCG"), I/O and worker threads were created nice'd; renicing only its
 * main thread at the claim left the pod's guest running at nice 10 for its
 * whole life, sharing the CPU evenly with the next refill instead of taking
 * precedence (bench/cri-lifecycle.ts counts such threads). Threads created
 * later inherit the nice value of the thread that creates them.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';

/** Sets `nice` on every thread of `pid` (0: this process); returns how many threads were set. Threads that vanish or refuse are skipped. */
export function setProcessNice(pid: number, nice: number): number {
  const p = pid || process.pid;
  let tids: number[];
  try {
    tids = fs.readdirSync(`/proc/${p}/task`).map(Number).filter((t) => t > 0);
  } catch {
    tids = [p];
  }
  let set = 0;
  for (const tid of tids) {
    try {
      os.setPriority(tid, nice);
      set++;
    } catch { /* gone, or not allowed: stays as it is */ }
  }
  return set;
}
