/**
 * Target for the OCI layer reader: tar bytes (src/image/tar.ts parseTar)
 * applied as a layer over a small base tree (src/image/layers.ts), then the
 * tree written as EROFS metadata (src/image/erofs-writer.ts, every file
 * inline so no store is needed).
 * Oracle: only TarError / LayerError / ErofsWriteError escape; every entry's
 * data lies inside the input and the entries' data never add up to more
 * than the input; the metadata image is whole blocks with the EROFS magic.
 */
import { ErofsWriteError, writeErofs } from '../../../src/image/erofs-writer';
import { LayerError, LayerTree } from '../../../src/image/layers';
import { parseTar, TarError } from '../../../src/image/tar';
import { makeTar, type TarSpec } from '../../helpers/oci-images';
import { bucket, invariant, type Target } from '../engine';

const BASE: TarSpec[] = [
  { path: 'bin/', type: '5' }, { path: 'bin/busybox', data: 'ELF'.repeat(100), mode: 0o4755 },
  { path: 'etc/', type: '5' }, { path: 'etc/passwd', data: 'root:x:0:0::/root:/bin/sh\n' },
  { path: 'opq/', type: '5' }, { path: 'opq/a', data: 'a' },
];
let base: ReturnType<typeof parseTar> | undefined;

export const layerTar: Target = {
  name: 'layer-tar',
  describe: 'OCI layer tars (src/image/tar.ts) applied over a base tree (layers.ts: whiteouts, opaque dirs, hard links) and written as EROFS metadata',
  maxLen: 64 << 10,
  dictionary: ['.wh.', '.wh..wh..opq', 'ustar\x0000', 'SCHILY.xattr.user.', 'path=', 'linkpath=', 'mtime=', 'size=', '../', '/'].map((s) => Buffer.from(s, 'latin1')),
  seeds() {
    return [
      makeTar([{ path: 'a', data: 'hello' }, { path: 'd/', type: '5', mode: 0o1777 }, { path: 'd/l', type: '2', linkname: '../a' }]),
      makeTar([{ path: 'etc/.wh.passwd' }, { path: 'opq/.wh..wh..opq' }, { path: 'opq/b', data: 'b' }, { path: 'h', type: '1', linkname: 'bin/busybox' }]),
      makeTar([{ path: 'x'.repeat(150), data: 'long', xattrs: { 'user.k': 'v', 'security.capability': Buffer.from([1, 0, 0, 2]) }, uid: 3_000_000_000, pax: { mtime: '1.5' } }]),
      makeTar([{ path: 'dev/null', type: '3', devmajor: 1, devminor: 3 }, { path: 'dev/f', type: '6' }, { path: 'dev/b', type: '4', devmajor: 8, devminor: 1 }]),
    ];
  },
  run(input) {
    const entries = parseTar(input, 'fuzz');
    let total = 0;
    for (const e of entries) {
      total += e.data.length;
      invariant(e.data.byteOffset >= input.byteOffset && e.data.byteOffset + e.data.length <= input.byteOffset + input.length, 'entry data outside the input');
    }
    invariant(total <= input.length, 'entries claim more data than the input holds');
    base ??= parseTar(makeTar(BASE), 'base');
    const tree = new LayerTree();
    tree.apply(base, 0, 'base');
    tree.apply(entries, 1, 'fuzz');
    const r = writeErofs(tree.root, tree.linkCounts(), {
      chunkSize: 1 << 20, fileSlots: () => [], inlineMax: Number.MAX_SAFE_INTEGER, deviceBlocks: 0, deviceTag: 'fuzz', uuid: Buffer.alloc(16),
    });
    invariant(r.image.length % 4096 === 0 && r.image.readUInt32LE(1024) === 0xe0f5e1e2, 'metadata image malformed');
    return `entries:${bucket(entries.length)} inodes:${bucket(r.inodes)}`;
  },
  expected(err) {
    return err instanceof TarError || err instanceof LayerError || err instanceof ErofsWriteError;
  },
};
