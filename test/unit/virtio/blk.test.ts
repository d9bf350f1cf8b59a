/**
 * virtio-blk (virtio 1.2 §5.2) over our vhost-user backend, driven by the
 * fake front end and the driver ring writer: read/write/flush/get-id
 * against a raw file, read-only refusal, range checks, malformed chains.
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../../src/common/native';
import { VhostUserBackend } from '../../../src/vhost-user/backend';
import { BlkDevice, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../../src/virtio/blk/device';
import { FakeFrontEnd, GUEST_RAM, type RingSet } from '../vhost-user/fake-frontend';

const DATA = 0x100000n; // data buffers
const HDR = 0x80000n;

async function waitFor(pred: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 1));
  }
}

describe('virtio/blk over vhost-user', function () {
  this.timeout(20000);
  let dir: string, file: string, dev: BlkDevice, backend: VhostUserBackend, fe: FakeFrontEnd, q: RingSet;
  let slot = 0;

  async function setup(readonly: boolean): Promise<void> {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-blk-'));
    file = path.join(dir, 'disk.raw');
    fs.writeFileSync(file, crypto.randomBytes(4 << 20));
    dev = new BlkDevice({ path: file, readonly, id: 'kata-test-disk' });
    backend = new VhostUserBackend({ socketPath: path.join(dir, 'vu.sock'), device: dev, guestBytes: GUEST_RAM, name: 'blk-test' });
    backend.listen();
    fe = new FakeFrontEnd();
    fe.connect(path.join(dir, 'vu.sock'));
    await fe.negotiate();
    await fe.setMemTable();
    q = await fe.startRing(0, 64, 0x10000n, { eventIdx: true, indirect: true });
    await fe.enable(0);
    await waitFor(() => backend.isActive);
  }

  afterEach(() => {
    fe.close();
    backend.close();
    dev.close();
    for (const fd of [q.kick, q.call, q.err]) native().closeFd(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Submits one request; resolves with [status, used len]. */
  async function req(type: number, sector: bigint, data: { out?: Buffer; inLen?: number }): Promise<{ status: number; len: number; got?: Buffer }> {
    const base = HDR + BigInt(slot++ % 32) * 64n;
    const h = Buffer.alloc(16);
    h.writeUInt32LE(type, 0);
    h.writeBigUInt64LE(sector, 8);
    fe.mem.u8.set(h, fe.off(base, 16));
    const statusGpa = base + 32n;
    fe.mem.u8[fe.off(statusGpa)] = 0xff;
    const out = [{ gpa: base, len: 16 }];
    const inn: Array<{ gpa: bigint; len: number }> = [];
    if (data.out) {
      fe.mem.u8.set(data.out, fe.off(DATA, data.out.length));
      out.push({ gpa: DATA, len: data.out.length });
    }
    if (data.inLen) inn.push({ gpa: DATA, len: data.inLen });
    inn.push({ gpa: statusGpa, len: 1 });
    const head = q.ring.add(out, inn)!;
    if (q.ring.kickPrepare()) native().eventfdWrite(q.kick, 1);
    let used: { id: number; len: number } | undefined;
    await waitFor(() => (used = q.ring.getBuf()) !== undefined);
    expect(used!.id).to.equal(head);
    const got = data.inLen ? Buffer.from(fe.mem.u8.subarray(fe.off(DATA), fe.off(DATA) + data.inLen)) : undefined;
    return { status: fe.mem.u8[fe.off(statusGpa)], len: used!.len, got };
  }

  it('reports capacity in config, reads and writes sectors straight to the file, flushes, answers GET_ID', async () => {
    await setup(false);
    const cfg = await fe.getConfig(0, 24);
    expect(cfg.readBigUInt64LE(0)).to.equal(BigInt((4 << 20) / 512));
    const block = crypto.randomBytes(256 << 10);
    expect((await req(VIRTIO_BLK_T_OUT, 100n, { out: block })).status).to.equal(VIRTIO_BLK_S_OK);
    expect(fs.readFileSync(file).subarray(100 * 512, 100 * 512 + block.length).equals(block)).to.equal(true);
    const r = await req(VIRTIO_BLK_T_IN, 100n, { inLen: block.length });
    expect(r.status).to.equal(VIRTIO_BLK_S_OK);
    expect(r.len).to.equal(block.length + 1);
    expect(r.got!.equals(block)).to.equal(true);
    expect((await req(VIRTIO_BLK_T_FLUSH, 0n, {})).status).to.equal(VIRTIO_BLK_S_OK);
    const id = await req(VIRTIO_BLK_T_GET_ID, 0n, { inLen: 20 });
    expect(id.got!.toString('latin1').replace(/\0+$/, '')).to.equal('kata-test-disk');
    expect(dev.metrics.writes).to.equal(1);
  });

  it('refuses reads and writes past the end, and unknown request types', async () => {
    await setup(false);
    expect((await req(VIRTIO_BLK_T_IN, BigInt((4 << 20) / 512), { inLen: 512 })).status).to.equal(VIRTIO_BLK_S_IOERR);
    expect((await req(VIRTIO_BLK_T_OUT, 0xffff_ffff_ffffn, { out: Buffer.alloc(512) })).status).to.equal(VIRTIO_BLK_S_IOERR);
    expect((await req(99, 0n, {})).status).to.equal(2);
  });

  it('a read-only disk offers VIRTIO_BLK_F_RO and refuses writes, leaving the file unchanged', async () => {
    await setup(true);
    expect(dev.availableFeatures & VIRTIO_BLK_F_RO).to.equal(VIRTIO_BLK_F_RO);
    const before = fs.readFileSync(file);
    expect((await req(VIRTIO_BLK_T_OUT, 0n, { out: crypto.randomBytes(4096) })).status).to.equal(VIRTIO_BLK_S_IOERR);
    expect(fs.readFileSync(file).equals(before)).to.equal(true);
    expect((await req(VIRTIO_BLK_T_IN, 0n, { inLen: 4096 })).got!.equals(before.subarray(0, 4096))).to.equal(true);
  });

  it('a chain without a status byte sets NEEDS_RESET (err eventfd); the backend keeps answering', async () => {
    await setup(false);
    q.ring.add([{ gpa: HDR, len: 16 }], []);
    native().eventfdWrite(q.kick, 1);
    await waitFor(() => native().eventfdRead(q.err) > 0);
    expect(dev.metrics.needsReset).to.equal(1);
    expect(backend.isActive).to.equal(false);
    const cfg = await fe.getConfig(0, 8);
    expect(cfg.length).to.equal(8);
  });
});
