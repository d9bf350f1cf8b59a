/**
 * `kata-ctl image ls|rm|gc` over a synthetic store (src/image/gc.ts): derived
 * reference counts (a blob shared by two images survives the removal of
 * one), what gc deletes (unreferenced blobs, partial blobs, abandoned temp
 * dirs) and keeps, --dry-run, --json, the writer lock, and a corrupt chunk
 * table refusing gc instead of deleting live blobs.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { collectGarbage } from '../../../src/image/gc';
import {
  blobPartialPath, blobPath, blobPresencePath, chunkIndexPath, chunkTablePath, ensureStore, imageDir, imagesDir, loadChunkIndex,
} from '../../../src/image/store';
import { kataCtl } from '../../helpers/kata-ctl';

import { CS, putBlob, putImage, sha } from './store-fixture';

describe('image/gc: kata-ctl image ls|rm|gc', function () {
  this.timeout(60000);
  let root: string;
  beforeEach(() => { root = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-imgstore-')); ensureStore(root); });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  const ctl = async (...args: string[]) => {
    const r = await kataCtl(['image', ...args, '--store', root]);
    return { ...r, json: args.includes('--json') && r.code === 0 ? JSON.parse(r.stdout) : undefined };
  };

  it('derives references from chunk tables: gc keeps shared blobs, removes orphans, partials and temp dirs; rm + gc frees the rest', async () => {
    const a = putBlob(root, 3), b = putBlob(root, 2), orphan = putBlob(root, 1);
    const partialHex = sha(Buffer.from('partial'));
    fs.writeFileSync(blobPartialPath(root, partialHex), Buffer.alloc(CS));
    fs.writeFileSync(blobPresencePath(root, partialHex), Buffer.alloc(16));
    fs.mkdirSync(path.join(imagesDir(root), '.tmp-dead'));
    fs.writeFileSync(path.join(imagesDir(root), '.tmp-dead', 'meta.erofs'), 'x');
    const id1 = putImage(root, 'one:latest', [a]);
    const id2 = putImage(root, 'two:latest', [a, b]);

    const ls = await ctl('ls', '--json');
    expect(ls.code, ls.stderr).to.equal(0);
    expect(ls.json.schemaVersion).to.equal(1);
    expect(ls.json.images.map((i: { id: string }) => i.id).sort()).to.deep.equal([id1, id2].sort());
    const two = ls.json.images.find((i: { id: string }) => i.id === id2);
    expect(two).to.include({ chunks: 5, storedBytes: 5 * CS, localBytes: 5 * CS, deviceBytes: 5 * CS, metaBytes: 8192 });
    expect((await ctl('ls')).stdout).to.match(/two:latest/);

    const dry = await ctl('gc', '--dry-run', '--json');
    expect(dry.code, dry.stderr).to.equal(0);
    const names = dry.json.removed.map((r: { path: string }) => path.basename(r.path)).sort();
    expect(names).to.deep.equal([orphan.hex, `${partialHex}.partial`, `${partialHex}.present`, '.tmp-dead'].sort());
    expect(fs.existsSync(blobPath(root, orphan.hex)), 'dry run deletes nothing').to.equal(true);

    const gc = await ctl('gc', '--json');
    expect(gc.code, gc.stderr).to.equal(0);
    expect(gc.json).to.include({ images: 2, liveBlobs: 2 });
    expect(gc.json.freedBytes).to.be.greaterThan(0);
    for (const h of [a.hex, b.hex]) expect(fs.existsSync(blobPath(root, h))).to.equal(true);
    for (const p of [blobPath(root, orphan.hex), blobPartialPath(root, partialHex), blobPresencePath(root, partialHex), path.join(imagesDir(root), '.tmp-dead')]) expect(fs.existsSync(p), p).to.equal(false);
    expect(loadChunkIndex(root).size, 'index rebuilt from the tables').to.equal(5);

    // rm by reference: image two goes, blob b with it at gc; a stays (image one).
    const rm = await ctl('rm', 'two:latest');
    expect(rm.code, rm.stderr).to.equal(0);
    expect(fs.existsSync(imageDir(root, id2.slice(7)))).to.equal(false);
    await ctl('gc');
    expect(fs.existsSync(blobPath(root, a.hex))).to.equal(true);
    expect(fs.existsSync(blobPath(root, b.hex))).to.equal(false);
    expect(loadChunkIndex(root).size).to.equal(3);
    // rm by id prefix, then nothing is left.
    expect((await ctl('rm', id1.slice(7, 21))).code).to.equal(0);
    const last = await ctl('gc', '--json');
    expect(last.json).to.include({ images: 0, liveBlobs: 0 });
    expect(fs.readdirSync(path.dirname(blobPath(root, a.hex)))).to.deep.equal([]);
    expect(fs.statSync(chunkIndexPath(root)).size).to.equal(0);
  });

  it('rm of an unknown image and a bad action fail with one clear error', async () => {
    const r = await ctl('rm', 'nope:latest');
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/no converted image "nope:latest"/);
    const bad = await ctl('prune');
    expect(bad.code).to.equal(2);
  });

  it('a corrupt chunk table stops gc before it deletes anything', async () => {
    const a = putBlob(root, 2), orphan = putBlob(root, 1);
    const id = putImage(root, 'one:latest', [a]);
    const t = fs.readFileSync(chunkTablePath(root, id.slice(7)));
    fs.writeFileSync(chunkTablePath(root, id.slice(7)), t.subarray(0, t.length - 3));
    const r = await ctl('gc');
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/chunk table unreadable/);
    expect(fs.existsSync(blobPath(root, orphan.hex))).to.equal(true);
  });

  it('waits for the store lock of a live writer (a conversion) and then fails plainly', async () => {
    putBlob(root, 1);
    fs.writeFileSync(path.join(root, 'lock'), String(process.pid)); // a live holder: this process
    try {
      const err = await collectGarbage(root, { lockTimeoutMs: 300 }).then(() => undefined, (e: Error & { kind?: string }) => e);
      expect(err?.kind).to.equal('locked');
      expect(fs.readdirSync(path.dirname(chunkIndexPath(root)))).to.deep.equal([]);
    } finally { fs.rmSync(path.join(root, 'lock'), { force: true }); }
    expect((await collectGarbage(root)).removed.length).to.equal(1);
  });
});
