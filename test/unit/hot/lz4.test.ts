/**
 * assembly/lz4 through src/hot/lz4: block round trips on shaped inputs,
 * interoperability with the `lz4` CLI in both directions (our blocks in a
 * legacy frame decoded by `lz4 -d`; the CLI's modern, legacy and HC frames
 * decoded by us), prefix (partial) decoding, and hostile input: truncation
 * at every length, fuzzed bytes, bad offsets — clean error codes, and
 * canaries around the output buffer prove no write leaves it.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Lz4, Lz4Error, legacyFrame, parseFrames } from '../../../src/hot/lz4';
import { prng } from '../../helpers/prng';

/**
 * A plain reference decoder of the LZ4 block format (lz4_Block_format.md),
 * byte by byte, with the contract of assembly/lz4's decompress(): the block
 * must end exactly at the end of the input and fit in `cap`; `partial` stops,
 * successfully, once `cap` bytes are out; matches may not reach before the
 * output. Returns the output, or undefined where the block is invalid.
 */
function refDecode(src: Uint8Array, cap: number, partial: boolean): Buffer | undefined {
  if (src.length === 0) return undefined;
  const out: number[] = [];
  let ip = 0;
  for (;;) {
    if (ip >= src.length) return undefined;
    const token = src[ip++];
    let ll = token >> 4;
    if (ll === 15) {
      let b = 255;
      do {
        if (ip >= src.length) return undefined;
        b = src[ip++];
        ll += b;
      } while (b === 255);
    }
    if (ll > src.length - ip) return undefined;
    if (ll > cap - out.length) {
      if (!partial) return undefined;
      for (let k = 0; out.length < cap; k++) out.push(src[ip + k]);
      return Buffer.from(out);
    }
    for (let k = 0; k < ll; k++) out.push(src[ip + k]);
    ip += ll;
    if (ip === src.length) return Buffer.from(out);
    if (partial && out.length === cap) return Buffer.from(out);
    if (src.length - ip < 2) return undefined;
    const offset = src[ip] | (src[ip + 1] << 8);
    ip += 2;
    if (offset === 0 || offset > out.length) return undefined;
    let ml = token & 15;
    if (ml === 15) {
      let b = 255;
      do {
        if (ip >= src.length) return undefined;
        b = src[ip++];
        ml += b;
        if (ml > cap) {
          if (!partial) return undefined;
          break; // longer than the whole output: fills it
        }
      } while (b === 255);
    }
    ml += 4;
    if (out.length + ml > cap) {
      if (!partial) return undefined;
      while (out.length < cap) out.push(out[out.length - offset]);
      return Buffer.from(out);
    }
    for (let k = 0; k < ml; k++) out.push(out[out.length - offset]);
    if (partial && out.length === cap) return Buffer.from(out);
  }
}

function shapedInputs(): Array<[string, Buffer]> {
  const r = prng(7);
  const rand = (n: number) => Buffer.from(Array.from({ length: n }, () => r() & 255));
  const text = Buffer.from(Array.from({ length: 4000 }, (_, i) => `line ${i} of some text with words ${i % 17}\n`).join(''));
  const period = (p: number, n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i % p) * 37 & 255));
  const far = Buffer.concat([rand(1000), Buffer.alloc(70000, 3), rand(1000), rand(1000)]);
  far.copy(far, 71500, 0, 1000); // a repeat 71.5 KiB back: beyond the 64 KiB window
  const mixed: Buffer[] = [];
  for (let i = 0; i < 200; i++) mixed.push(i % 3 ? rand(r() % 300) : Buffer.alloc(r() % 2000, i));
  return [
    ['empty', Buffer.alloc(0)],
    ['one byte', Buffer.from([42])],
    ['12 bytes', rand(12)],
    ['13 bytes', rand(13)],
    ['13 zeros', Buffer.alloc(13)],
    ['random 100 KiB', rand(100 << 10)],
    ['zeros 1 MiB', Buffer.alloc(1 << 20)],
    ['text', text],
    ...[1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31].map((p): [string, Buffer] => [`period ${p}`, period(p, 5000 + p)]),
    ['far repeat', far],
    ['mixed', Buffer.concat(mixed)],
    ['long literal run then match', Buffer.concat([rand(5000), rand(10), Buffer.alloc(5000, 9)])],
  ];
}

describe('hot/lz4: LZ4 block format', function () {
  let lz: Lz4;
  let tmp: string;

  before(function () {
    lz = new Lz4({ maxBlockBytes: 8 << 20 });
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-lz4-'));
  });
  after(function () {
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  describe('round trips', function () {
    for (const [name, data] of shapedInputs()) {
      it(`compress → decompress: ${name} (${data.length} bytes)`, function () {
        const c = lz.compressBlock(data);
        expect(c.length).to.be.at.most(lz.compressBound(data.length));
        const d = lz.decompressBlock(c, data.length);
        expect(d.equals(data)).to.equal(true);
        // Deterministic: same input, same bytes (the hash table is reset).
        lz.compressBlock(crypto.randomBytes(5000));
        expect(lz.compressBlock(data).equals(c)).to.equal(true);
      });
    }

    it('compresses redundant data (zeros ≥ 200:1, text ≥ 2:1)', function () {
      expect(lz.compressBlock(Buffer.alloc(1 << 20)).length).to.be.below((1 << 20) / 200);
      const text = shapedInputs().find(([n]) => n === 'text')![1];
      expect(lz.compressBlock(text).length).to.be.below(text.length / 2);
    });

    it('partial mode decodes exactly a prefix', function () {
      const data = shapedInputs().find(([n]) => n === 'mixed')![1];
      const c = lz.compressBlock(data);
      for (const n of [0, 1, 7, 100, 4096, 33333, data.length]) {
        expect(lz.decompressBlock(c, n, true).equals(data.subarray(0, n))).to.equal(true);
      }
      // Non-partial: a block that does not fit is an error, not a prefix.
      expect(() => lz.decompressBlock(c, data.length - 1)).to.throw(Lz4Error).with.property('kind', 'overflow');
    });
  });

  describe('the lz4 CLI', function () {
    let corpus: Buffer;
    before(function () {
      // Real data: the start of a few /usr/lib files plus text, ~6 MiB.
      const parts: Buffer[] = [];
      let total = 0;
      const walk = (dir: string): void => {
        for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
          if (total > (6 << 20)) return;
          const p = path.join(dir, e.name);
          if (e.isDirectory()) walk(p);
          else if (e.isFile()) {
            try {
              const b = fs.readFileSync(p).subarray(0, 256 << 10);
              parts.push(b);
              total += b.length;
            } catch { /* unreadable: skip */ }
          }
        }
      };
      walk('/usr/lib/x86_64-linux-gnu');
      corpus = Buffer.concat(parts);
      fs.writeFileSync(path.join(tmp, 'corpus'), corpus);
    });

    it('lz4 -d decodes our blocks (legacy frame)', function () {
      const blocks: Buffer[] = [];
      for (let i = 0; i < corpus.length; i += 8 << 20) blocks.push(lz.compressBlock(corpus.subarray(i, i + (8 << 20))));
      fs.writeFileSync(path.join(tmp, 'ours.lz4'), legacyFrame(blocks));
      execFileSync('lz4', ['-d', '-f', '-q', path.join(tmp, 'ours.lz4'), path.join(tmp, 'ours.out')]);
      expect(fs.readFileSync(path.join(tmp, 'ours.out')).equals(corpus)).to.equal(true);
    });

    it('4 KiB and 64 KiB blocks of real data round trip and lz4 -d agrees', function () {
      // Many block ends: catches match extension running into the last
      // literals (a regression: a stale cursor once made a false match there).
      for (const bs of [4096, 65536]) {
        const blocks: Buffer[] = [];
        for (let i = 0; i < corpus.length; i += bs) {
          const raw = corpus.subarray(i, i + bs);
          const c = lz.compressBlock(raw);
          expect(lz.decompressBlock(c, raw.length).equals(raw), `block ${i / bs} of ${bs}`).to.equal(true);
          blocks.push(c);
        }
        fs.writeFileSync(path.join(tmp, `b${bs}.lz4`), legacyFrame([Buffer.concat(blocks.slice(0, 1))]));
        execFileSync('lz4', ['-d', '-f', '-q', path.join(tmp, `b${bs}.lz4`), path.join(tmp, `b${bs}.out`)]);
        expect(fs.readFileSync(path.join(tmp, `b${bs}.out`)).equals(corpus.subarray(0, bs))).to.equal(true);
      }
    });

    const variants: Array<[string, string[], number]> = [
      ['default frame (-B7, independent blocks)', ['-B7'], 4 << 20],
      ['64 KiB blocks with block checksums (-B4 -BX)', ['-B4', '-BX'], 64 << 10],
      ['legacy frame (-l)', ['-l'], 8 << 20],
      ['high compression (-9, -B5)', ['-9', '-B5'], 256 << 10],
      ['content size + no frame crc', ['--content-size', '--no-frame-crc', '-B6'], 1 << 20],
    ];
    for (const [name, flags, blockMax] of variants) {
      it(`we decode lz4 ${name}`, function () {
        const out = path.join(tmp, `cli-${flags.join('')}.lz4`);
        execFileSync('lz4', ['-f', '-q', ...flags, path.join(tmp, 'corpus'), out]);
        const blocks = parseFrames(fs.readFileSync(out));
        expect(blocks.length).to.be.greaterThan(0);
        const dec = Buffer.concat(blocks.map((b) => (b.compressed ? lz.decompressBlock(b.data, blockMax) : b.data)));
        expect(dec.equals(corpus)).to.equal(true);
      });
    }
  });

  describe('hostile input', function () {
    // Decode in place with canaries on both sides of the output buffer.
    const guard = 256;
    function decodeGuarded(block: Uint8Array, cap: number, partial = false): { n?: number; err?: Lz4Error } {
      const u8 = lz.mem.u8;
      u8.set(block, lz.srcOff);
      const dst = lz.dstOff + guard;
      u8.fill(0xa5, lz.dstOff, dst);
      u8.fill(0x5a, dst + cap, dst + cap + guard);
      let n: number | undefined;
      let err: Lz4Error | undefined;
      try {
        n = lz.decompressInPlace(lz.srcOff, block.length, dst, cap, partial);
      } catch (e) {
        if (!(e instanceof Lz4Error)) throw e;
        err = e;
      }
      for (let i = lz.dstOff; i < dst; i++) if (u8[i] !== 0xa5) throw new Error(`write before the output at ${i - dst}`);
      for (let i = dst + cap; i < dst + cap + guard; i++) if (u8[i] !== 0x5a) throw new Error(`write past the output at +${i - dst - cap}`);
      if (n !== undefined) expect(n).to.be.within(0, cap);
      return { n, err };
    }

    it('every truncation of a block is an error or a shorter output', function () {
      const data = shapedInputs().find(([n]) => n === 'mixed')![1].subarray(0, 20000);
      const c = lz.compressBlock(data);
      for (let len = 0; len < c.length; len++) {
        const { n, err } = decodeGuarded(c.subarray(0, len), data.length);
        if (err) expect(['truncated', 'bad-offset', 'overflow']).to.include(err.kind);
        else expect(n!).to.be.below(data.length);
      }
    });

    it('fuzzed blocks never write outside the output (5000 cases)', function () {
      const r = prng(99);
      const base = lz.compressBlock(shapedInputs().find(([n]) => n === 'text')![1].subarray(0, 30000));
      let errors = 0;
      for (let i = 0; i < 5000; i++) {
        const b = Buffer.from(base.subarray(0, 64 + (r() % (base.length - 64))));
        const flips = 1 + (r() % 8);
        for (let k = 0; k < flips; k++) b[r() % b.length] = r() & 255;
        const cap = [0, 17, 4096, 30000, 100000][i % 5];
        if (decodeGuarded(b, cap, (i & 8) !== 0).err) errors++;
      }
      expect(errors).to.be.greaterThan(0);
    });

    it('the reference decoder used below agrees with ours on valid blocks', function () {
      for (const [name, data] of shapedInputs()) {
        const block = lz.compressBlock(data.subarray(0, 100000));
        const want = data.subarray(0, 100000);
        expect(refDecode(block, want.length, false)?.equals(want), name).to.equal(true);
        expect(refDecode(block, want.length + 100, false)?.equals(want), `${name}, room to spare`).to.equal(true);
        if (want.length > 10) {
          expect(refDecode(block, want.length - 10, false), `${name}, too small`).to.equal(undefined);
          expect(refDecode(block, want.length - 10, true)?.equals(want.subarray(0, want.length - 10)), `${name}, prefix`).to.equal(true);
        }
      }
    });

    it('random garbage is refused cleanly: a named error, unless the bytes happen to form a valid block', function () {
      // Refused means an Lz4Error of a known kind, nothing written outside
      // the output (decodeGuarded's canaries), and agreement with the
      // reference decoder: what we refuse is invalid, and what we accept is
      // a valid block (e.g. one token of 0 literals), decoded to the same
      // bytes. Valid blocks stay rare among random bytes.
      const r = prng(2024);
      const kinds = new Map<string, number>();
      let accepted = 0;
      const cases = 4000;
      for (let i = 0; i < cases; i++) {
        const b = Buffer.from(Array.from({ length: 1 + (i % 300) }, () => r() & 255));
        const partial = (i & 1) === 1;
        const cap = [1024, 64, 8][(i >> 1) % 3];
        const { n, err } = decodeGuarded(b, cap, partial);
        const ref = refDecode(b, cap, partial);
        const what = `case ${i} (${b.length} bytes into ${cap}, ${partial ? 'partial' : 'whole'}): ${b.subarray(0, 16).toString('hex')}…`;
        if (err) {
          expect(['truncated', 'overflow', 'bad-offset'], what).to.include(err.kind);
          expect(ref, `${what}: refused (${err.kind}) but the reference decodes it`).to.equal(undefined);
          kinds.set(err.kind, (kinds.get(err.kind) ?? 0) + 1);
        } else {
          expect(ref, `${what}: accepted but not a valid block`).to.not.equal(undefined);
          expect(n, what).to.equal(ref!.length);
          const dst = lz.dstOff + guard;
          expect(Buffer.from(lz.mem.u8.subarray(dst, dst + n!)).equals(ref!), `${what}: output differs from the reference`).to.equal(true);
          accepted++;
        }
      }
      const refused = cases - accepted;
      process.stdout.write(`      ${refused}/${cases} refused (${[...kinds].map(([k, c]) => `${k} ${c}`).join(', ')}), ${accepted} valid by chance\n`);
      expect(refused).to.be.at.least(cases * 0.9);
      expect(kinds.size, 'truncation, overflow and bad offsets all seen').to.equal(3);
    });

    it('names the failure: zero offset, offset before the output, overflow, truncation', function () {
      // token: 1 literal, match 4; literal 'a'; offset 0.
      expect(() => lz.decompressBlock(Buffer.from([0x10, 0x61, 0x00, 0x00, 0x00]), 100)).to.throw(Lz4Error).with.property('kind', 'bad-offset');
      // offset 2 with only 1 byte of output so far.
      expect(() => lz.decompressBlock(Buffer.from([0x10, 0x61, 0x02, 0x00, 0x00]), 100)).to.throw(Lz4Error).with.property('kind', 'bad-offset');
      // 15+255+… literal length running past the input.
      expect(() => lz.decompressBlock(Buffer.from([0xf0, 0xff, 0xff]), 100)).to.throw(Lz4Error).with.property('kind', 'truncated');
      // A valid 1-literal + 20-byte match block into a 10-byte buffer.
      const ok = Buffer.from([0x1f, 0x61, 0x01, 0x00, 0x01, 0x50, 0x61, 0x61, 0x61, 0x61, 0x61]);
      expect(lz.decompressBlock(ok, 100).toString()).to.equal('a'.repeat(1 + 20 + 5));
      expect(() => lz.decompressBlock(ok, 10)).to.throw(Lz4Error).with.property('kind', 'overflow');
      expect(lz.decompressBlock(ok, 10, true).toString()).to.equal('a'.repeat(10));
      expect(() => lz.decompressBlock(Buffer.alloc(0), 10)).to.throw(Lz4Error).with.property('kind', 'truncated');
    });
  });
});
