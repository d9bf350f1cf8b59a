/**
 * How the host reaches the guest agent: the one module that knows the agent
 * transport. Today the agent channel is a virtio-serial port whose host end
 * is a unix socket served by the VMM; gRPC's HTTP/2 runs straight over it
 * (`unix:` target). The guest prints AGENT_READY_MARKER on its console once
 * the port is open, so the host dials exactly once, when the guest listens.
 */
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { agentClientConstructor } from './agent-api';

export const AGENT_READY_MARKER = 'KATA_TS_AGENT_READY';

export class DialError extends Error {
  constructor(readonly kind: 'timeout' | 'vm-exited', message: string) {
    super(message);
    this.name = 'DialError';
  }
}

/** Waits until `marker` appears in the console log, the VM exits, or the timeout. */
export async function waitForMarker(consoleLog: string, timeoutMs: number, vmExited: Promise<string>, marker = AGENT_READY_MARKER): Promise<void> {
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
          if (tail.includes(marker)) return;
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

/** A gRPC client for the AgentService over the VMM's agent socket. */
export function dialAgent(agentSocket: string): grpc.Client {
  const Ctor = agentClientConstructor();
  return new Ctor(`unix:${agentSocket}`, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
    // One long-lived HTTP/2 session: the virtio-serial port carries exactly one.
    'grpc.use_local_subchannel_pool': 1,
    'grpc.keepalive_time_ms': 0,
  });
}
