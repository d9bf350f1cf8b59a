/**
 * Passfd IO, host side (Kata 3's "passfd IO"; README Configuration,
 * `[runtime] use_passfd_io`): a process's stdio as vsock streams of its own
 * that the agent hands to the process itself, instead of the agent's
 * ReadStdout/WriteStdin relay (stdio.ts).
 *
 * Before CreateContainer/ExecProcess the host opens one vsock connection
 * per stream to the agent's passfd listener (`agent.passfd_listener_port`)
 * and writes the connection's host port (from the hybrid vsock's `OK
 * <port>`) as its first 4 bytes, little-endian; the request carries those
 * ports (`stdin_port`/`stdout_port`/`stderr_port`, src/agent/passfd.ts).
 * After the start, attachPassfd() copies each stream to the caller's
 * streams — containerd's fifos, or the terminal of `kata-ts run` — in this
 * process, where our vsock backend lives: the guest's bytes go from the
 * process's write() into vsock and out of the device onto the host stream.
 *
 * Semantics kept from stdio.ts: `done` resolves with the exit status only
 * after stdout and stderr reached end of file (no lost tail); end of the
 * caller's stdin ends the stdin stream (SHUTDOWN_SEND: EOF in the process);
 * a host reader that goes away (an error writing to it) is one warning, and
 * that stream is closed (the process's next write fails with EPIPE, as with
 * a closed fifo); every socket is closed once the process is done.
 */
import type * as net from 'node:net';
import type { Writable } from 'node:stream';
import { KataError, errorMessage } from '../common/errors';
import { logger } from '../common/log';
import type { StdioPorts } from '../protocols/agent-api';
import { connectVsockPort } from '../protocols/agent-dialer';
import type { AgentClient } from './agent-client';
import type { AttachedProcess, HostStdio } from './stdio';

export class PassfdError extends KataError<'connect'> {}

/** Bytes of the port header each connection starts with (src/agent/passfd.ts HEADER_BYTES). */
export const PASSFD_HEADER_BYTES = 4;

/** The streams opened for one process, before its request. */
export interface PassfdStreams {
  /** What the CreateContainer/ExecProcess request carries. */
  readonly ports: StdioPorts;
  readonly stdin?: net.Socket;
  readonly stdout?: net.Socket;
  readonly stderr?: net.Socket;
  /** Closes every stream (a failed request, or the process is done). */
  close(): void;
}

/** The kernel command line parameter naming the agent's listener port (Kata's). */
export function passfdKernelParam(port: number): string {
  return `agent.passfd_listener_port=${port}`;
}

/**
 * Opens the wanted streams to the agent's passfd listener on vsock
 * `listenerPort`, all or nothing; a refused connection (no listener: the
 * guest was booted without the parameter) is one clear error.
 */
export async function openPassfdStreams(vsockSocket: string, listenerPort: number, want: { stdin: boolean; stdout: boolean; stderr: boolean }, timeoutMs = 10000): Promise<PassfdStreams> {
  const names = (['stdin', 'stdout', 'stderr'] as const).filter((k) => want[k]);
  const got = await Promise.allSettled(names.map((k) => connectVsockPort(vsockSocket, listenerPort, timeoutMs).then((r) => ({ k, ...r }))));
  const sockets: Partial<Record<'stdin' | 'stdout' | 'stderr', net.Socket>> = {};
  const ports: StdioPorts = {};
  for (const r of got) {
    if (r.status !== 'fulfilled') continue;
    const s = r.value.socket;
    s.on('error', () => undefined); // reported where it matters (attachPassfd)
    sockets[r.value.k] = s;
    ports[`${r.value.k}_port`] = r.value.localPort;
  }
  const close = () => { for (const s of Object.values(sockets)) s?.destroy(); };
  const failed = got.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
  if (failed) {
    close();
    throw new PassfdError('connect', `passfd IO: cannot open a stdio stream to the agent's passfd listener (vsock port ${listenerPort}): ${errorMessage(failed.reason)}; the guest must be booted with ${passfdKernelParam(listenerPort)} ([runtime] use_passfd_io)`);
  }
  for (const k of names) {
    const s = sockets[k]!;
    const h = Buffer.alloc(PASSFD_HEADER_BYTES);
    h.writeUInt32LE(ports[`${k}_port`]!, 0);
    s.write(h);
  }
  // The process might write into its stdin socket: drain it, so that never blocks it.
  sockets.stdin?.on('data', () => undefined).resume();
  return { ports, ...sockets, close };
}

/** Copies a stream to `dst` until its end; a `dst` that fails closes the stream (one warning). */
function pipeStream(src: net.Socket | undefined, dst: Writable | undefined, what: string, ids: Record<string, string>): Promise<void> {
  if (!src) return Promise.resolve();
  return new Promise((resolve) => {
    let over = false;
    const finish = () => { if (!over) { over = true; resolve(); } };
    const onDstError = (err: Error) => {
      if (over) return;
      logger('passfd').warn(`the host reader of ${what} went away; closing the stream (the process's writes fail with EPIPE)`, { ...ids, err: err.message });
      src.destroy();
      finish();
    };
    dst?.on('error', onDstError);
    src.on('data', (d: Buffer) => {
      if (!dst || dst.destroyed) return;
      if (!dst.write(d)) {
        src.pause();
        dst.once('drain', () => src.resume());
      }
    });
    src.once('end', finish);
    src.once('close', () => { dst?.off('error', onDstError); finish(); });
    src.resume();
  });
}

/**
 * Attaches the caller's stdio to a started process's passfd streams; the
 * AttachedProcess of stdio.ts. A terminal is never passfd (the pty carries
 * the stdio; such processes keep the agent's path).
 */
export function attachPassfd(agent: AgentClient, containerId: string, execId: string, streams: PassfdStreams, io: HostStdio): AttachedProcess {
  const ref = { container_id: containerId, exec_id: execId };
  const ids = { container: containerId, exec: execId };
  const outs = [pipeStream(streams.stdout, io.stdout, 'stdout', ids), pipeStream(streams.stderr, io.stderr, 'stderr', ids)];
  const sin = streams.stdin;
  const stdin = io.stdin;
  const onData = (b: Buffer) => {
    if (!sin || sin.destroyed) return;
    if (!sin.write(b)) {
      stdin!.pause();
      sin.once('drain', () => stdin!.resume());
    }
  };
  // End of input: SHUTDOWN_SEND on the stream, end of file in the process.
  const onEnd = () => sin?.end();
  const detach = () => {
    stdin?.off('data', onData);
    stdin?.off('end', onEnd);
    stdin?.pause();
  };
  if (stdin && sin) {
    stdin.on('data', onData);
    stdin.once('end', onEnd);
    stdin.resume();
  } else sin?.end();
  const done = (async () => {
    try {
      const status = await agent.waitProcess(ref);
      detach();
      await Promise.all(outs);
      return status;
    } finally {
      detach();
      streams.close();
    }
  })();
  return {
    done,
    resize: async () => {
      throw new KataError('invalid', 'a passfd process has no terminal');
    },
    detachStdin: detach,
  };
}
