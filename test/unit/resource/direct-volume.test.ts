/**
 * Direct-volume store (src/resource/volumes/direct-volume.ts): Kata's
 * mountInfo.json fields parsed and validated, the directory named by the
 * base64url of the volume path, sandbox ids recorded beside it; bad JSON, a
 * missing device, an unknown volume and a volume in use are each one
 * DirectVolumeError with nothing left on disk.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DirectVolumeError, DirectVolumeStore, encodeVolumePath, parseMountInfo, MOUNT_INFO_FILE } from '../../../src/resource/volumes/direct-volume';

function kindOf(f: () => unknown): string {
  try { f(); } catch (err) {
    expect(err).to.be.instanceOf(DirectVolumeError);
    return (err as DirectVolumeError).kind;
  }
  throw new Error('expected a DirectVolumeError');
}

describe('unit: direct volumes (kata-ctl direct-volume store)', () => {
  let dir: string;
  let img: string;
  let store: DirectVolumeStore;
  const info = () => JSON.stringify({ 'volume-type': 'block', device: img, fstype: 'ext4', metadata: { a: 'b' }, options: ['noatime'] });
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dvol-'));
    img = path.join(dir, 'vol.img');
    fs.writeFileSync(img, Buffer.alloc(4096));
    store = new DirectVolumeStore(path.join(dir, 'root'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('names the directory as Go base64.URLEncoding does (URL alphabet, padded)', () => {
    expect(encodeVolumePath('/a')).to.equal('L2E=');
    // Standard base64 of '/~~~' is "L35+fg==": '+' becomes '-', padding stays.
    expect(encodeVolumePath('/~~~')).to.equal('L35-fg==');
  });

  it('add → get → record sandbox → remove refuses while in use, then removes', () => {
    const vol = '/var/lib/vol1';
    const got = store.add(vol, info());
    expect(got).to.deep.equal({ 'volume-type': 'block', device: img, fstype: 'ext4', metadata: { a: 'b' }, options: ['noatime'] });
    const file = path.join(store.root, encodeVolumePath(vol), MOUNT_INFO_FILE);
    expect(JSON.parse(fs.readFileSync(file, 'utf8')).device).to.equal(img);
    expect(store.get(vol)).to.deep.equal(got);
    expect(store.get('/not/registered')).to.equal(undefined);
    store.recordSandbox(vol, 'sb1');
    expect(store.sandboxesOf(vol)).to.deep.equal(['sb1']);
    expect(kindOf(() => store.remove(vol, () => true))).to.equal('in-use');
    expect(fs.existsSync(file)).to.equal(true);
    // A sandbox that is gone does not hold the volume.
    store.remove(vol, () => false);
    expect(fs.existsSync(path.dirname(file))).to.equal(false);
  });

  it('defaults volume-type, metadata and options like Kata', () => {
    const m = parseMountInfo(JSON.stringify({ device: img, fstype: 'ext4' }));
    expect(m).to.deep.equal({ 'volume-type': 'block', device: img, fstype: 'ext4', metadata: {}, options: [] });
  });

  it('bad input is one error and leaves nothing behind', () => {
    const vol = '/v';
    const bad: Array<[string, string]> = [
      ['{not json', 'not valid JSON'],
      ['[]', 'JSON object'],
      [JSON.stringify({ device: path.join(dir, 'missing.img'), fstype: 'ext4' }), 'does not exist'],
      [JSON.stringify({ device: dir, fstype: 'ext4' }), 'neither a block device'],
      [JSON.stringify({ device: 'rel.img', fstype: 'ext4' }), 'absolute host path'],
      [JSON.stringify({ device: img, fstype: 'xfs' }), 'fstype "xfs"'],
      [JSON.stringify({ device: img, fstype: 'ext4', 'volume-type': 'mount' }), 'volume-type "mount"'],
      [JSON.stringify({ device: img, fstype: 'ext4', options: ['bind'] }), 'option "bind"'],
      [JSON.stringify({ device: img, fstype: 'ext4', options: 'rw' }), 'array of strings'],
      [JSON.stringify({ device: img, fstype: 'ext4', metadata: { n: 1 } }), 'metadata'],
      [JSON.stringify({ device: img, fstype: 'ext4', extra: 1 }), 'unknown field "extra"'],
    ];
    for (const [text, msg] of bad) {
      let caught: unknown;
      try { store.add(vol, text); } catch (err) { caught = err; }
      expect(caught, text).to.be.instanceOf(DirectVolumeError);
      expect((caught as Error).message, text).to.contain(msg);
      expect(fs.existsSync(store.root), text).to.equal(false);
    }
    expect(kindOf(() => store.add('relative/path', info()))).to.equal('invalid');
    expect(kindOf(() => store.add('/a/../b', info()))).to.equal('invalid');
    expect(fs.existsSync(store.root)).to.equal(false);
  });

  it('unknown volume: remove, require and recordSandbox are one not-found error', () => {
    expect(kindOf(() => store.remove('/nope', () => false))).to.equal('not-found');
    expect(kindOf(() => store.require('/nope'))).to.equal('not-found');
    expect(kindOf(() => store.recordSandbox('/nope', 'sb'))).to.equal('not-found');
    expect(fs.existsSync(store.root)).to.equal(false);
  });

  it('a second add of the same path is refused and keeps the first', () => {
    store.add('/v', info());
    expect(kindOf(() => store.add('/v', JSON.stringify({ device: img, fstype: 'erofs' })))).to.equal('exists');
    expect(store.require('/v').fstype).to.equal('ext4');
  });

  it('a corrupted stored mountInfo.json is one clear error', () => {
    store.add('/v', info());
    fs.writeFileSync(path.join(store.dirOf('/v'), MOUNT_INFO_FILE), '{');
    expect(kindOf(() => store.get('/v'))).to.equal('invalid');
  });
});
