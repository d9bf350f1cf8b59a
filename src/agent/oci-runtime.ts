/**
 * The OCI runtime the agent drives (crun in the guest image), behind a small
 * interface so the agent's logic can be tested with a test double on a
 * developer's machine. Foreground mode: `crun run` and `crun exec` stay the
 * parent of the container process and exit with its status (128+signal when
 * it was killed), which is what makes exit statuses exact without PID-1
 * reaping tricks in Node.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface SpawnOptions {
  /** Unix socket crun sends the pty master to (process.terminal). */
  consoleSocket?: string;
  /** Where crun writes the process's pid (exec). */
  pidFile?: string;
}

export interface OciRuntime {
  readonly name: string;
  /** Create+start the container from bundleDir; the child lives as long as the container's init. */
  run(id: string, bundleDir: string, opts: SpawnOptions): ChildProcess;
  /** Run an extra process (OCI Process JSON in processFile) in a running container. */
  exec(id: string, processFile: string, opts: SpawnOptions): ChildProcess;
  /** Signal the container's init process. */
  kill(id: string, signal: number): Promise<void>;
  /** Remove what remains of a container (idempotent). */
  delete(id: string): Promise<void>;
  /** Pid of the container's init as the runtime records it, or 0. */
  pid(id: string): Promise<number>;
  version(): Promise<string>;
}

export class CrunRuntime implements OciRuntime {
  readonly name = 'crun';
  constructor(private readonly binary = 'crun', private readonly root = '/run/crun') {}

  run(id: string, bundleDir: string, opts: SpawnOptions): ChildProcess {
    const args = ['--root', this.root, 'run', '--bundle', bundleDir];
    if (opts.consoleSocket) args.push('--console-socket', opts.consoleSocket);
    args.push(id);
    return spawn(this.binary, args, { stdio: opts.consoleSocket ? ['ignore', 'ignore', 'pipe'] : ['pipe', 'pipe', 'pipe'] });
  }

  exec(id: string, processFile: string, opts: SpawnOptions): ChildProcess {
    const args = ['--root', this.root, 'exec', '--process', processFile];
    if (opts.consoleSocket) args.push('--tty', '--console-socket', opts.consoleSocket);
    if (opts.pidFile) args.push('--pid-file', opts.pidFile);
    args.push(id);
    return spawn(this.binary, args, { stdio: opts.consoleSocket ? ['ignore', 'ignore', 'pipe'] : ['pipe', 'pipe', 'pipe'] });
  }

  async kill(id: string, signal: number): Promise<void> {
    await execFileP(this.binary, ['--root', this.root, 'kill', id, String(signal)]);
  }

  async delete(id: string): Promise<void> {
    await execFileP(this.binary, ['--root', this.root, 'delete', '--force', id]).catch(() => undefined);
  }

  async pid(id: string): Promise<number> {
    try {
      const { stdout } = await execFileP(this.binary, ['--root', this.root, 'state', id]);
      const st = JSON.parse(stdout) as { pid?: number };
      return st.pid ?? 0;
    } catch {
      return 0;
    }
  }

  async version(): Promise<string> {
    const { stdout } = await execFileP(this.binary, ['--version']);
    return stdout.split('\n')[0]?.replace(/^crun version /, '') ?? '';
  }
}
