/**
 * Bad input to the image converter: hostile or truncated layer tars, blobs
 * whose digest or size lie, unknown media types, zstd, corrupt gzip, a
 * failure after chunk blobs were already being written. Each must be one
 * clear error of the module's own class, and leave the store exactly as it
 * was: no image listed, no temp directory, no blob, no chunk-index entry.
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configureLogging } from '../../../src/common/log';
import { ConvertError, convertImage } from '../../../src/image/convert';
import { ErofsWriteError } from '../../../src/image/erofs-writer';
import { LayerError } from '../../../src/image/layers';
import { OciSourceError } from '../../../src/image/oci-source';
import { TarError } from '../../../src/image/tar';
import { listImages } from '../../../src/image/store';
import { makeTar, noise, writeLayout, type TarSpec } from '../../helpers/oci-images';

/** Every file under dir (relative), to prove nothing was left behind. */
function files(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => !e.isDirectory()).map((e) => path.relative(dir, path.join(e.parentPath ?? e.path, e.name))).sort();
}

describe('image conversion: bad input is one clear error and leaves nothing behind', function () {
  this.timeout(60_000);
  let work = '';
  let store = '';
  let good = '';
  before(async () => {
    configureLogging({ silent: true });
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-imgbad-'));
    store = path.join(work, 'store');
    // One good image first, so "nothing changed" is checked against a non-empty store.
    good = path.join(work, 'good');
    writeLayout(good, [{ tag: 'ok', layers: [{ tar: makeTar([{ path: 'a', data: noise(5000, 1) }]) }] }]);
    await convertImage(`${good}:ok`, { store, progress: false });
  });
  after(() => { if (work) fs.rmSync(work, { recursive: true, force: true }); });

  async function expectRejected(source: string, cls: new (...a: never[]) => Error, re: RegExp): Promise<void> {
    const before = files(store);
    const err = await convertImage(source, { store, progress: false }).then(() => null, (e: Error) => e);
    expect(err, 'conversion should fail').to.be.instanceOf(cls);
    expect(err!.message).to.match(re);
    expect(files(store), 'store changed').to.deep.equal(before);
    expect(listImages(store)).to.have.length(1);
  }

  let n = 0;
  function layout(layers: { tar: Buffer; mediaType?: string; gzip?: boolean }[]): string {
    const dir = path.join(work, `img${n++}`);
    writeLayout(dir, [{ tag: 't', layers }]);
    return `${dir}:t`;
  }
  const tarOf = (e: TarSpec[], o?: { noEnd?: boolean }): Buffer => makeTar(e, o);

  it('path traversal with ".."', () => expectRejected(layout([{ tar: tarOf([{ path: 'a/../../etc/x', data: 'x' }]) }]), LayerError, /escapes the root/));
  it('absolute path', () => expectRejected(layout([{ tar: tarOf([{ path: '/etc/x', data: 'x' }]) }]), LayerError, /absolute path/));
  it('entry declaring more bytes than the archive holds', () => expectRejected(layout([{ tar: tarOf([{ path: 'x', data: 'abc', headerSize: 2 ** 32 }], { noEnd: true }) }]), TarError, /declares 4294967296 bytes/));
  it('archive cut in the middle of an entry', () => expectRejected(layout([{ tar: tarOf([{ path: 'x', data: 'abc' }]).subarray(0, 700) }]), TarError, /truncated: entry at 0/));
  it('archive cut in the middle of a header', () => expectRejected(layout([{ tar: tarOf([{ path: 'x', data: 'abc' }, { path: 'y', data: 'z' }]).subarray(0, 1300) }]), TarError, /truncated at byte 1024/));
  it('hard link to a missing target', () => expectRejected(layout([{ tar: tarOf([{ path: 'x', type: '1', linkname: 'nowhere' }]) }]), LayerError, /hard link to "nowhere", which does not exist/));
  it('hard link to a directory', () => expectRejected(layout([{ tar: tarOf([{ path: 'd/', type: '5' }, { path: 'x', type: '1', linkname: 'd' }]) }]), LayerError, /hard link to directory/));
  it('PAX record with a bad length', () => expectRejected(layout([{ tar: tarOf([{ path: 'x', data: 'y', pax: { mtime: '1' } }]).fill(0x39, 512, 514) }]), TarError, /PAX header|checksum/));
  it('PAX mtime that is not a number', () => expectRejected(layout([{ tar: tarOf([{ path: 'x', data: 'y', pax: { mtime: 'soon' } }]) }]), TarError, /mtime="soon"/));
  it('bad header checksum', () => {
    const t = tarOf([{ path: 'x', data: 'y' }]);
    t[0] ^= 1;
    return expectRejected(layout([{ tar: t }]), TarError, /bad header checksum/);
  });
  it('xattr outside the namespaces EROFS stores', () => expectRejected(layout([{ tar: tarOf([{ path: 'x', data: 'y', xattrs: { 'os2.weird': 'v' } }]) }]), LayerError, /xattr "os2.weird"/));
  it('unknown layer media type', () => expectRejected(layout([{ tar: tarOf([{ path: 'x', data: 'y' }]), mediaType: 'application/x-tarball' }]), OciSourceError, /unknown layer media type "application\/x-tarball"/));
  it('zstd layers (Node 20 has no zstd decoder)', () => expectRejected(layout([{ tar: tarOf([{ path: 'x', data: 'y' }]), mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', gzip: false }]), ConvertError, /zstd layers are not supported/));
  it('corrupt gzip stream', () => expectRejected(layout([{ tar: tarOf([{ path: 'x', data: 'y' }]), mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', gzip: false }]), ConvertError, /gzip stream is corrupt/));

  it('layer blob whose content does not match its digest', () => {
    const src = layout([{ tar: tarOf([{ path: 'x', data: noise(100_000, 3) }]) }]);
    const dir = src.slice(0, -2);
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8')).manifests[0];
    const man = JSON.parse(fs.readFileSync(path.join(dir, 'blobs', 'sha256', m.digest.slice(7)), 'utf8'));
    const lp = path.join(dir, 'blobs', 'sha256', man.layers[0].digest.slice(7));
    const b = fs.readFileSync(lp);
    b[b.length - 20] ^= 0xff;
    fs.writeFileSync(lp, b);
    return expectRejected(src, OciSourceError, /blob content is sha256:[0-9a-f]{64}, expected sha256:/);
  });

  it('blob that lies about its size', () => {
    const src = layout([{ tar: tarOf([{ path: 'x', data: 'y' }]) }]);
    const dir = src.slice(0, -2);
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8')).manifests[0];
    const man = JSON.parse(fs.readFileSync(path.join(dir, 'blobs', 'sha256', m.digest.slice(7)), 'utf8'));
    man.layers[0].size += 1;
    const mb = Buffer.from(JSON.stringify(man));
    const hex = crypto.createHash('sha256').update(mb).digest('hex');
    fs.writeFileSync(path.join(dir, 'blobs', 'sha256', hex), mb);
    fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ ...m, digest: `sha256:${hex}`, size: mb.length }] }));
    return expectRejected(src, OciSourceError, /bytes, its descriptor says/);
  });

  it('uncompressed layer that does not match the config\'s diff_id', () => {
    const dir = path.join(work, 'diffid');
    writeLayout(dir, [{ tag: 't', layers: [{ tar: tarOf([{ path: 'x', data: 'y' }]) }] }]);
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8')).manifests[0];
    const man = JSON.parse(fs.readFileSync(path.join(dir, 'blobs', 'sha256', m.digest.slice(7)), 'utf8'));
    const cfgPath = path.join(dir, 'blobs', 'sha256', man.config.digest.slice(7));
    const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
    cfg.rootfs.diff_ids = [`sha256:${'0'.repeat(64)}`];
    const cb = Buffer.from(JSON.stringify(cfg));
    const chex = crypto.createHash('sha256').update(cb).digest('hex');
    fs.writeFileSync(path.join(dir, 'blobs', 'sha256', chex), cb);
    man.config = { ...man.config, digest: `sha256:${chex}`, size: cb.length };
    const mb = Buffer.from(JSON.stringify(man));
    const hex = crypto.createHash('sha256').update(mb).digest('hex');
    fs.writeFileSync(path.join(dir, 'blobs', 'sha256', hex), mb);
    fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ ...m, digest: `sha256:${hex}`, size: mb.length }] }));
    return expectRejected(`${dir}:t`, ConvertError, /diff_id says sha256:0000/);
  });

  it('a tag that is not in the layout, and a layout with several images and no tag', async () => {
    await expectRejected(`${good}:nope`, OciSourceError, /no image tagged "nope" \(tags: ok\)/);
    writeLayout(good, [{ tag: 'second', layers: [{ tar: tarOf([{ path: 'b', data: 'b' }]) }] }]);
    await expectRejected(good, OciSourceError, /lists 2 images; name one/);
  });

  it('a failure after chunk blobs were being written removes them too', () => {
    // 3 MiB of new chunks are written before the EROFS writer refuses the 70000-byte xattr.
    const src = layout([{ tar: tarOf([{ path: 'big', data: noise(3 << 20, 5) }, { path: 'x', data: 'y', xattrs: { 'user.huge': Buffer.alloc(70000, 1) } }]) }]);
    return expectRejected(src, ErofsWriteError, /exceeds 65535/);
  });
});
