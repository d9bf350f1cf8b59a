/**
 * The test guest as a minimal virtio driver (polling, VERSION_1 only) over
 * the builtin VMM's virtio-mmio transport, against the real devices:
 * virtio-blk on a raw file (checksums compared on the host), virtio-vsock
 * with the hybrid unix-socket host side (guest-initiated to `<socket>_<port>`
 * and host CONNECT), virtio-net with the test-double backend, and the power
 * port. Each guest runs a few hundred thousand instructions: well under a
 * second even where KVM only emulates (PVM).
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildGuest } from './guest-build';
import { fdCount, kvmUsable, runGuest, threadCount } from './helpers';
import { BlkDevice } from '../../../src/virtio/blk/device';
import { HybridVsock } from '../../../src/virtio/vsock/hybrid';
import { NetDevice } from '../../../src/virtio/net/device';
import { MemoryBackend } from '../../../src/virtio/net/backend';
import { skipOrFail } from '../../helpers/skip';

/** FNV-1a 32, as the guest computes it. */
function fnv(b: Uint8Array): number {
  let h = 2166136261;
  for (const x of b) { h ^= x; h = Math.imul(h, 16777619) >>> 0; }
  return h >>> 0;
}
const hex = (n: number) => `0x${n.toString(16)}`;

describe('vmm test guest as a virtio driver (real devices)', function () {
  this.timeout(60000);
  let dir: string;
  before(function () {
    const noKvm = kvmUsable();
    if (noKvm) skipOrFail(this, noKvm, { hostCannot: true });
    const noGuest = buildGuest().reason;
    if (noGuest) skipOrFail(this, noGuest);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-drv-'));
  });
  after(() => { if (dir) fs.rmSync(dir, { recursive: true, force: true }); });

  it('virtio-blk: reads sectors of a raw file and writes sectors back, checksums checked on the host', async () => {
    const file = path.join(dir, 'disk.raw');
    const orig = crypto.randomBytes(64 * 512);
    fs.writeFileSync(file, orig);
    const dev = new BlkDevice({ path: file });
    const r = await runGuest('blk', { devices: [dev] });
    expect(r.out).to.contain('blk capacity=64');
    expect(r.out).to.contain(`blk read status=0 fnv=${hex(fnv(orig.subarray(0, 8 * 512)))}`);
    const after = fs.readFileSync(file);
    const written = after.subarray(16 * 512, 24 * 512);
    expect(r.out).to.contain(`blk write status=0 fnv=${hex(fnv(written))}`);
    for (let i = 0; i < written.length; i++) if (written[i] !== ((i * 7 + (i >> 9) + 3) & 0xff)) throw new Error(`byte ${i} differs`);
    expect(after.subarray(0, 16 * 512).equals(orig.subarray(0, 16 * 512))).to.equal(true);
    expect(after.subarray(24 * 512).equals(orig.subarray(24 * 512))).to.equal(true);
    expect(r.out).to.contain('blk readback status=0 match');
    expect(r.out).to.contain('blk flush status=0');
    expect(r.out).to.contain('blk past-end status=1');
    expect(dev.metrics).to.include({ reads: 2, writes: 1, flushes: 1 });
    expect(r.end.kind).to.equal('reset');
    console.log(`      blk guest run ${r.ms.toFixed(0)} ms`);
    expect(r.ms).to.be.lessThan(2000); // ~50-400 ms here; slack for a loaded shared host
  });

  it('virtio-vsock: the guest connects to a host unix listener at <socket>_<port> and exchanges data', async () => {
    const sock = path.join(dir, 'v.sock');
    const hv = new HybridVsock(sock, { guestCid: 42 });
    await hv.listen();
    let got = '';
    const server = net.createServer((s) => {
      s.on('data', (d) => {
        got += d.toString('latin1');
        if (got === 'hello from guest vsock') s.write('hi from the host');
      });
      s.on('error', () => undefined);
    });
    await new Promise<void>((res) => server.listen(`${sock}_1234`, res));
    try {
      const r = await runGuest('vsock', { devices: [hv.device], extra: 'port=1234' });
      expect(r.out).to.contain('vsock cid=42 connect port=1234');
      expect(r.out).to.contain('vsock connect op=2');
      expect(got.startsWith('hello from guest vsock')).to.equal(true);
      expect(r.out).to.contain('vsock got: hi from the host');
      expect(got).to.equal('hello from guest vsockecho:hi from the host');
      expect(r.out).to.match(/vsock closed op=3/);
      console.log(`      vsock (guest → host) run ${r.ms.toFixed(0)} ms`);
      expect(r.ms).to.be.lessThan(2000); // ~50-400 ms here; slack for a loaded shared host
    } finally {
      await hv.close();
      await new Promise<void>((res) => server.close(() => res()));
    }
  });

  it('virtio-vsock: the host CONNECTs through the hybrid socket to a guest listener and exchanges data', async () => {
    const sock = path.join(dir, 'w.sock');
    const hv = new HybridVsock(sock, { guestCid: 3 });
    await hv.listen();
    try {
      const run = runGuest('vsock', { devices: [hv.device], extra: 'port=52 listen' });
      // The guest posts its rx buffers within milliseconds; retry until it listens.
      let reply = '';
      for (let attempt = 0; attempt < 50 && !reply.includes('echo:'); attempt++) {
        reply = await new Promise<string>((res) => {
          const c = net.connect(sock);
          let buf = '', sent = false;
          c.on('data', (d) => {
            buf += d.toString('latin1');
            if (!sent && /^OK \d+\n/.test(buf)) { sent = true; c.write('ping from host'); }
            if (buf.includes('echo:ping from host')) c.end();
          });
          c.on('close', () => res(buf));
          c.on('error', () => res(buf));
          c.write('CONNECT 52\n');
        });
        if (!reply.includes('echo:')) await new Promise((r) => setTimeout(r, 20));
      }
      const r = await run;
      expect(reply).to.match(/^OK \d+\n/);
      expect(reply).to.contain('echo:ping from host');
      expect(r.out).to.match(/vsock accepted from host port \d+/);
      expect(r.out).to.contain('vsock got: ping from host');
      console.log(`      vsock (host → guest) run ${r.ms.toFixed(0)} ms`);
      expect(r.ms).to.be.lessThan(2000); // ~50-400 ms here; slack for a loaded shared host
    } finally {
      await hv.close();
    }
  });

  it('virtio-net: the guest sends a frame the backend sees, and receives one back', async () => {
    const be = new MemoryBackend();
    const dev = new NetDevice({ backend: be, mac: '02:00:00:aa:bb:cc' });
    be.onSend = (f) => {
      const reply = Buffer.alloc(60);
      f.copy(reply, 0, 6, 12); // to the sender
      Buffer.from([0x02, 0, 0, 0, 0, 1]).copy(reply, 6);
      reply.writeUInt16BE(0x88b5, 12);
      reply.write('reply from host net', 14, 'latin1');
      setImmediate(() => be.inject(reply));
    };
    const r = await runGuest('net', { devices: [dev] });
    expect(r.out).to.contain('net mac=02:00:00:aa:bb:cc');
    expect(r.out).to.contain('net sent');
    expect(be.sent).to.have.length(1);
    const f = be.sent[0];
    expect(f.subarray(0, 6).toString('hex')).to.equal('ffffffffffff');
    expect(f.subarray(6, 12).toString('hex')).to.equal('020000aabbcc');
    expect(f.readUInt16BE(12)).to.equal(0x88b5);
    expect(f.subarray(14, 34).toString('latin1')).to.equal('hello from guest net');
    expect(r.out).to.contain('net got len=60 type=0x88b5 payload=reply from host net');
    expect(dev.metrics).to.include({ txFrames: 1, rxFrames: 1 });
    console.log(`      net run ${r.ms.toFixed(0)} ms`);
    expect(r.ms).to.be.lessThan(2000); // ~50-400 ms here; slack for a loaded shared host
  });

  it('hostile guest against each real device (garbage registers and rings): host alive, VM ends, the devices still work after', async () => {
    const file = path.join(dir, 'hostile.raw');
    fs.writeFileSync(file, Buffer.alloc(64 * 512));
    const hv = new HybridVsock(path.join(dir, 'h.sock'), { guestCid: 3 });
    await hv.listen();
    try {
      for (const dev of [new BlkDevice({ path: file }), hv.device, new NetDevice({ backend: new MemoryBackend() })]) {
        const r = await runGuest('hostile', { devices: [dev] });
        expect(r.out, `device ${dev.deviceType}`).to.match(/hostile done status=0x[0-9a-f]+/);
        expect(r.end.kind).to.equal('reset');
      }
      // The same vsock device (reset by the hostile guest's driver) serves a good guest afterwards.
      const server = net.createServer((s) => { s.on('data', () => s.write('after')); s.on('error', () => undefined); });
      await new Promise<void>((res) => server.listen(`${path.join(dir, 'h.sock')}_77`, res));
      try {
        const r = await runGuest('vsock', { devices: [hv.device], extra: 'port=77' });
        expect(r.out).to.contain('vsock got: after');
      } finally { await new Promise<void>((res) => server.close(() => res())); }
    } finally {
      await hv.close();
    }
  });

  it('leaks no fds or threads over repeated runs with blk, vsock and net devices', async () => {
    const file = path.join(dir, 'leak.raw');
    fs.writeFileSync(file, Buffer.alloc(64 * 512));
    const once = async () => {
      const hv = new HybridVsock(path.join(dir, 'l.sock'), { guestCid: 3 });
      await hv.listen();
      const be = new MemoryBackend();
      be.onSend = (f) => setImmediate(() => be.inject(f));
      await runGuest('net', { devices: [new BlkDevice({ path: file }), hv.device, new NetDevice({ backend: be })] });
      await runGuest('blk', { devices: [new BlkDevice({ path: file })] });
      await hv.close();
    };
    await once();
    const fds = fdCount(), threads = threadCount();
    for (let i = 0; i < 3; i++) await once();
    await new Promise((r) => setTimeout(r, 50));
    expect(fdCount()).to.equal(fds);
    expect(threadCount()).to.equal(threads);
  });

  it('power port 0x501: the guest powers off without ACPI, the exit code reaches the host', async () => {
    const r = await runGuest('poweroff', { extra: 'code=7' });
    expect(r.out).to.contain('powering off');
    expect(r.out).to.not.contain('bye');
    expect(r.end.kind).to.equal('shutdown');
    expect(r.end.exitCode).to.equal(7);
    expect(r.end.reason).to.match(/0x501/);
    const z = await runGuest('poweroff');
    expect(z.end).to.include({ kind: 'shutdown', exitCode: 0 });
  });
});
