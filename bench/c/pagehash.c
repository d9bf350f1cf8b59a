/*
 * Native peer for bench/hot-pagehash.ts, compiled at bench time with
 * gcc -O2. Hashes the same workload as the AssemblyScript module — N pages
 * of 4 KiB, one fingerprint per page plus the zero-page test — three ways:
 *   c-xxh64     our own C XXH64 with the fused zero test (same algorithm as
 *               assembly/hash, so the ratio isolates WASM vs native codegen)
 *   lib-xxh64   XXH64() from Debian's libxxhash.so.0 per page, hash only
 *   lib-xxh64+zero  the same, then a separate zero scan (what a native dedup
 *               pass built on the library would do)
 *   lib-xxh3    XXH3_64bits() from libxxhash per page, hash only (the faster
 *               algorithm we did not choose; for context)
 * libxxhash ships without a header in the runtime package, so the two
 * prototypes are declared here. Prints one JSON object.
 * Usage: pagehash <pages> <rounds>
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

unsigned long long XXH64(const void *input, size_t length, unsigned long long seed);
unsigned long long XXH3_64bits(const void *data, size_t len);

#define PAGE 4096
static const uint64_t P1 = 0x9e3779b185ebca87ULL, P2 = 0xc2b2ae3d27d4eb4fULL,
                      P3 = 0x165667b19e3779f9ULL, P4 = 0x85ebca77c2b2ae63ULL;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t rnd(uint64_t acc, uint64_t in) { return rotl64(acc + in * P2, 31) * P1; }
static inline uint64_t merge(uint64_t acc, uint64_t v) { return (acc ^ rnd(0, v)) * P1 + P4; }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static int hash_page(const uint8_t *p, uint64_t seed, uint64_t *out) {
  uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1, any = 0;
  for (const uint8_t *end = p + PAGE; p < end; p += 32) {
    uint64_t a = rd64(p), b = rd64(p + 8), c = rd64(p + 16), d = rd64(p + 24);
    v1 = rnd(v1, a); v2 = rnd(v2, b); v3 = rnd(v3, c); v4 = rnd(v4, d);
    any |= (a | b) | (c | d);
  }
  uint64_t h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
  h = merge(merge(merge(merge(h, v1), v2), v3), v4);
  h += PAGE;
  h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32;
  *out = h;
  return any == 0;
}

static int is_zero(const uint8_t *p) {
  uint64_t any = 0;
  for (int i = 0; i < PAGE; i += 8) any |= rd64(p + i);
  return any == 0;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  size_t pages = argc > 1 ? strtoul(argv[1], 0, 10) : 16384;
  int rounds = argc > 2 ? atoi(argv[2]) : 20;
  uint8_t *mem = aligned_alloc(65536, pages * PAGE);
  uint64_t *hashes = malloc(pages * 8);
  uint8_t *flags = malloc(pages);
  /* Same content recipe as the TS side: xorshift bytes, every 10th page zero. */
  uint64_t s = 0x243f6a8885a308d3ULL;
  for (size_t i = 0; i < pages * PAGE; i += 8) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    memcpy(mem + i, &s, 8);
  }
  for (size_t i = 0; i < pages; i += 10) memset(mem + i * PAGE, 0, PAGE);
  double best[4] = {1e9, 1e9, 1e9, 1e9};
  volatile uint64_t sink = 0;
  for (int r = 0; r < rounds; r++) {
    for (int v = 0; v < 4; v++) {
      double t = now();
      size_t z = 0;
      switch (v) {
      case 0: for (size_t i = 0; i < pages; i++) z += flags[i] = hash_page(mem + i * PAGE, 0, &hashes[i]); break;
      case 1: for (size_t i = 0; i < pages; i++) hashes[i] = XXH64(mem + i * PAGE, PAGE, 0); break;
      case 2: for (size_t i = 0; i < pages; i++) { hashes[i] = XXH64(mem + i * PAGE, PAGE, 0); z += flags[i] = is_zero(mem + i * PAGE); } break;
      case 3: for (size_t i = 0; i < pages; i++) hashes[i] = XXH3_64bits(mem + i * PAGE, PAGE); break;
      }
      t = now() - t;
      if (t < best[v]) best[v] = t;
      sink += hashes[pages / 2] + z;
    }
  }
  double bytes = (double)pages * PAGE;
  uint64_t own;
  hash_page(mem + PAGE, 0, &own);
  printf("{\"c-xxh64+zero\": %.4f, \"lib-xxh64\": %.4f, \"lib-xxh64+zero\": %.4f, \"lib-xxh3\": %.4f, \"agree\": %s}\n",
         bytes / best[0] / 1e9, bytes / best[1] / 1e9, bytes / best[2] / 1e9, bytes / best[3] / 1e9,
         own == XXH64(mem + PAGE, PAGE, 0) ? "true" : "false");
  return 0;
}
