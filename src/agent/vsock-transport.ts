/**
 * The agent's transport: an AF_VSOCK stream listener (virtio 1.2 §5.10) on
 * AGENT_VSOCK_PORT, the Kata way, speaking ttrpc (as Kata's agent does since
 * 2.0). Each accepted connection is served on its own, so the host may hold
 * several at once (the runtime's calls, one per output stream, kata-ctl, a
 * reconnect after a crash).
 *
 * Node has no AF_VSOCK: the native addon (built on the host with the same
 * Node and libc, copied into the guest image) listens and accepts, and
 * FdStream wraps accepted fds as Duplex streams on Node's loop.
 */
import { native } from '../common/native';
import { acceptLoop } from '../common/fd-stream';
import { AGENT_VSOCK_PORT } from '../protocols/agent-dialer';
import type { RpcServer } from '../protocols/ttrpc/rpc-server';

/** Serves `server` on vsock port `port` until the process ends. */
export function serveOnVsock(server: RpcServer, onReady: () => void, port = AGENT_VSOCK_PORT): void {
  const fd = native().vsockListen(port, 64);
  acceptLoop(fd, (s) => server.serve(s), (err) => process.stderr.write(`kata-agent: vsock accept: ${err.message}\n`));
  onReady();
}
