/**
 * How the host reaches the guest agent: the one module that knows the agent
 * transport. The agent listens on vsock port AGENT_VSOCK_PORT; the VM's vsock
 * device is exposed on the host as a Firecracker-style hybrid vsock unix
 * socket (src/virtio/vsock/hybrid.ts): connect, write `CONNECT <port>\n`,
 * read `OK <local port>\n`, then the stream is the vsock stream.
 *
 * gRPC (grpc-js) can only dial addresses, not hand-made streams, so the
 * dialer runs a tiny local unix-socket relay next to the vsock socket: each
 * connection grpc-js opens to it becomes one hybrid-vsock connection to the
 * agent. The guest prints AGENT_READY_MARKER on its console once it listens,
 * so the host dials when the guest is ready.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { KataError } from '../common/errors';
import { agentClientConstructor } from './agent-api';

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
  for (;;) {
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
    if (exited !== undefined) throw new DialError('vm-exited', `the VM stopped before the agent came up: ${exited}`);
    if (Date.now() > deadline) throw new DialError('timeout', `the guest agent did not come up within ${Math.round(timeoutMs / 1000)} s`);
    await new Promise((r) => setTimeout(r, 30));
  }
}

/**
 * Opens one stream to guest vsock `port` through the hybrid vsock socket;
 * rejects if the guest refuses (nobody listening) or does not answer. The
 * socket comes back paused (no byte lost between handshake and caller):
 * pipe() it or resume() it after adding a 'data' listener.
 */
export function connectVsock(vsockSocket: string, port: number, timeoutMs = 10000): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
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
      resolve(s);
    };
    s.on('data', onData);
  });
}

let relaySeq = 0;

/**
 * HTTP/2 receive window (per stream and per connection) the host grants the
 * agent. With HTTP/2's default 64 KiB the agent may have only 64 KiB of a
 * ReadStdout stream in flight, then waits for our WINDOW_UPDATE to cross
 * vsock and wake its (TCG-slow) event loop: the stream went out in 16 KiB
 * frames, one vsock packet, kick and interrupt each. Measured on 32 MiB of
 * stdout in a TCG guest (README, vsock figures): 64 KiB →
 * ~1740 tx packets, 16 MiB → ~700, and about half the guest CPU. The host
 * side is not the limit: grpc-js only buffers what the reader has not taken.
 */
export const AGENT_FLOW_CONTROL_WINDOW = 16 * 1024 * 1024;

/** A gRPC client for the AgentService over the VM's hybrid vsock socket. */
export function dialAgent(vsockSocket: string): grpc.Client {
  // One relay per client (a runtime and kata-ctl helpers may dial at once),
  // in the VM's own directory, named short: sun_path holds 108 bytes and
  // sandbox dirs carry 64-character ids.
  const relayPath = path.join(path.dirname(vsockSocket), `r${process.pid.toString(36)}.${(relaySeq++).toString(36)}`);
  try { fs.unlinkSync(relayPath); } catch { /* none */ }
  const open = new Set<net.Socket>();
  const relay = net.createServer((c) => {
    open.add(c);
    c.once('close', () => open.delete(c));
    c.on('error', () => c.destroy());
    c.pause();
    connectVsock(vsockSocket, AGENT_VSOCK_PORT).then((v) => {
      open.add(v);
      v.once('close', () => open.delete(v));
      v.on('error', () => c.destroy());
      if (c.destroyed) { v.destroy(); return; }
      c.pipe(v);
      v.pipe(c);
      c.once('close', () => v.destroy());
      v.once('close', () => c.destroy());
      c.resume();
    }, () => c.destroy());
  });
  relay.listen(relayPath);
  relay.unref();
  const Ctor = agentClientConstructor();
  const client = new Ctor(`unix:${relayPath}`, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
    'grpc.use_local_subchannel_pool': 1,
    'grpc.keepalive_time_ms': 0,
    'grpc-node.flow_control_window': AGENT_FLOW_CONTROL_WINDOW,
  });
  const close = client.close.bind(client);
  client.close = () => {
    close();
    relay.close();
    for (const s of open) s.destroy();
    try { fs.unlinkSync(relayPath); } catch { /* gone */ }
  };
  return client;
}
