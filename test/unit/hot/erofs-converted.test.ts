/**
 * Converted images (src/image: `kata-ts image convert`) read through the
 * WebAssembly EROFS reader: the metadata image's chunk-based files, with
 * device 1 (the image's virtual blob device) assembled from BlobDevice
 * slots, give every file's bytes of the source tree; chunkLocation() of
 * each chunk names device 1 and a slot whose chunk-table sha256 and size
 * are those of the file's bytes there — the check a converter's
 * verification makes with this API.
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErofsImage, type ImageSource } from '../../../src/hot/erofs';
import { convertImage } from '../../../src/image/convert';
import { BlobDevice } from '../../../src/image/blob-device';
import { buildOciLayout } from '../../helpers/oci-layout';
import { prng } from '../../helpers/prng';

function bufferDevice(buf: Buffer): ImageSource {
  return {
    size: buf.length,
    read(dst, off, len, pos) {
      const n = Math.max(0, Math.min(len, buf.length - pos));
      buf.copy(dst, off, pos, pos + n);
      return n;
    },
    close() { /* nothing */ },
  };
}

describe('hot/erofs: converted images (src/image) through the WebAssembly reader', function () {
  this.timeout(180000);
  let tmp: string;
  let tree: string;
  const files: string[] = [];

  before(function () {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-erofs-converted-'));
    tree = path.join(tmp, 'tree');
    const r = prng(777);
    const rand = (n: number) => Buffer.from(Array.from({ length: n }, () => r() & 255));
    const w = (rel: string, data: Buffer) => {
      fs.mkdirSync(path.dirname(path.join(tree, rel)), { recursive: true });
      fs.writeFileSync(path.join(tree, rel), data);
      files.push(rel);
    };
    w('empty', Buffer.alloc(0));
    w('small', rand(3000));
    w('b65536', rand(65536));
    w('dir/b70001', rand(70001));
    w('dir/sub/b200k', rand(200 << 10));
    w('dir/copy', fs.readFileSync(path.join(tree, 'dir/sub/b200k')));
    w('zeros', Buffer.alloc(150000));
    fs.symlinkSync('dir/copy', path.join(tree, 'link'));
  });
  after(function () {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('every file equals the source; each chunk\'s location is a slot holding exactly that chunk', async function () {
    const layout = path.join(tmp, 'layout');
    fs.mkdirSync(layout);
    buildOciLayout(layout, { layers: [tree], tag: 'v1' });
    const store = path.join(tmp, 'store');
    const res = await convertImage(`${layout}:v1`, { store, progress: false, workers: 0, chunkSize: 65536 });
    const dev = new BlobDevice({ root: store, imageId: res.id });
    let device: Buffer;
    try {
      const cs = dev.table.chunkSize;
      const parts: Buffer[] = [];
      for (let k = 0; k < dev.table.slots.length; k++) {
        const slot = Buffer.alloc(cs);
        (await dev.slot(k)).copy(slot);
        parts.push(slot);
      }
      device = Buffer.concat(parts).subarray(0, dev.size);
    } finally {
      dev.close();
    }
    const img = ErofsImage.open(path.join(store, res.metaPath), { devices: [bufferDevice(device)] });
    try {
      expect(img.sb.features).to.include.members(['chunked_file', 'device_table']);
      expect(img.sb.devices).to.have.length(1);
      expect(img.readlink('/link')).to.equal('dir/copy');
      let chunks = 0;
      for (const rel of files) {
        const want = fs.readFileSync(path.join(tree, rel));
        expect(img.readFile(`/${rel}`).equals(want), rel).to.equal(true);
        const st = img.stat(`/${rel}`);
        if (st.layout !== 'chunk-based') continue;
        for (let off = 0; off < st.size; ) {
          const loc = img.chunkLocation(`/${rel}`, off);
          expect(loc.device, rel).to.equal(1);
          expect(loc.chunkSize).to.equal(dev.table.chunkSize);
          const k = loc.byteAddr! / dev.table.chunkSize;
          expect(Number.isInteger(k), `${rel}: chunk at ${off} is slot-aligned`).to.equal(true);
          const slice = want.subarray(off, off + loc.length);
          expect(dev.table.slots[k].sha256, `${rel}: slot ${k}`).to.equal(crypto.createHash('sha256').update(slice).digest('hex'));
          expect(dev.table.slots[k].size).to.equal(loc.length);
          off += loc.length;
          chunks++;
        }
      }
      expect(chunks).to.be.greaterThan(5);
      // Deduplicated within the image: the copy's chunks are the original's slots.
      expect(img.chunkLocation('/dir/copy', 65536).blockAddr).to.equal(img.chunkLocation('/dir/sub/b200k', 65536).blockAddr);
    } finally {
      img.close();
    }
  });
});
