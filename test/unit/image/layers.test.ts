/**
 * The layer reader without root or a kernel: tar dialects (GNU base-256
 * numbers and long names, global PAX headers) and the OCI layer rules in
 * src/image/layers.ts that the integration test checks against umoci.
 */
import { expect } from 'chai';
import { LayerTree, type Inode } from '../../../src/image/layers';
import { parseTar } from '../../../src/image/tar';
import { makeTar, type TarSpec } from '../../helpers/oci-images';

function tree(...layers: TarSpec[][]): LayerTree {
  const t = new LayerTree();
  layers.forEach((l, i) => t.apply(parseTar(makeTar(l), `layer ${i}`), i, `layer ${i}`));
  return t;
}

function at(t: LayerTree, p: string): Inode | undefined {
  let n: Inode | undefined = t.root;
  for (const s of p.split('/')) n = n?.children?.get(s)?.inode;
  return n;
}

function rawHeader(name: string, type: string, size: number): Buffer {
  return makeTar([{ path: name, type, data: Buffer.alloc(size) }], { noEnd: true }).subarray(0, 512);
}

function rechecksum(h: Buffer): void {
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
}

describe('OCI layers into a tree (src/image/layers.ts, tar.ts)', () => {
  it('a whiteout hides the lower layer\'s file but not one this layer added', () => {
    const t = tree(
      [{ path: 'a', data: '1' }, { path: 'b', data: '1' }],
      [{ path: 'c', data: '2' }, { path: '.wh.a' }, { path: '.wh.c' }],
    );
    expect([...t.root.children!.keys()].sort()).to.deep.equal(['b', 'c']);
  });

  it('an opaque directory drops lower entries, keeps this layer\'s, and a dir over a dir keeps children', () => {
    const t = tree(
      [{ path: 'o/', type: '5' }, { path: 'o/old', data: 'x' }, { path: 'd/', type: '5', mode: 0o700 }, { path: 'd/kept', data: 'k' }],
      [{ path: 'o/new', data: 'y' }, { path: 'o/.wh..wh..opq' }, { path: 'd/', type: '5', mode: 0o755, uid: 5 }],
    );
    expect([...at(t, 'o')!.children!.keys()]).to.deep.equal(['new']);
    expect([...at(t, 'd')!.children!.keys()]).to.deep.equal(['kept']);
    expect(at(t, 'd')).to.include({ perm: 0o755, uid: 5 });
  });

  it('a file over a directory replaces the whole subtree; a hard link to a lower file shares its inode', () => {
    const t = tree(
      [{ path: 'x/', type: '5' }, { path: 'x/y', data: 'z' }, { path: 'f', data: 'data', mode: 0o4755 }],
      [{ path: 'x', data: 'now a file' }, { path: 'g', type: '1', linkname: 'f' }],
    );
    expect(at(t, 'x')!.kind).to.equal('file');
    expect(at(t, 'g')).to.equal(at(t, 'f'));
    expect(t.linkCounts().get(at(t, 'f')!)).to.equal(2);
    expect(at(t, 'f')!.perm).to.equal(0o4755);
  });

  it('creates missing parents, as unpackers do', () => {
    const t = tree([{ path: 'p/q/r', data: 'r' }]);
    expect(at(t, 'p/q')).to.include({ kind: 'dir', perm: 0o755 });
  });

  it('reads GNU base-256 sizes and uids, GNU long names and global PAX headers', () => {
    const h = rawHeader('n', '0', 3);
    h.fill(0, 124, 136);
    h[124] = 0x80; h[135] = 3; // size 3, base-256
    h.fill(0, 108, 116);
    h[108] = 0x80; h.writeUInt32BE(4_000_000_000, 112); // uid, base-256
    rechecksum(h);
    const data = Buffer.concat([Buffer.from('abc'), Buffer.alloc(509)]);
    const longName = 'd/' + 'L'.repeat(300);
    const lh = rawHeader('././@LongLink', 'L', longName.length + 1);
    const ld = Buffer.concat([Buffer.from(longName + '\0'), Buffer.alloc(512 - ((longName.length + 1) % 512))]);
    const gbody = Buffer.from('20 comment=anything\n');
    const gh = rawHeader('pax_global', 'g', gbody.length);
    const gd = Buffer.concat([gbody, Buffer.alloc(512 - gbody.length)]);
    const e = parseTar(Buffer.concat([gh, gd, h, data, lh, ld, makeTar([{ path: 'short', data: 'x' }])]));
    expect(e.map((x) => [x.path.length > 50 ? `${x.path.slice(0, 3)}…${x.path.length}` : x.path, x.size, x.uid])).to.deep.equal([['n', 3, 4_000_000_000], ['d/L…302', 1, 0]]);
    expect(e[0].data.toString()).to.equal('abc');
  });
});
