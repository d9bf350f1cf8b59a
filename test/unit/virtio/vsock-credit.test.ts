/**
 * virtio-vsock credit (virtio 1.2 §5.10.6.3): the device's per-connection
 * window (buf_alloc), bounded device-wide by a budget; CREDIT_UPDATEs only
 * once a quarter of the window the guest can use was forwarded (Linux
 * 6.1.192 never sends more than its own buffer ahead of our credit, so
 * waiting for a quarter of ours would stall it for good); and a guest that
 * sends beyond its credit gets its connection reset, nothing else.
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import { connectVsock } from '../../../src/protocols/agent-dialer';
import { DEFAULT_BUF_ALLOC, FLOOR_BUF_ALLOC, MAX_BUF_ALLOC, MIN_BUF_ALLOC, VsockDevice } from '../../../src/virtio/vsock/device';
import { OP_CREDIT_UPDATE, OP_RW } from '../../../src/virtio/vsock/packet';
import { closeVsockRig, vsockRig, type VsockRig } from '../../helpers/vhost-user-rig';

async function waitFor(pred: () => boolean, ms = 10000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** A host listener on `<socket>_<port>` that counts (and drops) what it reads. */
async function sink(r: VsockRig, port: number): Promise<{ bytes: () => number; sockets: net.Socket[] }> {
  let n = 0;
  const sockets: net.Socket[] = [];
  const srv = net.createServer((c) => { sockets.push(c); c.on('data', (d: Buffer) => { n += d.length; }); c.on('error', () => undefined); });
  r.servers.push(srv);
  await new Promise<void>((res) => srv.listen(`${r.sock}_${port}`, () => res()));
  return { bytes: () => n, sockets };
}

describe('virtio/vsock credit', function () {
  this.timeout(60000);
  let r: VsockRig | undefined;
  afterEach(async () => { if (r) await closeVsockRig(r); r = undefined; });

  it(`advertises a ${DEFAULT_BUF_ALLOC >> 20} MiB window and sends a CREDIT_UPDATE per quarter of it forwarded`, async () => {
    r = await vsockRig({ tmpPrefix: 'kata-vsock-credit-' });
    const host = await sink(r, 6100);
    const c = await r.guest.connect(6100, DEFAULT_BUF_ALLOC, true);
    expect(c.peerBufAlloc).to.equal(DEFAULT_BUF_ALLOC);
    const updates0 = r.hybrid.device.metrics.creditUpdates;
    const total = 8 << 20;
    await r.guest.write(c, crypto.randomBytes(total));
    await waitFor(() => host.bytes() >= total);
    const updates = r.hybrid.device.metrics.creditUpdates - updates0;
    // One per 512 KiB forwarded (16 for 8 MiB), not one per 64 KiB (128).
    expect(updates, 'CREDIT_UPDATEs for 8 MiB').to.be.within(1, total / (DEFAULT_BUF_ALLOC / 4) + 2);
  });

  it('keeps a guest that caps its credit with its own 64 KiB buffer (Linux 6.1.192) moving: updates per 16 KiB', async () => {
    r = await vsockRig({ tmpPrefix: 'kata-vsock-credit-' });
    const host = await sink(r, 6101);
    const c = await r.guest.connect(6101, 64 * 1024, true);
    const updates0 = r.guest.opsIn.get(OP_CREDIT_UPDATE) ?? 0;
    const total = 1 << 20;
    await r.guest.write(c, crypto.randomBytes(total));
    await waitFor(() => host.bytes() >= total);
    // A threshold of a quarter of our 2 MiB window would never be reached: the write above would time out.
    expect((r.guest.opsIn.get(OP_CREDIT_UPDATE) ?? 0) - updates0).to.be.at.least(total / (64 * 1024));
  });

  it('resets a connection whose guest sends beyond its credit, counts and logs it, and keeps serving others', async () => {
    r = await vsockRig({ tmpPrefix: 'kata-vsock-credit-', device: { bufAlloc: MIN_BUF_ALLOC } });
    const dev = r.hybrid.device;
    const host = await sink(r, 6102);
    const c = await r.guest.connect(6102);
    expect(c.peerBufAlloc).to.equal(MIN_BUF_ALLOC);
    // 80 KiB in one go against a 64 KiB window, ignoring the credit: all
    // in the ring before the device runs, so none was forwarded yet.
    for (let i = 0; i < 20; i++) r.guest.send(r.guest.hdr(c.localPort, c.peerPort, OP_RW, c, 4096), Buffer.alloc(4096, i));
    await c.until(() => c.reset);
    expect(dev.metrics.creditViolations).to.equal(1);
    expect(dev.isActive, 'a lying guest is not a malformed ring').to.equal(true);
    await waitFor(() => host.sockets.length === 1 && host.sockets[0]!.destroyed);
    expect(host.bytes(), 'at most the window reached the host').to.be.at.most(MIN_BUF_ALLOC);
    // Another connection works as before.
    const c2 = await r.guest.connect(6102);
    await r.guest.write(c2, Buffer.alloc(200 * 1024, 7));
    await waitFor(() => host.bytes() >= 200 * 1024);
    expect(dev.metrics.creditViolations).to.equal(1);
  });

  it('gives full windows while the device-wide budget lasts, then the 256 KiB floor, and frees them on close', async () => {
    const win = 1 << 20;
    r = await vsockRig({ tmpPrefix: 'kata-vsock-credit-', device: { bufAlloc: win, windowBudget: 2 * win } });
    const dev = r.hybrid.device;
    r.guest.listening.add(5100);
    const socks: net.Socket[] = [];
    for (let i = 0; i < 3; i++) socks.push(await connectVsock(r.sock, 5100));
    await waitFor(() => r!.guest.conns.size === 3);
    const windows = [...r.guest.conns.values()].map((g) => g.peerBufAlloc).sort((a, b) => b - a);
    expect(windows).to.deep.equal([win, win, FLOOR_BUF_ALLOC]);
    expect(dev.committedWindowBytes).to.equal(2 * win + FLOOR_BUF_ALLOC);
    for (const s of socks) s.destroy();
    await waitFor(() => dev.connectionCount === 0);
    expect(dev.committedWindowBytes).to.equal(0);
  });

  it('refuses a window outside its bounds with one clear error', () => {
    for (const bufAlloc of [MIN_BUF_ALLOC - 1, MAX_BUF_ALLOC + 1, 1.5 * MIN_BUF_ALLOC + 0.5]) {
      expect(() => new VsockDevice({ guestCid: 3, bufAlloc })).to.throw(/bufAlloc .* must be an integer in/);
    }
    expect(() => new VsockDevice({ guestCid: 3, windowBudget: -1 })).to.throw(/windowBudget/);
  });
});
