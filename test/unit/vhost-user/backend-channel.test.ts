/**
 * The vhost-user back-end channel and online resize of a vhost-user-blk
 * disk. Framing first (decodeAck on good, truncated and malformed replies;
 * a BackendChannel against a plain socket playing QEMU's slave_read: the
 * request it sends, acks 0 and 1, a malformed or missing reply, a closed
 * peer). Then the whole path against the fake front end: a resize before
 * the back-end channel exists is one clear error and changes nothing; with
 * the channel (SET_BACKEND_REQ_FD) and a started device, resizeBlk grows
 * the image file, sends CONFIG_CHANGE_MSG, and the front end — as QEMU 7.2's
 * vhost_user_blk_handle_config_change does — re-reads GET_CONFIG on the
 * main channel before it acks, and sees the new capacity; shrinking is
 * refused.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../../src/common/native';
import { BackendChannel } from '../../../src/vhost-user/backend-channel';
import {
  BackendReq, decodeAck, encodeMessage, encodeU64, HEADER_SIZE, PROTOCOL_F_BACKEND_REQ, PROTOCOL_F_CONFIG,
  PROTOCOL_F_MQ, PROTOCOL_F_REPLY_ACK, Req, VHOST_USER_F_PROTOCOL_FEATURES, VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK, VHOST_USER_VERSION,
} from '../../../src/vhost-user/protocol';
import { VhostUserDevices } from '../../../src/hypervisor/vhost-user-devices';
import { FakeFrontEnd, GUEST_RAM } from './fake-frontend';

const MiB = 1 << 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A connected AF_UNIX stream pair (what QEMU's socketpair gives), both non-blocking. */
function socketPair(dir: string): [number, number] {
  const n = native();
  const p = path.join(dir, `pair-${Math.random().toString(36).slice(2)}.sock`);
  const l = n.unixListenNb(p, 1);
  try {
    const a = n.unixConnect(p);
    let b = -1;
    for (let i = 0; i < 100 && b < 0; i++) b = n.acceptNb(l);
    if (b < 0) throw new Error('accept failed');
    return [a, b];
  } finally {
    n.closeFd(l);
    fs.rmSync(p, { force: true });
  }
}

/** Reads exactly `len` bytes from a non-blocking fd, yielding to the loop. */
async function readExact(fd: number, len: number, timeoutMs = 3000): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  let have = 0;
  const end = Date.now() + timeoutMs;
  while (have < len) {
    const r = native().recvMsg(fd, buf, have, len - have);
    for (const x of r.fds) native().closeFd(x);
    if (r.bytes === 0) throw new Error('peer closed');
    if (r.bytes > 0) { have += r.bytes; continue; }
    if (Date.now() > end) throw new Error(`timed out reading ${len} bytes`);
    await sleep(1);
  }
  return buf;
}

function ack(request: number, status: bigint, flags = VHOST_USER_VERSION | VHOST_USER_REPLY_MASK): Buffer {
  return encodeMessage(request, flags, encodeU64(status));
}

describe('unit: vhost-user back-end channel (CONFIG_CHANGE_MSG) and vhost-user-blk online resize', function () {
  this.timeout(20000);
  let dir = '';
  const toClose: number[] = [];
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-vubc-')); });
  afterEach(() => {
    for (const fd of toClose.splice(0)) try { native().closeFd(fd); } catch { /* closed */ }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('decodeAck', () => {
    it('accepts a REPLY with a u64 status for the same request', () => {
      expect(decodeAck(ack(2, 0n), 2)).to.equal(0n);
      expect(decodeAck(ack(2, 1n), 2)).to.equal(1n);
    });
    it('refuses truncated and malformed replies, saying what is wrong', () => {
      expect(() => decodeAck(ack(2, 0n).subarray(0, 7), 2)).to.throw(/7-byte header, need 12/);
      expect(() => decodeAck(ack(2, 0n).subarray(0, 16), 2)).to.throw(/payload is 4 bytes, need 8/);
      expect(() => decodeAck(ack(3, 0n), 2)).to.throw(/names request 3/);
      expect(() => decodeAck(ack(2, 0n, VHOST_USER_VERSION), 2)).to.throw(/lack REPLY/);
      expect(() => decodeAck(ack(2, 0n, 2 | VHOST_USER_REPLY_MASK), 2)).to.throw(/bad version/);
      expect(() => decodeAck(encodeMessage(2, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, Buffer.alloc(4)), 2)).to.throw(/payload size 4, an ack is 8/);
    });
  });

  describe('BackendChannel against a raw socket', () => {
    it('sends CONFIG_CHANGE_MSG with NEED_REPLY and no payload; resolves on ack 0, rejects on ack 1', async () => {
      const [ours, qemu] = socketPair(dir);
      toClose.push(qemu);
      const ch = new BackendChannel(ours, true);
      try {
        const p = ch.request(BackendReq.CONFIG_CHANGE_MSG);
        const hdr = await readExact(qemu, HEADER_SIZE);
        expect(hdr.readUInt32LE(0)).to.equal(2);
        expect(hdr.readUInt32LE(4)).to.equal(VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK);
        expect(hdr.readUInt32LE(8)).to.equal(0);
        native().sendMsg(qemu, ack(2, 0n));
        await p;
        const q = ch.request(BackendReq.CONFIG_CHANGE_MSG);
        await readExact(qemu, HEADER_SIZE);
        native().sendMsg(qemu, ack(2, 1n));
        await expectReject(q, /failed back-end request 2 \(ack 1\)/);
        expect(ch.isOpen, 'a failure ack is well-formed: the channel stays').to.equal(true);
        expect(ch.sent).to.equal(2);
      } finally { ch.close(); }
    });

    it('without REPLY_ACK: no NEED_REPLY flag, resolves once sent', async () => {
      const [ours, qemu] = socketPair(dir);
      toClose.push(qemu);
      const ch = new BackendChannel(ours, false);
      try {
        await ch.request(BackendReq.CONFIG_CHANGE_MSG);
        const hdr = await readExact(qemu, HEADER_SIZE);
        expect(hdr.readUInt32LE(4)).to.equal(VHOST_USER_VERSION);
      } finally { ch.close(); }
    });

    it('a malformed reply (wrong size, a truncated ack then EOF, an unasked message) fails the request and closes the channel', async () => {
      {
        const [ours, qemu] = socketPair(dir);
        toClose.push(qemu);
        const ch = new BackendChannel(ours, true);
        const p = ch.request(BackendReq.CONFIG_CHANGE_MSG);
        await readExact(qemu, HEADER_SIZE);
        native().sendMsg(qemu, encodeMessage(2, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, Buffer.alloc(64)));
        await expectReject(p, /payload size 64, an ack is 8/);
        expect(ch.isOpen).to.equal(false);
        await expectReject(ch.request(BackendReq.CONFIG_CHANGE_MSG), /back-end channel is closed/);
      }
      {
        const [ours, qemu] = socketPair(dir);
        const ch = new BackendChannel(ours, true);
        const p = ch.request(BackendReq.CONFIG_CHANGE_MSG);
        await readExact(qemu, HEADER_SIZE);
        native().sendMsg(qemu, ack(2, 0n).subarray(0, 15));
        native().closeFd(qemu);
        await expectReject(p, /closed the back-end channel/);
        expect(ch.isOpen).to.equal(false);
      }
      {
        const [ours, qemu] = socketPair(dir);
        toClose.push(qemu);
        const ch = new BackendChannel(ours, true);
        native().sendMsg(qemu, ack(2, 0n));
        const end = Date.now() + 2000;
        while (ch.isOpen && Date.now() < end) await sleep(2);
        expect(ch.closedReason).to.match(/nobody asked for/);
      }
    });

    it('no ack in time: one clear error, channel closed', async () => {
      const [ours, qemu] = socketPair(dir);
      toClose.push(qemu);
      const ch = new BackendChannel(ours, true);
      await expectReject(ch.request(BackendReq.CONFIG_CHANGE_MSG, 100), /did not acknowledge back-end request 2 within 100 ms/);
      expect(ch.isOpen).to.equal(false);
    });
  });

  describe('vhost-user-blk resize through the fake front end', () => {
    let devices: VhostUserDevices;
    let fe: FakeFrontEnd | undefined;
    let img = '';
    const sock = () => path.join(dir, 'blk.sock');
    beforeEach(() => {
      img = path.join(dir, 'vol.img');
      fs.writeFileSync(img, Buffer.alloc(0));
      fs.truncateSync(img, 32 * MiB);
      devices = new VhostUserDevices(GUEST_RAM);
      devices.addBlk('dv1', img, false, sock());
    });
    afterEach(() => {
      fe?.close();
      fe = undefined;
      devices.closeAll();
    });

    /** QEMU 7.2's vhost_user_backend_init order, with BACKEND_REQ when `channel`. */
    async function connect(channel: boolean): Promise<{ fe: FakeFrontEnd; qemuEnd: number }> {
      const f = fe = new FakeFrontEnd();
      f.connect(sock());
      const feats = (await f.request(Req.GET_FEATURES))!.readBigUInt64LE(0);
      const proto = (await f.request(Req.GET_PROTOCOL_FEATURES))!.readBigUInt64LE(0);
      expect(proto & PROTOCOL_F_BACKEND_REQ, 'offered').to.not.equal(0n);
      const want = PROTOCOL_F_MQ | PROTOCOL_F_REPLY_ACK | PROTOCOL_F_CONFIG | (channel ? PROTOCOL_F_BACKEND_REQ : 0n);
      await f.request(Req.SET_PROTOCOL_FEATURES, encodeU64(proto & want));
      let qemuEnd = -1;
      if (channel) {
        const [a, b] = socketPair(dir);
        qemuEnd = a;
        toClose.push(a);
        await f.ack(Req.SET_BACKEND_REQ_FD, Buffer.alloc(0), [b]);
        native().closeFd(b); // the backend has its own copy (QEMU closes sv[1] too)
      }
      await f.request(Req.SET_OWNER);
      await f.ack(Req.SET_FEATURES, encodeU64(feats | VHOST_USER_F_PROTOCOL_FEATURES));
      return { fe: f, qemuEnd };
    }

    async function start(f: FakeFrontEnd): Promise<void> {
      await f.setMemTable();
      const r = await f.startRing(0, 256, 0x10000n);
      toClose.push(r.kick, r.call, r.err);
      await f.enable(0);
    }

    async function capacity(f: FakeFrontEnd): Promise<bigint> {
      return (await f.getConfig(0, 8)).readBigUInt64LE(0);
    }

    it('before the back-end channel exists (or the device starts): one clear error, file and capacity unchanged', async () => {
      await expectReject(devices.resizeBlk('dv1', 96 * MiB), /no vhost-user front end is connected/);
      const { fe: f } = await connect(false);
      await expectReject(devices.resizeBlk('dv1', 96 * MiB), /did not negotiate PROTOCOL_F_BACKEND_REQ/);
      await start(f);
      await expectReject(devices.resizeBlk('dv1', 96 * MiB), /did not negotiate PROTOCOL_F_BACKEND_REQ/);
      expect(fs.statSync(img).size).to.equal(32 * MiB);
      expect(await capacity(f)).to.equal(BigInt(32 * MiB / 512));
      await expectReject(devices.resizeBlk('nope', 96 * MiB), /disk nope is not served/);
    });

    it('channel but device not started: refused; SET_BACKEND_REQ_FD without the feature or without an fd is nacked', async () => {
      const { fe: f } = await connect(true);
      await expectReject(devices.resizeBlk('dv1', 96 * MiB), /guest driver has not started the device/);
      expect(fs.statSync(img).size).to.equal(32 * MiB);
      expect(await f.nack(Req.SET_BACKEND_REQ_FD)).to.not.equal(0n);
    });

    it('grows the image, sends CONFIG_CHANGE_MSG; the front end re-reads the config and acks; shrinking is refused', async () => {
      const { fe: f, qemuEnd } = await connect(true);
      await start(f);
      // QEMU's slave_read: the message, then GET_CONFIG on the main channel, then the ack.
      const qemu = (async () => {
        const hdr = await readExact(qemuEnd, HEADER_SIZE);
        expect(hdr.readUInt32LE(0)).to.equal(BackendReq.CONFIG_CHANGE_MSG);
        expect(hdr.readUInt32LE(8)).to.equal(0);
        expect(hdr.readUInt32LE(4) & VHOST_USER_NEED_REPLY_MASK).to.not.equal(0);
        const cap = await capacity(f);
        native().sendMsg(qemuEnd, ack(2, 0n));
        return cap;
      })();
      await devices.resizeBlk('dv1', 96 * MiB);
      expect(await qemu).to.equal(BigInt(96 * MiB / 512));
      expect(fs.statSync(img).size).to.equal(96 * MiB);

      await expectReject(devices.resizeBlk('dv1', 64 * MiB), /smaller than the disk \(100663296 bytes\); disks only grow/);
      await expectReject(devices.resizeBlk('dv1', 100 * MiB + 1), /positive multiple of 512/);
      expect(fs.statSync(img).size).to.equal(96 * MiB);
      expect(await capacity(f)).to.equal(BigInt(96 * MiB / 512));
    });

    it('a front end that fails the change: the error says so', async () => {
      const { fe: f, qemuEnd } = await connect(true);
      await start(f);
      const qemu = (async () => {
        await readExact(qemuEnd, HEADER_SIZE);
        native().sendMsg(qemuEnd, ack(2, 1n));
      })();
      await expectReject(devices.resizeBlk('dv1', 48 * MiB), /was grown to 50331648 bytes, but the guest was not told: .*failed back-end request 2 \(ack 1\)/);
      await qemu;
    });

    it('the channel closes with the front end', async () => {
      const { fe: f } = await connect(true);
      await start(f);
      f.close();
      const end = Date.now() + 2000;
      while (devices.get('blk', 'dv1')!.backend.isConnected && Date.now() < end) await sleep(2);
      await expectReject(devices.resizeBlk('dv1', 48 * MiB), /no vhost-user front end is connected/);
    });
  });
});

async function expectReject(p: Promise<unknown>, re: RegExp): Promise<void> {
  try {
    await p;
  } catch (err) {
    expect((err as Error).message).to.match(re);
    return;
  }
  throw new Error(`expected a rejection matching ${re}`);
}
