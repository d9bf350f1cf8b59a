/**
 * The image blob device (src/image/blob-device.ts) and the lazy source
 * (src/image/lazy-source.ts) without a VM: a synthetic store (one blob of
 * raw and LZ4 chunks, a chunk table) read through BlobDevice, locally and
 * lazily from a loopback blob server, and every failure the issue names —
 * a corrupt stored chunk, a server that stalls, sends wrong bytes, lies
 * about the blob size, ignores the range, or cuts the body short.
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Lz4 } from '../../../src/hot/lz4';
import { CHUNK_FLAG_LZ4, encodeChunkTable, type ChunkSlot, type ChunkTable } from '../../../src/image/chunk-table';
import { BlobDevice, BlobDeviceError } from '../../../src/image/blob-device';
import { LazyError, LazySource, PartialBlob } from '../../../src/image/lazy-source';
import { blobPartialPath, blobPath, blobsDir, chunkTablePath, ensureStore, imageDir } from '../../../src/image/store';
import { startBlobServer, type BlobServer } from '../../helpers/blob-server';

const CS = 64 * 1024;
const IMAGE = 'ab'.repeat(32);
const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

interface Fixture { table: ChunkTable; device: Buffer; blobHex: string; blob: Buffer }

/** Writes one blob of `chunks` (compressible ones LZ4) and the image's chunk table into `root`. */
function makeImage(root: string, chunks: Buffer[]): Fixture {
  const lz4 = new Lz4({ maxBlockBytes: CS });
  const parts: Buffer[] = [];
  const slots: Omit<ChunkSlot, 'blob'>[] = [];
  let off = 0;
  for (const c of chunks) {
    const z = lz4.compressBlock(c);
    const useZ = z.length < c.length;
    const stored = useZ ? z : c;
    slots.push({ sha256: sha(c), offset: off, storedSize: stored.length, size: c.length, flags: useZ ? CHUNK_FLAG_LZ4 : 0 });
    parts.push(stored);
    off += stored.length;
  }
  const blob = Buffer.concat(parts);
  const blobHex = sha(blob);
  ensureStore(root);
  fs.writeFileSync(blobPath(root, blobHex), blob);
  const table: ChunkTable = { chunkSize: CS, blobs: [{ digest: blobHex, size: blob.length }], slots: slots.map((s) => ({ ...s, blob: 0 })) };
  fs.mkdirSync(imageDir(root, IMAGE), { recursive: true });
  fs.writeFileSync(chunkTablePath(root, IMAGE), encodeChunkTable(table));
  const device = Buffer.alloc(chunks.length * CS);
  chunks.forEach((c, k) => c.copy(device, k * CS));
  return { table, device, blobHex, blob };
}

function chunksFor(): Buffer[] {
  const text = Buffer.from('the quick brown fox jumps over the lazy dog\n'.repeat(2000)).subarray(0, CS);
  return [crypto.randomBytes(CS), text, crypto.randomBytes(5000), Buffer.from(text.subarray(0, 30000)), crypto.randomBytes(CS)];
}

async function readAll(dev: BlobDevice, offset: number, lens: number[]): Promise<Buffer> {
  const bufs = lens.map((n) => Buffer.alloc(n, 0xee));
  await dev.read(bufs, offset);
  return Buffer.concat(bufs);
}

describe('image/blob-device: serving a converted image\'s blob device', function () {
  this.timeout(20000);
  let root: string;
  let dev: BlobDevice | undefined;
  let server: BlobServer | undefined;
  beforeEach(() => { root = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-blobdev-')); });
  afterEach(async () => {
    dev?.close();
    dev = undefined;
    await server?.close();
    server = undefined;
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('serves every slot (raw and LZ4, short chunks zero-padded) across slot boundaries and scattered buffers', async () => {
    const fx = makeImage(root, chunksFor());
    expect(fx.table.slots.filter((s) => s.flags & CHUNK_FLAG_LZ4).length).to.equal(2);
    dev = new BlobDevice({ root, imageId: `sha256:${IMAGE}` });
    expect(dev.size).to.equal(5 * CS);
    expect((await readAll(dev, 0, [dev.size])).equals(fx.device)).to.equal(true);
    for (const [off, lens] of [[CS - 512, [512, 4096, 1024]], [2 * CS + 4096, [CS]], [3 * CS - 7 * 512, [512, 512, 2 * CS]]] as const) {
      expect((await readAll(dev, off, [...lens])).equals(fx.device.subarray(off, off + lens.reduce((a, b) => a + b, 0)))).to.equal(true);
    }
    expect(dev.metrics.slotLoads).to.equal(5); // later reads came from the verified cache
    expect(dev.metrics.cacheHits).to.be.greaterThan(0);
  });

  it('a corrupt stored chunk (raw or LZ4) fails the read instead of returning other bytes', async () => {
    const fx = makeImage(root, chunksFor());
    for (const k of [0, 1]) {
      const s = fx.table.slots[k];
      const b = fs.readFileSync(blobPath(root, fx.blobHex));
      b[s.offset + (s.storedSize >> 1)] ^= 0x55;
      fs.writeFileSync(blobPath(root, fx.blobHex), b);
    }
    dev = new BlobDevice({ root, imageId: IMAGE });
    for (const k of [0, 1]) {
      const err = await dev.read([Buffer.alloc(4096)], k * CS).then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(BlobDeviceError);
      expect((err as BlobDeviceError).kind).to.equal('corrupt');
    }
    expect(dev.metrics.corrupt).to.equal(2);
    // Untouched slots still read.
    expect((await readAll(dev, 2 * CS, [CS])).equals(fx.device.subarray(2 * CS, 3 * CS))).to.equal(true);
    // Out-of-range reads are refused.
    expect(await dev.read([Buffer.alloc(512)], dev.size).then(() => 'ok', (e: BlobDeviceError) => e.kind)).to.equal('io');
  });

  it('a missing blob without a lazy source is a clear error', async () => {
    const fx = makeImage(root, chunksFor());
    fs.rmSync(blobPath(root, fx.blobHex));
    dev = new BlobDevice({ root, imageId: IMAGE });
    const err = await dev.read([Buffer.alloc(512)], 0).then(() => undefined, (e: unknown) => e);
    expect((err as BlobDeviceError).kind).to.equal('missing');
  });

  it('fetches missing chunks lazily by range, keeps them in the partial blob, and promotes the complete blob', async () => {
    const remote = fs.mkdtempSync(path.join(root, 'remote-'));
    const fx = makeImage(root, chunksFor());
    fs.renameSync(blobPath(root, fx.blobHex), path.join(remote, fx.blobHex));
    server = await startBlobServer(remote, 'library/test');
    const lazy = new LazySource({ baseUrl: server.url, name: 'library/test' });
    dev = new BlobDevice({ root, imageId: IMAGE, lazy, cacheBytes: 0 });
    // One slot: exactly its stored bytes cross the wire.
    expect((await readAll(dev, 1 * CS, [4096])).equals(fx.device.subarray(CS, CS + 4096))).to.equal(true);
    expect(server.stats.bytes).to.equal(fx.table.slots[1].storedSize);
    expect(fs.existsSync(blobPartialPath(root, fx.blobHex))).to.equal(true);
    // Read again (no cache): from the partial blob, nothing fetched.
    await readAll(dev, 1 * CS, [4096]);
    expect(server.stats.requests).to.equal(1);
    // A second device (another container) finds it locally too.
    const dev2 = new BlobDevice({ root, imageId: IMAGE, lazy });
    try {
      await readAll(dev2, 1 * CS, [512]);
      expect(server.stats.requests).to.equal(1);
    } finally { dev2.close(); }
    // Everything: the complete blob is verified and promoted.
    expect((await readAll(dev, 0, [dev.size])).equals(fx.device)).to.equal(true);
    expect(server.stats.bytes).to.equal(fx.blob.length);
    expect(fs.readFileSync(blobPath(root, fx.blobHex)).equals(fx.blob)).to.equal(true);
    expect(fs.existsSync(blobPartialPath(root, fx.blobHex))).to.equal(false);
  });

  for (const [mode, kind] of [['flip', 'corrupt'], ['lie-size', 'size'], ['no-range', 'range'], ['short', 'http'], ['stall', 'timeout'], ['error500', 'status']] as const) {
    it(`a server that ${mode === 'flip' ? 'sends wrong bytes' : mode} fails the read (${kind}) and stores nothing`, async () => {
      const remote = fs.mkdtempSync(path.join(root, 'remote-'));
      const fx = makeImage(root, chunksFor());
      fs.renameSync(blobPath(root, fx.blobHex), path.join(remote, fx.blobHex));
      server = await startBlobServer(remote, 'library/test');
      server.mode = mode;
      const lazy = new LazySource({ baseUrl: server.url, name: 'library/test', stallMs: 300, attempts: 2 });
      dev = new BlobDevice({ root, imageId: IMAGE, lazy });
      const err = await dev.read([Buffer.alloc(4096)], 0).then(() => undefined, (e: unknown) => e);
      expect(err, 'read must fail').to.be.instanceOf(Error);
      expect((err as LazyError | BlobDeviceError).kind).to.equal(kind);
      // Retried only what may heal (stall, a dropped connection, 5xx); never a liar.
      expect(server.stats.requests).to.equal(mode === 'stall' || mode === 'error500' || mode === 'short' ? 2 : 1);
      const p = new PartialBlob(root, fx.blobHex, fx.blob.length);
      try { expect(p.presentBytes()).to.equal(0); } finally { p.close(); }
      // The server heals: the same device reads the right bytes.
      server.mode = 'ok';
      expect((await readAll(dev, 0, [CS])).equals(fx.device.subarray(0, CS))).to.equal(true);
    });
  }

  it('a missing or corrupt chunk table is one clear error at open', () => {
    makeImage(root, chunksFor());
    const t = fs.readFileSync(chunkTablePath(root, IMAGE));
    fs.writeFileSync(chunkTablePath(root, IMAGE), t.subarray(0, t.length - 1));
    expect(() => new BlobDevice({ root, imageId: IMAGE })).to.throw(/chunk table is .* bytes, its header says/);
    fs.rmSync(chunkTablePath(root, IMAGE));
    expect(() => new BlobDevice({ root, imageId: IMAGE })).to.throw(BlobDeviceError, /cannot read its chunk table/);
  });

  it('rejects a bad lazy-source configuration', () => {
    expect(() => new LazySource({ baseUrl: 'ftp://x', name: 'a' })).to.throw(LazyError, /http or https/);
    expect(() => new LazySource({ baseUrl: 'http://127.0.0.1:1', name: 'Bad Name' })).to.throw(LazyError, /name/);
    expect(fs.existsSync(blobsDir(root))).to.equal(false);
  });
});
