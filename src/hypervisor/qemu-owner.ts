/**
 * Running QEMU so that it dies with the process that started it (the
 * runtime, the shim, or the factory): setpriv's parent-death signal.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from '../common/log';

/** util-linux setpriv (scripts/setup.sh installs util-linux), looked up once. */
let setprivPath: string | null | undefined;
function findSetpriv(): string | null {
  if (setprivPath === undefined) {
    setprivPath = null;
    for (const dir of (process.env.PATH || '/usr/bin:/bin').split(':').concat(['/usr/bin', '/bin'])) {
      const p = path.join(dir || '.', 'setpriv');
      try {
        fs.accessSync(p, fs.constants.X_OK);
        setprivPath = p;
        break;
      } catch { /* next */ }
    }
  }
  return setprivPath;
}

/**
 * argv that runs QEMU so it cannot outlive this process: `setpriv
 * --pdeathsig KILL -- qemu …` sets PR_SET_PDEATHSIG and execs QEMU (same
 * pid, same command line in /proc). Without it a SIGKILLed `kata-ts run` or
 * shim left QEMU running (its vhost-user devices, served by the dead
 * process, gone with it) until `kata-ctl cleanup`. The signal fires when the
 * thread that forked exits: libuv spawns from the main thread, so that is
 * the process's own end. The shim's `delete` still cleans up after a dead
 * shim (it finds the VM already gone).
 */
export function ownedBy(binary: string, args: string[], log: Logger): [string, string[]] {
  const setpriv = findSetpriv();
  if (!setpriv) {
    log.warn('setpriv (util-linux) not found: QEMU will outlive this process if it is killed');
    return [binary, args];
  }
  return [setpriv, ['--pdeathsig', 'KILL', '--', binary, ...args]];
}
