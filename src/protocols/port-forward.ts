/**
 * The wire of CRI port-forward into the VM, shared by the host forwarder
 * (src/runtime/port-forward.ts) and the agent (src/agent/port-forward.ts).
 *
 * containerd 1.6 forwards a port by dialling `localhost:PORT` inside the
 * pod's network namespace on the host; in a kata-ts pod the server listens
 * in the VM. The host forwarder accepts that connection and opens one vsock
 * stream per connection to the agent on PORT_FORWARD_VSOCK_PORT, next to
 * passfd IO's listener (Kata's default 1027). On it:
 *
 *   host -> guest: 8-byte header: magic "KTPF", u32 little-endian TCP port
 *   guest -> host: 1 status byte (PF_STATUS_*), then the server's bytes
 *
 * after which the stream is the TCP connection both ways, each direction
 * ending (half-close) on its own. A header with a wrong magic or a port
 * outside 1-65535 makes the agent close the stream without a status.
 */

/** The agent's port-forward vsock port (passfd IO has 1027). */
export const PORT_FORWARD_VSOCK_PORT = 1028;
export const PF_MAGIC = Buffer.from('KTPF', 'latin1');
export const PF_HEADER_BYTES = 8;

/** Connected to 127.0.0.1:port in the guest: what follows is the server's. */
export const PF_STATUS_OK = 0;
/** Nothing listens on that port in the guest (ECONNREFUSED). */
export const PF_STATUS_REFUSED = 1;
/** Any other connect failure (timeout, unreachable, out of resources). */
export const PF_STATUS_FAILED = 2;

/** The header asking the agent to connect to guest `port`. */
export function encodePortForwardHeader(port: number): Buffer {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`port-forward: port ${port} is not a TCP port (1-65535)`);
  const b = Buffer.alloc(PF_HEADER_BYTES);
  PF_MAGIC.copy(b, 0);
  b.writeUInt32LE(port, 4);
  return b;
}

/** The port a header names, or a reason it is not one (the agent logs it and closes). */
export function decodePortForwardHeader(b: Buffer): { port: number } | { error: string } {
  if (b.length !== PF_HEADER_BYTES) return { error: `header is ${b.length} bytes, not ${PF_HEADER_BYTES}` };
  if (!b.subarray(0, 4).equals(PF_MAGIC)) return { error: `bad magic 0x${b.subarray(0, 4).toString('hex')}` };
  const port = b.readUInt32LE(4);
  if (port < 1 || port > 65535) return { error: `port ${port} is not a TCP port (1-65535)` };
  return { port };
}

/** A status byte as words, for logs. */
export function portForwardStatusText(s: number): string {
  return s === PF_STATUS_OK ? 'connected' : s === PF_STATUS_REFUSED ? 'connection refused in the guest' : s === PF_STATUS_FAILED ? 'connect failed in the guest' : `unknown status ${s}`;
}
