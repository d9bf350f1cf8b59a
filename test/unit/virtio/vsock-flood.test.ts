/**
 * virtio-vsock against a hostile guest (decision 2): a driver that floods
 * the device with packets that each earn a reply while it stops taking rx
 * buffers must not grow host memory. RST replies wait in a bounded queue
 * (MAX_QUEUED_RST, as Firecracker's muxer rx queue) and are dropped and
 * counted beyond it; CREDIT_REQUESTs earn at most one pending CREDIT_UPDATE
 * per connection; REQUESTs beyond MAX_CONNECTIONS get RST. The device keeps
 * working for a guest that behaves again.
 */
import { expect } from 'chai';
import * as net from 'node:net';
import { connectVsock } from '../../../src/protocols/agent-dialer';
import { MAX_CONNECTIONS, MAX_QUEUED_RST } from '../../../src/virtio/vsock/device';
import { OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW } from '../../../src/virtio/vsock/packet';
import { closeVsockRig, vsockRig, type VsockRig } from '../../helpers/vhost-user-rig';

async function waitFor(pred: () => boolean, ms = 10000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 2));
  }
}

describe('virtio/vsock: a flooding guest cannot grow host memory', function () {
  this.timeout(60000);
  let r: VsockRig;
  beforeEach(async () => { r = await vsockRig({ tmpPrefix: 'kata-vsock-flood-', backendName: 'vsock-flood' }); });
  afterEach(async () => { await closeVsockRig(r); });

  /** Sends n packets from the guest and waits until the device has taken them all off the tx ring. */
  async function flood(n: number, make: (i: number) => Parameters<VsockRig['guest']['send']>[0]): Promise<void> {
    const m = r.hybrid.device.metrics;
    const before = m.txPackets;
    for (let i = 0; i < n; i++) {
      r.guest.send(make(i));
      if (r.guest.txBacklog > 256) await new Promise((res) => setImmediate(res));
    }
    await waitFor(() => m.txPackets - before >= n, 30000);
  }

  it(`RSTs for 20000 packets to unknown connections: at most ${MAX_QUEUED_RST} wait, the rest are dropped and counted; the device still serves`, async () => {
    const dev = r.hybrid.device;
    r.guest.rxPaused = true;
    const N = 20000;
    // RW on connections that do not exist: each earns an RST (§5.10.6.3).
    await flood(N, (i) => r.guest.hdr(40000 + (i % 20000), 9999, OP_RW));
    await new Promise((res) => setTimeout(res, 50)); // let queued rx passes run
    const delivered = dev.metrics.rxPackets; // into the rx buffers the guest posted before it stopped
    expect(delivered, 'rx buffers filled before the guest stopped reading').to.be.greaterThan(0);
    expect(dev.queuedControlPackets, 'RSTs waiting in host memory').to.equal(MAX_QUEUED_RST);
    expect(dev.metrics.rstDropped).to.equal(N - delivered - MAX_QUEUED_RST);
    expect(dev.isActive, 'a flood is not a malformed ring').to.equal(true);
    // The guest takes its rx buffers again: the queue drains, every RST it gets is one the device sent.
    r.guest.rxPaused = false;
    r.guest.pollRx();
    await waitFor(() => dev.queuedControlPackets === 0);
    await waitFor(() => (r.guest.opsIn.get(OP_RST) ?? 0) === delivered + MAX_QUEUED_RST);
    // And connections work as before.
    r.guest.listening.add(5000);
    const s = await connectVsock(r.sock, 5000);
    await waitFor(() => r.guest.conns.size === 1);
    const c = [...r.guest.conns.values()][0];
    s.write('after the flood');
    await c.until(() => c.bytes >= 15);
    expect(Buffer.concat(c.data).toString()).to.equal('after the flood');
    s.destroy();
  });

  it('10000 CREDIT_REQUESTs on one connection leave at most one CREDIT_UPDATE pending', async () => {
    const dev = r.hybrid.device;
    r.guest.listening.add(5001);
    const s = await connectVsock(r.sock, 5001);
    await waitFor(() => r.guest.conns.size === 1);
    const c = [...r.guest.conns.values()][0];
    r.guest.rxPaused = true;
    const before = dev.metrics.rxPackets;
    await flood(10000, () => r.guest.hdr(c.localPort, c.peerPort, OP_CREDIT_REQUEST, c));
    await new Promise((res) => setTimeout(res, 50));
    expect(dev.queuedControlPackets).to.be.at.most(1);
    expect(dev.metrics.rxPackets - before, 'updates sent into the posted buffers').to.be.at.most(128);
    r.guest.rxPaused = false;
    r.guest.pollRx();
    await waitFor(() => dev.queuedControlPackets === 0);
    expect(r.guest.opsIn.get(OP_CREDIT_UPDATE) ?? 0).to.be.within(1, 129);
    // The connection still carries data.
    s.write('still here');
    await c.until(() => c.bytes >= 10);
    expect(Buffer.concat(c.data).toString()).to.equal('still here');
    s.destroy();
  });

  it(`guest REQUESTs beyond ${MAX_CONNECTIONS} connections get RST`, async () => {
    const dev = r.hybrid.device;
    const accepted: net.Socket[] = [];
    const srv = net.createServer((sock) => { accepted.push(sock); sock.on('error', () => undefined); });
    r.servers.push(srv);
    // A backlog for the burst: a unix socket refuses connects beyond it (EAGAIN), which would be RSTs too.
    await new Promise<void>((res) => srv.listen({ path: `${r.sock}_6000`, backlog: 2048 }, () => res()));
    const extra = 50;
    await flood(MAX_CONNECTIONS + extra, (i) => r.guest.hdr(20000 + i, 6000, OP_REQUEST));
    const seen = () => `RESPONSE ${r.guest.opsIn.get(OP_RESPONSE) ?? 0}, RST ${r.guest.opsIn.get(OP_RST) ?? 0}, connections ${dev.connectionCount}`;
    await waitFor(() => (r.guest.opsIn.get(OP_RESPONSE) ?? 0) + (r.guest.opsIn.get(OP_RST) ?? 0) >= MAX_CONNECTIONS + extra, 30000).catch(() => expect.fail(seen()));
    expect(seen()).to.equal(`RESPONSE ${MAX_CONNECTIONS}, RST ${extra}, connections ${MAX_CONNECTIONS}`);
    for (const sock of accepted) sock.destroy();
  });
});
