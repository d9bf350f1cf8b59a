/**
 * The real agent service (handlers + ttrpc server, as in the guest) behind a
 * unix socket that answers the hybrid-vsock handshake the host's dialer
 * speaks (`CONNECT <port>\n` -> `OK <port>\n`), as the VMM's vsock device
 * does: what unit tests use instead of a VM. close() ends every connection
 * and removes the socket.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { agentRpcServer, type AgentHandlers } from '../../src/agent/service';

export interface AgentRig {
  socket: string;
  /** Protocol violations the server closed connections for. */
  violations: string[];
  close(): Promise<void>;
}

export async function serveAgentOnUnix(handlers: AgentHandlers, socket: string): Promise<AgentRig> {
  const violations: string[] = [];
  const server = agentRpcServer(handlers, (why) => violations.push(why));
  const sockets = new Set<net.Socket>();
  const listener = net.createServer((s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
    let head = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      head = Buffer.concat([head, d]);
      const nl = head.indexOf(10);
      if (nl < 0) return;
      s.off('data', onData);
      s.pause();
      const port = /^CONNECT (\d+)$/.exec(head.subarray(0, nl).toString())?.[1];
      if (!port) return void s.destroy();
      if (nl + 1 < head.length) s.unshift(head.subarray(nl + 1));
      s.write(`OK ${port}\n`);
      server.serve(s);
      s.resume();
    };
    s.on('data', onData);
  });
  fs.rmSync(socket, { force: true });
  await new Promise<void>((r) => listener.listen(socket, r));
  return {
    socket,
    violations,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => listener.close(r));
      fs.rmSync(socket, { force: true });
    },
  };
}
