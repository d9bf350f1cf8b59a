/**
 * The host end of the debug console (`kata-ctl exec`): starts a process in
 * the guest VM through the sandbox's ctl channel and wires it to this
 * terminal — raw mode, the window size at start and on every resize
 * (SIGWINCH → TtyWinResize), keys passed through untouched (Ctrl-C reaches
 * the guest, Ctrl-D ends the shell) — and restores the terminal however the
 * session ends. Without a terminal it is a plain remote command with pipes.
 */
import type { Readable, Writable } from 'node:stream';
import type { ReadStream, WriteStream } from 'node:tty';
import type { AgentClient } from '../runtime/agent-client';
import { attachProcess } from '../runtime/stdio';

export interface ConsoleIo {
  stdin: Readable & Partial<Pick<ReadStream, 'isTTY' | 'setRawMode'>>;
  stdout: Writable & Partial<Pick<WriteStream, 'isTTY' | 'rows' | 'columns'>>;
  stderr: Writable;
  env: NodeJS.ProcessEnv;
}

export interface ConsoleRequest {
  /** Empty: an interactive shell. */
  command: string[];
  /** Allocate a guest pty. */
  terminal: boolean;
}

/** Runs the console session; resolves with the guest process's exit status. */
export async function runConsole(agent: AgentClient, req: ConsoleRequest, io: ConsoleIo): Promise<number> {
  const size = req.terminal && io.stdout.isTTY ? { rows: io.stdout.rows ?? 24, columns: io.stdout.columns ?? 80 } : { rows: 24, columns: 80 };
  const env = req.terminal ? [`TERM=${io.env.TERM || 'vt100'}`] : [];
  const started = await agent.startDebugConsole({ args: req.command, terminal: req.terminal, rows: size.rows, columns: size.columns, env });
  const raw = req.terminal && !!io.stdin.isTTY && typeof io.stdin.setRawMode === 'function';
  if (raw) io.stdin.setRawMode!(true);
  const onResize = () => {
    if (io.stdout.rows && io.stdout.columns) void attached.resize(io.stdout.rows, io.stdout.columns).catch(() => undefined);
  };
  const attached = attachProcess(agent, '', started.exec_id, { stdin: io.stdin, stdout: io.stdout, stderr: io.stderr, terminal: req.terminal });
  try {
    if (req.terminal && io.stdout.isTTY) {
      io.stdout.on('resize', onResize);
      onResize(); // the size may have changed while the console started
    }
    const st = await attached.done;
    return st.status;
  } finally {
    io.stdout.off('resize', onResize);
    if (raw) io.stdin.setRawMode!(false);
    io.stdin.pause();
  }
}
