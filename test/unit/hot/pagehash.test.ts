/**
 * assembly/hash through src/hot/pagehash: XXH64 against the xxhsum CLI
 * (Debian xxhash) and an independent BigInt reference (seeds, fuzz), zero
 * page flags, duplicate grouping with and without byte verification, and
 * refusal of out-of-range arguments without traps.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HotMemory } from '../../../src/hot/memory';
import { PAGE_SIZE, PageHashError, PageHasher } from '../../../src/hot/pagehash';
import { skipOrFail } from '../../helpers/skip';

const M = (1n << 64n) - 1n;
const P1 = 0x9e3779b185ebca87n, P2 = 0xc2b2ae3d27d4eb4fn, P3 = 0x165667b19e3779f9n;
const P4 = 0x85ebca77c2b2ae63n, P5 = 0x27d4eb2f165667c5n;
const rotl = (x: bigint, r: bigint) => ((x << r) | (x >> (64n - r))) & M;
const round = (acc: bigint, v: bigint) => (rotl((acc + v * P2) & M, 31n) * P1) & M;
const merge = (acc: bigint, v: bigint) => (((acc ^ round(0n, v)) * P1) + P4) & M;

/** Reference XXH64 (straight from the algorithm description, BigInt, slow). */
function refXxh64(b: Uint8Array, seed = 0n): bigint {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const len = b.length;
  let p = 0;
  let h: bigint;
  if (len >= 32) {
    let v1 = (seed + P1 + P2) & M, v2 = (seed + P2) & M, v3 = seed, v4 = (seed - P1) & M;
    for (; p + 32 <= len; p += 32) {
      v1 = round(v1, dv.getBigUint64(p, true));
      v2 = round(v2, dv.getBigUint64(p + 8, true));
      v3 = round(v3, dv.getBigUint64(p + 16, true));
      v4 = round(v4, dv.getBigUint64(p + 24, true));
    }
    h = (rotl(v1, 1n) + rotl(v2, 7n) + rotl(v3, 12n) + rotl(v4, 18n)) & M;
    h = merge(merge(merge(merge(h, v1), v2), v3), v4);
  } else {
    h = (seed + P5) & M;
  }
  h = (h + BigInt(len)) & M;
  for (; p + 8 <= len; p += 8) h = ((rotl(h ^ round(0n, dv.getBigUint64(p, true)), 27n) * P1) + P4) & M;
  if (p + 4 <= len) {
    h = ((rotl(h ^ ((BigInt(dv.getUint32(p, true)) * P1) & M), 23n) * P2) + P3) & M;
    p += 4;
  }
  for (; p < len; p++) h = (rotl(h ^ ((BigInt(b[p]) * P5) & M), 11n) * P1) & M;
  h ^= h >> 33n; h = (h * P2) & M;
  h ^= h >> 29n; h = (h * P3) & M;
  h ^= h >> 32n;
  return h;
}

/** XXH64 of each file by the xxhsum CLI, one process for all. */
function xxhsum(files: string[]): bigint[] {
  const out = execFileSync('xxhsum', ['-H1', ...files], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const byFile = new Map<string, bigint>();
  for (const line of out.trim().split('\n')) {
    const m = /^([0-9a-f]{16})\s+(.+)$/.exec(line.trim());
    if (m) byFile.set(m[2], BigInt('0x' + m[1]));
  }
  return files.map((f) => {
    const h = byFile.get(f);
    if (h === undefined) throw new Error(`xxhsum printed nothing for ${f}`);
    return h;
  });
}

function hasXxhsum(): boolean {
  try {
    execFileSync('xxhsum', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('hot/pagehash', () => {
  const GUEST = 0x8000_0000n;
  const NPAGES = 256;
  let mem: HotMemory;
  let hasher: PageHasher;
  let tmp: string;

  before(() => {
    mem = new HotMemory({ scratchBytes: 4 << 20, guestRegions: [{ gpa: GUEST, size: NPAGES * PAGE_SIZE }] });
    hasher = new PageHasher(mem, { maxPages: 1024 });
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-pagehash-'));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('matches published XXH64 vectors and the BigInt reference', () => {
    expect(hasher.xxh64(new Uint8Array(0))).to.equal(0xef46db3751d8e999n);
    expect(hasher.xxh64(Buffer.from('abc'))).to.equal(0x44bc2cf5ad770999n);
    expect(refXxh64(Buffer.from('abc'))).to.equal(0x44bc2cf5ad770999n);
    const s = Buffer.from('Nobody inspects the spammish repetition');
    expect(hasher.xxh64(s)).to.equal(refXxh64(s));
    for (const seed of [1n, 0x9e3779b185ebca87n, M]) expect(hasher.xxh64(s, seed)).to.equal(refXxh64(s, seed));
  });

  it('equals `xxhsum -H1` for every length class (0–100, around 4 KiB, 64 KiB)', function () {
    if (!hasXxhsum()) skipOrFail(this, 'xxhsum not installed (apt-get install xxhash)');
    const lens = [...Array.from({ length: 101 }, (_, i) => i), 255, 1000, 4095, 4096, 4097, 8191, 65536];
    const files: string[] = [];
    const ours: bigint[] = [];
    for (const len of lens) {
      const data = crypto.randomBytes(len);
      const f = path.join(tmp, `len-${len}.bin`);
      fs.writeFileSync(f, data);
      files.push(f);
      ours.push(hasher.xxh64(data));
    }
    expect(ours).to.deep.equal(xxhsum(files));
  });

  it('fingerprints guest pages in place, equal to xxhsum per page; flags zero pages', function () {
    if (!hasXxhsum()) skipOrFail(this, 'xxhsum not installed (apt-get install xxhash)');
    const base = mem.gpaToOffset(GUEST, NPAGES * PAGE_SIZE);
    const u8 = mem.u8;
    u8.set(crypto.randomBytes(NPAGES * PAGE_SIZE), base);
    const zeroAt = [0, 7, 100, 255];
    for (const i of zeroAt) u8.fill(0, base + i * PAGE_SIZE, base + (i + 1) * PAGE_SIZE);
    u8.fill(0, base + 8 * PAGE_SIZE, base + 9 * PAGE_SIZE);
    u8[base + 9 * PAGE_SIZE - 1] = 1; // zero but for its last byte
    u8.fill(0, base + 9 * PAGE_SIZE, base + 10 * PAGE_SIZE);
    u8[base + 9 * PAGE_SIZE] = 0x80; // zero but for its first byte
    const r = hasher.hashPages(base, NPAGES);
    expect(r.zeroPages).to.equal(zeroAt.length);
    for (let i = 0; i < NPAGES; i++) expect(r.zero[i], `page ${i}`).to.equal(zeroAt.includes(i) ? 1 : 0);
    const files: string[] = [];
    for (let i = 0; i < NPAGES; i += 5) {
      const f = path.join(tmp, `page-${i}.bin`);
      fs.writeFileSync(f, u8.subarray(base + i * PAGE_SIZE, base + (i + 1) * PAGE_SIZE));
      files.push(f);
    }
    const want = xxhsum(files);
    files.forEach((_, k) => expect(r.hashes[k * 5], `page ${k * 5}`).to.equal(want[k]));
    expect(r.hashes[0]).to.equal(refXxh64(new Uint8Array(PAGE_SIZE)));
    // A seeded pass agrees with the reference.
    const seeded = hasher.hashPages(base, 3, 42n);
    for (let i = 0; i < 3; i++) expect(seeded.hashes[i]).to.equal(refXxh64(u8.subarray(base + i * PAGE_SIZE, base + (i + 1) * PAGE_SIZE), 42n));
  });

  it('groups duplicate pages onto the first occurrence', () => {
    const base = mem.guestBase;
    const u8 = mem.u8;
    const n = 200;
    const kinds = Array.from({ length: n }, (_, i) => (i * 7919) % 13); // 13 distinct contents
    for (let i = 0; i < n; i++) {
      const page = u8.subarray(base + i * PAGE_SIZE, base + (i + 1) * PAGE_SIZE);
      page.fill(kinds[i]); // content 0 is the zero page
      page[kinds[i] * 31] ^= 0x5a;
    }
    // Make content 0 a true zero page.
    for (let i = 0; i < n; i++) if (kinds[i] === 0) u8.fill(0, base + i * PAGE_SIZE, base + (i + 1) * PAGE_SIZE);
    const h = hasher.hashPages(base, n);
    expect(h.zeroPages).to.equal(kinds.filter((k) => k === 0).length);
    const g = hasher.groupLast();
    expect(g.unique).to.equal(13);
    for (let i = 0; i < n; i++) expect(g.groupOf[i], `page ${i}`).to.equal(kinds.indexOf(kinds[i]));
    expect(hasher.groupLast({ verify: false }).unique).to.equal(13);
  });

  it('verify keeps fingerprint collisions apart; without it they merge', () => {
    const base = mem.guestBase;
    mem.u8.set(crypto.randomBytes(4 * PAGE_SIZE), base);
    const h = hasher.hashPages(base, 4);
    h.hashes[2] = h.hashes[0]; // forge a 64-bit collision
    h.hashes[3] = h.hashes[0];
    mem.u8.copyWithin(base + 3 * PAGE_SIZE, base, base + PAGE_SIZE); // page 3 really equals page 0
    const v = hasher.groupLast({ verify: true });
    expect(Array.from(v.groupOf)).to.deep.equal([0, 1, 2, 0]);
    expect(v.unique).to.equal(3);
    const nv = hasher.groupLast({ verify: false });
    expect(Array.from(nv.groupOf)).to.deep.equal([0, 1, 0, 0]);
    expect(hasher.pagesEqual(base, base + 3 * PAGE_SIZE)).to.equal(true);
    expect(hasher.pagesEqual(base, base + 2 * PAGE_SIZE)).to.equal(false);
  });

  it('refuses out-of-range arguments: typed errors in TS, -1 (never a trap) in WASM', () => {
    expect(() => hasher.hashPages(mem.byteLength - PAGE_SIZE, 2)).to.throw(/outside/);
    expect(() => hasher.hashPages(0, 2000)).to.throw(PageHashError);
    const w = hasher.wasm;
    expect(w.hash_pages(mem.byteLength - PAGE_SIZE, 2, 64, 128, 0n)).to.equal(-1);
    expect(w.hash_pages(0, 1, mem.byteLength - 4, 128, 0n)).to.equal(-1);
    expect(w.hash_pages(0xffff_f000, 1, 64, 128, 0n)).to.equal(-1);
    expect(w.xxh64(mem.byteLength - 10, 11, 0n)).to.equal(0n);
    expect(w.pages_equal(mem.byteLength - 100, 0)).to.equal(-1);
    expect(w.group_pages(0, 64, 10, 4096, 16, 0, 8192)).to.equal(-1); // table smaller than 2×pages
    expect(w.group_pages(0, 64, 10, 4096, 24, 0, 8192)).to.equal(-1); // not a power of two
    expect(w.group_pages(0, 64, 10, mem.byteLength - 8, 32, 0, 8192)).to.equal(-1);
  });

  it('fuzz: random lengths, unaligned offsets and seeds agree with the reference', () => {
    let seedState = 7;
    const rnd = (n: number) => {
      seedState = (seedState * 1103515245 + 12345) >>> 0;
      return (seedState >>> 4) % n;
    };
    const base = mem.guestBase;
    mem.u8.set(crypto.randomBytes(1 << 16), base);
    for (let i = 0; i < 400; i++) {
      const off = base + rnd(4096);
      const len = rnd(i % 10 === 0 ? 20000 : 300);
      const seed = i % 3 === 0 ? 0n : BigInt(rnd(0x7fffffff)) * BigInt(rnd(0x7fffffff) + 1);
      expect(hasher.xxh64At(off, len, seed), `off ${off} len ${len}`).to.equal(refXxh64(mem.u8.subarray(off, off + len), seed & M));
    }
  });
});
