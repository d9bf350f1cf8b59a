/**
 * The OCI runtime the agent drives (crun in the guest image), behind a small
 * interface so the agent's logic can be tested with a test double on a
 * developer's machine. Foreground mode: `crun run` and `crun exec` stay the
 * parent of the container process and exit with its status (128+signal when
 * it was killed), which is what makes exit statuses exact without PID-1
 * reaping tricks in Node.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { access, readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface SpawnOptions {
  /** Unix socket crun sends the pty master to (process.terminal). */
  consoleSocket?: string;
  /** Where crun writes the process's pid (exec). */
  pidFile?: string;
  /** The child's stdio without a terminal (default: Node pipes); see OutputFifos in process.ts. */
  /** stdin may be a passed socket (passfd.ts) instead of a Node pipe. */
  stdio?: ['pipe' | number, number, number];
}

export interface OciRuntime {
  readonly name: string;
  /** Create+start the container from bundleDir; the child lives as long as the container's init. */
  run(id: string, bundleDir: string, opts: SpawnOptions): ChildProcess;
  /** Run an extra process (OCI Process JSON in processFile) in a running container. */
  exec(id: string, processFile: string, opts: SpawnOptions): ChildProcess;
  /**
   * Signal the container's init process. `initPid`: the caller knows the
   * init's pid and that it is not reaped yet (its runtime parent is alive),
   * so a runtime may signal it without a process of its own.
   */
  kill(id: string, signal: number, initPid?: number): Promise<void>;
  /** Remove what remains of a container (idempotent). */
  delete(id: string): Promise<void>;
  /** Pid of the container's init as the runtime records it, or 0. */
  pid(id: string): Promise<number>;
  /**
   * The only child of a running `run` process (its pid), or 0 when it has
   * none or several. Absent: the runtime cannot tell (Container waits for
   * pid() instead).
   */
  childPid?(runPid: number): Promise<number>;
  /** Whether the runtime still keeps state for the container. Absent: assume it does. */
  hasState?(id: string): Promise<boolean>;
  version(): Promise<string>;
}

export class CrunRuntime implements OciRuntime {
  readonly name = 'crun';
  constructor(private readonly binary = 'crun', private readonly root = '/run/crun') {}

  run(id: string, bundleDir: string, opts: SpawnOptions): ChildProcess {
    const args = ['--root', this.root, 'run', '--bundle', bundleDir];
    if (opts.consoleSocket) args.push('--console-socket', opts.consoleSocket);
    args.push(id);
    return spawn(this.binary, args, { stdio: opts.consoleSocket ? ['ignore', 'ignore', 'pipe'] : (opts.stdio ?? ['pipe', 'pipe', 'pipe']) });
  }

  exec(id: string, processFile: string, opts: SpawnOptions): ChildProcess {
    const args = ['--root', this.root, 'exec', '--process', processFile];
    if (opts.consoleSocket) args.push('--tty', '--console-socket', opts.consoleSocket);
    if (opts.pidFile) args.push('--pid-file', opts.pidFile);
    args.push(id);
    return spawn(this.binary, args, { stdio: opts.consoleSocket ? ['ignore', 'ignore', 'pipe'] : (opts.stdio ?? ['pipe', 'pipe', 'pipe']) });
  }

  /**
   * With `initPid`, kill(2) the init ourselves: that is all `crun kill`
   * does for one signal to the init (kill or pidfd_send_signal to the pid of
   * its status file), and it saves a crun process, whose start under TCG
   * costs 0.1-0.4 s (README, VM templates). The caller vouches that `crun
   * run`, the init's parent and subreaper, has not exited, so the pid is
   * not reaped and cannot name another process. ESRCH (the init exited
   * meanwhile) is not an error, as for a stop racing an exit.
   */
  async kill(id: string, signal: number, initPid?: number): Promise<void> {
    if (initPid && initPid > 0) {
      try {
        process.kill(initPid, signal);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
      return;
    }
    await execFileP(this.binary, ['--root', this.root, 'kill', id, String(signal)]);
  }

  async delete(id: string): Promise<void> {
    await execFileP(this.binary, ['--root', this.root, 'delete', '--force', id]).catch(() => undefined);
  }

  /**
   * `crun run` removes its state directory (and the container's cgroup)
   * itself once the container exits; only a crun that was killed, or is
   * still running, leaves one for `crun delete`.
   */
  async hasState(id: string): Promise<boolean> {
    return access(path.join(this.root, id)).then(() => true, (err: NodeJS.ErrnoException) => err.code !== 'ENOENT');
  }

  /**
   * The container's init as soon as `crun run` has cloned it, from
   * /proc/<crun>/task/<crun>/children (CONFIG_PROC_CHILDREN): a file read
   * while crun still sets the container up and has not recorded its status.
   * Container.start uses it only for specs where crun's first clone is the
   * init (no user namespace, no pid or time namespace joined, no hooks).
   */
  async childPid(runPid: number): Promise<number> {
    const text = await readFile(`/proc/${runPid}/task/${runPid}/children`, 'utf8').catch(() => '');
    return onlyChild(text);
  }

  /**
   * Read from crun's own state file (`<root>/<id>/status`, written to a
   * temporary name and renamed, so never seen half written) rather than by
   * running `crun state`: StartContainer polls this until crun has recorded
   * the container, and under TCG each `crun state` was a process start
   * (tens to hundreds of ms) where a file read is well under one. The file
   * is what `crun state` and `crun kill` read themselves, so once it names a
   * pid, a kill finds the container.
   */
  async pid(id: string): Promise<number> {
    return crunStatusPid(await readFile(path.join(this.root, id, 'status'), 'utf8').catch(() => ''));
  }

  async version(): Promise<string> {
    const { stdout } = await execFileP(this.binary, ['--version']);
    return stdout.split('\n')[0]?.replace(/^crun version /, '') ?? '';
  }
}

/** The pid in a crun status file's text, or 0 if it names none (absent, or not crun's JSON). */
export function crunStatusPid(text: string): number {
  try {
    const pid = (JSON.parse(text) as { pid?: unknown }).pid;
    return typeof pid === 'number' && Number.isInteger(pid) && pid > 0 ? pid : 0;
  } catch {
    return 0;
  }
}

/** The pid in a /proc/<pid>/task/<tid>/children text when it names exactly one, else 0. */
export function onlyChild(text: string): number {
  const pids = text.trim().split(/\s+/).filter(Boolean);
  if (pids.length !== 1) return 0;
  const pid = Number(pids[0]);
  return Number.isInteger(pid) && pid > 0 ? pid : 0;
}
