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
import { native, type NativeAddon } from '../common/native';
import { acceptLoop } from '../common/fd-stream';
import { AGENT_VSOCK_PORT } from '../protocols/agent-dialer';
import type { RpcServer } from '../protocols/ttrpc/rpc-server';

/**
 * The listener's (so every accepted connection's) vsock buffer. Linux sends
 * at most min(its own buffer, the host's buf_alloc) ahead of the host's
 * credit updates; at the default 256 KiB a TCG guest streaming container
 * stdout stopped for credit every few packets. 2 MiB matches the host
 * device's window (src/virtio/vsock/device.ts DEFAULT_BUF_ALLOC). It is
 * also what this side advertises for host→guest bytes, held in guest
 * memory only while the agent has not read them.
 */
export const AGENT_VSOCK_BUFFER = 2 * 1024 * 1024;

/**
 * A listening vsock socket on `port` whose connections get `bufferBytes`
 * windows (the agent's RPC, passfd and port-forward listeners); a size the
 * kernel refuses is one `log` line, and the streams keep its default.
 */
export function listenVsockSized(port: number, bufferBytes: number, log: (msg: string) => void, n: NativeAddon = native()): number {
  const fd = n.vsockListen(port, 64);
  const size = n.vsockSetBufferSize ? n.vsockSetBufferSize(fd, bufferBytes) : 0;
  if (size < 0) log(`vsock buffer size ${bufferBytes}: errno ${-size}; streams keep the kernel's default window`);
  return fd;
}

/** Serves `server` on vsock port `port` until the process ends. */
export function serveOnVsock(server: RpcServer, onReady: () => void, port = AGENT_VSOCK_PORT): void {
  const fd = listenVsockSized(port, AGENT_VSOCK_BUFFER, (m) => process.stderr.write(`kata-agent: ${m}\n`));
  acceptLoop(fd, (s) => server.serve(s), (err) => process.stderr.write(`kata-agent: vsock accept: ${err.message}\n`));
  onReady();
}
