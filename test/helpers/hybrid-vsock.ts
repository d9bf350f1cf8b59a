/**
 * A stand-in for our hybrid vsock device's host socket (Firecracker's
 * protocol, as src/virtio/vsock serves it): a connection sends
 * `CONNECT <port>\n`; for the one guest port a test serves, the stand-in
 * hands the connection on (with any bytes that came after the line) and the
 * handler answers `OK <host port>\n` when it is ready, a fresh number per
 * connection as the device assigns; any other port is refused (closed), as
 * when nothing listens in the guest. Used where the guest side (the agent's
 * passfd or port-forward code) runs in the test process.
 */
import * as net from 'node:net';

export interface HybridConnection {
  /** The bytes that followed the CONNECT line. */
  rest: Buffer;
  /** Answer `OK <host port>\n`: the host side may use the stream now. */
  ok(): void;
  /** A socket the handler opened for this connection: destroyed by close(). */
  track(s: net.Socket): void;
}

export async function hybridVsockStandIn(sock: string, guestPort: number, onConnect: (c: net.Socket, h: HybridConnection) => void, firstHostPort = 2000): Promise<{ close(): Promise<void> }> {
  let next = firstHostPort;
  const conns = new Set<net.Socket>();
  const track = (s: net.Socket) => {
    conns.add(s);
    s.once('close', () => conns.delete(s));
  };
  const server = net.createServer({ allowHalfOpen: true }, (c) => {
    track(c);
    c.on('error', () => undefined);
    let head = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      head = Buffer.concat([head, d]);
      const nl = head.indexOf(10);
      if (nl < 0) return;
      c.off('data', onData);
      c.pause();
      const port = Number(/^CONNECT (\d+)$/.exec(head.subarray(0, nl).toString())?.[1]);
      if (port !== guestPort) return void c.destroy(); // nobody listens there
      onConnect(c, { rest: head.subarray(nl + 1), ok: () => c.write(`OK ${next++}\n`), track });
    };
    c.on('data', onData);
  });
  await new Promise<void>((r) => server.listen(sock, () => r()));
  return { close: () => new Promise<void>((r) => { for (const c of conns) c.destroy(); server.close(() => r()); }) };
}
