/**
 * Moves a guest process's stdio between the agent and host streams (a
 * terminal, pipes, or containerd's fifos): stdout/stderr from the agent's
 * streaming reads, stdin forwarded chunk by chunk (in order, one write in
 * flight) and closed at end of input. `done` resolves with the exit status
 * only after all output has been written out, so nothing is lost at exit.
 */
import type { Readable, Writable } from 'node:stream';
import type { WaitProcessResponse } from '../protocols/agent-api';
import type { AgentClient } from './agent-client';

export interface HostStdio {
  stdin?: Readable;
  stdout: Writable;
  stderr?: Writable;
  terminal: boolean;
}

export interface AttachedProcess {
  done: Promise<WaitProcessResponse>;
  resize(rows: number, cols: number): Promise<void>;
  /** Stop forwarding stdin (process gone or caller detaching). */
  detachStdin(): void;
}

function pipeOutput(src: Readable & { cancel(): void }, dst: Writable): Promise<void> {
  return new Promise((resolve) => {
    src.on('data', (m: { data: Buffer }) => {
      if (m.data?.length && !dst.write(m.data)) {
        src.pause();
        dst.once('drain', () => src.resume());
      }
    });
    src.on('end', () => resolve());
    src.on('error', () => resolve()); // the VM went away: nothing more will come
  });
}

export function attachProcess(agent: AgentClient, containerId: string, execId: string, io: HostStdio): AttachedProcess {
  const ref = { container_id: containerId, exec_id: execId };
  const outs: Promise<void>[] = [pipeOutput(agent.readStdout(ref), io.stdout)];
  if (!io.terminal && io.stderr) outs.push(pipeOutput(agent.readStderr(ref), io.stderr));
  let stdinOpen = !!io.stdin;
  const stdin = io.stdin;
  // Writes and the final close go through one chain: in order, one in flight.
  let chain: Promise<unknown> = Promise.resolve();
  const onData = (b: Buffer) => {
    stdin!.pause();
    chain = chain.then(() => agent.writeStdin(ref, b)).then(() => stdin!.resume(), () => detach());
  };
  const onEnd = () => {
    if (!stdinOpen) return;
    stdinOpen = false;
    chain = chain.then(() => agent.closeStdin(ref)).catch(() => undefined);
  };
  const detach = () => {
    stdinOpen = false;
    stdin?.off('data', onData);
    stdin?.off('end', onEnd);
    stdin?.pause();
  };
  if (stdin) {
    stdin.on('data', onData);
    stdin.on('end', onEnd);
  }
  const done = (async () => {
    const status = await agent.waitProcess(ref);
    detach();
    await Promise.all(outs);
    return status;
  })();
  return {
    done,
    resize: async (rows, cols) => {
      await agent.ttyWinResize({ ...ref, row: rows, column: cols });
    },
    detachStdin: detach,
  };
}
