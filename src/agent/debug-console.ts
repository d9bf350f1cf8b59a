/**
 * The debug console: processes in the guest VM itself, outside every
 * container (Kata's `kata-runtime exec` / `kata-ctl exec` debug console).
 *
 * Enabled only when the guest was booted with `agent.debug_console` on its
 * kernel command line, which the host adds only when the configuration says
 * `[agent.kata] debug_console_enabled = true` — so a guest booted without it
 * refuses even a host that asks.
 *
 * A terminal comes from /sbin/kata-pty (guest/init/kata-pty.c): it allocates
 * the pty, runs the command on it and sends the master over a console socket
 * exactly as crun does, so GuestProcess handles both the same way. Without a
 * terminal the command is spawned directly with pipes. Each console is a
 * GuestProcess whose container id is "" — the existing stdio/wait/resize
 * RPCs address it with that id and the exec id returned here.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import type * as api from '../protocols/agent-api';
import { native } from '../common/native';
import { AgentError } from './container';
import { GuestProcess, OutputFifos, consoleSocketPath } from './process';
import { childStdio, closePassed, type PassedStdio } from './passfd';

export interface DebugConsoleOptions {
  /** Whether the guest allows it (kernel command line `agent.debug_console`). */
  enabled: boolean;
  /** The pty helper (guest: /sbin/kata-pty). */
  ptyHelper: string;
  /** Where console sockets are created. */
  dir: string;
  /** The interactive shell. */
  shell?: string[];
}

export const DEBUG_CONSOLE_CMDLINE_FLAG = 'agent.debug_console';
/** How many finished consoles are kept (their status stays queryable for a while). */
const KEEP_FINISHED = 8;

const BASE_ENV = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'HOME=/root', 'USER=root', 'LOGNAME=root', 'SHELL=/bin/sh'];

function mergeEnv(extra: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of [...BASE_ENV, ...extra]) {
    const i = e.indexOf('=');
    if (i > 0) out[e.slice(0, i)] = e.slice(i + 1);
  }
  return out;
}

export class DebugConsoles {
  private readonly procs = new Map<string, GuestProcess>();
  private next = 1;

  constructor(private readonly opts: DebugConsoleOptions) {}

  get enabled(): boolean {
    return this.opts.enabled;
  }

  /** `passed`: stdio sockets of passfd IO (passfd.ts; the vsock bench uses them), closed here either way. */
  async start(req: api.DebugConsoleRequest, passed?: PassedStdio): Promise<{ execId: string; proc: GuestProcess }> {
    try {
      return await this.startWith(req, passed);
    } finally {
      closePassed(passed);
    }
  }

  private async startWith(req: api.DebugConsoleRequest, passed: PassedStdio | undefined): Promise<{ execId: string; proc: GuestProcess }> {
    if (!this.opts.enabled) {
      throw new AgentError('failed-precondition', `the debug console is disabled in this guest (boot it with ${DEBUG_CONSOLE_CMDLINE_FLAG}: set [agent.kata] debug_console_enabled = true)`);
    }
    for (const e of req.env ?? []) if (!/^[^=\s]+=/.test(e)) throw new AgentError('invalid', `invalid environment entry "${e}"`);
    const args = req.args?.length ? req.args : (this.opts.shell ?? ['/bin/sh', '-l']);
    this.prune();
    const execId = `debug-${this.next++}`;
    const env = mergeEnv(req.env ?? []);
    const proc = new GuestProcess('', execId, !!req.terminal);
    this.procs.set(execId, proc);
    if (req.terminal) {
      env.TERM ??= 'vt100';
      fs.mkdirSync(this.opts.dir, { recursive: true, mode: 0o700 });
      const sock = consoleSocketPath(this.opts.dir, execId);
      fs.rmSync(sock, { force: true });
      const listenFd = native().unixListen(sock);
      const child = spawn(this.opts.ptyHelper, [sock, String(req.rows || 24), String(req.columns || 80), ...args],
        { stdio: ['ignore', 'ignore', 'pipe'], cwd: '/', env });
      proc.pid = child.pid ?? 0;
      await proc.attach(child, listenFd);
      fs.rmSync(sock, { force: true });
      if (proc.exitStatus && proc.runtimeErrors) throw new AgentError('internal', `debug console: ${proc.runtimeErrors.trim()}`);
    } else {
      fs.mkdirSync(this.opts.dir, { recursive: true, mode: 0o700 });
      const outputs = OutputFifos.open(this.opts.dir, execId); // stdout read as a container's is (process.ts)
      const child = spawn(args[0]!, args.slice(1), { stdio: childStdio(outputs.stdio(), passed), cwd: '/', env });
      closePassed(passed); // the child has its copies
      proc.pid = child.pid ?? 0;
      const spawned = new Promise<Error | undefined>((r) => {
        child.once('spawn', () => r(undefined));
        child.once('error', (e) => r(e));
      });
      await proc.attach(child, undefined, outputs, passed?.stdin !== undefined);
      const err = await spawned;
      if (err) {
        this.procs.delete(execId);
        const code = (err as NodeJS.ErrnoException).code;
        throw new AgentError(code === 'ENOENT' ? 'not-found' : 'internal', code === 'ENOENT' ? `executable file \`${args[0]}\` not found in $PATH` : `debug console: ${err.message}`);
      }
    }
    return { execId, proc };
  }

  process(execId: string): GuestProcess {
    const p = this.procs.get(execId);
    if (!p) throw new AgentError('not-found', `no debug console process "${execId}"`);
    return p;
  }

  signal(execId: string, signal: number): void {
    const p = this.process(execId);
    if (p.exitStatus || p.pid <= 0) return;
    try {
      // kata-pty forwards catchable signals to the command it runs.
      process.kill(p.pid, signal);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }

  /** Kill every console (sandbox teardown). */
  killAll(): void {
    for (const id of this.procs.keys()) this.signal(id, 9);
  }

  private prune(): void {
    const done = [...this.procs.entries()].filter(([, p]) => p.exitStatus);
    for (const [id] of done.slice(0, Math.max(0, done.length - KEEP_FINISHED))) this.procs.delete(id);
  }
}

/** Whether the guest kernel command line enables the debug console. */
export function debugConsoleAllowed(cmdline: string): boolean {
  return new RegExp(`(^|\\s)${DEBUG_CONSOLE_CMDLINE_FLAG.replace('.', '\\.')}(=1|=on|=true)?(\\s|$)`).test(cmdline);
}

export const DEFAULT_DEBUG_CONSOLE_DIR = path.join('/run/kata-ts', 'debug-console');
