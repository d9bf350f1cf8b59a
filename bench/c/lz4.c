/*
 * Native LZ4 peer for bench/hot-lz4.ts: liblz4 (Debian, the library the
 * `lz4` CLI uses) compressing and decompressing a file as independent blocks
 * of one size, in memory, best of N rounds. Prints JSON.
 *   lz4 FILE BLOCK_BYTES ROUNDS
 * lz4.h is not installed (only the runtime library), so the two stable
 * entry points are declared here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LZ4_compress_default(const char *src, char *dst, int srcSize, int dstCapacity);
int LZ4_decompress_safe(const char *src, char *dst, int compressedSize, int dstCapacity);
int LZ4_compressBound(int inputSize);

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  FILE *f = fopen(argv[1], "rb");
  if (!f) return 1;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *in = malloc(n), *out = malloc(n + 64);
  if (fread(in, 1, n, f) != (size_t)n) return 1;
  fclose(f);
  int bs = atoi(argv[2]), rounds = atoi(argv[3]);
  long nblocks = (n + bs - 1) / bs;
  char *comp = malloc((size_t)nblocks * LZ4_compressBound(bs));
  int *clen = malloc(sizeof(int) * nblocks);
  double benc = 1e9, bdec = 1e9;
  long total = 0;
  for (int r = 0; r < rounds; r++) {
    double t = now();
    char *p = comp;
    total = 0;
    for (long i = 0; i < nblocks; i++) {
      int len = (i + 1) * (long)bs <= n ? bs : (int)(n - i * (long)bs);
      clen[i] = LZ4_compress_default(in + i * (long)bs, p, len, LZ4_compressBound(bs));
      p += clen[i];
      total += clen[i];
    }
    t = now() - t;
    if (t < benc) benc = t;
  }
  int ok = 1;
  for (int r = 0; r < rounds; r++) {
    double t = now();
    char *p = comp;
    for (long i = 0; i < nblocks; i++) {
      int len = (i + 1) * (long)bs <= n ? bs : (int)(n - i * (long)bs);
      if (LZ4_decompress_safe(p, out + i * (long)bs, clen[i], len) != len) ok = 0;
      p += clen[i];
    }
    t = now() - t;
    if (t < bdec) bdec = t;
  }
  if (memcmp(in, out, n) != 0) ok = 0;
  printf("{\"encMBps\": %.1f, \"decMBps\": %.1f, \"ratio\": %.4f, \"ok\": %s}\n", n / benc / 1e6, n / bdec / 1e6, (double)total / n, ok ? "true" : "false");
  return 0;
}
