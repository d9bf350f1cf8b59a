/*
 * C reference for bench/hot-virtqueue.ts, compiled at bench time with
 * gcc -O2: the same device-side split-virtqueue algorithm as assembly/virtio
 * (same checks: head/next range, loops, chain length, indirect rules,
 * descriptor ranges inside guest RAM, writable order, 2^32-byte chains),
 * over the same workload, so chains/s compare like for like. Our own code.
 * Usage: virtqueue <direct|indirect> <batches>   → one JSON object
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

typedef struct { uint64_t gpa, size; uint8_t *host; } region_t;
typedef struct { uint32_t head, first, nr, nw, rbytes, wbytes; } chain_t;
typedef struct { uint8_t *base; uint32_t len; } iov_t;
typedef struct {
  uint32_t size, indirect, event_idx;
  uint8_t *desc, *avail, *used;
  uint16_t last_avail, next_used, signalled;
  int error;
} vq_t;

static region_t regions[8];
static unsigned nregions;

static inline uint8_t *translate(uint64_t gpa, uint64_t len) {
  for (unsigned i = 0; i < nregions; i++) {
    uint64_t rel = gpa - regions[i].gpa;
    if (gpa >= regions[i].gpa && rel <= regions[i].size && len <= regions[i].size - rel) return regions[i].host + rel;
  }
  return NULL;
}
static inline uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static int fail(vq_t *q, int code) { q->error = code; return -code; }

static int pop_batch(vq_t *q, chain_t *chains, unsigned max, iov_t *iov, unsigned maxiov) {
  if (q->error) return -q->error;
  uint32_t size = q->size, mask = size - 1;
  uint16_t avail_idx = __atomic_load_n((uint16_t *)(q->avail + 2), __ATOMIC_ACQUIRE);
  uint32_t pending = (uint16_t)(avail_idx - q->last_avail);
  if (pending > size) return fail(q, 6);
  if (pending > max) pending = max;
  unsigned n = 0, used_iov = 0;
  while (n < pending) {
    uint32_t head = ld16(q->avail + 4 + 2 * ((q->last_avail + n) & mask));
    if (head >= size) return fail(q, 7);
    uint8_t *table = q->desc;
    uint32_t tsize = size, idx = head, visited = 0, total = 0, nr = 0, nw = 0;
    uint64_t rb = 0, wb = 0;
    int in_ind = 0, full = 0;
    unsigned pos = used_iov;
    for (;;) {
      if (idx >= tsize) return fail(q, 8);
      if (++visited > tsize) return fail(q, 10);
      uint8_t *d = table + 16 * idx;
      uint64_t addr = ld64(d);
      uint32_t len = ld32(d + 8), flags = ld16(d + 12);
      if (flags & F_INDIRECT) {
        if (!q->indirect) return fail(q, 12);
        if (in_ind) return fail(q, 13);
        if (flags & F_NEXT) return fail(q, 14);
        if (len == 0 || (len & 15)) return fail(q, 15);
        uint8_t *t = translate(addr, len);
        if (!t) return fail(q, 16);
        table = t; tsize = len >> 4; idx = 0; visited = 0; in_ind = 1;
        continue;
      }
      if (++total > size) return fail(q, 11);
      uint8_t *h = translate(addr, len);
      if (!h) return fail(q, 9);
      if (flags & F_WRITE) { nw++; wb += len; }
      else { if (nw) return fail(q, 17); nr++; rb += len; }
      if (pos >= maxiov) { if (n == 0) return -19; full = 1; break; }
      iov[pos].base = h; iov[pos].len = len; pos++;
      if (!(flags & F_NEXT)) break;
      idx = ld16(d + 14);
    }
    if (full) break;
    if (rb > 0xffffffffu || wb > 0xffffffffu || rb + wb > 0x100000000ull) return fail(q, 18);
    chains[n] = (chain_t){head, used_iov, nr, nw, (uint32_t)rb, (uint32_t)wb};
    used_iov = pos;
    n++;
  }
  q->last_avail += n;
  return (int)n;
}

static int push_used_batch(vq_t *q, const uint32_t *elems, unsigned n) {
  if (q->error) return -q->error;
  for (unsigned i = 0; i < n; i++) if (elems[2 * i] >= q->size) return -20;
  for (unsigned i = 0; i < n; i++) {
    uint8_t *e = q->used + 4 + 8 * ((q->next_used + i) & (q->size - 1));
    memcpy(e, &elems[2 * i], 8);
  }
  q->next_used += n;
  /* §2.7.8.2 release + full barrier before reading used_event, like the AS atomics. */
  __atomic_store_n((uint16_t *)(q->used + 2), q->next_used, __ATOMIC_SEQ_CST);
  return (int)n;
}

static int needs_notification(vq_t *q) {
  uint16_t nu = q->next_used, old = q->signalled;
  if (nu == old) return 0;
  q->signalled = nu;
  if (q->event_idx) {
    uint16_t ev = __atomic_load_n((uint16_t *)(q->avail + 4 + 2 * q->size), __ATOMIC_SEQ_CST);
    return (uint16_t)(nu - ev - 1) < (uint16_t)(nu - old);
  }
  return !(__atomic_load_n((uint16_t *)q->avail, __ATOMIC_SEQ_CST) & 1);
}

static void setdesc(uint8_t *p, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
  memcpy(p, &addr, 8); memcpy(p + 8, &len, 4); memcpy(p + 12, &flags, 2); memcpy(p + 14, &next, 2);
}

int main(int argc, char **argv) {
  int indirect = argc > 1 && strcmp(argv[1], "indirect") == 0;
  long batches = argc > 2 ? atol(argv[2]) : 200000;
  const uint32_t size = 256;
  const uint64_t G = 0x40000000ull, GS = 8u << 20;
  uint8_t *ram = aligned_alloc(4096, GS);
  memset(ram, 0, GS);
  regions[0] = (region_t){G, GS, ram};
  nregions = 1;
  uint64_t desc = G, avail = G + 16 * size, used = G + 8192, ind = G + 16384, data = G + (1 << 20);
  vq_t q = {size, 1, 1, translate(desc, 16 * size), translate(avail, 6 + 2 * size), translate(used, 6 + 8 * size), 0, 0, 0, 0};
  uint32_t per_batch;
  if (!indirect) { /* 128 chains: 16-byte header (readable) + 4 KiB data (writable) */
    per_batch = 128;
    for (uint32_t c = 0; c < 128; c++) {
      setdesc(q.desc + 16 * (2 * c), data + c * 8192, 16, F_NEXT, 2 * c + 1);
      setdesc(q.desc + 16 * (2 * c + 1), data + c * 8192 + 4096, 4096, F_WRITE, 0);
    }
    for (uint32_t s = 0; s < size; s++) { uint16_t h = 2 * (s % 128); memcpy(q.avail + 4 + 2 * s, &h, 2); }
  } else { /* 256 chains: one indirect descriptor → header, 4 KiB data, status byte */
    per_batch = 256;
    for (uint32_t c = 0; c < 256; c++) {
      uint8_t *t = translate(ind + 48 * c, 48);
      setdesc(t, data + c * 8192, 16, F_NEXT, 1);
      setdesc(t + 16, data + c * 8192 + 4096, 4096, F_WRITE | F_NEXT, 2);
      setdesc(t + 32, data + c * 8192 + 16, 1, F_WRITE, 0);
      setdesc(q.desc + 16 * c, ind + 48 * c, 48, F_INDIRECT, 0);
      uint16_t h = c; memcpy(q.avail + 4 + 2 * c, &h, 2);
    }
  }
  chain_t *chains = malloc(sizeof(chain_t) * size);
  iov_t *iov = malloc(sizeof(iov_t) * 4 * size);
  uint32_t *elems = malloc(8 * size);
  uint16_t aidx = 0;
  long notifies = 0, total = 0;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long b = 0; b < batches; b++) {
    aidx += per_batch; /* driver: expose the (static) chains again */
    __atomic_store_n((uint16_t *)(q.avail + 2), aidx, __ATOMIC_RELEASE);
    int n = pop_batch(&q, chains, size, iov, 4 * size);
    if (n != (int)per_batch) { fprintf(stderr, "pop %d\n", n); return 1; }
    for (int i = 0; i < n; i++) { elems[2 * i] = chains[i].head; elems[2 * i + 1] = chains[i].wbytes; }
    push_used_batch(&q, elems, n);
    notifies += needs_notification(&q);
    total += n;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  printf("{\"chains_per_s\": %.0f, \"chains\": %ld, \"notifies\": %ld}\n", total / s, total, notifies);
  return 0;
}
