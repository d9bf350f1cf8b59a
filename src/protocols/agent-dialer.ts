/**
 * How the host reaches the guest agent: the one module that knows the agent
 * transport. The agent listens on vsock port AGENT_VSOCK_PORT; the VM's vsock
 * device is exposed on the host as a Firecracker-style hybrid vsock unix
 * socket (src/virtio/vsock/hybrid.ts): connect, write `CONNECT <port>\n`,
 * read `OK <local port>\n`, then the stream is the vsock stream.
 *
 * On that stream the API (proto/agent.proto) is spoken as ttrpc, as Kata's
 * agent does since 2.0 (README architecture, agent transport, says why:
 * measured, gRPC's HTTP/2 cost ~1 s of guest start under TCG and capped
 * stdout). Unary calls share one connection, opened on first use and again
 * after it breaks; each output stream gets a connection of its own, so that
 * socket backpressure is that stream's flow control and closing it is the
 * cancel ttrpc does not otherwise have. The guest prints AGENT_READY_MARKER
 * on its console once it listens, so the host dials when the guest is ready.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { Readable } from 'node:stream';
import { KataError } from '../common/errors';
import { agentMethods, AGENT_SERVICE } from './agent-api';
import { RpcClient } from './ttrpc/rpc-client';
import { TtrpcError } from './ttrpc/codes';

export const AGENT_READY_MARKER = 'KATA_TS_AGENT_READY';
/** The agent's vsock port (Kata's agent uses 1024 too). */
export const AGENT_VSOCK_PORT = 1024;

export class DialError extends KataError<'timeout' | 'vm-exited'> {}

/** Waits until `marker` appears in the console log, the VM exits, or the timeout. */
/** Resolves with the rest of the marker's line (the agent's start-up timings as JSON). */
export async function waitForMarker(consoleLog: string, timeoutMs: number, vmExited: Promise<string>, marker = AGENT_READY_MARKER): Promise<string> {
  let exited: string | undefined;
  void vmExited.then((r) => (exited = r));
  const deadline = Date.now() + timeoutMs;
  let offset = 0;
  let tail = '';
  // Woken by the file's changes (inotify) as well as every 30 ms: the poll
  // alone made the host see the ready line up to 30 ms late (15 on average).
  let watcher: fs.FSWatcher | undefined;
  let wake: (() => void) | undefined;
  try {
    for (;;) {
      const r = readMarker();
      if (r !== undefined) return r;
      if (exited !== undefined) throw new DialError('vm-exited', `the VM stopped before the agent came up: ${exited}`);
      if (Date.now() > deadline) throw new DialError('timeout', `the guest agent did not come up within ${Math.round(timeoutMs / 1000)} s`);
      if (!watcher) try { watcher = fs.watch(consoleLog, () => wake?.()); } catch { /* not created yet: polled */ }
      await new Promise<void>((r) => {
        const t = setTimeout(r, 30);
        wake = () => { clearTimeout(t); r(); };
      });
      wake = undefined;
    }
  } finally {
    watcher?.close();
  }

  function readMarker(): string | undefined {
    try {
      const fd = fs.openSync(consoleLog, 'r');
      try {
        const buf = Buffer.alloc(64 * 1024);
        let n: number;
        while ((n = fs.readSync(fd, buf, 0, buf.length, offset)) > 0) {
          offset += n;
          tail = (tail + buf.subarray(0, n).toString('latin1')).slice(-4096);
          const at = tail.indexOf(marker);
          const eol = at >= 0 ? tail.indexOf('\n', at) : -1;
          if (eol >= 0) return tail.slice(at + marker.length, eol).trim();
        }
      } finally {
        fs.closeSync(fd);
      }
    } catch { /* not created yet */ }
    return undefined;
  }
}

/**
 * Opens one stream to guest vsock `port` through the hybrid vsock socket;
 * rejects if the guest refuses (nobody listening) or does not answer. The
 * socket comes back paused (no byte lost between handshake and caller):
 * pipe() it or resume() it after adding a 'data' listener.
 */
export function connectVsock(vsockSocket: string, port: number, timeoutMs = 10000): Promise<net.Socket> {
  return connectVsockPort(vsockSocket, port, timeoutMs).then((r) => r.socket);
}

/**
 * As connectVsock, with the host-side vsock port of the connection (the
 * `OK <port>` of the handshake): passfd IO names each stream by it
 * (src/runtime/passfd-stdio.ts).
 */
export function connectVsockPort(vsockSocket: string, port: number, timeoutMs = 10000): Promise<{ socket: net.Socket; localPort: number }> {
  return new Promise<{ socket: net.Socket; localPort: number }>((resolve, reject) => {
    const s = net.connect(vsockSocket);
    let line = '';
    const fail = (why: string) => {
      clearTimeout(timer);
      s.destroy();
      reject(new Error(`vsock connect to port ${port}: ${why}`));
    };
    const timer = setTimeout(() => fail('timed out'), timeoutMs);
    s.once('error', (e) => fail(e.message));
    s.once('close', () => fail('refused (connection closed)'));
    s.once('connect', () => s.write(`CONNECT ${port}\n`));
    const onData = (d: Buffer) => {
      const nl = d.indexOf(0x0a);
      if (nl < 0) {
        line += d.toString('latin1');
        if (line.length > 64) fail('bad handshake reply');
        return;
      }
      line += d.subarray(0, nl).toString('latin1');
      s.removeListener('data', onData);
      if (!/^OK [0-9]+$/.test(line)) return fail(`bad handshake reply "${line.slice(0, 64)}"`);
      clearTimeout(timer);
      s.removeAllListeners('error');
      s.removeAllListeners('close');
      s.pause();
      const rest = d.subarray(nl + 1);
      if (rest.length) s.unshift(rest);
      resolve({ socket: s, localPort: Number(line.slice(3)) });
    };
    s.on('data', onData);
  });
}

/** Largest agent message either way (matches the agent's AGENT_MAX_MESSAGE). */
export const AGENT_MAX_MESSAGE = 16 * 1024 * 1024;

/** An error of the agent transport or the agent: `code` is a gRPC code number. */
export interface AgentWireError extends Error {
  code: number;
  details?: string;
}

/**
 * The agent API as the host's AgentClient uses it, whatever carries it:
 * ttrpc over vsock to the guest (dialAgent), or gRPC to a sandbox owner's
 * ctl socket (ctl-channel.ts). Messages are objects of proto/agent.proto
 * in proto-loader's shape; errors are AgentWireError.
 */
export interface AgentWire {
  /** Resolves once the agent can be reached (connects if needed). */
  ready(timeoutMs: number): Promise<void>;
  unary(method: string, req: unknown, timeoutMs?: number): Promise<unknown>;
  /** A server-streaming call as an object-mode Readable of messages; cancel() stops it. */
  stream(method: string, req: unknown): Readable & { cancel(): void };
  close(): void;
}

function wireError(err: unknown): AgentWireError {
  if (err instanceof TtrpcError) return Object.assign(new Error(err.message), { code: err.code });
  return Object.assign(new Error((err as Error).message ?? String(err)), { code: 14 /* UNAVAILABLE */ });
}

/** Phase timings of the first connection (README performance: cold path). */
export interface DialTimings {
  /** vsock CONNECT handshake of the first connection, ms. */
  connectMs?: number;
}

/** ttrpc over hybrid vsock to the guest agent. */
export class TtrpcAgentWire implements AgentWire {
  private conn: Promise<RpcClient> | undefined;
  private readonly open = new Set<net.Socket>();
  private closed = false;
  readonly timings: DialTimings = {};

  constructor(private readonly vsockSocket: string, private readonly port = AGENT_VSOCK_PORT) {}

  private async connect(timeoutMs = 10000): Promise<net.Socket> {
    if (this.closed) throw new TtrpcError('Canceled', 'agent client closed');
    const t0 = Date.now();
    const s = await connectVsock(this.vsockSocket, this.port, timeoutMs);
    this.timings.connectMs ??= Date.now() - t0;
    if (this.closed) {
      s.destroy();
      throw new TtrpcError('Canceled', 'agent client closed');
    }
    this.open.add(s);
    s.once('close', () => this.open.delete(s));
    s.setNoDelay?.(true);
    return s;
  }

  private client(timeoutMs?: number): Promise<RpcClient> {
    if (!this.conn) {
      const p = this.connect(timeoutMs).then((s) => {
        const c = new RpcClient(s, AGENT_SERVICE, AGENT_MAX_MESSAGE);
        s.resume();
        s.once('close', () => { if (this.conn === p) this.conn = undefined; });
        return c;
      });
      p.catch(() => { if (this.conn === p) this.conn = undefined; });
      this.conn = p;
    }
    return this.conn;
  }

  async ready(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await this.client(Math.max(1000, deadline - Date.now()));
        return;
      } catch (err) {
        if (this.closed || Date.now() + 50 > deadline) throw wireError(err);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  async unary(method: string, req: unknown, timeoutMs = 0): Promise<unknown> {
    const m = agentMethods().get(method);
    if (!m) throw Object.assign(new Error(`unknown agent RPC ${method}`), { code: 12 /* UNIMPLEMENTED */ });
    try {
      const c = await this.client();
      return m.decodeResponse(await c.call(method, m.encodeRequest(req), timeoutMs));
    } catch (err) {
      throw wireError(err);
    }
  }

  stream(method: string, req: unknown): Readable & { cancel(): void } {
    const m = agentMethods().get(method)!;
    let sock: net.Socket | undefined;
    let cancelled = false;
    const out = new Readable({
      objectMode: true,
      read: () => sock?.resume(),
      destroy: (err, cb) => {
        cancelled = true;
        sock?.destroy();
        cb(err);
      },
    }) as Readable & { cancel(): void };
    out.cancel = () => {
      if (cancelled) return;
      cancelled = true;
      sock?.destroy();
      out.push(null);
    };
    const fail = (err: unknown) => { if (!cancelled) out.destroy(wireError(err)); };
    this.connect().then((s) => {
      if (cancelled) return void s.destroy();
      sock = s;
      const c = new RpcClient(s, AGENT_SERVICE, AGENT_MAX_MESSAGE);
      c.stream(method, m.encodeRequest(req), (payload) => {
        let msg: unknown;
        try {
          msg = m.decodeResponse(payload);
        } catch (err) {
          fail(new TtrpcError('DataLoss', `${method}: malformed message from the agent: ${(err as Error).message}`));
          s.destroy();
          return;
        }
        // Backpressure: stop reading this stream's socket until the consumer catches up.
        if (!out.push(msg)) s.pause();
      }, (err) => {
        if (err) fail(err);
        else if (!cancelled) out.push(null);
        s.destroy();
      });
      s.resume();
    }, fail);
    return out;
  }

  close(): void {
    this.closed = true;
    void this.conn?.then((c) => c.close(), () => undefined);
    this.conn = undefined;
    for (const s of this.open) s.destroy();
  }
}

/** The agent API over the VM's hybrid vsock socket (connects lazily). */
export function dialAgent(vsockSocket: string): TtrpcAgentWire {
  return new TtrpcAgentWire(vsockSocket);
}
