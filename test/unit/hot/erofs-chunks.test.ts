/**
 * Chunk-based EROFS files through assembly/erofs (chunk.ts, super.ts) and
 * src/hot/erofs, against images made by mkfs.erofs (erofs-utils 1.5) with
 * `--chunksize=4096/65536/1048576`, with and without `--blobdev=BLOB`
 * (8-byte chunk indexes naming device 1, EROFS_FEATURE_INCOMPAT_DEVICE_TABLE,
 * one extra device): every file's bytes equal the source tree's;
 * chunkLocation() names the device and block where each chunk's bytes
 * really are (checked against the blob file); kata-ctl erofs cat / inspect
 * / extract take --device. Hostile images: a chunk index naming an unknown
 * device, pointing past the blob or past the device's declared size, a
 * missing or extra --device: one clear ErofsError each, never wrong bytes.
 */
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErofsError, ErofsImage } from '../../../src/hot/erofs';
import { extractImage } from '../../../src/ctl/commands/erofs';
import { skipOrFail } from '../../helpers/skip';
import { kataCtl } from '../../helpers/kata-ctl';
import { REPO } from '../../helpers/guest';
import { prng } from '../../helpers/prng';

/** `kata-ctl erofs cat` with binary stdout (kataCtl() decodes stdout as UTF-8). */
function catBytes(args: string[]): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync(process.execPath, [path.join(REPO, 'bin', 'kata-ctl'), 'erofs', 'cat', ...args], {
    env: { ...process.env, KATA_TS_CONFIG: '' }, maxBuffer: 16 << 20, timeout: 60000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

/** Files around every chunk size's edges, duplicates (mkfs dedups chunks), holes, an empty file. */
function buildTree(root: string): string[] {
  const r = prng(4242);
  const rand = (n: number) => {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = r() & 255;
    return b;
  };
  const files: Array<[string, Buffer]> = [
    ['empty', Buffer.alloc(0)],
    ['one', Buffer.from('x')],
    ['b4095', rand(4095)],
    ['b4096', rand(4096)],
    ['b4097', rand(4097)],
    ['d/b65535', rand(65535)],
    ['d/b65537', rand(65537)],
    ['d/e/m1plus3', rand((1 << 20) + 3)],
    ['d/e/m2', rand(2 << 20)],
    ['zeros-200k', Buffer.alloc(200 << 10)],
  ];
  for (const [rel, data] of files) {
    fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    fs.writeFileSync(path.join(root, rel), data);
  }
  // Same bytes as d/e/m2: its chunks dedup onto the same blob blocks.
  fs.copyFileSync(path.join(root, 'd/e/m2'), path.join(root, 'copy-of-m2'));
  // A sparse file: 70 000 bytes, a 3 MiB hole, 5000 bytes.
  const fd = fs.openSync(path.join(root, 'sparse'), 'w');
  fs.writeSync(fd, rand(70000), 0, 70000, 0);
  fs.writeSync(fd, rand(5000), 0, 5000, 3 << 20);
  fs.closeSync(fd);
  fs.symlinkSync('d/e/m2', path.join(root, 'link'));
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const n of fs.readdirSync(path.join(root, rel))) {
      const p = rel ? `${rel}/${n}` : n;
      const st = fs.lstatSync(path.join(root, p));
      if (st.isDirectory()) walk(p);
      else if (st.isFile()) out.push(p);
    }
  };
  walk('');
  return out.sort();
}

/** crc32c as the kernel's (no final inversion), to re-seal patched superblocks. */
function crc32c(buf: Buffer, seed: number): number {
  let crc = seed >>> 0;
  for (const b of buf) {
    crc ^= b;
    for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0x82f63b78 & -(crc & 1));
  }
  return crc >>> 0;
}

/** Recomputes the superblock checksum when the image carries one (COMPAT_SB_CHKSUM). */
function reseal(img: Buffer): void {
  const sb = 1024;
  if ((img.readUInt32LE(sb + 8) & 1) === 0) return;
  const blksz = 1 << img[sb + 12];
  const body = Buffer.from(img.subarray(sb, blksz));
  body.writeUInt32LE(0, 4);
  img.writeUInt32LE(crc32c(body, 0xffffffff), sb + 4);
}

/** Byte offset of the chunk index entry `k` of inode `nid` (erofs_map_blocks' pos). */
function chunkIndexAt(img: ErofsImage, nid: number, k: number, unit: number): number {
  const st = img.inode(nid);
  const iloc = img.sb.metaBlkaddr * img.sb.blockSize + nid * 32;
  const isize = st.inodeVersion === 'extended' ? 64 : 32;
  return iloc + Math.ceil((isize + st.xattrIsize) / unit) * unit + k * unit;
}

/** Opens an image with its devices, runs fn, closes it even when fn throws. */
function withImage<T>(image: string, devices: string[], fn: (img: ErofsImage) => T): T {
  const img = ErofsImage.open(image, { devices });
  try {
    return fn(img);
  } finally {
    img.close();
  }
}

function expectErofs(fn: () => unknown, kind: string, re?: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected ErofsError ${kind}`).to.be.instanceOf(ErofsError);
  expect((err as ErofsError).kind).to.equal(kind);
  if (re) expect((err as Error).message).to.match(re);
}

describe('hot/erofs: chunk-based files and blob devices (mkfs.erofs 1.5 --chunksize, --blobdev)', function () {
  this.timeout(300000);
  let tmp: string;
  let src: string;
  let files: string[];
  const made = new Map<string, { img: string; blob?: string }>();

  before(function () {
    try {
      execFileSync('mkfs.erofs', ['--help'], { stdio: 'ignore' });
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') skipOrFail(this, 'mkfs.erofs (erofs-utils) is not installed');
    }
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-erofs-chunks-'));
    src = path.join(tmp, 'tree');
    fs.mkdirSync(src);
    files = buildTree(src);
  });
  after(function () {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  function mkfs(chunk: number, blob: boolean): { img: string; blob?: string } {
    const key = `${chunk}-${blob}`;
    const hit = made.get(key);
    if (hit) return hit;
    const img = path.join(tmp, `c${key}.erofs`);
    const b = blob ? path.join(tmp, `c${key}.blob`) : undefined;
    execFileSync('mkfs.erofs', ['--quiet', `--chunksize=${chunk}`, ...(b ? [`--blobdev=${b}`] : []), img, src], { stdio: ['ignore', 'ignore', 'pipe'] });
    const res = { img, blob: b };
    made.set(key, res);
    return res;
  }

  for (const chunk of [4096, 65536, 1048576]) {
    for (const blob of [false, true]) {
      it(`--chunksize=${chunk}${blob ? ' --blobdev' : ''}: every file equals the source, chunkLocation finds each chunk's bytes`, function () {
        const m = mkfs(chunk, blob);
        const img = ErofsImage.open(m.img, { devices: m.blob ? [m.blob] : [] });
        const blobBytes = m.blob ? fs.readFileSync(m.blob) : undefined;
        const imgBytes = fs.readFileSync(m.img);
        try {
          expect(img.sb.features).to.include('chunked_file');
          if (blob) {
            expect(img.sb.features).to.include('device_table');
            expect(img.sb.devices).to.have.length(1);
          } else {
            expect(img.sb.devices).to.have.length(0);
          }
          let chunks = 0, holes = 0, onBlob = 0;
          for (const rel of files) {
            const want = fs.readFileSync(path.join(src, rel));
            const st = img.stat(`/${rel}`);
            expect(st.size, rel).to.equal(want.length);
            expect(img.readFile(`/${rel}`).equals(want), rel).to.equal(true);
            if (st.size === 0) continue;
            expect(st.layout, rel).to.equal('chunk-based');
            for (let off = 0; off < st.size; ) {
              const loc = img.chunkLocation(`/${rel}`, off);
              expect(loc.chunkSize, rel).to.equal(chunk);
              expect(loc.fileStart, rel).to.equal(off);
              expect(loc.length, rel).to.equal(Math.min(chunk, st.size - off));
              const slice = want.subarray(off, off + loc.length);
              chunks++;
              if (loc.blockAddr === null) {
                holes++;
                expect(slice.every((b) => b === 0), `${rel}: hole at ${off}`).to.equal(true);
              } else {
                expect(loc.byteAddr).to.equal(loc.blockAddr * 4096);
                const dev = loc.device === 1 ? blobBytes! : imgBytes;
                expect(loc.device, rel).to.equal(blob ? 1 : 0);
                if (loc.device === 1) onBlob++;
                expect(dev.subarray(loc.byteAddr!, loc.byteAddr! + loc.length).equals(slice), `${rel}: chunk at ${off}`).to.equal(true);
              }
              // Any offset inside the chunk maps to the same chunk.
              const mid = img.chunkLocation(`/${rel}`, off + loc.length - 1);
              expect([mid.fileStart, mid.blockAddr, mid.device]).to.deep.equal([loc.fileStart, loc.blockAddr, loc.device]);
              off += loc.length;
            }
          }
          // mkfs.erofs 1.5 stores holes as (deduplicated) zero chunks, never EROFS_NULL_ADDR.
          expect(holes).to.equal(0);
          if (blob) expect(onBlob).to.equal(chunks - holes);
          // Duplicated content shares chunks (mkfs.erofs dedups them).
          expect(img.chunkLocation('/copy-of-m2', 0).blockAddr).to.equal(img.chunkLocation('/d/e/m2', 0).blockAddr);
        } finally {
          img.close();
        }
      });
    }
  }

  it('chunkLocation refuses what is not a chunk of a regular file', function () {
    const m = mkfs(65536, true);
    const img = ErofsImage.open(m.img, { devices: [m.blob!] });
    try {
      expectErofs(() => img.chunkLocation('/d', 0), 'bad-argument');
      expectErofs(() => img.chunkLocation('/one', 1), 'bad-argument');
      expectErofs(() => img.chunkLocation('/one', -1), 'bad-argument');
      expectErofs(() => img.chunkLocation('/nope', 0), 'not-found');
    } finally {
      img.close();
    }
  });

  it('a blob image without its device reads metadata and refuses data; a wrong device count is refused at open', function () {
    const m = mkfs(4096, true);
    const img = ErofsImage.open(m.img);
    try {
      expect(img.readdir('/d').map((e) => e.name).sort()).to.deep.equal(['b65535', 'b65537', 'e']);
      expect(img.stat('/d/e/m2').size).to.equal(2 << 20);
      expect(img.chunkLocation('/d/e/m2', 0).device).to.equal(1);
      expectErofs(() => img.readFile('/b4096'), 'no-device', /--device/);
    } finally {
      img.close();
    }
    expectErofs(() => ErofsImage.open(m.img, { devices: [m.blob!, m.blob!] }), 'bad-device', /image has 1, given 2/);
    const plain = mkfs(4096, false);
    expectErofs(() => ErofsImage.open(plain.img, { devices: [m.blob!] }), 'bad-device', /image has 0, given 1/);
    expectErofs(() => ErofsImage.open(m.img, { devices: [path.join(tmp, 'missing.blob')] }), 'io', /missing\.blob/);
  });

  describe('hostile chunk indexes', function () {
    /** A copy of the 4 KiB --blobdev image with `patch` applied to /b4097's chunk indexes. */
    function patched(name: string, patch: (img: Buffer, idx0: number) => void): { img: string; blob: string } {
      const m = mkfs(4096, true);
      const ref = ErofsImage.open(m.img, { devices: [m.blob!] });
      let idx0: number;
      try {
        idx0 = chunkIndexAt(ref, ref.resolve('/b4097'), 0, 8);
        // The entry really is /b4097's first chunk: blkaddr and device 1.
        const bytes = fs.readFileSync(m.img);
        expect(bytes.readUInt16LE(idx0 + 2)).to.equal(1);
        expect(bytes.readUInt32LE(idx0 + 4)).to.equal(ref.chunkLocation('/b4097', 0).blockAddr);
      } finally {
        ref.close();
      }
      const bytes = fs.readFileSync(m.img);
      patch(bytes, idx0);
      reseal(bytes);
      const out = path.join(tmp, `${name}.erofs`);
      fs.writeFileSync(out, bytes);
      return { img: out, blob: m.blob! };
    }

    it('an unknown device id is E_BAD_DEVICE, not a read from another device', function () {
      for (const id of [2, 3, 0x8001, 0xffff]) {
        const p = patched(`dev${id}`, (b, at) => b.writeUInt16LE(id, at + 2));
        withImage(p.img, [p.blob], (img) => {
          expectErofs(() => img.readFile('/b4097'), 'bad-device', new RegExp(`device id ${id}\\b`));
          expectErofs(() => img.chunkLocation('/b4097', 0), 'bad-device');
          // The file's other chunk, and other files, still read.
          expect(img.read('/b4097', 4096, 1).equals(fs.readFileSync(path.join(src, 'b4097')).subarray(4096))).to.equal(true);
          expect(img.readFile('/b4096').equals(fs.readFileSync(path.join(src, 'b4096')))).to.equal(true);
        });
      }
    });

    it('flat addressing: a device-0 address inside a device\'s mapped_blkaddr range reads that device (erofs_map_dev)', function () {
      const blobBlocks = fs.statSync(mkfs(4096, true).blob!).size / 4096;
      const mapped = 100000;
      let orig = 0;
      const p = patched('flat', (b, at) => {
        const devt = b.readUInt16LE(1024 + 88) * 128;
        b.writeUInt32LE(blobBlocks, devt + 64);
        b.writeUInt32LE(mapped, devt + 68);
        orig = b.readUInt32LE(at + 4);
        b.writeUInt16LE(0, at + 2);
        b.writeUInt32LE(mapped + orig, at + 4);
      });
      withImage(p.img, [p.blob], (img) => {
        expect(img.readFile('/b4097').equals(fs.readFileSync(path.join(src, 'b4097')))).to.equal(true);
        const loc = img.chunkLocation('/b4097', 0);
        expect([loc.device, loc.blockAddr]).to.deep.equal([1, orig]);
      });
    });

    it('an EROFS_NULL_ADDR chunk is a hole: zeros, and no location', function () {
      const p = patched('hole', (b, at) => b.writeUInt32LE(0xffffffff, at + 4));
      withImage(p.img, [p.blob], (img) => {
        const data = img.readFile('/b4097');
        expect(data.subarray(0, 4096).every((x) => x === 0)).to.equal(true);
        expect(data.subarray(4096).equals(fs.readFileSync(path.join(src, 'b4097')).subarray(4096))).to.equal(true);
        const loc = img.chunkLocation('/b4097', 100);
        expect([loc.blockAddr, loc.byteAddr, loc.fileStart, loc.length]).to.deep.equal([null, null, 0, 4096]);
      });
    });

    it('a chunk past the end of the blob is outside-device', function () {
      const p = patched('far', (b, at) => b.writeUInt32LE(0x00ffffff, at + 4));
      withImage(p.img, [p.blob], (img) => {
        expectErofs(() => img.readFile('/b4097'), 'outside-device', /past the end of the \d+-byte device 1/);
        // The location itself is well-formed (the declared size is 0 = not declared): the read is what fails.
        expect(img.chunkLocation('/b4097', 0).blockAddr).to.equal(0x00ffffff);
      });
    });

    it('a chunk beyond the device table\'s declared blocks is E_OUTSIDE_DEVICE, even if the blob file is longer', function () {
      const blobBlocks = fs.statSync(mkfs(4096, true).blob!).size / 4096;
      const p = patched('declared', (b, at) => {
        const devt = b.readUInt16LE(1024 + 88) * 128;
        b.writeUInt32LE(2, devt + 64); // the device claims 2 blocks
        b.writeUInt32LE(blobBlocks - 1, at + 4); // the chunk is the blob's last block
      });
      withImage(p.img, [p.blob], (img) => {
        expect(img.sb.devices[0].blocks).to.equal(2);
        expectErofs(() => img.readFile('/b4097'), 'outside-device', /outside its device/);
        expectErofs(() => img.chunkLocation('/b4097', 0), 'outside-device');
      });
    });

    it('an unknown chunk format bit is unsupported, for that file only', function () {
      const p = patched('fmt', (b, at) => {
        // i_u.c.format sits at offset 16 of the inode (u32 raw); set a bit outside EROFS_CHUNK_FORMAT_ALL.
        void at;
        const ref = ErofsImage.open(mkfs(4096, true).img);
        const nid = ref.resolve('/b4097');
        const iloc = ref.sb.metaBlkaddr * 4096 + nid * 32;
        ref.close();
        b.writeUInt16LE(b.readUInt16LE(iloc + 16) | 0x40, iloc + 16);
      });
      withImage(p.img, [p.blob], (img) => {
        expectErofs(() => img.readFile('/b4097'), 'unsupported');
        expect(img.readFile('/b4096').length).to.equal(4096);
      });
    });
  });

  describe('kata-ctl erofs --device', function () {
    it('cat, inspect and extract read a --blobdev image with its blob', async function () {
      const m = mkfs(65536, true);
      const cat = catBytes([m.img, '/d/e/m1plus3', '--device', m.blob!]);
      expect(cat.status, cat.stderr).to.equal(0);
      expect(cat.stdout.equals(fs.readFileSync(path.join(src, 'd/e/m1plus3')))).to.equal(true);
      const insp = await kataCtl(['erofs', 'inspect', m.img, '--device', m.blob!, '--json']);
      expect(insp.code, insp.stderr).to.equal(0);
      const j = JSON.parse(insp.stdout);
      expect(j.extraDevices).to.equal(1);
      expect(j.devices).to.deep.equal([{ tag: '', blocks: 0, mappedBlkaddr: 0 }]);
      const one = await kataCtl(['erofs', 'inspect', m.img, '/d/e/m2', '--device', m.blob!]);
      expect(one.stdout).to.match(/Chunks: 32 of 65536 bytes, first on device 1 at block \d+/);
      const dest = path.join(tmp, 'extract-65536');
      const img = ErofsImage.open(m.img, { devices: [m.blob!] });
      try {
        extractImage(img, '/', dest, { warn: () => undefined });
      } finally {
        img.close();
      }
      for (const rel of files) expect(fs.readFileSync(path.join(dest, rel)).equals(fs.readFileSync(path.join(src, rel))), rel).to.equal(true);
    });

    it('without --device: one clear error and exit 1; a missing blob file: one clear error', async function () {
      const m = mkfs(65536, true);
      const r = catBytes([m.img, '/b4096']);
      expect(r.status).to.equal(1);
      expect(r.stdout.length).to.equal(0);
      expect(r.stderr.trim().split('\n')).to.have.length(1);
      expect(r.stderr).to.match(/extra device 1 .*--device PATH/);
      const r2 = await kataCtl(['erofs', 'ls', m.img, '--device', path.join(tmp, 'no.blob')]);
      expect(r2.code).to.equal(1);
      expect(r2.stderr).to.match(/cannot open device .*no\.blob/);
    });
  });
});
