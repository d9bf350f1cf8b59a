/**
 * Host side of the vsock device in Firecracker's "hybrid vsock" style
 * (firecracker docs/vsock.md): the VM's vsock is a unix socket on the host.
 *
 *  - host → guest: a client connects to `<socket>`, writes `CONNECT <port>\n`
 *    and, once the guest accepted, reads `OK <local port>\n`; from then on
 *    the unix stream is the vsock stream. If the guest refuses (nobody
 *    listens on the port) the unix connection is closed.
 *  - guest → host: a guest connection to (CID 2, port P) is forwarded to the
 *    unix socket `<socket>_<P>`, if someone listens there; else RST.
 *
 * This is the device's "event wiring" for host endpoints; the device model
 * itself (device.ts) only sees Duplex streams.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { logger } from '../../common/log';
import { VsockDevice, type VsockDeviceOptions } from './device';

/** Longest handshake line we read before giving up on a client. */
const MAX_LINE = 64;
const HANDSHAKE_TIMEOUT_MS = 10000;

/** Dials `<socketPath>_<port>` for guest-initiated connections. */
export function hybridDialer(socketPath: string): (port: number) => Promise<Duplex> {
  return (port) => new Promise<Duplex>((resolve, reject) => {
    const s = net.connect(`${socketPath}_${port}`);
    s.once('connect', () => { s.removeListener('error', reject); resolve(s); });
    s.once('error', reject);
  });
}

export class HybridVsock {
  readonly device: VsockDevice;
  private server: net.Server | undefined;
  private readonly clients = new Set<net.Socket>();
  private readonly log = logger('virtio.vsock.hybrid');

  constructor(readonly socketPath: string, opts: Omit<VsockDeviceOptions, 'dialHost'>) {
    this.device = new VsockDevice({ ...opts, dialHost: hybridDialer(socketPath) });
  }

  /** Starts accepting host clients on the socket. */
  async listen(): Promise<void> {
    try { fs.unlinkSync(this.socketPath); } catch { /* none */ }
    const server = net.createServer({ pauseOnConnect: false }, (s) => this.onClient(s));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => { server.removeListener('error', reject); resolve(); });
    });
    // The VM, not this listener, decides how long the process lives.
    server.unref();
  }

  private onClient(s: net.Socket): void {
    this.clients.add(s);
    s.once('close', () => this.clients.delete(s));
    s.on('error', () => undefined);
    let line = Buffer.alloc(0);
    const timer = setTimeout(() => s.destroy(), HANDSHAKE_TIMEOUT_MS);
    timer.unref();
    const onData = (d: Buffer) => {
      line = Buffer.concat([line, d]);
      const nl = line.indexOf(0x0a);
      if (nl < 0) {
        if (line.length > MAX_LINE) { clearTimeout(timer); s.destroy(); }
        return;
      }
      clearTimeout(timer);
      s.removeListener('data', onData);
      const m = /^CONNECT ([0-9]{1,10})$/.exec(line.subarray(0, nl).toString('latin1').trim());
      const port = m ? Number(m[1]) : NaN;
      if (!m || port > 0xffffffff) {
        this.log.debug('bad hybrid vsock handshake', { line: line.subarray(0, nl).toString('latin1').slice(0, MAX_LINE) });
        s.destroy();
        return;
      }
      const rest = line.subarray(nl + 1);
      this.device.connectToGuest(port, s, rest.length ? Buffer.from(rest) : undefined, (local) => {
        // Written before any guest data: attach() resumes the stream only
        // after this callback, and rx packets are produced later.
        s.write(`OK ${local}\n`);
      });
    };
    s.on('data', onData);
  }

  /** Stops listening, closes every connection, resets the device. */
  async close(): Promise<void> {
    this.device.close();
    for (const c of this.clients) c.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((r) => server.close(() => r()));
    try { fs.unlinkSync(this.socketPath); } catch { /* gone */ }
  }
}
