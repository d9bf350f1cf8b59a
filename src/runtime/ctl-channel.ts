/**
 * How kata-ctl reaches the agent of a sandbox another process owns — the one
 * module that knows this transport.
 *
 * The owning runtime serves `<sandbox dir>/ctl.sock` (mode 0600 in the 0700
 * sandbox dir: root's tool only) with the ctl-proxy allowlist and forwards
 * each call on its own agent session; kata-ctl dials that socket as plain
 * gRPC over a unix socket. Chosen when the agent channel was one
 * virtio-serial port (one HTTP/2 session, held by the owner) and kept on
 * hybrid vsock because it also enforces the owner's configuration
 * (debug_console_enabled) and keeps kata-ctl away from the owner's
 * containers. To dial the agent directly instead (several vsock connections
 * are allowed now), dialSandboxAgent would return
 * `new AgentClient(dialAgent(<the sandbox's hybrid vsock socket>))` and
 * the agent's own `agent.debug_console` gate would be the only policy.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { agentClientConstructor, agentServiceDefinition } from '../protocols/agent-api';
import { AgentClient } from './agent-client';
import type { CtlProxyOptions } from './ctl-proxy';

/**
 * grpc-js is loaded on first use, not with this module (issue 13): the
 * owner of every sandbox serves ctl.sock, but kata-ctl seldom calls, and
 * grpc-js with a Server is ~2.3 MiB of V8 heap and ~5 MiB of anonymous
 * memory in a bare node (README "Memory density").
 */
function grpcJs(): typeof grpc {
  return require('@grpc/grpc-js') as typeof grpc;
}

export const CTL_SOCKET_NAME = 'ctl.sock';

export function ctlSocketPath(sandboxDir: string): string {
  return path.join(sandboxDir, CTL_SOCKET_NAME);
}

export interface CtlChannel {
  readonly socket: string;
  close(): Promise<void>;
}

/**
 * Owner side: serve kata-ctl on the sandbox's ctl socket. ctl.sock is a
 * plain unix listener; the gRPC server (grpc-js and the proxy handlers) is
 * started on the first connection, on `ctl.sock.grpc` beside it, and every
 * ctl.sock connection is piped to it — kata-ctl sees the same gRPC service.
 */
export async function serveCtlChannel(sandboxDir: string, agent: AgentClient, opts: CtlProxyOptions): Promise<CtlChannel> {
  const socket = ctlSocketPath(sandboxDir);
  const inner = `${socket}.grpc`;
  fs.rmSync(socket, { force: true });
  fs.rmSync(inner, { force: true });
  let server: grpc.Server | undefined;
  let started: Promise<void> | undefined;
  const conns = new Set<net.Socket>();
  const startGrpc = (): Promise<void> => (started ??= (async () => {
    const g = grpcJs();
    const { ctlProxyHandlers } = require('./ctl-proxy') as typeof import('./ctl-proxy');
    const srv = new g.Server();
    srv.addService(agentServiceDefinition(), ctlProxyHandlers(agent, opts));
    server = srv;
    await new Promise<void>((resolve, reject) =>
      srv.bindAsync(`unix:${inner}`, g.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
    fs.chmodSync(inner, 0o600);
  })());
  const front = net.createServer((c) => {
    conns.add(c);
    c.on('close', () => conns.delete(c));
    c.on('error', () => c.destroy());
    c.pause();
    startGrpc().then(() => {
      if (c.destroyed) return;
      const up = net.createConnection(inner);
      conns.add(up);
      up.on('close', () => { conns.delete(up); c.destroy(); });
      up.on('error', () => c.destroy());
      c.on('close', () => up.destroy());
      c.pipe(up);
      up.pipe(c);
      c.resume();
    }, () => c.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    front.once('error', reject);
    front.listen(socket, () => {
      front.off('error', reject);
      resolve();
    });
  });
  fs.chmodSync(socket, 0o600);
  let closed: Promise<void> | undefined;
  return {
    socket,
    close: () => (closed ??= (async () => {
      // Stop listening now; the callback would wait for open connections (closed below).
      front.close();
      await started?.catch(() => undefined);
      if (server) {
        const srv = server;
        await new Promise<void>((resolve) => {
          // Give in-flight calls a moment, then cut streams (an open console).
          const force = setTimeout(() => srv.forceShutdown(), 1000);
          srv.tryShutdown(() => {
            clearTimeout(force);
            resolve();
          });
        });
      }
      for (const c of conns) c.destroy();
      fs.rmSync(socket, { force: true });
      fs.rmSync(inner, { force: true });
    })()),
  };
}

/** kata-ctl side: an agent client for a running sandbox, or undefined when its owner serves none. */
export function dialSandboxAgent(sandboxDir: string): AgentClient | undefined {
  const socket = ctlSocketPath(sandboxDir);
  if (!fs.existsSync(socket)) return undefined;
  return new AgentClient(dialUnixAgent(socket));
}

/** A gRPC AgentService client on a plain unix socket (no vsock handshake). */
export function dialUnixAgent(socket: string): grpc.Client {
  const g = grpcJs();
  const Ctor = agentClientConstructor(g);
  return new Ctor(`unix:${socket}`, g.credentials.createInsecure(), { 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
}
