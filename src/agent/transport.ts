/**
 * The agent's byte-stream transport: where the gRPC server gets its
 * connections. For now a virtio-serial port (QEMU `virtserialport` named
 * AGENT_PORT_NAME); HTTP/2 multiplexes every call over that one stream.
 * A later transport (vsock) plugs in here without touching the service.
 *
 * virtio-serial semantics that shape this code (drivers/char/virtio_console.c):
 * a read returns 0 while the host side is not connected, so end-of-file is
 * "no host yet" until a session has started and "host went away" after; each
 * host connection is a fresh HTTP/2 session, injected as its own Duplex.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Duplex } from 'node:stream';
import type * as grpc from '@grpc/grpc-js';

export const AGENT_PORT_NAME = 'agent.channel.0';

/** /dev/vportNpM of the named port, waiting for udev-less devtmpfs to show it. */
export async function findVirtioPort(name: string, timeoutMs = 10000, sysDir = '/sys/class/virtio-ports'): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const p of fs.existsSync(sysDir) ? fs.readdirSync(sysDir) : []) {
      const n = fs.readFileSync(path.join(sysDir, p, 'name'), 'utf8').trim();
      if (n === name && fs.existsSync(`/dev/${p}`)) return `/dev/${p}`;
    }
    if (Date.now() > deadline) throw new Error(`virtio-serial port "${name}" not found`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One host session on the port's fd. Never closes the fd itself. */
class PortSession extends Duplex {
  private started = false;
  private readonly buf = Buffer.allocUnsafe(64 * 1024);

  constructor(private readonly fd: number) {
    super();
  }

  override _read(): void {
    fs.read(this.fd, this.buf, 0, this.buf.length, null, (err, n) => {
      if (err) {
        if (err.code === 'EAGAIN' || err.code === 'EINTR') setTimeout(() => this._read(), 10);
        else this.destroy(err);
        return;
      }
      if (n === 0) {
        if (!this.started) setTimeout(() => this._read(), 20); // no host connected yet
        else this.push(null); // host disconnected: session over
        return;
      }
      this.started = true;
      this.push(Buffer.from(this.buf.subarray(0, n)));
    });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    let off = 0;
    const next = (): void => {
      if (off >= chunk.length) return cb();
      fs.write(this.fd, chunk, off, chunk.length - off, null, (err, n) => {
        if (err) return cb(err);
        off += n;
        next();
      });
    };
    next();
  }
}

/** Serve `server` on the named virtio-serial port forever, one session at a time. */
export async function serveOnVirtioPort(server: grpc.Server, creds: grpc.ServerCredentials, onReady: () => void, name = AGENT_PORT_NAME): Promise<never> {
  const dev = await findVirtioPort(name);
  const fd = fs.openSync(dev, 'r+');
  const injector = server.createConnectionInjector(creds);
  onReady();
  for (;;) {
    const s = new PortSession(fd);
    const done = new Promise<void>((r) => {
      s.once('end', r);
      s.once('close', r);
      s.once('error', r);
    });
    injector.injectConnection(s);
    await done;
    s.destroy();
  }
}
