/**
 * virtio-vsock (virtio 1.2 §5.10) served over our vhost-user backend to a
 * fake front end (real socket, real memfd, real eventfds) with a Linux-
 * shaped guest driver (guest-vsock.ts) on the other end of the rings, and
 * the Firecracker hybrid-vsock unix socket on the host side.
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import { native } from '../../../src/common/native';
import { Req } from '../../../src/vhost-user/protocol';
import { connectVsock } from '../../../src/protocols/agent-dialer';
import { HDR_SIZE, OP_RW, SHUTDOWN_SEND } from '../../../src/virtio/vsock/packet';
import { FakeFrontEnd } from '../vhost-user/fake-frontend';
import { GuestVsock } from './guest-vsock';
import { closeVsockRig, vsockRig, type VsockRig } from '../../helpers/vhost-user-rig';

async function waitFor(pred: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** The shared rig, plus what QEMU's ordering promises: the backend stays
 * inactive until every ring is enabled, and is active once they all are. */
function rig(): Promise<VsockRig> {
  return vsockRig({
    tmpPrefix: 'kata-vsock-',
    backendName: 'vsock-test',
    afterEnable: async (q, backend) => {
      if (q === 0) expect(backend.isActive, 'not active before every ring is enabled').to.equal(false);
      else await waitFor(() => backend.isActive);
    },
  });
}

function md5(b: Buffer | Buffer[]): string {
  const h = crypto.createHash('md5');
  for (const x of Array.isArray(b) ? b : [b]) h.update(x);
  return h.digest('hex');
}

function readAll(s: net.Socket, bytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let n = 0;
    s.on('data', (d: Buffer) => { parts.push(d); n += d.length; if (n >= bytes) resolve(Buffer.concat(parts)); });
    s.once('error', reject);
    s.once('close', () => (n >= bytes ? undefined : reject(new Error(`closed after ${n}/${bytes} bytes`))));
    s.resume(); // connectVsock hands the stream over paused
  });
}

describe('virtio/vsock over vhost-user', function () {
  this.timeout(30000);
  let r: VsockRig;
  beforeEach(async () => { r = await rig(); });
  afterEach(async () => { await closeVsockRig(r); });

  it('offers the guest CID in config space and activates with the two rings QEMU runs', async () => {
    const cfg = await r.fe.getConfig(0, 8);
    expect(cfg.readBigUInt64LE(0)).to.equal(3n);
    expect(r.backend.isActive).to.equal(true);
    const q = (await r.fe.request(Req.GET_QUEUE_NUM))!;
    expect(q.readBigUInt64LE(0)).to.equal(2n);
  });

  it('host-initiated: CONNECT <port> → OK, 8 MiB each way intact under credit flow control', async () => {
    r.guest.listening.add(5000);
    const s = await connectVsock(r.sock, 5000);
    await waitFor(() => r.guest.conns.size === 1);
    const c = [...r.guest.conns.values()][0];
    const data = crypto.randomBytes(8 << 20);
    s.write(data);
    await c.until(() => c.bytes >= data.length, 20000);
    expect(md5(c.data)).to.equal(md5(data));
    // The device never sent more than the guest's buffer allowed at a time.
    expect(r.hybrid.device.metrics.rxBytes).to.equal(data.length);
    const back = crypto.randomBytes(8 << 20);
    const got = readAll(s, back.length);
    await r.guest.write(c, back);
    expect(md5(await got)).to.equal(md5(back));
    s.destroy();
  });

  it('guest-initiated: connects to <socket>_<port>, echoes both ways, refused ports get RST', async () => {
    const srv = net.createServer((c) => c.pipe(c));
    r.servers.push(srv);
    await new Promise<void>((res) => srv.listen(`${r.sock}_6000`, () => res()));
    const c = await r.guest.connect(6000);
    const data = crypto.randomBytes(1 << 20);
    await r.guest.write(c, data);
    await c.until(() => c.bytes >= data.length, 20000);
    expect(md5(c.data)).to.equal(md5(data));
    let refused = false;
    await r.guest.connect(6001).catch(() => { refused = true; });
    expect(refused).to.equal(true);
  });

  it('refuses a host CONNECT to a port nobody listens on (closed without OK) and bad handshakes', async () => {
    let err = '';
    await connectVsock(r.sock, 7777, 3000).catch((e: Error) => { err = e.message; });
    expect(err).to.match(/refused/);
    const raw = net.connect(r.sock);
    await new Promise<void>((res) => raw.once('connect', () => res()));
    raw.write('HELLO 12\n');
    await new Promise<void>((res) => raw.once('close', () => res()));
  });

  it('carries 64 concurrent connections, 64 KiB each way, without mixing streams', async () => {
    r.guest.listening.add(5001);
    const socks = await Promise.all(Array.from({ length: 64 }, () => connectVsock(r.sock, 5001)));
    await waitFor(() => r.guest.conns.size === 64);
    const payloads = socks.map(() => crypto.randomBytes(64 << 10));
    const byLocal = new Map<number, Buffer>();
    socks.forEach((s, i) => s.write(payloads[i]));
    // Match guest connections to host sockets by the data they carry.
    for (const c of r.guest.conns.values()) await c.until(() => c.bytes >= 64 << 10, 20000);
    const digests = new Set(payloads.map((p) => md5(p)));
    for (const c of r.guest.conns.values()) {
      expect(digests.has(md5(c.data))).to.equal(true);
      byLocal.set(c.peerPort, Buffer.concat(c.data));
    }
    const replies = [...r.guest.conns.values()].map((c) => ({ c, data: crypto.randomBytes(64 << 10) }));
    const reads = socks.map((s) => readAll(s, 64 << 10));
    await Promise.all(replies.map(({ c, data }) => r.guest.write(c, data)));
    const got = await Promise.all(reads);
    const want = new Set(replies.map((x) => md5(x.data)));
    for (const g of got) expect(want.has(md5(g))).to.equal(true);
    for (const s of socks) s.destroy();
    await waitFor(() => r.hybrid.device.connectionCount === 0, 10000);
  });

  it('passes shutdown both ways: host end → guest SHUTDOWN(SEND); guest full shutdown → host socket closes', async () => {
    r.guest.listening.add(5002);
    const s = await connectVsock(r.sock, 5002);
    await waitFor(() => r.guest.conns.size === 1);
    const c = [...r.guest.conns.values()][0];
    s.end('bye');
    await c.until(() => (c.peerShutdown & SHUTDOWN_SEND) !== 0);
    expect(Buffer.concat(c.data).toString()).to.equal('bye');
    const closed = new Promise<void>((res) => s.once('close', () => res()));
    s.resume();
    r.guest.shutdown(c);
    await closed;
    await waitFor(() => r.hybrid.device.connectionCount === 0);
  });

  it('a malformed tx chain puts the device in NEEDS_RESET (err eventfd), the backend survives and restarts', async () => {
    const n = native();
    // A tx "packet" whose header claims more payload than the chain holds.
    const gpa = 0x800000n;
    const hdr = Buffer.alloc(HDR_SIZE);
    hdr.writeBigUInt64LE(3n, 0); hdr.writeBigUInt64LE(2n, 8); hdr.writeUInt32LE(1, 16); hdr.writeUInt32LE(1, 20);
    hdr.writeUInt32LE(60000, 24); hdr.writeUInt16LE(1, 28); hdr.writeUInt16LE(OP_RW, 30);
    r.fe.mem.u8.set(hdr, r.fe.off(gpa, HDR_SIZE));
    r.tx.ring.add([{ gpa, len: HDR_SIZE + 10 }], []);
    n.eventfdWrite(r.tx.kick, 1);
    await waitFor(() => n.eventfdRead(r.tx.err) > 0);
    expect(r.hybrid.device.metrics.needsReset).to.equal(1);
    expect(r.backend.isActive).to.equal(false);
    // The driver resets the device: stop rings, start them again.
    await r.fe.getVringBase(0);
    await r.fe.getVringBase(1);
    expect((await r.fe.request(Req.GET_FEATURES))!.length).to.equal(8);
    r.guest.close();
    r.rx = await r.fe.startRing(0, 128, 0x10000n, { eventIdx: true });
    r.tx = await r.fe.startRing(1, 128, 0x30000n, { eventIdx: true });
    await r.fe.enable(0);
    await r.fe.enable(1);
    await waitFor(() => r.backend.isActive);
    r.guest = new GuestVsock(r.fe, r.rx, r.tx, 3n, 0x100000n);
    r.guest.listening.add(5003);
    const s = await connectVsock(r.sock, 5003);
    s.destroy();
  });

  it('front-end disconnect resets the device and drops connections; a new front end is served', async () => {
    r.guest.listening.add(5004);
    const s = await connectVsock(r.sock, 5004);
    const closed = new Promise<void>((res) => s.once('close', () => res()));
    r.guest.close();
    r.fe.close();
    await closed;
    await waitFor(() => !r.backend.isConnected);
    expect(r.hybrid.device.connectionCount).to.equal(0);
    const fe2 = new FakeFrontEnd();
    fe2.connect(r.vuSock);
    await fe2.negotiate();
    expect(r.backend.connections).to.equal(2);
    fe2.close();
  });
});
