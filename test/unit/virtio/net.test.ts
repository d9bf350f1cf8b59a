/**
 * virtio-net (virtio 1.2 §5.1) device model, driven over our vhost-user
 * backend by the fake front end and the driver ring writer, with the
 * MemoryBackend test double: config (MAC, link up), tx frames reach the
 * backend without the virtio_net_hdr, rx frames wait for buffers and arrive
 * with a zeroed header and num_buffers 1, short rx buffers and oversize
 * frames are dropped and counted, a malformed chain puts the device in
 * needs-reset while the host carries on.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../../src/common/native';
import { VhostUserBackend } from '../../../src/vhost-user/backend';
import { MemoryBackend } from '../../../src/virtio/net/backend';
import { NET_HDR_SIZE, NetDevice, NetError, parseMac, VIRTIO_NET_F_MAC } from '../../../src/virtio/net/device';
import { FakeFrontEnd, type RingSet } from '../vhost-user/fake-frontend';

const BUF = 0x100000n;

async function waitFor(pred: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 1));
  }
}

function frame(payload: string, len = 60): Buffer {
  const f = Buffer.alloc(Math.max(len, 14 + payload.length));
  f.fill(0xff, 0, 6);
  Buffer.from([2, 0, 0, 0, 0, 9]).copy(f, 6);
  f.writeUInt16BE(0x88b5, 12);
  f.write(payload, 14, 'latin1');
  return f;
}

describe('virtio/net device', function () {
  this.timeout(20000);
  let dir: string, dev: NetDevice, be: MemoryBackend, backend: VhostUserBackend, fe: FakeFrontEnd, rx: RingSet, tx: RingSet;
  let slot = 0;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-net-'));
    be = new MemoryBackend();
    dev = new NetDevice({ backend: be, mac: '02:11:22:33:44:55', rxBacklog: 4 });
    backend = new VhostUserBackend({ socketPath: path.join(dir, 'vu.sock'), device: dev, guestBytes: 16 << 20, name: 'net-test' });
    backend.listen();
    fe = new FakeFrontEnd();
    fe.connect(path.join(dir, 'vu.sock'));
    await fe.negotiate();
    await fe.setMemTable();
    rx = await fe.startRing(0, 16, 0x10000n);
    tx = await fe.startRing(1, 16, 0x30000n);
    await fe.enable(0);
    await fe.enable(1);
    await waitFor(() => (dev as unknown as { ctx?: unknown }).ctx !== undefined);
  });

  afterEach(() => {
    fe.close();
    backend.close();
    dev.close();
    for (const q of [rx, tx]) for (const fd of [q.kick, q.call, q.err]) native().closeFd(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function kick(q: RingSet): void { if (q.ring.kickPrepare()) native().eventfdWrite(q.kick, 1); }
  function sendTx(hdrAndFrame: Buffer[], writable = 0): number {
    const out: Array<{ gpa: bigint; len: number }> = [];
    for (const b of hdrAndFrame) {
      const gpa = BUF + BigInt(slot++ % 64) * 0x1000n;
      fe.mem.u8.set(b, fe.off(gpa, b.length));
      out.push({ gpa, len: b.length });
    }
    const inn = writable ? [{ gpa: BUF + 0x80000n, len: writable }] : [];
    const head = tx.ring.add(out, inn)!;
    kick(tx);
    return head;
  }
  function postRx(len: number, gpa: bigint): number {
    const h = rx.ring.add([], [{ gpa, len }])!;
    kick(rx);
    return h;
  }

  it('offers MAC and link status in config; parses and refuses MACs', async () => {
    expect(dev.availableFeatures & VIRTIO_NET_F_MAC).to.equal(VIRTIO_NET_F_MAC);
    const cfg = await fe.getConfig(0, 10);
    expect(cfg.subarray(0, 6).toString('hex')).to.equal('021122334455');
    expect(cfg.readUInt16LE(6)).to.equal(1); // VIRTIO_NET_S_LINK_UP
    expect(cfg.readUInt16LE(8)).to.equal(1); // max_virtqueue_pairs
    expect(dev.macString).to.equal('02:11:22:33:44:55');
    expect(() => parseMac('01:00:00:00:00:01')).to.throw(NetError, /multicast/);
    expect(() => parseMac('zz')).to.throw(NetError, /bad MAC/);
  });

  it('tx: the backend gets the frame without the 12-byte header, split over descriptors or not', async () => {
    sendTx([Buffer.alloc(NET_HDR_SIZE), frame('one')]);
    sendTx([Buffer.concat([Buffer.alloc(NET_HDR_SIZE), frame('two')])]);
    await be.waitSent(2);
    expect(be.sent.map((f) => f.subarray(14, 17).toString())).to.deep.equal(['one', 'two']);
    expect(be.sent[0].length).to.equal(60);
    await waitFor(() => tx.ring.getBuf() !== undefined);
    expect(dev.metrics).to.include({ txFrames: 2, txBytes: 120 });
  });

  it('tx: runt and oversize frames are dropped, not sent', async () => {
    sendTx([Buffer.alloc(NET_HDR_SIZE), Buffer.alloc(10)]);
    sendTx([Buffer.alloc(NET_HDR_SIZE), Buffer.alloc(4000)]);
    sendTx([Buffer.alloc(NET_HDR_SIZE), frame('ok')]);
    await be.waitSent(1);
    await waitFor(() => dev.metrics.txDropped === 2);
    expect(be.sent).to.have.length(1);
  });

  it('rx: frames wait for buffers, arrive with num_buffers 1; a too-short buffer drops the frame; the backlog is bounded', async () => {
    be.inject(frame('early'));
    const a = BUF + 0x200000n, b = BUF + 0x210000n, c = BUF + 0x220000n;
    postRx(NET_HDR_SIZE + 1514, a);
    let used: { id: number; len: number } | undefined;
    await waitFor(() => (used = rx.ring.getBuf()) !== undefined);
    expect(used!.len).to.equal(NET_HDR_SIZE + 60);
    const got = Buffer.from(fe.mem.u8.subarray(fe.off(a), fe.off(a) + NET_HDR_SIZE + 60));
    expect(got.readUInt16LE(10)).to.equal(1);
    expect(got.subarray(0, 10).every((x) => x === 0)).to.equal(true);
    expect(got.subarray(NET_HDR_SIZE + 14, NET_HDR_SIZE + 19).toString()).to.equal('early');
    // A buffer too short for header + frame: returned empty, frame dropped.
    be.inject(frame('long', 200));
    postRx(40, b);
    await waitFor(() => (used = rx.ring.getBuf()) !== undefined);
    expect(used!.len).to.equal(0);
    expect(dev.metrics.rxDropped).to.equal(1);
    // No buffers: at most rxBacklog (4) frames kept.
    for (let i = 0; i < 6; i++) be.inject(frame(`f${i}`));
    expect(dev.metrics.rxDropped).to.equal(3);
    postRx(NET_HDR_SIZE + 1514, c);
    await waitFor(() => (used = rx.ring.getBuf()) !== undefined);
    expect(Buffer.from(fe.mem.u8.subarray(fe.off(c) + NET_HDR_SIZE + 14, fe.off(c) + NET_HDR_SIZE + 16)).toString()).to.equal('f0');
  });

  it('a tx chain with device-writable buffers puts the device in needs-reset; the host carries on', async () => {
    sendTx([Buffer.alloc(NET_HDR_SIZE), frame('bad')], 64);
    await waitFor(() => dev.metrics.needsReset === 1);
    expect(be.sent).to.have.length(0);
    // Later kicks are ignored until reset.
    sendTx([Buffer.alloc(NET_HDR_SIZE), frame('after')]);
    await new Promise((r) => setTimeout(r, 50));
    expect(be.sent).to.have.length(0);
  });

  it('close() closes the backend once', () => {
    let closes = 0;
    const close = be.close.bind(be);
    be.close = () => { closes++; close(); };
    expect(closes).to.equal(0);
    dev.close();
    expect(closes, 'first close').to.equal(1);
    dev.close();
    dev.close();
    expect(closes, 'later closes reach the backend no more').to.equal(1);
    expect(be.closed).to.equal(true);
  });
});
