/**
 * Converted images in a real VM (QEMU/TCG, issue 12): a two-layer OCI image
 * converted once into a temp store; one container from it attached at boot,
 * a second hotplugged into the same sandbox — nothing converted again, no
 * mkfs.erofs, no per-container image file; a big file read in the guest
 * hashes as on the host (guest kernel EROFS, metadata disk + our blob
 * device); a chunk corrupted in the store is EIO in the guest, not other
 * bytes; chunks missing locally are fetched lazily from a loopback blob
 * server by a third container of a second store; the image cannot be
 * removed while its containers run, and removing one releases its record.
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { requireGuest, testRunDir, testConfig, expectNothingLeft, CACHE, collectOutput } from '../helpers/guest';
import { buildOciLayout } from '../helpers/oci-layout';
import { startBlobServer, type BlobServer } from '../helpers/blob-server';
import { selectHypervisor } from '../../src/hypervisor';
import { Sandbox } from '../../src/runtime/sandbox';
import type { QemuHypervisor } from '../../src/hypervisor/qemu';
import { defaultSpec, defaultProcess } from '../../src/runtime/spec';
import { configureLogging } from '../../src/common/log';
import { convertImage } from '../../src/image/convert';
import { decodeChunkTable } from '../../src/image/chunk-table';
import { blobPath, chunkTablePath, imageDir, imageIdHex, imagesDir } from '../../src/image/store';
import { imageDiskIds } from '../../src/runtime/image-rootfs';
import { removeImage } from '../../src/image/gc';
import { imageUsers } from '../../src/image/in-use';
import type { BlobDevice } from '../../src/image/blob-device';

const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

describe('integration: containers from a converted image (QEMU)', function () {
  this.timeout(300000);
  let runDir: string;
  let sandbox: Sandbox | undefined;
  let hv: QemuHypervisor;
  let server: BlobServer | undefined;
  let store = '';
  let imageId = '';
  const files: Record<string, Buffer> = {};

  before(async function () {
    requireGuest(this);
    configureLogging({ silent: true });
    runDir = testRunDir();
    // Layer 1: busybox; layer 2: data (random, so LZ4 stores it raw; text, so LZ4 compresses it).
    const data = path.join(runDir, 'layer2');
    fs.mkdirSync(path.join(data, 'data'), { recursive: true });
    files.big = crypto.randomBytes(12 << 20);
    files.text = Buffer.from(Array.from({ length: 300000 }, (_, i) => `line ${i}\n`).join(''));
    files.victim = crypto.randomBytes(3 << 20);
    fs.writeFileSync(path.join(data, 'data', 'big.bin'), files.big);
    fs.writeFileSync(path.join(data, 'data', 'text.txt'), files.text);
    fs.writeFileSync(path.join(data, 'data', 'victim.bin'), files.victim);
    const layout = path.join(runDir, 'oci');
    buildOciLayout(layout, { layers: [path.join(CACHE, 'rootfs', 'busybox'), data], tag: 'v1', entrypoint: ['/bin/sh', '-c'], cmd: ['echo hi'], env: ['FOO=bar'], workdir: '/data' });
    store = path.join(runDir, 'store');
    const r = await convertImage(`${layout}:v1`, { store, progress: false });
    imageId = r.id;
    const cfg = testConfig(runDir);
    cfg.image.store_dir = store;
    hv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
    sandbox = new Sandbox({ id: 'img1', config: cfg, hypervisor: hv, bootContainers: [{ id: 'one', rootfs: '', image: imageId }] });
    await sandbox.start();
  });

  after(async () => {
    await sandbox?.stop();
    await server?.close();
    if (!runDir) return;
    // Stopping the sandbox closed its blob devices, which released their use records.
    if (store && imageId) expect(imageUsers(store, imageId), 'no use record left').to.deep.equal([]);
    expectNothingLeft(runDir);
  });

  const collect = (cid: string, execId: string) => collectOutput(sandbox!.agent, cid, execId);

  it('runs a container from the image at boot and reads a big file with the right bytes', async () => {
    await sandbox!.createContainer('one', defaultSpec({ args: ['sh', '-c', 'echo $FOO; sha256sum /data/big.bin /data/text.txt; echo w > /data/new && cat /data/new; sleep 120'], env: ['FOO=bar'] }), '');
    await sandbox!.startContainer('one');
    await sandbox!.exec('one', 'r1', defaultProcess({ args: ['sh', '-c', 'sha256sum /data/big.bin /data/text.txt; ls /bin/busybox'] }));
    const r = await collect('one', 'r1');
    expect(r.status, r.out).to.equal(0);
    expect(r.out).to.equal(`${sha(files.big)}  /data/big.bin\n${sha(files.text)}  /data/text.txt\n/bin/busybox\n`);
    const dev = hv.servedDevice('blk', imageDiskIds('one').blob)!.device as unknown as { opts: { backend: BlobDevice } };
    expect(dev.opts.backend.metrics.slotLoads).to.be.greaterThan(10);
    expect(dev.opts.backend.metrics.corrupt).to.equal(0);
  });

  it('a second container from the same image converts nothing and builds no image file', async () => {
    const before = fs.readdirSync(imagesDir(store)).concat(fs.readdirSync(path.dirname(blobPath(store, '0'.repeat(64)))));
    const mtime = fs.statSync(imageDir(store, imageIdHex(imageId))).mtimeMs;
    await sandbox!.createContainer('two', defaultSpec({ args: ['sh', '-c', 'cat /data/new 2>&1; echo x > /y && head -c 7 /data/text.txt'] }), '', { image: imageId });
    await sandbox!.startContainer('two');
    const r = await collect('two', '');
    // Its own overlay: the first container's write is not there.
    expect(r).to.deep.equal({ status: 0, out: 'cat: can\'t open \'/data/new\': No such file or directory\nline 0\n' });
    expect(fs.readdirSync(imagesDir(store)).concat(fs.readdirSync(path.dirname(blobPath(store, '0'.repeat(64)))))).to.deep.equal(before);
    expect(fs.statSync(imageDir(store, imageIdHex(imageId))).mtimeMs).to.equal(mtime);
    expect(fs.readdirSync(sandbox!.dir).filter((f) => f.endsWith('.erofs')), 'no per-container mkfs.erofs image').to.deep.equal([]);
    // While its containers run, the image cannot be removed (src/image/in-use.ts).
    expect(imageUsers(store, imageId).map((u) => `${u.sandbox}/${u.container}`).sort()).to.deep.equal(['img1/one', 'img1/two']);
    const rm = await removeImage(store, imageId).then(() => 'removed', (e: Error & { kind?: string }) => `${e.kind}: ${e.message}`);
    expect(rm).to.match(/^in-use: .*sandbox img1 \(container one/);
    await sandbox!.removeContainer('two');
    expect(hv.servedDevice('blk', imageDiskIds('two').blob)).to.equal(undefined);
    expect(imageUsers(store, imageId).map((u) => u.container), 'removing a container releases its record').to.deep.equal(['one']);
  });

  it('a corrupt chunk in the store is an I/O error in the guest, never other bytes', async () => {
    const t = decodeChunkTable(fs.readFileSync(chunkTablePath(store, imageIdHex(imageId))));
    // The chunks of victim.bin: the slots whose digests are its 1 MiB pieces.
    const want = new Set<string>();
    for (let o = 0; o < files.victim.length; o += t.chunkSize) want.add(sha(files.victim.subarray(o, o + t.chunkSize)));
    const s = t.slots.find((x) => x.sha256 === [...want][1])!;
    expect(s, 'victim chunk found').to.not.equal(undefined);
    const fd = fs.openSync(blobPath(store, t.blobs[s.blob].digest), 'r+');
    try {
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, s.offset + 100);
      b[0] ^= 0xff;
      fs.writeSync(fd, b, 0, 1, s.offset + 100);
    } finally { fs.closeSync(fd); }
    await sandbox!.exec('one', 'r2', defaultProcess({ args: ['sh', '-c', 'cat /data/victim.bin > /dev/null; echo status=$?; head -c 1048576 /data/victim.bin | sha256sum'] }));
    const r = await collect('one', 'r2');
    expect(r.out).to.match(/Input\/output error|I\/O error/);
    expect(r.out).to.match(/status=1/);
    // The chunk before it is intact and still reads right.
    expect(r.out).to.include(sha(files.victim.subarray(0, 1 << 20)));
  });

  it('fetches missing chunks lazily from a blob server for a container of a store that has only the metadata', async () => {
    // A second store with the image's metadata but no blobs; the first store's blobs are the "registry".
    const store2 = path.join(runDir, 'store2');
    fs.mkdirSync(path.join(store2, 'images'), { recursive: true });
    fs.cpSync(imageDir(store, imageIdHex(imageId)), imageDir(store2, imageIdHex(imageId)), { recursive: true });
    server = await startBlobServer(path.dirname(blobPath(store, '0'.repeat(64))), 'test/image');
    const cfg = testConfig(runDir);
    cfg.image.store_dir = store2;
    cfg.image.registry_url = server.url;
    cfg.image.registry_name = 'test/image';
    const sb2 = new Sandbox({ id: 'img2', config: cfg, hypervisor: (await selectHypervisor(cfg, 'qemu')).hv, bootContainers: [{ id: 'lazy', rootfs: '', image: imageId }] });
    try {
      await sb2.start();
      await sb2.createContainer('lazy', defaultSpec({ args: ['sh', '-c', 'head -c 100 /data/text.txt | tail -c 7'] }), '');
      await sb2.startContainer('lazy');
      const r = await collectOutput(sb2.agent, 'lazy', '');
      expect(r).to.deep.equal({ status: 0, out: files.text.subarray(93, 100).toString() });
      const total = fs.readdirSync(path.dirname(blobPath(store, '0'.repeat(64)))).reduce((n, f) => n + fs.statSync(blobPath(store, f)).size, 0);
      // busybox + the text's first chunk, not the 15 MiB of data.
      expect(server.stats.bytes).to.be.greaterThan(0);
      expect(server.stats.bytes).to.be.lessThan(total / 3);
    } finally {
      await sb2.stop();
    }
  });
});
