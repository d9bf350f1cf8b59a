/**
 * The converter's compression path (src/image/compress-pool.ts,
 * lz4-worker.ts, chunker.ts, and assembly/lz4's compressor): chunks
 * compressed in workers decode to the same bytes, incompressible chunks
 * come back as "store raw", a tight output limit is an overflow and never
 * a write past it, the store is byte-identical whatever the worker count,
 * and layer digests checked in a worker still fail a corrupt layer with the
 * digest error (also when the corruption breaks the tar first). Chunk
 * jobs hash and compress in one pass and skip compressing what their
 * session knows; the process's pool is reused by conversions, replaced
 * when broken, and never keeps the process alive.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configureLogging } from '../../../src/common/log';
import { Lz4 } from '../../../src/hot/lz4';
import { acquirePool, CompressPool } from '../../../src/image/compress-pool';
import { convertImage } from '../../../src/image/convert';
import { OciSourceError, toShared } from '../../../src/image/oci-source';
import { makeTar, noise, storeFiles, writeLayout, type TarSpec } from '../../helpers/oci-images';
import { prng } from '../../helpers/prng';

/** Text-like bytes: words from a small vocabulary (compressible, with many short matches). */
function words(n: number, seed: number): Buffer {
  const r = prng(seed);
  const vocab = ['kata', 'erofs', 'chunk', 'blob', 'lz4', 'sha256', 'layer', 'image', '\n', ' ', 'x86_64', 'lib'];
  const parts: string[] = [];
  let len = 0;
  while (len < n) { const w = vocab[r() % vocab.length]; parts.push(w); len += w.length; }
  return Buffer.from(parts.join('')).subarray(0, n);
}

describe('image conversion: compression in workers', function () {
  this.timeout(120_000);
  let work = '';
  before(() => {
    configureLogging({ silent: true });
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-imgpool-'));
  });
  after(() => { if (work) fs.rmSync(work, { recursive: true, force: true }); });

  it('the encoder round-trips shaped inputs, and a tight limit is an overflow that writes nothing past it', () => {
    const lz4 = new Lz4({ maxBlockBytes: 1 << 20 });
    const r = prng(7);
    const shapes: [string, Buffer][] = [
      ['zeros', Buffer.alloc(1 << 20)],
      ['words', words(1 << 20, 1)],
      ['noise', noise(1 << 20, 2)],
      ['period 3', Buffer.from('abc'.repeat(100_000))],
      ['noise then words', Buffer.concat([noise(300_000, 3), words(300_000, 4)])],
      ['short', Buffer.from('0123456789abcdef0123')],
    ];
    for (let i = 0; i < 20; i++) shapes.push([`mixed ${i}`, Buffer.concat([words(r() % 70_000, i), noise(r() % 5000, i), Buffer.alloc(r() % 300, i)])]);
    for (const [name, data] of shapes) {
      const c = lz4.compressBlock(data);
      expect(lz4.decompressBlock(c, data.length).equals(data), name).to.equal(true);
      // Every limit below the block's size must overflow and leave the canary after it alone.
      for (const cap of [c.length - 1, Math.floor(c.length / 2), 17]) {
        if (cap < 1 || cap + 64 > lz4.compressBound(lz4.maxBlockBytes)) continue; // the canary must stay inside the output area
        lz4.mem.u8.set(data, lz4.srcOff);
        lz4.mem.u8.fill(0xa5, lz4.dstOff + cap, lz4.dstOff + cap + 64);
        expect(() => lz4.compressInPlace(lz4.srcOff, data.length, lz4.dstOff, cap), `${name} cap ${cap}`).to.throw(/larger than the space/);
        expect(lz4.mem.u8.subarray(lz4.dstOff + cap, lz4.dstOff + cap + 64).every((b) => b === 0xa5), `${name} cap ${cap}: wrote past the limit`).to.equal(true);
      }
    }
  });

  it('workers compress shared and unshared chunks alike, hand back null for incompressible ones, and hash layers (also streamed)', async () => {
    const pool = new CompressPool(2, 1 << 20);
    const lz4 = new Lz4({ maxBlockBytes: 1 << 20 });
    try {
      const text = words(1 << 20, 9);
      const shared = toShared(Buffer.concat([noise(4096, 1), text]));
      const [a, b, z] = await Promise.all([pool.compress(shared.subarray(4096)), pool.compress(text), pool.compress(noise(1 << 20, 5))]);
      expect(a).to.not.equal(null);
      expect(Buffer.from(a!).equals(Buffer.from(b!)), 'shared and copied input give the same block').to.equal(true);
      expect(lz4.decompressBlock(a!, text.length).equals(text)).to.equal(true);
      expect(z, 'noise does not compress').to.equal(null);
      expect(await pool.sha256(shared)).to.equal(crypto.createHash('sha256').update(shared).digest('hex'));
      // Streamed as a layer is read: slices in order, digest at the end.
      const s = pool.sha256Stream(shared);
      for (let o = 0; o < shared.length; o += 300_000) s.update(o, Math.min(300_000, shared.length - o));
      expect(await s.digest()).to.equal(crypto.createHash('sha256').update(shared).digest('hex'));
      expect(() => pool.sha256Stream(text), 'an unshared buffer').to.throw(/SharedArrayBuffer/);
    } finally {
      await pool.close();
    }
  });

  it('the store is byte-identical with 0, 1 and 3 workers (and with compression off, 0 and 1)', async () => {
    const entries: TarSpec[] = [];
    for (let i = 0; i < 12; i++) entries.push({ path: `f${i}`, data: i % 3 === 0 ? noise(300_000 + i * 1000, i) : words(2_500_000 + i * 7, i) });
    entries.push({ path: 'dup', data: words(2_500_000, 1) });
    const src = path.join(work, 'det');
    writeLayout(src, [{ tag: 't', layers: [{ tar: makeTar(entries.slice(0, 6)) }, { tar: makeTar(entries.slice(6)), gzip: false }] }]);
    const trees: Record<string, string>[] = [];
    for (const workers of [0, 1, 3]) {
      const store = path.join(work, `det-${workers}`);
      const res = await convertImage(`${src}:t`, { store, progress: false, workers, chunkSize: 1 << 20 });
      expect(res.record.totals.newChunks).to.be.greaterThan(20);
      trees.push(storeFiles(store));
    }
    expect(Object.keys(trees[0]).length).to.be.greaterThan(3);
    expect(trees[1]).to.deep.equal(trees[0]);
    expect(trees[2]).to.deep.equal(trees[0]);
    // Compression off: the workers only hash; the same store either way.
    const raw: Record<string, string>[] = [];
    for (const workers of [0, 1]) {
      const store = path.join(work, `det-raw-${workers}`);
      await convertImage(`${src}:t`, { store, progress: false, workers, chunkSize: 1 << 20, compress: false });
      raw.push(storeFiles(store));
    }
    expect(raw[1]).to.deep.equal(raw[0]);
    expect(raw[0]).to.not.deep.equal(trees[0]);
  });

  it('a chunk job names the chunk and compresses it unless its session knows the sha256; a moved buffer comes back when not compressed', async () => {
    const pool = new CompressPool(1, 1 << 20);
    const lz4 = new Lz4({ maxBlockBytes: 1 << 20 });
    const sha = (b: Uint8Array): string => crypto.createHash('sha256').update(b).digest('hex');
    try {
      const text = words(1 << 20, 21);
      const stored = words(300_000, 22);
      const s = pool.session([sha(stored)]);
      const a = await pool.chunk(toShared(text), s.sid, true);
      expect(a.hex).to.equal(sha(text));
      expect(lz4.decompressBlock(a.data!, text.length).equals(text)).to.equal(true);
      const again = await pool.chunk(text, s.sid, true);
      expect(again, 'hashed before in the session').to.include({ hex: sha(text), skipped: true });
      expect(await pool.chunk(stored, s.sid, true), 'in the store already').to.include({ hex: sha(stored), skipped: true });
      const n = noise(200_000, 23);
      const owned = Buffer.from(new ArrayBuffer(n.length));
      n.copy(owned);
      const r = await pool.chunk(owned, s.sid, true, true);
      expect(owned.length, 'moved, not copied').to.equal(0);
      expect(r.data ?? null, 'noise does not compress').to.equal(null);
      expect(Buffer.from(r.raw!).equals(n), 'handed back whole').to.equal(true);
      const h = await pool.chunk(words(5000, 24), s.sid, false);
      expect(h.hex).to.equal(sha(words(5000, 24)));
      expect(h.data ?? null, 'lz4 off: hashed only').to.equal(null);
      s.end();
      const s2 = pool.session([]);
      expect((await pool.chunk(text, s2.sid, true)).skipped, 'a new session knows nothing').to.equal(undefined);
      s2.end();
    } finally {
      await pool.close();
    }
  });

  it('conversions reuse the process pool; a broken pool is replaced; the store bytes stay the same', async () => {
    const src = path.join(work, 'reuse');
    writeLayout(src, [{ tag: 't', layers: [{ tar: makeTar([{ path: 'a', data: words(3_000_000, 31) }, { path: 'b', data: noise(1_500_000, 32) }]), gzip: false }] }]);
    const convert = async (n: number): Promise<Record<string, string>> => {
      const store = path.join(work, `reuse-${n}`);
      await convertImage(`${src}:t`, { store, progress: false, workers: 1 });
      return storeFiles(store);
    };
    const ref = await convert(0);
    const first = acquirePool(1, 1 << 20);
    const ids = first.pool.threadIds;
    first.release();
    expect(await convert(1)).to.deep.equal(ref);
    const second = acquirePool(1, 1 << 20);
    expect(second.pool.threadIds, 'the same threads').to.deep.equal(ids);
    await second.pool.close(); // as if a worker had died
    second.release();
    expect(await convert(2), 'on a new pool').to.deep.equal(ref);
    const third = acquirePool(1, 1 << 20);
    expect(third.pool.healthy).to.equal(true);
    expect(third.pool.threadIds).to.not.deep.equal(ids);
    third.release();
  });

  it('conversions running at the same time on the process pool store what each stores alone', async () => {
    const img = (tag: string, n: number, seed: number): string => {
      const src = path.join(work, `conc-${tag}`);
      const files: TarSpec[] = [];
      for (let i = 0; i < n; i++) files.push({ path: `f${i}`, data: i % 4 === 3 ? noise(1_500_000, seed + i) : words(2_000_000 + i, seed + i) });
      writeLayout(src, [{ tag: 't', layers: [{ tar: makeTar(files), gzip: false }] }]);
      return `${src}:t`;
    };
    const a = img('a', 1, 60);
    const b = img('b', 20, 70);
    const c = img('c', 3, 90);
    const run = async (source: string, store: string): Promise<Record<string, string>> => {
      await convertImage(source, { store: path.join(work, store), progress: false, workers: 1, readSlice: 1 << 20 });
      return storeFiles(path.join(work, store));
    };
    const alone = { b: await run(b, 'conc-b0'), c: await run(c, 'conc-c0') };
    // b runs throughout; a ends (its read buffers are unshared) and c starts while b still streams.
    const pb = run(b, 'conc-b1');
    await run(a, 'conc-a1');
    const pc = run(c, 'conc-c1');
    expect(await pb).to.deep.equal(alone.b);
    expect(await pc).to.deep.equal(alone.c);
  });

  it('an idle pool does not keep the process alive', function () {
    const src = path.join(work, 'exit');
    writeLayout(src, [{ tag: 't', layers: [{ tar: makeTar([{ path: 'a', data: words(2_000_000, 41) }]), gzip: false }] }]);
    const dist = path.resolve(__dirname, '../../../src/image/convert.js');
    const script = `require(${JSON.stringify(dist)}).convertImage(${JSON.stringify(`${src}:t`)}, { store: ${JSON.stringify(path.join(work, 'exit-store'))}, progress: false, workers: 1 }).then((r) => console.log(r.id), (e) => { console.error(e); process.exit(2); });`;
    const t0 = Date.now();
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 25_000 });
    expect(r.status, `${r.stderr} (signal ${r.signal})`).to.equal(0);
    expect(r.stdout).to.match(/^sha256:[0-9a-f]{64}$/m);
    // The pool's idle timer (30 s) is unref'd: the process ends as soon as the conversion does.
    expect(Date.now() - t0).to.be.lessThan(25_000);
  });

  it('a conversion that fails with chunks still queued and in flight ends cleanly (nothing unhandled, nothing registered)', async () => {
    const files: TarSpec[] = [];
    for (let i = 0; i < 6; i++) files.push({ path: `w${i}`, data: words(6_000_000 + i, 50 + i) });
    const good = makeTar(files);
    // A broken header after 36 MB of data: the layer's digest holds, its tar does not.
    const tar = Buffer.concat([good.subarray(0, good.length - 1024), Buffer.alloc(512, 0x41), Buffer.alloc(1024)]);
    const src = path.join(work, 'late');
    writeLayout(src, [{ tag: 't', layers: [{ tar, gzip: false }] }]);
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown): void => { unhandled.push(e); };
    process.on('unhandledRejection', onUnhandled);
    try {
      const store = path.join(work, 'late-store');
      const err = await convertImage(`${src}:t`, { store, progress: false, workers: 1, readSlice: 1 << 20 }).then(() => null, (e: Error) => e);
      expect(err, 'the conversion fails').to.be.instanceOf(Error);
      expect(fs.readdirSync(path.join(store, 'images')).filter((n) => !n.startsWith('.'))).to.deep.equal([]);
      await new Promise((r) => setTimeout(r, 1500)); // the jobs still in flight come back
      expect(unhandled.map(String)).to.deep.equal([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('a corrupt layer is the digest error, also when the corruption breaks its tar first', async () => {
    const tar = makeTar([{ path: 'a', data: words(200_000, 3) }, { path: 'b', data: 'b' }]);
    const src = path.join(work, 'bad');
    writeLayout(src, [{ tag: 't', layers: [{ tar, gzip: false }] }]);
    const m = JSON.parse(fs.readFileSync(path.join(src, 'index.json'), 'utf8')).manifests[0];
    const man = JSON.parse(fs.readFileSync(path.join(src, 'blobs', 'sha256', m.digest.slice(7)), 'utf8'));
    const lp = path.join(src, 'blobs', 'sha256', man.layers[0].digest.slice(7));
    const b = fs.readFileSync(lp);
    b[3] ^= 0xff; // inside the first header: its checksum no longer holds
    fs.writeFileSync(lp, b);
    const store = path.join(work, 'bad-store');
    for (const workers of [0, 1]) {
      const err = await convertImage(`${src}:t`, { store, progress: false, workers }).then(() => null, (e: Error) => e);
      expect(err, `workers ${workers}`).to.be.instanceOf(OciSourceError);
      expect(err!.message).to.match(/blob content is sha256:[0-9a-f]{64}, expected sha256:/);
    }
    expect(fs.readdirSync(path.join(store, 'images')).filter((n) => !n.startsWith('.'))).to.deep.equal([]);
  });
});
