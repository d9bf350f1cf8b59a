/**
 * CRI port-forward without a VM: the wire's header codec and its bounds
 * (src/protocols/port-forward.ts), and the agent's side
 * (src/agent/port-forward.ts) on unix sockets standing for vsock streams,
 * against real TCP servers on 127.0.0.1: bytes both ways, half-close each
 * way, a refused port, and bad headers (wrong magic, port 0, port > 65535,
 * short, none at all) closed with one log line each.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { servePortForward } from '../../../src/agent/port-forward';
import {
  decodePortForwardHeader, encodePortForwardHeader, PF_HEADER_BYTES, PF_MAGIC, PF_STATUS_OK, PF_STATUS_REFUSED, PORT_FORWARD_VSOCK_PORT,
} from '../../../src/protocols/port-forward';

function rawHeader(port: number, magic = PF_MAGIC): Buffer {
  const b = Buffer.alloc(PF_HEADER_BYTES);
  magic.copy(b, 0);
  b.writeUInt32LE(port, 4);
  return b;
}

/** Everything a socket receives until it ends or closes. */
function collect(s: net.Socket): Promise<Buffer> {
  const parts: Buffer[] = [];
  return new Promise((r) => {
    s.on('data', (d: Buffer) => parts.push(d));
    s.once('end', () => r(Buffer.concat(parts)));
    s.once('close', () => r(Buffer.concat(parts)));
  });
}

/** A free TCP port on 127.0.0.1 with nothing listening on it (bound, then closed). */
async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

describe('unit/agent/port-forward', function () {
  this.timeout(20_000);

  describe('header codec', () => {
    it('round-trips every edge port and names the vsock port next to passfd', () => {
      for (const p of [1, 80, 8080, 65535]) {
        const h = encodePortForwardHeader(p);
        expect(h.length).to.equal(PF_HEADER_BYTES);
        expect(decodePortForwardHeader(h)).to.deep.equal({ port: p });
      }
      expect(PORT_FORWARD_VSOCK_PORT).to.equal(1028);
    });

    it('refuses to encode a port that is not a TCP port', () => {
      for (const p of [0, -1, 65536, 1.5, NaN]) expect(() => encodePortForwardHeader(p), String(p)).to.throw(RangeError, /not a TCP port/);
    });

    it('decodes bad headers into one reason each', () => {
      expect(decodePortForwardHeader(rawHeader(0))).to.deep.equal({ error: 'port 0 is not a TCP port (1-65535)' });
      expect(decodePortForwardHeader(rawHeader(65536))).to.deep.equal({ error: 'port 65536 is not a TCP port (1-65535)' });
      expect(decodePortForwardHeader(rawHeader(0xffffffff))).to.have.property('error').that.matches(/4294967295/);
      expect(decodePortForwardHeader(rawHeader(80, Buffer.from('GET ')))).to.deep.equal({ error: 'bad magic 0x47455420' });
      expect(decodePortForwardHeader(Buffer.alloc(3))).to.deep.equal({ error: 'header is 3 bytes, not 8' });
    });
  });

  describe('agent side', () => {
    let dir: string;
    let listener: net.Server;
    let sock: string;
    let logs: string[];
    let served: Promise<void>[];
    const servers: net.Server[] = [];
    let headerWaitMs = 10_000;

    beforeEach(async () => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-pf-'));
      sock = path.join(dir, 'pf.sock');
      logs = [];
      served = [];
      headerWaitMs = 10_000;
      // Each accepted connection stands for a vsock stream from the host.
      listener = net.createServer({ allowHalfOpen: true }, (s) => served.push(servePortForward(s, { log: (m) => logs.push(m), headerWaitMs })));
      await new Promise<void>((r) => listener.listen(sock, r));
    });

    afterEach(async () => {
      await new Promise((r) => listener.close(r));
      for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
      fs.rmSync(dir, { recursive: true, force: true });
    });

    const dial = (): Promise<net.Socket> => new Promise((resolve, reject) => {
      const s = net.connect({ path: sock, allowHalfOpen: true });
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });

    /** A TCP server on 127.0.0.1 running `onConn` per connection; its port. */
    async function tcpServer(onConn: (s: net.Socket) => void): Promise<number> {
      const s = net.createServer({ allowHalfOpen: true }, onConn);
      servers.push(s);
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
      return (s.address() as net.AddressInfo).port;
    }

    it('carries bytes both ways and passes a half-close each way, in order', async () => {
      let serverGot: Promise<Buffer> | undefined;
      const port = await tcpServer((s) => {
        // Reads the whole request (to the client's FIN), then answers and ends.
        serverGot = collect(s).then((req) => { s.end(Buffer.concat([Buffer.from('got:'), req])); return req; });
      });
      const c = await dial();
      const reply = collect(c);
      const big = Buffer.alloc(3 * 1024 * 1024, 7); // past every socket buffer: backpressure is exercised
      c.write(encodePortForwardHeader(port));
      c.write(big);
      c.end(); // half-close: the server sees its end, the reply still comes back
      const r = await reply;
      expect(r[0]).to.equal(PF_STATUS_OK);
      expect(r.subarray(1, 5).toString()).to.equal('got:');
      expect(r.subarray(5).equals(big)).to.equal(true);
      expect((await serverGot!).length).to.equal(big.length);
      await Promise.all(served);
      expect(logs).to.deep.equal([]);
    });

    it('passes the server half-close to the host while the host still sends', async () => {
      let serverGot: Promise<Buffer> | undefined;
      const port = await tcpServer((s) => {
        s.end('hello'); // the server's FIN first
        serverGot = collect(s);
      });
      const c = await dial();
      const parts: Buffer[] = [];
      const ended = new Promise<void>((r) => c.once('end', r));
      const closed = new Promise((r) => c.once('close', r));
      c.on('data', (d: Buffer) => parts.push(d));
      c.write(encodePortForwardHeader(port));
      await ended; // the server's FIN reached us...
      expect(Buffer.concat(parts).toString('latin1')).to.equal('\u0000hello');
      expect(c.writable).to.equal(true); // ...and our direction is still open
      c.end('bye');
      expect((await serverGot!).toString()).to.equal('bye');
      await closed;
      await Promise.all(served);
    });

    it('answers "refused" for a port nobody listens on, and closes', async () => {
      const port = await closedPort();
      const c = await dial();
      const got = collect(c);
      c.write(encodePortForwardHeader(port));
      c.write('early bytes, dropped');
      expect([...(await got)]).to.deep.equal([PF_STATUS_REFUSED]);
      c.destroy();
      await Promise.all(served);
      expect(logs).to.deep.equal([]); // a refused port is normal, not worth a line
    });

    for (const [name, bytes, why] of [
      ['a wrong magic', rawHeader(80, Buffer.from('HTTP')), /bad magic/],
      ['port 0', rawHeader(0), /port 0 is not a TCP port/],
      ['port 65536', rawHeader(65536), /port 65536 is not a TCP port/],
    ] as const) {
      it(`closes a stream with ${name}, one log line, no status`, async () => {
        const c = await dial();
        const got = collect(c);
        c.write(bytes);
        expect((await got).length).to.equal(0);
        c.destroy();
        await Promise.all(served);
        expect(logs).to.have.length(1);
        expect(logs[0]).to.match(why);
      });
    }

    it('closes a stream that ends inside its header', async () => {
      const c = await dial();
      const got = collect(c);
      c.end(Buffer.from('KTP'));
      expect((await got).length).to.equal(0);
      c.destroy();
      await Promise.all(served);
      expect(logs).to.deep.equal(['closed a connection: the host closed it before a whole header']);
    });

    it('closes a stream that sends no header in time', async () => {
      headerWaitMs = 200;
      const c = await dial();
      const got = collect(c);
      expect((await got).length).to.equal(0);
      c.destroy();
      await Promise.all(served);
      expect(logs).to.deep.equal(['closed a connection: no 8-byte header within 200 ms']);
    });
  });
});
