/*
 * In-guest read benchmark for bench/image-lazy.ts (static, no libc beyond
 * glibc-static): reads FILE sequentially (1 MiB requests) or at N random
 * 4 KiB-aligned offsets (4 KiB requests), with O_DIRECT when the file
 * system allows it so every read reaches the block device instead of the
 * guest page cache. Prints one JSON line: mode, bytes, seconds, MB/s, direct.
 *   readbench seq FILE | readbench rand FILE N SEED
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: readbench seq FILE | rand FILE N SEED\n"); return 2; }
  int rnd = strcmp(argv[1], "rand") == 0;
  int direct = 1;
  int fd = open(argv[2], O_RDONLY | O_DIRECT);
  if (fd < 0) { direct = 0; fd = open(argv[2], O_RDONLY); }
  if (fd < 0) { perror("open"); return 1; }
  struct stat st;
  fstat(fd, &st);
  size_t bs = rnd ? 4096 : 1 << 20;
  void *buf;
  if (posix_memalign(&buf, 4096, bs)) return 1;
  long long total = 0;
  double t0 = now();
  if (!rnd) {
    for (off_t o = 0; o + (off_t)bs <= st.st_size; o += bs) {
      ssize_t n = pread(fd, buf, bs, o);
      if (n < 0 && direct) { direct = 0; close(fd); fd = open(argv[2], O_RDONLY); n = pread(fd, buf, bs, o); }
      if (n <= 0) { perror("pread"); return 1; }
      total += n;
    }
  } else {
    long n = argc > 3 ? atol(argv[3]) : 1000;
    srand(argc > 4 ? atoi(argv[4]) : 1);
    long pages = st.st_size / 4096;
    for (long i = 0; i < n; i++) {
      off_t o = (off_t)((((long long)rand() << 16) ^ rand()) % pages) * 4096;
      ssize_t r = pread(fd, buf, bs, o);
      if (r < 0 && direct) { direct = 0; close(fd); fd = open(argv[2], O_RDONLY); r = pread(fd, buf, bs, o); }
      if (r <= 0) { perror("pread"); return 1; }
      total += r;
    }
  }
  double s = now() - t0;
  printf("{\"mode\":\"%s\",\"bytes\":%lld,\"seconds\":%.4f,\"MBs\":%.2f,\"direct\":%s}\n", rnd ? "rand" : "seq", total, s, total / s / 1e6, direct ? "true" : "false");
  return 0;
}
