/**
 * Use records (src/image/in-use.ts) and what `kata-ctl image rm|gc` do with
 * them (src/image/gc.ts): rm refused while a sandbox uses the image, naming
 * it; rm --force unlists it but gc keeps its metadata and blobs until the
 * last user ends; a record of a dead (or recycled) pid is ignored and gc
 * deletes it; records created and removed concurrently by several
 * processes, and rm racing a container start, never lose a user.
 */
import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { collectGarbage, removeImage } from '../../../src/image/gc';
import { acquireImageUse, imageUsers, inUseDir, processStartTime } from '../../../src/image/in-use';
import { blobPath, ensureStore, imageDir, imagesDir, metaPath } from '../../../src/image/store';
import { kataCtl } from '../../helpers/kata-ctl';
import { putBlob, putImage } from './store-fixture';

const IN_USE_JS = path.resolve(__dirname, '../../../src/image/in-use.js');

/** Runs a node script in a child process (it can require IN_USE_JS); resolves with its stdout. */
function child(script: string, args: string[] = []): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['-e', script, IN_USE_JS, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('error', reject);
    p.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`child exited ${code}: ${err}`))));
  });
}

describe('image/in-use: rm and gc leave images of running sandboxes alone', function () {
  this.timeout(60000);
  let root: string;
  beforeEach(() => { root = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-inuse-')); ensureStore(root); });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  it('rm of an image in use is refused with one error naming the sandbox; after release it is removed', async () => {
    const a = putBlob(root, 2);
    const id = putImage(root, 'busy:latest', [a]);
    const use = acquireImageUse(root, id, 'sb-1', 'ctr-1');
    try {
      const r = await kataCtl(['image', 'rm', 'busy:latest', '--store', root]);
      expect(r.code).to.equal(1);
      expect(r.stderr).to.match(/is in use by sandbox sb-1 \(container ctr-1, pid \d+\)/);
      expect(r.stderr.trim().split('\n')).to.have.length(1);
      expect(fs.existsSync(metaPath(root, id.slice(7))), 'still listed').to.equal(true);
      expect(fs.readdirSync(imagesDir(root)).filter((e) => e.startsWith('.')), 'no temp left').to.deep.equal([]);
      const gc = await collectGarbage(root);
      expect(gc.imagesInUse).to.equal(1);
      expect(fs.existsSync(blobPath(root, a.hex))).to.equal(true);
    } finally { use.release(); }
    expect(fs.existsSync(inUseDir(root) + '/' + id.slice(7)), 'release removes the empty dir').to.equal(false);
    expect((await removeImage(root, id)).keptFor).to.equal(undefined);
    expect(fs.existsSync(imageDir(root, id.slice(7)))).to.equal(false);
  });

  it('rm --force unlists an image in use; gc keeps its meta and blobs until the last user ends, then frees them', async () => {
    const shared = putBlob(root, 1), own = putBlob(root, 2);
    const other = putImage(root, 'other:latest', [shared]);
    const id = putImage(root, 'busy:latest', [shared, own]);
    const hex = id.slice(7);
    const u1 = acquireImageUse(root, id, 'sb-1', 'c1');
    const u2 = acquireImageUse(root, id, 'sb-2', 'c2');
    const rm = await kataCtl(['image', 'rm', id, '--force', '--json', '--store', root]);
    expect(rm.code, rm.stderr).to.equal(0);
    expect(JSON.parse(rm.stdout).keptFor.map((u: { sandbox: string }) => u.sandbox).sort()).to.deep.equal(['sb-1', 'sb-2']);
    const ls = JSON.parse((await kataCtl(['image', 'ls', '--json', '--store', root])).stdout);
    expect(ls.images.map((i: { id: string }) => i.id)).to.deep.equal([other]);
    const kept = path.join(imagesDir(root), `.removed-${hex}`);

    let gc = await kataCtl(['image', 'gc', '--store', root]);
    expect(gc.code, gc.stderr).to.equal(0);
    expect(gc.stdout).to.match(/1 images in use by running sandboxes; kept for them 1 removed images and 1 blobs/);
    expect(fs.existsSync(path.join(kept, 'meta.erofs'))).to.equal(true);
    expect(fs.existsSync(blobPath(root, own.hex))).to.equal(true);

    u1.release();
    expect((await collectGarbage(root)).keptForSandboxes).to.deep.equal({ images: 1, blobs: 1 });
    expect(fs.existsSync(blobPath(root, own.hex)), 'one user is left').to.equal(true);

    u2.release();
    const last = await collectGarbage(root);
    expect(last.keptForSandboxes).to.deep.equal({ images: 0, blobs: 0 });
    expect(last.removed.map((r) => r.why).sort()).to.deep.equal(['removed image, no users left', 'unreferenced blob']);
    expect(fs.existsSync(kept)).to.equal(false);
    expect(fs.existsSync(blobPath(root, own.hex))).to.equal(false);
    expect(fs.existsSync(blobPath(root, shared.hex)), 'still used by other:latest').to.equal(true);
  });

  it('a record of a dead pid or a recycled pid is ignored by rm and deleted by gc', async () => {
    const a = putBlob(root, 1);
    const id = putImage(root, 'one:latest', [a]);
    const hex = id.slice(7);
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    const deadPid = Number(dead.stdout);
    expect(deadPid).to.be.greaterThan(0);
    const dir = path.join(inUseDir(root), hex);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'sb-dead.c'), JSON.stringify({ sandbox: 'sb-dead', container: 'c', pid: deadPid, startTime: 1, since: '' }));
    // This process's pid, but another start time: the pid was reused.
    const start = processStartTime(process.pid);
    expect(start).to.be.greaterThan(0);
    fs.writeFileSync(path.join(dir, 'sb-reused.c'), JSON.stringify({ sandbox: 'sb-reused', container: 'c', pid: process.pid, startTime: start + 1, since: '' }));
    fs.writeFileSync(path.join(dir, 'garbage'), '{not json');
    expect(imageUsers(root, id)).to.deep.equal([]);

    const dry = await collectGarbage(root, { dryRun: true });
    expect(dry.staleUses).to.equal(0);
    expect(fs.readdirSync(dir)).to.have.length(3);
    const gc = await collectGarbage(root);
    expect(gc.staleUses).to.equal(3);
    expect(gc.imagesInUse).to.equal(0);
    expect(fs.existsSync(dir)).to.equal(false);
    expect(fs.existsSync(blobPath(root, a.hex))).to.equal(true);
    expect((await removeImage(root, id)).keptFor).to.equal(undefined);
  });

  it('records created and removed concurrently by several processes all land and all go', async () => {
    const id = putImage(root, 'one:latest', [putBlob(root, 1)]);
    // Each child takes and releases 40 records, keeping every 4th; the empty
    // directory is removed by one releaser while another is writing into it.
    const script = `
      const { acquireImageUse } = require(process.argv[1]);
      const [root, id, who] = process.argv.slice(2);
      const keep = [];
      for (let i = 0; i < 40; i++) {
        const u = acquireImageUse(root, id, who, 'c' + i);
        if (i % 4 === 0) keep.push(u); else u.release();
      }
      process.stdout.write(JSON.stringify(keep.map((u) => u.path)));`;
    const outs = await Promise.all(['p1', 'p2', 'p3', 'p4'].map((w) => child(script, [root, id, w])));
    const kept = outs.flatMap((o) => JSON.parse(o) as string[]);
    expect(kept).to.have.length(40);
    // Their processes ended: each kept record is there, and stale.
    for (const p of kept) expect(fs.existsSync(p), p).to.equal(true);
    expect(fs.readdirSync(path.join(inUseDir(root), id.slice(7))).filter((n) => n.startsWith('.tmp'))).to.deep.equal([]);
    expect(imageUsers(root, id)).to.deep.equal([]);
    expect((await collectGarbage(root)).staleUses).to.equal(40);
    expect(fs.readdirSync(inUseDir(root))).to.deep.equal([]);
  });

  it('rm racing a container start: never both succeed', async () => {
    // The start side, as openImageDisks does it: record, then check the image
    // is listed; a started one holds its record until its stdin closes.
    const script = `
      const fs = require('node:fs');
      const { acquireImageUse } = require(process.argv[1]);
      const [root, id, meta] = process.argv.slice(2);
      const u = acquireImageUse(root, id, 'sb-race', 'c');
      if (!fs.existsSync(meta)) { u.release(); process.stdout.write('refused'); }
      else { process.stdout.write('started'); process.stdin.on('end', () => u.release()).resume(); }`;
    const outcomes = new Set<string>();
    for (let i = 0; i < 12; i++) {
      const id = putImage(root, `race:${i}`, [putBlob(root, 1)]);
      const hex = id.slice(7);
      const p = spawn(process.execPath, ['-e', script, IN_USE_JS, root, id, metaPath(root, hex)], { stdio: ['pipe', 'pipe', 'inherit'] });
      const startP = new Promise<string>((resolve) => {
        p.stdout.once('data', (d) => resolve(String(d)));
        p.once('exit', () => resolve('exited'));
      });
      const exited = new Promise((r) => p.once('exit', r));
      await new Promise((r) => setTimeout(r, (i % 6) * 20));
      const rm = await removeImage(root, id).then(() => 'removed', (e: Error & { kind?: string }) => e.kind ?? String(e));
      const s = await startP;
      p.stdin.end();
      await exited;
      outcomes.add(`${s}/${rm}`);
      expect(['started/in-use', 'refused/removed', 'refused/in-use'], `trial ${i}`).to.include(`${s}/${rm}`);
      if (s === 'started') expect(fs.existsSync(metaPath(root, hex)), 'a started user keeps its image').to.equal(true);
    }
    expect(fs.existsSync(inUseDir(root)) ? fs.readdirSync(inUseDir(root)) : [], 'every record released').to.deep.equal([]);
  });
});
