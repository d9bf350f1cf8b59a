/**
 * vhost-user backend protocol (QEMU docs/interop/vhost-user.rst), against
 * the fake front end: negotiation and REPLY_ACK, memory tables (several
 * regions of one memfd, bad tables refused without touching the old one),
 * ring stop/restart with GET_VRING_BASE, and random hostile messages: the
 * backend never crashes or hangs and keeps serving new front ends.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../../src/common/native';
import { VhostUserBackend, BACKEND_PROTOCOL_FEATURES } from '../../../src/vhost-user/backend';
import { encodeMessage, encodeU64, encodeVringState, Req, VHOST_USER_VERSION } from '../../../src/vhost-user/protocol';
import { VsockDevice } from '../../../src/virtio/vsock/device';
import { FakeFrontEnd, GUEST_RAM } from './fake-frontend';

describe('vhost-user backend protocol', function () {
  this.timeout(20000);
  let dir: string, backend: VhostUserBackend, dev: VsockDevice;
  const fes: FakeFrontEnd[] = [];
  const sockPath = () => path.join(dir, 'vu.sock');
  function frontEnd(): FakeFrontEnd {
    const fe = new FakeFrontEnd();
    fe.connect(sockPath());
    fes.push(fe);
    return fe;
  }
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-vu-'));
    dev = new VsockDevice({ guestCid: 3 });
    backend = new VhostUserBackend({ socketPath: sockPath(), device: dev, guestBytes: GUEST_RAM, queues: 2 });
    backend.listen();
  });
  afterEach(() => {
    for (const fe of fes.splice(0)) fe.close();
    backend.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('negotiates features and protocol features; acks with REPLY_ACK; nacks what it does not do', async () => {
    const fe = frontEnd();
    const feats = await fe.negotiate();
    expect(feats & (1n << 30n)).to.not.equal(0n);
    expect(feats & (1n << 32n)).to.not.equal(0n); // VERSION_1
    const proto = (await fe.request(Req.GET_PROTOCOL_FEATURES))!.readBigUInt64LE(0);
    expect(proto).to.equal(BACKEND_PROTOCOL_FEATURES);
    expect(await fe.nack(Req.SET_LOG_BASE, encodeU64(0n))).to.not.equal(0n);
    expect(await fe.nack(Req.SET_FEATURES, encodeU64(1n << 60n))).to.not.equal(0n);
    expect(await fe.nack(Req.SET_VRING_NUM, encodeVringState({ index: 0, num: 3 }))).to.not.equal(0n);
    expect(await fe.nack(Req.SET_VRING_NUM, encodeVringState({ index: 7, num: 64 }))).to.not.equal(0n);
  });

  it('maps a table of several regions of one memfd at their file offsets; refuses overlapping or oversized tables', async () => {
    const fe = frontEnd();
    await fe.negotiate();
    // QEMU's pc layout: [0, 640K) and [768K, end) of one memfd.
    await fe.setMemTable([{ gpa: 0n, size: 0xa0000, offset: 0 }, { gpa: 0xc0000n, size: GUEST_RAM - 0xc0000, offset: 0xc0000 }]);
    fe.mem.u8[fe.off(0xc1234n)] = 0x5a;
    expect(backend.module.translate(0xc1234n, 1)).to.be.a('number');
    expect(backend.hot.u8[backend.module.translate(0xc1234n, 1)!]).to.equal(0x5a);
    expect(backend.module.translate(0xb0000n, 1)).to.equal(undefined); // the hole
    const p = Buffer.alloc(8 + 64);
    p.writeUInt32LE(2, 0);
    for (const [i, gpa] of [[0, 0n], [1, 0x1000n]] as const) {
      p.writeBigUInt64LE(gpa, 8 + 32 * i); p.writeBigUInt64LE(0x10000n, 16 + 32 * i); p.writeBigUInt64LE(0x7f0000000000n, 24 + 32 * i);
    }
    expect(await fe.nack(Req.SET_MEM_TABLE, p, [fe.memfd, fe.memfd])).to.not.equal(0n);
    // The old table still stands.
    expect(backend.hot.u8[backend.module.translate(0xc1234n, 1)!]).to.equal(0x5a);
    const big = Buffer.alloc(8 + 32);
    big.writeUInt32LE(1, 0); big.writeBigUInt64LE(BigInt(GUEST_RAM) * 4n, 16); big.writeBigUInt64LE(0x7f0000000000n, 24);
    const huge = native().memfdCreate('huge', GUEST_RAM * 4);
    expect(await fe.nack(Req.SET_MEM_TABLE, big, [huge])).to.not.equal(0n);
    native().closeFd(huge);
  });

  it('stops a ring with GET_VRING_BASE (returning where it got to) and the device resets', async () => {
    const fe = frontEnd();
    await fe.negotiate();
    await fe.setMemTable();
    const rx = await fe.startRing(0, 64, 0x10000n);
    const tx = await fe.startRing(1, 64, 0x30000n);
    await fe.enable(0); await fe.enable(1);
    expect(backend.isActive).to.equal(true);
    // Three tx chains the device consumes (unknown connections: RST queued).
    for (let i = 0; i < 3; i++) {
      const g = 0x200000n + BigInt(i) * 64n;
      const h = Buffer.alloc(44); h.writeBigUInt64LE(3n, 0); h.writeBigUInt64LE(2n, 8); h.writeUInt16LE(1, 28); h.writeUInt16LE(5, 30);
      fe.mem.u8.set(h, fe.off(g, 44));
      tx.ring.add([{ gpa: g, len: 44 }], []);
    }
    native().eventfdWrite(tx.kick, 1);
    const end = Date.now() + 2000;
    while (tx.ring.usedIdx !== 3 && Date.now() < end) await new Promise((r) => setTimeout(r, 1));
    expect(await fe.getVringBase(1)).to.equal(3);
    expect(backend.isActive).to.equal(false);
    for (const fd of [rx.kick, rx.call, rx.err, tx.kick, tx.call, tx.err]) native().closeFd(fd);
  });

  it('survives 3000 random and truncated messages with random fds, then serves a well-behaved front end', async () => {
    let seed = 12345;
    const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
    for (let round = 0; round < 30; round++) {
      const fe = frontEnd();
      for (let i = 0; i < 100 && !fe.closed; i++) {
        const req = rnd(45);
        const payload = Buffer.alloc(rnd(4) === 0 ? rnd(300) : [0, 8, 12, 40, 72][rnd(5)]);
        for (let k = 0; k < payload.length; k++) payload[k] = rnd(4) === 0 ? rnd(256) : 0;
        if (payload.length >= 8 && rnd(2)) payload.writeUInt32LE(rnd(3), 0);
        const fds = rnd(5) === 0 ? [native().eventfdCreate()] : rnd(9) === 0 ? [fe.memfd] : [];
        const flags = VHOST_USER_VERSION | (rnd(2) ? 8 : 0) | (rnd(50) === 0 ? 3 : 0);
        try {
          fe.sendRaw(encodeMessage(req, flags, payload), fds);
        } catch { break; /* backend hung up on us: fine */ }
        for (const fd of fds) if (fd !== fe.memfd) native().closeFd(fd);
        // Drain whatever replies came back without waiting for them.
        const buf = Buffer.alloc(4096);
        try { for (let r = native().recvMsg(fe.fd, buf, 0, 4096); r.bytes > 0; r = native().recvMsg(fe.fd, buf, 0, 4096)) for (const fd of r.fds) native().closeFd(fd); } catch { break; }
        if (i % 10 === 0) await new Promise((r) => setImmediate(r));
      }
      await new Promise((r) => setImmediate(r));
      fe.close();
      fes.splice(fes.indexOf(fe), 1);
      const end = Date.now() + 1000;
      while (backend.isConnected && Date.now() < end) await new Promise((r) => setTimeout(r, 1));
    }
    const fe = frontEnd();
    await fe.negotiate();
    await fe.setMemTable();
    expect(backend.messages).to.be.greaterThan(500);
    expect(backend.connections).to.equal(31);
  });
});
