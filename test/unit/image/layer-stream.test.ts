/**
 * Streaming layers (src/image/tar.ts TarReader, src/image/layer-stream.ts):
 * the incremental tar reader gives the same entries, data and errors as the
 * whole-buffer parser however the archive is sliced, and a conversion that
 * reads layers in odd small slices through a ring far smaller than the
 * layer (so slices are reused while chunks from them still wait) stores
 * exactly what the default slices store, with 0 or 1 workers, for tar and
 * gzip layers with hard links across layers, whiteouts and replaced files.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configureLogging } from '../../../src/common/log';
import { convertImage } from '../../../src/image/convert';
import { SliceRing } from '../../../src/image/layer-stream';
import { parseTar, TarError, TarReader, type TarEntry } from '../../../src/image/tar';
import { makeTar, noise, storeFiles, writeLayout, type TarSpec } from '../../helpers/oci-images';

/** Entries and their data from feeding `tar` to a TarReader in slices of the given sizes (cycled). */
function streamed(tar: Buffer, sizes: number[]): { entries: TarEntry[]; data: Buffer[] } {
  const entries: TarEntry[] = [];
  const data: Buffer[][] = [];
  const r = new TarReader('t', {
    entry: (e) => { entries.push(e); data.push([]); },
    data: (piece) => { data[data.length - 1].push(Buffer.from(piece)); },
  });
  let k = 0;
  for (let o = 0; o < tar.length; k++) {
    const n = Math.min(sizes[k % sizes.length], tar.length - o);
    r.push(tar.subarray(o, o + n));
    o += n;
  }
  r.end();
  return { entries, data: data.map((d) => Buffer.concat(d)) };
}

const meta = (e: TarEntry): unknown => ({ path: e.path, type: e.type, mode: e.mode, uid: e.uid, gid: e.gid, size: e.size, mtime: e.mtime, mtimeNsec: e.mtimeNsec, linkname: e.linkname, dev: [e.devmajor, e.devminor], xattrs: [...e.xattrs].map(([k, v]) => [k, v.toString('hex')]) });

const errorOf = (f: () => unknown): Error | null => { try { f(); return null; } catch (e) { return e as Error; } };

describe('image conversion: layers streamed in slices', function () {
  this.timeout(120_000);
  let work = '';
  before(() => {
    configureLogging({ silent: true });
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-imgstream-'));
  });
  after(() => { if (work) fs.rmSync(work, { recursive: true, force: true }); });

  const specs: TarSpec[] = [
    { path: 'd/', type: '5', mode: 0o1777 },
    { path: 'd/small', data: 'hello' },
    { path: 'x'.repeat(150), data: noise(70_000, 2), xattrs: { 'user.k': 'v' }, pax: { mtime: '12.5' } },
    { path: 'd/l', type: '2', linkname: '../a' },
    { path: 'big', data: noise(1_300_000, 3), uid: 3_000_000_000 },
    { path: 'hl', type: '1', linkname: 'big' },
    { path: 'dev/null', type: '3', devmajor: 1, devminor: 3 },
    { path: 'empty', data: '' },
  ];

  it('TarReader gives parseTar\'s entries and data however the archive is sliced', () => {
    const tar = makeTar(specs);
    const whole = parseTar(tar, 't');
    for (const sizes of [[1], [7], [511], [512], [513], [4099, 1, 600], [tar.length]]) {
      const s = streamed(tar, sizes);
      expect(s.entries.map(meta), `slices ${sizes}`).to.deep.equal(whole.map(meta));
      s.data.forEach((d, i) => expect(d.equals(whole[i].data), `data of ${whole[i].path} in slices ${sizes}`).to.equal(true));
    }
  });

  it('a truncated archive is the same TarError streamed as whole, wherever it is cut', () => {
    const tar = makeTar(specs, { noEnd: true });
    for (const cut of [100, 1030, 700, 1024 + 300, 2048 + 5000, tar.length - 1000, tar.length - 1]) {
      const want = errorOf(() => parseTar(tar.subarray(0, cut), 't'));
      expect(want, `cut at ${cut}`).to.be.instanceOf(TarError);
      for (const sizes of [[1000], [513, 7]]) {
        const got = errorOf(() => streamed(tar.subarray(0, cut), sizes));
        expect(got, `cut at ${cut}, slices ${sizes}`).to.be.instanceOf(TarError);
        expect(got!.message).to.equal(want!.message);
      }
    }
  });

  it('the read ring hands out a slice only when every hold on it is released', () => {
    const ring = new SliceRing(2, 16);
    const a = ring.tryAcquire()!;
    const b = ring.tryAcquire()!;
    expect(ring.tryAcquire()).to.equal(null);
    const letGo = ring.hold(a);
    ring.release(a);
    expect(ring.tryAcquire(), 'a chunk still holds a').to.equal(null);
    let woke = false;
    void ring.released().then(() => { woke = true; });
    letGo();
    letGo(); // a second call is a no-op
    expect(ring.tryAcquire()).to.equal(a);
    ring.release(b);
    return Promise.resolve().then(() => expect(woke).to.equal(true));
  });

  it('odd small read slices store exactly what the default slices store (tar and gzip layers, 0 and 1 workers)', async () => {
    const base = makeTar([
      { path: 'lib/', type: '5' },
      { path: 'lib/a', data: noise(2_500_000, 11) },
      { path: 'lib/text', data: Buffer.from('lorem ipsum dolor '.repeat(200_000)) },
      { path: 'lib/gone', data: noise(1_100_000, 12) },
      { path: 'lib/tiny', data: 'tiny' },
      ...specs,
    ]);
    const upper = makeTar([
      { path: 'lib/.wh.gone' },
      { path: 'lib/a', data: noise(1_048_576 * 2, 13) },
      { path: 'hl2', type: '1', linkname: 'lib/text' },
      { path: 'lib/text2', data: Buffer.from('lorem ipsum dolor '.repeat(200_000)) },
    ]);
    const src = path.join(work, 'img');
    writeLayout(src, [
      { tag: 'tar', layers: [{ tar: base, gzip: false }, { tar: upper, gzip: false }] },
      { tag: 'gz', layers: [{ tar: base }, { tar: upper }] },
    ]);
    for (const tag of ['tar', 'gz']) {
      let ref: Record<string, string> | null = null;
      for (const [readSlice, workers] of [[undefined, 1], [4099, 1], [4099, 0], [(3 << 20) + 1, 1]] as const) {
        const store = path.join(work, `s-${tag}-${readSlice}-${workers}`);
        const res = await convertImage(`${src}:${tag}`, { store, progress: false, workers, readSlice });
        expect(res.record.totals.newChunks).to.be.greaterThan(5);
        const files = storeFiles(store);
        if (ref === null) ref = files;
        else expect(files, `${tag}, slices of ${readSlice}, ${workers} workers`).to.deep.equal(ref);
        fs.rmSync(store, { recursive: true, force: true });
      }
    }
  });
});
