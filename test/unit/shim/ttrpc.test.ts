/**
 * ttrpc framing and server semantics without VMs or containerd: frames split
 * anywhere, oversize messages skipped without buffering, stream id rules,
 * malformed requests, unknown services/methods, concurrent streams answered
 * out of order, and the connection surviving all of it.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { FrameReader, encodeFrame, HEADER_LENGTH, type Frame } from '../../../src/protocols/ttrpc/frame';
import { TtrpcServer } from '../../../src/protocols/ttrpc/server';
import { TtrpcClient } from '../../../src/protocols/ttrpc/client';
import { TtrpcError } from '../../../src/protocols/ttrpc/codes';
import { decode, encode } from '../../../src/protocols/ttrpc/messages';

describe('unit: ttrpc framing', () => {
  it('encodes the 10-byte header: length, stream id, type, flags (big endian)', () => {
    const f = encodeFrame(0x01020304, 2, 0x5, Buffer.from('abc'));
    expect([...f.subarray(0, HEADER_LENGTH)]).to.deep.equal([0, 0, 0, 3, 1, 2, 3, 4, 2, 5]);
    expect(f.subarray(10).toString()).to.equal('abc');
  });

  it('reassembles frames split at every byte boundary and several per chunk', () => {
    const frames = [encodeFrame(1, 1, 0, Buffer.from('hello')), encodeFrame(3, 1, 0, Buffer.alloc(0)), encodeFrame(5, 2, 1, Buffer.alloc(300, 7))];
    const all = Buffer.concat(frames);
    for (let cut = 0; cut <= all.length; cut++) {
      const r = new FrameReader();
      const got = [...r.push(all.subarray(0, cut)), ...r.push(all.subarray(cut))] as Frame[];
      expect(got.map((g) => [g.streamId, g.type, g.flags, g.payload.length])).to.deep.equal([[1, 1, 0, 5], [3, 1, 0, 0], [5, 2, 1, 300]]);
      expect(r.pending).to.equal(0);
    }
    const r = new FrameReader();
    const one = [...all].flatMap((b) => r.push(Buffer.from([b])));
    expect(one).to.have.length(3);
  });

  it('reassembles payloads spread over many reads byte for byte (header split too), and hands a whole-read frame out uncopied', () => {
    const payloads = [Buffer.from('x'), Buffer.from(Array.from({ length: 200000 }, (_, i) => i % 251)), Buffer.alloc(0), Buffer.from('tail')];
    const all = Buffer.concat(payloads.map((p, i) => encodeFrame(2 * i + 1, 3, 0, p)));
    for (const size of [1, 3, 7, 4096, 65536]) {
      const r = new FrameReader(1 << 20);
      const got: Frame[] = [];
      for (let o = 0; o < all.length; o += size) got.push(...(r.push(all.subarray(o, o + size)) as Frame[]));
      expect(got.map((f) => f.payload.equals(payloads[(f.streamId - 1) / 2]!)), `reads of ${size}`).to.deep.equal([true, true, true, true]);
      expect(r.pending).to.equal(0);
    }
    const one = encodeFrame(1, 3, 0, Buffer.alloc(100000, 9));
    const f = new FrameReader(1 << 20).push(one)[0] as Frame;
    expect(f.payload.buffer).to.equal(one.buffer);
  });

  it('skips an oversize payload without buffering it and resynchronises after it', () => {
    const r = new FrameReader(16);
    const big = encodeFrame(1, 1, 0, Buffer.alloc(1000, 1));
    const next = encodeFrame(3, 1, 0, Buffer.from('ok'));
    const out = [...r.push(big.subarray(0, 50)), ...r.push(big.subarray(50, 600))];
    expect(out).to.deep.equal([{ streamId: 1, type: 1, length: 1000, oversize: true }]);
    expect(r.pending).to.equal(0);
    const rest = r.push(Buffer.concat([big.subarray(600), next]));
    expect(rest).to.have.length(1);
    expect((rest[0] as Frame).payload.toString()).to.equal('ok');
  });

  it('holds a truncated frame as pending', () => {
    const r = new FrameReader();
    expect(r.push(encodeFrame(1, 1, 0, Buffer.from('abcdef')).subarray(0, 12))).to.deep.equal([]);
    expect(r.pending).to.equal(12);
  });
});

describe('unit: ttrpc server and client', () => {
  let dir: string;
  let sock: string;
  let server: TtrpcServer;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-ttrpc-'));
    sock = path.join(dir, 's.sock');
    server = new TtrpcServer(1024);
    server.register('test.Echo', 'Echo', async (p) => p);
    server.register('test.Echo', 'Slow', async (p) => {
      await new Promise((r) => setTimeout(r, 50));
      return p;
    });
    server.register('test.Echo', 'Fail', async () => {
      throw new TtrpcError('NotFound', 'no such thing');
    });
    server.register('test.Echo', 'Crash', async () => {
      throw new Error('boom');
    });
    await server.listen(sock);
  });

  afterEach(async () => {
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Sends raw bytes, collects `n` response frames. */
  async function raw(bytes: Buffer[], n: number): Promise<{ streamId: number; status?: { code: number; message: string }; payload: Buffer }[]> {
    const c = net.createConnection(sock);
    await new Promise((r) => c.once('connect', r));
    const reader = new FrameReader();
    const out: { streamId: number; status?: { code: number; message: string }; payload: Buffer }[] = [];
    const done = new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`got ${out.length} of ${n} responses`)), 2000);
      c.on('data', (d: Buffer) => {
        for (const f of reader.push(d) as Frame[]) {
          const res = decode<{ status: { code: number; message: string } | null; payload: Buffer }>('ttrpc.Response', f.payload);
          out.push({ streamId: f.streamId, status: res.status ?? undefined, payload: res.payload });
        }
        if (out.length >= n) {
          clearTimeout(t);
          resolve();
        }
      });
    });
    for (const b of bytes) c.write(b);
    await done;
    c.destroy();
    return out;
  }
  const req = (sid: number, service: string, method: string, payload = Buffer.from('x')) =>
    encodeFrame(sid, 1, 0, encode('ttrpc.Request', { service, method, payload }));

  it('answers calls and maps handler errors to status codes (TtrpcError keeps its code, others Unknown)', async () => {
    const c = await TtrpcClient.connect(`unix://${sock}`);
    try {
      expect((await c.call('test.Echo', 'Echo', Buffer.from('hi'))).toString()).to.equal('hi');
      const err = await c.call('test.Echo', 'Fail', Buffer.alloc(0)).catch((e: TtrpcError) => e);
      expect(err).to.be.instanceOf(TtrpcError);
      expect((err as TtrpcError).kind).to.equal('NotFound');
      expect((err as TtrpcError).message).to.equal('no such thing');
      expect(((await c.call('test.Echo', 'Crash', Buffer.alloc(0)).catch((e: TtrpcError) => e)) as TtrpcError).kind).to.equal('Unknown');
      expect(((await c.call('test.Nope', 'Echo', Buffer.alloc(0)).catch((e: TtrpcError) => e)) as TtrpcError).kind).to.equal('Unimplemented');
      expect(((await c.call('test.Echo', 'Nope', Buffer.alloc(0)).catch((e: TtrpcError) => e)) as TtrpcError).kind).to.equal('Unimplemented');
    } finally {
      c.close();
    }
  });

  it('serves concurrent streams, answering in completion order', async () => {
    const out = await raw([Buffer.concat([req(1, 'test.Echo', 'Slow', Buffer.from('slow')), req(3, 'test.Echo', 'Echo', Buffer.from('fast'))])], 2);
    expect(out.map((o) => [o.streamId, o.payload.toString()])).to.deep.equal([[3, 'fast'], [1, 'slow']]);
  });

  it('rejects even and non-increasing stream ids, malformed requests and oversize frames, and keeps the connection', async () => {
    const out = await raw([
      req(2, 'test.Echo', 'Echo'),
      req(5, 'test.Echo', 'Echo'),
      req(3, 'test.Echo', 'Echo'),
      encodeFrame(7, 1, 0, Buffer.from([0x0a, 0x05, 0x41])),
      encodeFrame(9, 1, 0, Buffer.alloc(5000, 0x41)),
      encodeFrame(10, 2, 0, Buffer.from('a response from a client is ignored')),
      req(11, 'test.Echo', 'Echo', Buffer.from('still here')),
    ], 6);
    const by = new Map(out.map((o) => [o.streamId, o]));
    expect(by.get(2)!.status!.code).to.equal(3);
    expect(by.get(5)!.payload.toString()).to.equal('x');
    expect(by.get(3)!.status).to.include({ code: 3, message: 'StreamID cannot be re-used and must increment' });
    expect(by.get(7)!.status!.code).to.equal(3);
    expect(by.get(9)!.status!.code).to.equal(8); // ResourceExhausted
    expect(by.get(9)!.status!.message).to.match(/exceed maximum message size of 1024/);
    expect(by.get(11)!.payload.toString()).to.equal('still here');
  });

  it('survives a client that closes mid-frame and one that sends pure garbage', async () => {
    const c1 = net.createConnection(sock);
    await new Promise((r) => c1.once('connect', r));
    c1.end(req(1, 'test.Echo', 'Echo').subarray(0, 7));
    const c2 = net.createConnection(sock);
    await new Promise((r) => c2.once('connect', r));
    c2.end(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    await new Promise((r) => setTimeout(r, 50));
    const c = await TtrpcClient.connect(sock);
    expect((await c.call('test.Echo', 'Echo', Buffer.from('alive'))).toString()).to.equal('alive');
    c.close();
  });

  it('fails pending calls when the server goes away', async () => {
    server.register('test.Echo', 'Hang', () => new Promise(() => undefined));
    const c = await TtrpcClient.connect(sock);
    const p = c.call('test.Echo', 'Hang', Buffer.alloc(0)).catch((e: TtrpcError) => e);
    await new Promise((r) => setTimeout(r, 20));
    await server.close();
    expect(((await p) as TtrpcError).kind).to.equal('Unavailable');
  });
});
