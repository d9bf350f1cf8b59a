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
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { agentClientConstructor, agentServiceDefinition } from '../protocols/agent-api';
import { AgentClient } from './agent-client';
import { ctlProxyHandlers, type CtlProxyOptions } from './ctl-proxy';

export const CTL_SOCKET_NAME = 'ctl.sock';

export function ctlSocketPath(sandboxDir: string): string {
  return path.join(sandboxDir, CTL_SOCKET_NAME);
}

export interface CtlChannel {
  readonly socket: string;
  close(): Promise<void>;
}

/** Owner side: serve kata-ctl on the sandbox's ctl socket. */
export async function serveCtlChannel(sandboxDir: string, agent: AgentClient, opts: CtlProxyOptions): Promise<CtlChannel> {
  const socket = ctlSocketPath(sandboxDir);
  fs.rmSync(socket, { force: true });
  const server = new grpc.Server();
  server.addService(agentServiceDefinition(), ctlProxyHandlers(agent, opts));
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  fs.chmodSync(socket, 0o600);
  let closed: Promise<void> | undefined;
  return {
    socket,
    close: () => (closed ??= new Promise<void>((resolve) => {
      // Give in-flight calls a moment, then cut streams (an open console).
      const force = setTimeout(() => server.forceShutdown(), 1000);
      server.tryShutdown(() => {
        clearTimeout(force);
        fs.rmSync(socket, { force: true });
        resolve();
      });
    })),
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
  const Ctor = agentClientConstructor(grpc);
  return new Ctor(`unix:${socket}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
}
