/**
 * Target for the OCI layer reader: tar bytes (src/image/tar.ts parseTar)
 * applied as a layer over a small base tree (src/image/layers.ts), then the
 * tree written as EROFS metadata (src/image/erofs-writer.ts, every file
 * inline so no store is needed).
 * Oracle: only TarError / LayerError / ErofsWriteError escape; every entry's
 * data lies inside the input and the entries' data never add up to more
 * than the input; the incremental reader (TarReader, what the converter
 * streams layers through), fed the input in uneven slices, gives the same
 * entries, data and error message; the metadata image is whole blocks
 * with the EROFS magic.
 */
import { ErofsWriteError, writeErofs } from '../../../src/image/erofs-writer';
import { LayerError, LayerTree } from '../../../src/image/layers';
import { parseTar, TarError, TarReader, type TarEntry } from '../../../src/image/tar';
import { makeTar, type TarSpec } from '../../helpers/oci-images';
import { bucket, invariant, type Target } from '../engine';

const BASE: TarSpec[] = [
  { path: 'bin/', type: '5' }, { path: 'bin/busybox', data: 'ELF'.repeat(100), mode: 0o4755 },
  { path: 'etc/', type: '5' }, { path: 'etc/passwd', data: 'root:x:0:0::/root:/bin/sh\n' },
  { path: 'opq/', type: '5' }, { path: 'opq/a', data: 'a' },
];
let base: ReturnType<typeof parseTar> | undefined;

/** TarReader over `input` in slices of 1, 511, 513, 97… bytes (cycled): entries and data, or its error. */
function streamed(input: Buffer): { entries: TarEntry[]; data: Buffer[] } | Error {
  const entries: TarEntry[] = [];
  const data: Buffer[][] = [];
  const r = new TarReader('fuzz', { entry: (e) => { entries.push(e); data.push([]); }, data: (p) => { data[data.length - 1].push(Buffer.from(p)); } });
  const sizes = [1, 511, 513, 97, 4096];
  try {
    for (let o = 0, k = 0; o < input.length; k++) {
      const n = Math.min(sizes[k % sizes.length], input.length - o);
      r.push(input.subarray(o, o + n));
      o += n;
    }
    r.end();
  } catch (e) { return e as Error; }
  return { entries, data: data.map((d) => Buffer.concat(d)) };
}

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
    let entries: TarEntry[];
    try { entries = parseTar(input, 'fuzz'); } catch (e) {
      const s = streamed(input);
      invariant(s instanceof Error && s.message === (e as Error).message, `streamed: ${s instanceof Error ? s.message : 'no error'}, whole: ${(e as Error).message}`);
      throw e;
    }
    const s = streamed(input);
    invariant(!(s instanceof Error), `streamed reader failed where the whole one did not: ${(s as Error).message}`);
    const got = s as { entries: TarEntry[]; data: Buffer[] };
    invariant(got.entries.length === entries.length && got.entries.every((e, i) => e.path === entries[i].path && e.type === entries[i].type && e.size === entries[i].size && got.data[i].equals(entries[i].data)),
      'streamed entries differ from the whole parse');
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
