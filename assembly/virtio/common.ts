/*
 * assembly/virtio/common — what the split (index.ts) and packed (packed.ts)
 * virtqueues share: the error codes, the sticky-error store, the memory map
 * check and guest-physical translation, and the vring_need_event arithmetic.
 * ABI of all of it: the header of index.ts.
 */

export const MAX_REGIONS: u32 = 8;
// Both queue structs keep the sticky error at the same offsets.
export const Q_ERROR: usize = 56;
export const Q_ERROR_INFO: usize = 60;

// Error codes (mirrored in src/hot/virtqueue.ts). 1–5, 19–20 and 22–23
// concern set-up or host calls; 6–18 and 21 are hostile or broken guest rings.
// 21–23 are raised by the packed queue only (packed.ts).
export const VQ_ERR_NOT_READY: i32 = 1;
export const VQ_ERR_QUEUE_SIZE: i32 = 2;
export const VQ_ERR_RING_ALIGN: i32 = 3;
export const VQ_ERR_RING_ADDR: i32 = 4;
export const VQ_ERR_MEM_MAP: i32 = 5;
export const VQ_ERR_AVAIL_IDX_AHEAD: i32 = 6;
export const VQ_ERR_HEAD_RANGE: i32 = 7;
export const VQ_ERR_NEXT_RANGE: i32 = 8;
export const VQ_ERR_DESC_ADDR: i32 = 9;
export const VQ_ERR_LOOP: i32 = 10;
export const VQ_ERR_CHAIN_TOO_LONG: i32 = 11;
export const VQ_ERR_INDIRECT_NOT_NEGOTIATED: i32 = 12;
export const VQ_ERR_NESTED_INDIRECT: i32 = 13;
export const VQ_ERR_INDIRECT_WITH_NEXT: i32 = 14;
export const VQ_ERR_INDIRECT_LEN: i32 = 15;
export const VQ_ERR_INDIRECT_ADDR: i32 = 16;
export const VQ_ERR_WRITABLE_ORDER: i32 = 17;
export const VQ_ERR_CHAIN_BYTES: i32 = 18;
export const VQ_ERR_IOV_TOO_SMALL: i32 = 19;
export const VQ_ERR_USED_ID: i32 = 20;
export const VQ_ERR_CHAIN_NOT_AVAIL: i32 = 21;
export const VQ_ERR_USED_DESCS: i32 = 22;
export const VQ_ERR_RING_POS: i32 = 23;

/** Records a sticky guest error and returns it negated. */
export function fail(q: usize, code: i32, info: u32): i32 {
  store<u32>(q, <u32>code, Q_ERROR);
  store<u32>(q, info, Q_ERROR_INFO);
  return -code;
}

/** Bytes of this Memory (u64: 65536 pages do not fit u32). */
@inline export function memoryBytes(): u64 {
  return <u64>memory.size() << 16;
}

export function memMapCheck(mm: usize): i32 {
  if (<u64>mm + 8 + <u64>MAX_REGIONS * 24 > memoryBytes()) return -VQ_ERR_MEM_MAP;
  const count = load<u32>(mm);
  if (count == 0 || count > MAX_REGIONS) return -VQ_ERR_MEM_MAP;
  const limit = memoryBytes();
  for (let i: u32 = 0; i < count; i++) {
    const r = mm + 8 + i * 24;
    const gpa = load<u64>(r);
    const size = load<u64>(r, 8);
    const off = load<u32>(r, 16);
    if (size == 0 || gpa + size < gpa) return -VQ_ERR_MEM_MAP;
    if (<u64>off + size > limit) return -VQ_ERR_MEM_MAP;
  }
  return 0;
}

/**
 * Memory offset of guest-physical [gpa, gpa+len) if the whole range lies in
 * one region of the map, else -1. Written so no sum can overflow.
 */
@inline export function translate(mm: usize, gpa: u64, len: u64): i64 {
  const count = load<u32>(mm);
  for (let i: u32 = 0; i < count; i++) {
    const r = mm + 8 + i * 24;
    const start = load<u64>(r);
    const size = load<u64>(r, 8);
    // gpa < start wraps rel past 2^64 - start > size (mem_map_check:
    // start + size does not overflow), so rel <= size alone covers it.
    const rel = gpa - start;
    if (rel <= size && len <= size - rel) {
      return <i64>(<u64>load<u32>(r, 16) + rel);
    }
  }
  return -1;
}

/**
 * translate() with region 0 already in locals; the full walk (which tries
 * region 0 again, harmlessly) only on a miss — a bad address or a buffer in
 * another region.
 */
@inline export function translateFast(mm: usize, start: u64, size: u64, off: u64, gpa: u64, len: u64): i64 {
  // translate()'s two tests in one compare. The region lies in the Memory
  // (mem_map_check: off + size <= 2^32) and len < 2^32, so rel + len wraps
  // only when rel > 2^64 - 2^32 > size (gpa < start), and then max() keeps
  // rel, which fails the compare; otherwise max() is rel + len, and
  // rel + len <= size is rel <= size && len <= size - rel.
  const rel = gpa - start;
  if (max(rel + len, rel) <= size) return <i64>(off + rel);
  return translate(mm, gpa, len);
}

/**
 * vring_need_event from virtio_ring.h (§2.7.7.2 in 16-bit arithmetic): did
 * used_idx pass `event` when it moved from `old` to `new`? Wraps at 65536.
 */
@inline export function needEvent(event: u32, newIdx: u32, old: u32): bool {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - old) & 0xffff);
}

