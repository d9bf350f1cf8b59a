/*
 * assembly/hash — memory-dedup page hashing.
 *
 * Fingerprints 4 KiB pages of a region with XXH64 (seed configurable, 0 by
 * default — the value `xxhsum -H64` prints for the page's bytes), flags zero
 * pages in the same pass, and groups identical pages with an open-addressing
 * table so a dedup pass (balloon free-page reporting, KSM-like merging, VM
 * templating) gets "page i duplicates page j" in two calls.
 *
 * Why XXH64 and not XXH3: measured here (bench/hot-pagehash.ts, AMD EPYC,
 * Node 20) scalar XXH64 + zero test in WASM does ~10 GB/s per core, 1.1–1.2×
 * native XXH64 (gcc -O2, libxxhash, `xxhsum -b`). Native XXH3 is faster
 * (13–16 GB/s per 4 KiB page with AVX2) but its 32×32→64 lane multiplies need
 * shuffles in WASM SIMD; a port is the next step if hashing ever shows up in
 * profiles. Revisit with data.
 *
 * Pure functions over linear memory; no allocation, no static data (the
 * Memory is shared; see src/hot/loader.ts). Every pointer/length argument is
 * checked against memory.size() so a bad call returns -1, never traps.
 *
 * ───────────────────────── exported ABI ─────────────────────────
 * xxh64(ptr, len, seed: u64) → u64                XXH64 of [ptr, ptr+len); 0 if out of range
 * hash_pages(src, npages, hashes, flags, seed: u64) → zero pages | -1
 *     hashes: npages × u64 (8-aligned), flags: npages × u8, bit 0 = all-zero page
 * group_pages(src, hashes, npages, table, table_cap, verify, groups) → unique pages | -1
 *     table: table_cap × u32 scratch (power of two ≥ 2 × npages), cleared here;
 *     groups: npages × u32: index of the first page with the same content
 *     (itself if first). verify ≠ 0 compares bytes on a fingerprint match, so
 *     a 64-bit collision never merges different pages.
 * pages_equal(a, b) → 1 | 0 | -1                  byte compare of two 4 KiB pages
 */

const PAGE: u32 = 4096;
const PRIME64_1: u64 = 0x9e3779b185ebca87;
const PRIME64_2: u64 = 0xc2b2ae3d27d4eb4f;
const PRIME64_3: u64 = 0x165667b19e3779f9;
const PRIME64_4: u64 = 0x85ebca77c2b2ae63;
const PRIME64_5: u64 = 0x27d4eb2f165667c5;

@inline function inMemory(ptr: usize, len: u64): bool {
  return <u64>ptr + len <= (<u64>memory.size() << 16);
}

@inline function round(acc: u64, input: u64): u64 {
  acc += input * PRIME64_2;
  acc = rotl<u64>(acc, 31);
  return acc * PRIME64_1;
}

@inline function mergeRound(acc: u64, val: u64): u64 {
  acc ^= round(0, val);
  return acc * PRIME64_1 + PRIME64_4;
}

@inline function avalanche(h: u64): u64 {
  h ^= h >> 33;
  h *= PRIME64_2;
  h ^= h >> 29;
  h *= PRIME64_3;
  h ^= h >> 32;
  return h;
}

/** The tail (< 32 bytes) and avalanche of XXH64. */
@inline function finalize(h: u64, p: usize, rem: u32): u64 {
  while (rem >= 8) {
    h ^= round(0, load<u64>(p));
    h = rotl<u64>(h, 27) * PRIME64_1 + PRIME64_4;
    p += 8;
    rem -= 8;
  }
  if (rem >= 4) {
    h ^= <u64>load<u32>(p) * PRIME64_1;
    h = rotl<u64>(h, 23) * PRIME64_2 + PRIME64_3;
    p += 4;
    rem -= 4;
  }
  while (rem > 0) {
    h ^= <u64>load<u8>(p) * PRIME64_5;
    h = rotl<u64>(h, 11) * PRIME64_1;
    p++;
    rem--;
  }
  return avalanche(h);
}

export function xxh64(ptr: usize, len: u32, seed: u64): u64 {
  if (!inMemory(ptr, len)) return 0;
  let p = ptr;
  let h: u64;
  if (len >= 32) {
    let v1 = seed + PRIME64_1 + PRIME64_2;
    let v2 = seed + PRIME64_2;
    let v3 = seed;
    let v4 = seed - PRIME64_1;
    const limit = ptr + (len & ~31);
    while (p < limit) {
      v1 = round(v1, load<u64>(p));
      v2 = round(v2, load<u64>(p, 8));
      v3 = round(v3, load<u64>(p, 16));
      v4 = round(v4, load<u64>(p, 24));
      p += 32;
    }
    h = rotl<u64>(v1, 1) + rotl<u64>(v2, 7) + rotl<u64>(v3, 12) + rotl<u64>(v4, 18);
    h = mergeRound(h, v1);
    h = mergeRound(h, v2);
    h = mergeRound(h, v3);
    h = mergeRound(h, v4);
  } else {
    h = seed + PRIME64_5;
  }
  h += <u64>len;
  return finalize(h, p, len & 31);
}

/**
 * XXH64 of one 4 KiB page with the zero test fused into the stripe loop
 * (the OR costs far less than a second pass over the page). Writes the hash
 * to `out` and returns 1 for an all-zero page.
 */
@inline function hashPage(p: usize, seed: u64, out: usize): u32 {
  let v1 = seed + PRIME64_1 + PRIME64_2;
  let v2 = seed + PRIME64_2;
  let v3 = seed;
  let v4 = seed - PRIME64_1;
  let any: u64 = 0;
  const end = p + PAGE;
  while (p < end) {
    const a = load<u64>(p);
    const b = load<u64>(p, 8);
    const c = load<u64>(p, 16);
    const d = load<u64>(p, 24);
    v1 = round(v1, a);
    v2 = round(v2, b);
    v3 = round(v3, c);
    v4 = round(v4, d);
    any |= (a | b) | (c | d);
    p += 32;
  }
  let h = rotl<u64>(v1, 1) + rotl<u64>(v2, 7) + rotl<u64>(v3, 12) + rotl<u64>(v4, 18);
  h = mergeRound(h, v1);
  h = mergeRound(h, v2);
  h = mergeRound(h, v3);
  h = mergeRound(h, v4);
  h += <u64>PAGE;
  store<u64>(out, avalanche(h)); // 4096 % 32 == 0: no tail
  return any == 0 ? 1 : 0;
}

export function hash_pages(src: usize, npages: u32, hashes: usize, flags: usize, seed: u64): i32 {
  if (!inMemory(src, <u64>npages * PAGE) || !inMemory(hashes, <u64>npages * 8) || !inMemory(flags, npages)) return -1;
  let zeros: u32 = 0;
  for (let i: u32 = 0; i < npages; i++) {
    const z = hashPage(src + <usize>i * PAGE, seed, hashes + (<usize>i << 3));
    store<u8>(flags + i, <u8>z);
    zeros += z;
  }
  return <i32>zeros;
}

@inline function equalPages(a: usize, b: usize): bool {
  if (a == b) return true;
  for (let k: usize = 0; k < PAGE; k += 64) {
    const x = v128.or(
      v128.or(v128.xor(v128.load(a + k), v128.load(b + k)), v128.xor(v128.load(a + k, 16), v128.load(b + k, 16))),
      v128.or(v128.xor(v128.load(a + k, 32), v128.load(b + k, 32)), v128.xor(v128.load(a + k, 48), v128.load(b + k, 48))),
    );
    if (v128.any_true(x)) return false;
  }
  return true;
}

export function pages_equal(a: usize, b: usize): i32 {
  if (!inMemory(a, PAGE) || !inMemory(b, PAGE)) return -1;
  return equalPages(a, b) ? 1 : 0;
}

export function group_pages(src: usize, hashes: usize, npages: u32, table: usize, cap: u32, verify: u32, groups: usize): i32 {
  if (cap == 0 || (cap & (cap - 1)) != 0 || <u64>cap < <u64>npages * 2) return -1;
  if (!inMemory(hashes, <u64>npages * 8) || !inMemory(table, <u64>cap * 4) || !inMemory(groups, <u64>npages * 4)) return -1;
  if (verify != 0 && !inMemory(src, <u64>npages * PAGE)) return -1;
  memory.fill(table, 0, <usize>cap << 2);
  const mask = cap - 1;
  let unique: u32 = 0;
  for (let i: u32 = 0; i < npages; i++) {
    const h = load<u64>(hashes + (<usize>i << 3));
    // XXH64 output is avalanched: its low bits are a fine table index.
    let slot = <u32>h & mask;
    let group = i;
    while (true) {
      const e = load<u32>(table + (<usize>slot << 2));
      if (e == 0) {
        store<u32>(table + (<usize>slot << 2), i + 1);
        unique++;
        break;
      }
      const j = e - 1;
      if (load<u64>(hashes + (<usize>j << 3)) == h &&
          (verify == 0 || equalPages(src + <usize>j * PAGE, src + <usize>i * PAGE))) {
        group = j;
        break;
      }
      slot = (slot + 1) & mask; // ≤ npages entries in ≥ 2×npages slots: terminates
    }
    store<u32>(groups + (<usize>i << 2), group);
  }
  return <i32>unique;
}
