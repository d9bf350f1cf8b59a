/**
 * EROFS images (assembly/erofs via src/hot/erofs.ts): the input is an image,
 * or an image plus its blob device (packWithDevice). Seeds are mkfs.erofs
 * 1.5 images of a small tree (plain, inline, lz4/lz4hc compressed with and
 * without ztailpacking, chunk-based files with 4 KiB and 64 KiB chunks, and
 * chunk-based with --blobdev: 8-byte chunk indexes naming device 1 and a
 * device table, at 4 KiB, 64 KiB and 1 MiB chunks; long and many names,
 * symlinks, a fifo, xattrs when the filesystem takes them), made at
 * start-up when mkfs.erofs is there; the seed images are also kept in the
 * corpus so replay does not need it.
 *
 * The case opens the image and walks it the way the image service does:
 * every directory (depth ≤ 8, ≤ 512 entries visited), stat, file reads
 * (whole files up to 256 KiB, and a read at an odd offset), readlink,
 * xattrs, a lookup of each entry's name back to its nid, and for
 * chunk-based files chunkLocation() of the first chunks.
 * Oracle: only ErofsError; reads return at most what was asked and at most
 * the file size; what a lookup finds is an entry readdir lists under that
 * name; a chunk is on device 0 or 1 and a read at its start returns the
 * device's bytes there (zeros for a hole).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErofsError, ErofsImage, type ImageSource } from '../../../src/hot/erofs';
import { bucket, invariant, type Target } from '../engine';

const OPTS = { metaMaxBytes: 256 << 10, extentMaxBytes: 512 << 10 };
const MAX_VISIT = 512;
const MAX_READ = 256 << 10;

function haveMkfs(): boolean {
  try {
    execFileSync('mkfs.erofs', ['--help'], { stdio: 'ignore' });
    return true;
  } catch (err) {
    return (err as { status?: number }).status !== undefined && (err as { code?: string }).code !== 'ENOENT';
  }
}

/** `full`: also the 40-file and long-name directories (left out of the blob seeds, to keep image + blob small). */
function makeTree(dir: string, full = true): void {
  const w = (p: string, data: string | Buffer) => { fs.mkdirSync(path.dirname(path.join(dir, p)), { recursive: true }); fs.writeFileSync(path.join(dir, p), data); };
  w('etc/hostname', 'pod\n');
  w('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n'.repeat(20));
  w('bin/tool', Buffer.from(Array.from({ length: 9000 }, (_, i) => (i * 31 + (i >> 7)) & 0xff)));
  w('usr/share/doc/readme', 'kata-ts erofs fuzz seed; compressible text. '.repeat(200));
  w('empty', '');
  w('var/log/x', 'a'.repeat(4096));
  if (full) {
    for (let i = 0; i < 40; i++) w(`many/f${String(i).padStart(3, '0')}-${'n'.repeat(i % 17)}`, String(i));
    w(`long/${'L'.repeat(200)}`, 'long name');
  }
  fs.symlinkSync('../etc/hostname', path.join(dir, 'bin/link'));
  fs.symlinkSync('/'.repeat(1) + 'x'.repeat(300), path.join(dir, 'bin/longlink'));
  try { execFileSync('mkfifo', [path.join(dir, 'fifo')], { stdio: 'ignore' }); } catch { /* no fifo */ }
  try { execFileSync('setfattr', ['-n', 'user.k', '-v', 'value', path.join(dir, 'etc/hostname')], { stdio: 'ignore' }); } catch { /* no xattrs */ }
}

let seedCache: Buffer[] | undefined;
function erofsSeeds(): Buffer[] {
  if (seedCache) return seedCache;
  seedCache = [];
  if (!haveMkfs()) return seedCache;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-fuzz-erofs-'));
  try {
    const src = path.join(tmp, 'tree');
    makeTree(src);
    const small = path.join(tmp, 'small');
    makeTree(small, false);
    const variants: string[][] = [[], ['-zlz4'], ['-zlz4hc', '-Eztailpacking'], ['--chunksize=4096'], ['-zlz4hc,12', '-C8192'], ['-Enoinline_data'],
      ['--chunksize=65536'], ['--chunksize=4096', '--blobdev=BLOB'], ['--chunksize=65536', '--blobdev=BLOB'], ['--chunksize=1048576', '--blobdev=BLOB']];
    variants.forEach((opts, i) => {
      const img = path.join(tmp, `img${i}`);
      const blob = path.join(tmp, `blob${i}`);
      try {
        const withBlob = opts.some((o) => o.includes('BLOB'));
        execFileSync('mkfs.erofs', ['--quiet', '-T0', '-U00000000-0000-0000-0000-000000000001', '--all-root', ...opts.map((o) => o.replace('BLOB', blob)), img, withBlob ? small : src], { stdio: ['ignore', 'ignore', 'pipe'] });
        const seed = fs.existsSync(blob) ? packWithDevice(fs.readFileSync(img), fs.readFileSync(blob)) : fs.readFileSync(img);
        if (seed.length <= erofs.maxLen) seedCache!.push(seed);
      } catch { /* an option this mkfs.erofs lacks */ }
    });
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return seedCache;
}

function bufferSource(buf: Uint8Array): ImageSource {
  return {
    size: buf.length,
    read(dst, off, len, pos) {
      if (pos >= buf.length) return 0;
      const n = Math.min(len, buf.length - pos);
      dst.set(buf.subarray(pos, pos + n), off);
      return n;
    },
    close() { /* nothing */ },
  };
}

/**
 * Opens `buf` over the WebAssembly Memory and instance of the first image
 * opened (ErofsImage.reuse): a fresh 10 MiB Memory and instance per case
 * cost 70% of the run (allocation and GC), 10^6 of them ~45 min. The
 * decoder's windows keep the previous image's bytes, which a correct
 * decoder never reads before writing.
 */
let template: ErofsImage | undefined;
function open(buf: Uint8Array, devices?: ImageSource[]): ErofsImage {
  if (template) return template.reuse(bufferSource(buf), devices);
  template = new ErofsImage(bufferSource(buf), { ...OPTS, devices });
  return template;
}

/**
 * Multi-device inputs: "KTSDEV1\0", u32 LE image length, the image, then
 * the bytes of extra device 1 (a --blobdev blob). Anything else is a
 * single-device image. The header is mutated like the rest, so the fuzzer
 * also feeds blob images without their blob and images with a cut blob.
 */
const DEV_MAGIC = Buffer.from('KTSDEV1\0', 'latin1');
export function packWithDevice(image: Buffer, device: Buffer): Buffer {
  const head = Buffer.alloc(12);
  DEV_MAGIC.copy(head);
  head.writeUInt32LE(image.length, 8);
  return Buffer.concat([head, image, device]);
}
function unpack(input: Buffer): { image: Buffer; devices?: ImageSource[] } {
  if (input.length < 12 || !input.subarray(0, 8).equals(DEV_MAGIC)) return { image: input };
  const n = Math.min(input.readUInt32LE(8), input.length - 12);
  return { image: input.subarray(12, 12 + n), devices: [bufferSource(input.subarray(12 + n))] };
}

/**
 * Chunk-based files: chunkLocation() of the first chunks names device 0 or
 * the one extra device, and the bytes a read returns at a chunk's start
 * are the device's bytes at that address (or zeros for a hole).
 */
function checkChunks(img: ErofsImage, nid: number, size: number, device: ImageSource | undefined): number {
  let n = 0;
  for (let off = 0; off < size && n < 4; n++) {
    const loc = img.chunkLocation(nid, off);
    invariant(loc.device === 0 || loc.device === 1, `chunk at ${off} on device ${loc.device} of ${img.sb.devices.length}`);
    invariant(loc.fileStart <= off && off < loc.fileStart + loc.length, `chunk ${loc.fileStart}+${loc.length} does not hold ${off}`);
    const want = Math.min(64, size - off);
    const got = img.readNid(nid, off, want);
    if (loc.byteAddr === null) {
      invariant(got.every((b) => b === 0), `hole at ${off} read non-zero bytes`);
    } else if (loc.device === 1 && device) {
      const ref = Buffer.alloc(want);
      const r = device.read(ref, 0, want, loc.byteAddr + (off - loc.fileStart));
      invariant(r === want && ref.equals(got), `chunk at ${off}: read differs from device 1 at ${loc.byteAddr}`);
    }
    off = loc.fileStart + Math.max(loc.chunkSize, 1);
  }
  return n;
}

export const erofs: Target = {
  name: 'erofs',
  describe: 'EROFS images (assembly/erofs via src/hot/erofs.ts): open, walk, stat, read, readlink, xattrs, lookup',
  maxLen: 256 << 10,
  dictionary: [Buffer.from([0xe2, 0xe1, 0xf5, 0xe0]), Buffer.from([0x0c]), Buffer.from([0x09]), Buffer.from([0xff, 0xff, 0xff, 0xff]), Buffer.from([0x00, 0x00, 0x00, 0x80]),
    Buffer.from([0xed, 0x41]), Buffer.from([0xa4, 0x81]), Buffer.from([0xff, 0xa1]), Buffer.from([0x01]), Buffer.from([0x02]), Buffer.from([0x03]), Buffer.from([0x04]), Buffer.from([0x08])],
  seeds: erofsSeeds,
  run(input) {
    const { image, devices } = unpack(input);
    const img = open(image, devices);
    let visited = 0, read = 0, dirs = 0, links = 0, xattrs = 0, chunks = 0;
    const walk = (nid: number, depth: number): void => {
      if (depth > 8 || visited >= MAX_VISIT) return;
      dirs++;
      const ents = img.readdirNid(nid);
      for (const e of ents) {
        if (visited++ >= MAX_VISIT) return;
        if (e.name === '.' || e.name === '..') continue;
        const back = img.lookupNid(nid, e.nameBytes);
        // A corrupt directory (names out of order) may hide a name from the
        // binary search, as in the kernel; what a lookup finds must be real.
        invariant(back === undefined || ents.some((x) => x.nid === back && x.nameBytes.equals(e.nameBytes)), `lookup of "${e.name}" gave ${back}, not an entry of that name`);
        let st;
        try {
          st = img.inode(e.nid);
        } catch (err) {
          if (err instanceof ErofsError) continue;
          throw err;
        }
        try {
          if (st.type === 'dir') walk(e.nid, depth + 1);
          else if (st.type === 'symlink') { img.readlinkNid(e.nid); links++; }
          else if (st.type === 'file') {
            const want = Math.min(st.size, MAX_READ);
            const b = img.readNid(e.nid, 0, want);
            invariant(b.length <= want, `read ${b.length} bytes of ${want} asked`);
            read += b.length;
            if (st.layout === 'chunk-based') chunks += checkChunks(img, e.nid, st.size, devices?.[0]);
            if (st.size > 3) {
              const off = Math.floor(st.size / 3) + 1;
              const c = img.readNid(e.nid, off, 777);
              invariant(c.length <= Math.max(0, st.size - off) && c.length <= 777, `read at ${off}: ${c.length} bytes`);
            }
          }
          if (st.xattrIsize > 0) xattrs += img.xattrsNid(e.nid).length;
        } catch (err) {
          if (!(err instanceof ErofsError)) throw err;
        }
      }
    };
    try {
      walk(img.sb.rootNid, 0);
    } finally {
      img.close();
    }
    return `d${bucket(dirs)}:v${bucket(visited)}:r${bucket(read)}:l${bucket(links)}:x${bucket(xattrs)}:c${bucket(chunks)}`;
  },
  expected: (err) => err instanceof ErofsError,
};
