/**
 * The agent's transport: an AF_VSOCK stream listener (virtio 1.2 §5.10) on
 * AGENT_VSOCK_PORT, the Kata way. Each accepted connection is its own HTTP/2
 * session injected into the gRPC server, so the host may hold several at
 * once (the runtime, kata-ctl, a reconnect after a crash).
 *
 * Node has no AF_VSOCK: the native addon (built on the host with the same
 * Node and libc, copied into the guest image) listens and accepts, and
 * FdStream wraps accepted fds as Duplex streams on Node's loop.
 */
import type * as grpc from '@grpc/grpc-js';
import { native } from '../common/native';
import { acceptLoop } from '../common/fd-stream';
import { AGENT_VSOCK_PORT } from '../protocols/agent-dialer';

/** Serves `server` on vsock port `port` until the process ends. */
export function serveOnVsock(server: grpc.Server, creds: grpc.ServerCredentials, onReady: () => void, port = AGENT_VSOCK_PORT): void {
  const injector = server.createConnectionInjector(creds);
  const fd = native().vsockListen(port, 64);
  acceptLoop(fd, (s) => {
    s.on('error', () => s.destroy());
    injector.injectConnection(s);
  }, (err) => process.stderr.write(`kata-agent: vsock accept: ${err.message}\n`));
  onReady();
}
