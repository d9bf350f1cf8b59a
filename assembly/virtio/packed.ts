/*
 * assembly/virtio/packed — packed virtqueue, device side (virtio 1.2 §2.8).
 * Exported through index.ts (one module, one ABI header style); same rules:
 * pure functions over linear memory, no allocation, no static data, every
 * guest-written value checked before use, a malformed ring stores a sticky
 * error code (the device goes to NEEDS_RESET) until vqp_setup. Memory map,
 * iovec and error codes: index.ts header (codes 21–23 are packed-only).
 *
 * ───────────────────────── exported ABI ─────────────────────────
 * Queue struct QP, 80 bytes (same offsets as the split struct where the
 * meaning matches; w = host-written, m = module-written):
 *   +0  u32 size          w  queue size 1..32768 (§2.8: need not be a power of 2)
 *   +4  u32 features      w  low 32 feature bits; INDIRECT_DESC (28), EVENT_IDX (29)
 *   +8  u64 desc_gpa      w  Descriptor Area: the descriptor ring, 16*size, align 16
 *   +16 u64 driver_gpa    w  Driver Area: driver event suppression, 4 bytes, align 4
 *   +24 u64 device_gpa    w  Device Area: device event suppression, 4 bytes, align 4
 *   +32 u32 mem_map       w  off of MM
 *   +36 u32 desc_off      m  translated by vqp_setup
 *   +40 u32 driver_off    m
 *   +44 u32 device_off    m
 *   +48 u32 next_avail    w/m  ring position of the next descriptor to pop, bit 15 the
 *                              Driver Ring Wrap Counter it must carry (off_wrap encoding;
 *                              0x8000 on a fresh activation: position 0, counter 1)
 *   +52 u32 next_used     w/m  ring position of the next used descriptor, bit 15 the
 *                              Device Ring Wrap Counter (0x8000 fresh)
 *   +56 u32 error         m  0, or the sticky VQ_ERR_* code
 *   +60 u32 error_info    m  ring position / table entry that failed
 *   +64 u32 ready         m  1 after a successful vqp_setup
 *   +68 u32 unsignalled   m  ring positions the used side advanced since
 *                            vqp_needs_notification last ran (saturates at size)
 *   +72 u32, +76 u32      m  vqp_push_used's element (token, len), so the
 *                            single push shares the batch code
 *
 * Chain record (vqp_pop_batch output): the split record, 24 bytes, with
 * word +0 split in two halves:
 *   +0 u16 buffer id (from the chain's last ring descriptor, §2.8.6)
 *   +2 u16 ring_descs: descriptors the chain took in the ring (1..size; 0x8000
 *      for 32768), which the used side must skip when the chain is completed
 *   +4 u32 iov_first  +8 u32 n_readable  +12 u32 n_writable
 *   +16 u32 readable_bytes  +20 u32 writable_bytes
 * Used element input (vqp_push_used_batch), 8 bytes: +0 u32 token (the
 * record's word +0: id | ring_descs << 16), +4 u32 len.
 *
 * vqp_setup(q) → 0 | -VQ_ERR_*
 * vqp_avail_pending(q) → 1 if a chain head is available at next_avail, else 0
 *     (packed rings keep no count) | -VQ_ERR_*
 * vqp_pop_batch(q, chains, max_chains, iov, max_iov) → chains popped | -VQ_ERR_*
 * vqp_push_used(q, token, len) → 1 | -VQ_ERR_*
 * vqp_push_used_batch(q, elems, n) → n | -VQ_ERR_*
 * vqp_push_used_chains(q, chains, n, lens) → n | -VQ_ERR_*  (as vq_push_used_chains)
 * vqp_needs_notification(q) → 1 | 0            (§2.8.10, driver event suppression)
 * vqp_enable_notification(q) → 1 if a chain is already available, else 0
 * vqp_disable_notification(q) → 0
 *
 * Device-side choices where §2.8 leaves room (a Linux driver meets all):
 * - A chain's non-head descriptors must carry the wrap counter's AVAIL/USED
 *   bits too (§2.8.1 marks every descriptor made available so; Linux writes
 *   them, the head last): a NEXT into a descriptor that is not available is
 *   VQ_ERR_CHAIN_NOT_AVAIL, not a read of stale ring contents.
 * - A chain holds at most Queue Size buffers, indirect or not (as split):
 *   more is VQ_ERR_CHAIN_TOO_LONG. A ring chain can take at most Queue Size
 *   descriptors anyway (past that it would reach its own head).
 * - Indirect (§2.8.19): one INDIRECT descriptor ends the ring chain (a direct
 *   prefix before it is accepted, as in split); INDIRECT with NEXT is
 *   VQ_ERR_INDIRECT_WITH_NEXT. Table entries are read in order, len/16 of
 *   them; their NEXT is ignored (only WRITE is valid there) and an INDIRECT
 *   one is refused as VQ_ERR_NESTED_INDIRECT rather than ignored.
 * - Used descriptors: id, len, flags AVAIL|USED = the Device Ring Wrap
 *   Counter at their position; a batch is published by writing its first
 *   descriptor's flags last (atomic store), so the driver sees all or none.
 * - Pushing more ring descriptors than are popped and not yet used is a host
 *   error (VQ_ERR_USED_DESCS, not sticky) and publishes nothing.
 */
import {
  Q_ERROR, Q_ERROR_INFO, fail, memMapCheck, needEvent, translate, translateFast,
  VQ_ERR_NOT_READY, VQ_ERR_QUEUE_SIZE, VQ_ERR_RING_ALIGN, VQ_ERR_RING_ADDR, VQ_ERR_MEM_MAP,
  VQ_ERR_DESC_ADDR, VQ_ERR_CHAIN_TOO_LONG, VQ_ERR_INDIRECT_NOT_NEGOTIATED, VQ_ERR_NESTED_INDIRECT,
  VQ_ERR_INDIRECT_WITH_NEXT, VQ_ERR_INDIRECT_LEN, VQ_ERR_INDIRECT_ADDR, VQ_ERR_WRITABLE_ORDER,
  VQ_ERR_CHAIN_BYTES, VQ_ERR_IOV_TOO_SMALL, VQ_ERR_CHAIN_NOT_AVAIL, VQ_ERR_USED_DESCS, VQ_ERR_RING_POS,
} from './common';

// §2.8.4 / §2.8.5 descriptor flags (the packed descriptor: le64 addr, le32
// len, le16 id, le16 flags — flags at +14, unlike split).
const DESC_F_NEXT: u32 = 1;
const DESC_F_WRITE: u32 = 2;
const DESC_F_INDIRECT: u32 = 4;
const DESC_F_AVAIL: u32 = 1 << 7;
const DESC_F_USED: u32 = 1 << 15;
// §2.8.10 struct pvirtq_event_suppress { le16 off_wrap; le16 flags; }
const EVENT_F_ENABLE: u32 = 0;
const EVENT_F_DISABLE: u32 = 1;
const EVENT_F_DESC: u32 = 2;
const VIRTIO_F_INDIRECT_DESC: u32 = 28;
const VIRTIO_F_EVENT_IDX: u32 = 29;
const MAX_QUEUE_SIZE: u32 = 32768;

const Q_SIZE: usize = 0;
const Q_FEATURES: usize = 4;
const Q_DESC_GPA: usize = 8;
const Q_DRIVER_GPA: usize = 16;
const Q_DEVICE_GPA: usize = 24;
const Q_MEM_MAP: usize = 32;
const Q_DESC: usize = 36;
const Q_DRIVER: usize = 40;
const Q_DEVICE: usize = 44;
const Q_NEXT_AVAIL: usize = 48;
const Q_NEXT_USED: usize = 52;
const Q_READY: usize = 64;
const Q_UNSIGNALLED: usize = 68;

/** §2.8.1: available iff AVAIL == wrap counter and USED != it. */
@inline function isAvail(flags: u32, wrap: u32): bool {
  // wrap is 0 or 1: want AVAIL bit = wrap, USED bit = !wrap.
  return (flags & (DESC_F_AVAIL | DESC_F_USED)) == (wrap != 0 ? DESC_F_AVAIL : DESC_F_USED);
}

export function vqp_setup(q: usize): i32 {
  store<u32>(q, 0, Q_READY);
  store<u32>(q, 0, Q_ERROR);
  store<u32>(q, 0, Q_ERROR_INFO);
  const size = load<u32>(q, Q_SIZE);
  if (size == 0 || size > MAX_QUEUE_SIZE) return fail(q, VQ_ERR_QUEUE_SIZE, size);
  const mm = load<u32>(q, Q_MEM_MAP);
  if (memMapCheck(mm) != 0) return fail(q, VQ_ERR_MEM_MAP, 0);
  const descGpa = load<u64>(q, Q_DESC_GPA);
  const driverGpa = load<u64>(q, Q_DRIVER_GPA);
  const deviceGpa = load<u64>(q, Q_DEVICE_GPA);
  // §2.8.10.1 (table): alignment 16, 4, 4; sizes 16*Q, 4, 4.
  if ((descGpa & 15) != 0) return fail(q, VQ_ERR_RING_ALIGN, 0);
  if ((driverGpa & 3) != 0) return fail(q, VQ_ERR_RING_ALIGN, 1);
  if ((deviceGpa & 3) != 0) return fail(q, VQ_ERR_RING_ALIGN, 2);
  const desc = translate(mm, descGpa, <u64>size * 16);
  if (desc < 0) return fail(q, VQ_ERR_RING_ADDR, 0);
  const driver = translate(mm, driverGpa, 4);
  if (driver < 0) return fail(q, VQ_ERR_RING_ADDR, 1);
  const device = translate(mm, deviceGpa, 4);
  if (device < 0) return fail(q, VQ_ERR_RING_ADDR, 2);
  // Host-written positions (restore): each below size, with its wrap bit.
  const na = load<u32>(q, Q_NEXT_AVAIL);
  const nu = load<u32>(q, Q_NEXT_USED);
  if (na > 0xffff || (na & 0x7fff) >= size) return fail(q, VQ_ERR_RING_POS, na);
  if (nu > 0xffff || (nu & 0x7fff) >= size) return fail(q, VQ_ERR_RING_POS, nu);
  store<u32>(q, <u32>desc, Q_DESC);
  store<u32>(q, <u32>driver, Q_DRIVER);
  store<u32>(q, <u32>device, Q_DEVICE);
  store<u32>(q, 0, Q_UNSIGNALLED);
  store<u32>(q, 1, Q_READY);
  return 0;
}

@inline function status(q: usize): i32 {
  const err = load<u32>(q, Q_ERROR);
  if (err != 0) return -<i32>err;
  if (load<u32>(q, Q_READY) == 0) return -VQ_ERR_NOT_READY;
  return 0;
}

export function vqp_avail_pending(q: usize): i32 {
  const s = status(q);
  if (s != 0) return s;
  const na = load<u32>(q, Q_NEXT_AVAIL);
  const d = <usize>load<u32>(q, Q_DESC) + (<usize>(na & 0x7fff) << 4);
  return isAvail(<u32>atomic.load<u16>(d, 14), na >> 15) ? 1 : 0;
}

/**
 * Pops up to max_chains chains, each validated whole before it is reported;
 * a chain that does not fit the remaining iov capacity ends the batch
 * unconsumed (its later descriptors are not read until the next call).
 */
export function vqp_pop_batch(q: usize, chains: usize, maxChains: u32, iov: usize, maxIov: u32): i32 {
  const s = status(q);
  if (s != 0) return s;
  const size = load<u32>(q, Q_SIZE);
  const indirectOk = (load<u32>(q, Q_FEATURES) >> VIRTIO_F_INDIRECT_DESC) & 1;
  const ring = <usize>load<u32>(q, Q_DESC);
  const mm = <usize>load<u32>(q, Q_MEM_MAP);
  const r0start = load<u64>(mm, 8);
  const r0size = load<u64>(mm, 16);
  const r0off = <u64>load<u32>(mm, 24);
  const na = load<u32>(q, Q_NEXT_AVAIL);
  let pos = na & 0x7fff;
  let wrap = na >> 15;
  let n: u32 = 0;
  let iovUsed: u32 = 0;
  while (n < maxChains) {
    // Acquire: the head's flags are written last by the driver (§2.8.21).
    if (!isAvail(<u32>atomic.load<u16>(ring + (<usize>pos << 4), 14), wrap)) break;
    const headPos = pos;
    let p = pos;
    let w = wrap;
    let nd: u32 = 0; // ring descriptors taken
    let nw: u32 = 0;
    let rbytes: u64 = 0;
    let wbytes: u64 = 0;
    let io = iovUsed;
    let full = false;
    let id: u32 = 0;
    while (true) {
      const cur = p;
      const d = ring + (<usize>p << 4);
      const flags = nd == 0 ? <u32>load<u16>(d, 14) : <u32>atomic.load<u16>(d, 14);
      if (nd != 0 && !isAvail(flags, w)) return fail(q, VQ_ERR_CHAIN_NOT_AVAIL, p);
      nd++;
      if (++p == size) { p = 0; w ^= 1; }
      if (flags & DESC_F_INDIRECT) {
        // §2.8.19: only if negotiated, never with NEXT; the table is len/16
        // entries read in order.
        if (!indirectOk) return fail(q, VQ_ERR_INDIRECT_NOT_NEGOTIATED, headPos);
        if (flags & DESC_F_NEXT) return fail(q, VQ_ERR_INDIRECT_WITH_NEXT, headPos);
        const tlen = load<u32>(d, 8);
        if (tlen == 0 || (tlen & 15) != 0) return fail(q, VQ_ERR_INDIRECT_LEN, headPos);
        const tsize = tlen >> 4;
        if (io - iovUsed + tsize > size) return fail(q, VQ_ERR_CHAIN_TOO_LONG, headPos);
        if (io + tsize > maxIov) { full = true; break; }
        const t = translateFast(mm, r0start, r0size, r0off, load<u64>(d), <u64>tlen);
        if (t < 0) return fail(q, VQ_ERR_INDIRECT_ADDR, headPos);
        id = <u32>load<u16>(d, 12);
        for (let k: u32 = 0; k < tsize; k++) {
          const e = <usize>t + (<usize>k << 4);
          const eflags = <u32>load<u16>(e, 14);
          if (eflags & DESC_F_INDIRECT) return fail(q, VQ_ERR_NESTED_INDIRECT, k);
          const len = load<u32>(e, 8);
          const off = translateFast(mm, r0start, r0size, r0off, load<u64>(e), <u64>len);
          if (off < 0) return fail(q, VQ_ERR_DESC_ADDR, k);
          if (eflags & DESC_F_WRITE) {
            nw++;
            wbytes += len;
          } else {
            if (nw != 0) return fail(q, VQ_ERR_WRITABLE_ORDER, k);
            rbytes += len;
          }
          store<u64>(iov + (<usize>io << 3), <u64>off | (<u64>len << 32));
          io++;
        }
        break;
      }
      // Direct descriptors each take an iov slot, so io - iovUsed < nd <=
      // size here: the ring bound below also bounds the buffers.
      if (io >= maxIov) {
        full = true;
        break;
      }
      const len = load<u32>(d, 8);
      const off = translateFast(mm, r0start, r0size, r0off, load<u64>(d), <u64>len);
      if (off < 0) return fail(q, VQ_ERR_DESC_ADDR, cur);
      if (flags & DESC_F_WRITE) {
        nw++;
        wbytes += len;
      } else {
        if (nw != 0) return fail(q, VQ_ERR_WRITABLE_ORDER, cur);
        rbytes += len;
      }
      store<u64>(iov + (<usize>io << 3), <u64>off | (<u64>len << 32));
      io++;
      if ((flags & DESC_F_NEXT) == 0) {
        id = <u32>load<u16>(d, 12); // §2.8.6: the buffer id is in the last descriptor
        break;
      }
      // A ring chain of Queue Size descriptors is the whole ring; one more
      // would be its own head again.
      if (nd == size) return fail(q, VQ_ERR_CHAIN_TOO_LONG, headPos);
    }
    if (full) {
      if (n == 0) return -VQ_ERR_IOV_TOO_SMALL; // host error: not sticky
      break;
    }
    if ((rbytes | wbytes) > 0xffffffff || rbytes + wbytes > 0x100000000) {
      return fail(q, VQ_ERR_CHAIN_BYTES, headPos);
    }
    const nbuf = io - iovUsed;
    const c = chains + <usize>n * 24;
    store<u64>(c, <u64>(id | (nd << 16)) | (<u64>iovUsed << 32));
    store<u64>(c, <u64>(nbuf - nw) | (<u64>nw << 32), 8);
    store<u64>(c, rbytes | (wbytes << 32), 16);
    iovUsed = io;
    pos = p;
    wrap = w;
    n++;
  }
  store<u32>(q, pos | (wrap << 15), Q_NEXT_AVAIL);
  return <i32>n;
}

/** Ring descriptors popped and not yet returned as used. */
@inline function inFlight(q: usize, size: u32): u32 {
  const na = load<u32>(q, Q_NEXT_AVAIL);
  const nu = load<u32>(q, Q_NEXT_USED);
  const a = na & 0x7fff;
  const u = nu & 0x7fff;
  return (na >> 15) == (nu >> 15) ? a - u : a + size - u;
}

/**
 * Writes `count` used descriptors (token i at tokens + i*stride, len from
 * lens + i*4, or from the token's chain record +20 when lenFromRecord) and
 * publishes them with the first one's flags last. Validates first.
 */
@inline function pushUsed(q: usize, tokens: usize, stride: usize, lens: usize, lenStride: usize, count: u32): i32 {
  const s = status(q);
  if (s != 0) return s;
  if (count == 0) return 0;
  const size = load<u32>(q, Q_SIZE);
  let left = inFlight(q, size);
  for (let i: u32 = 0; i < count; i++) {
    const nd = load<u32>(tokens + <usize>i * stride) >>> 16;
    if (nd == 0 || nd > left) return -VQ_ERR_USED_DESCS;
    left -= nd;
  }
  const ring = <usize>load<u32>(q, Q_DESC);
  const nu = load<u32>(q, Q_NEXT_USED);
  let p = nu & 0x7fff;
  let w = nu >> 15;
  const first = ring + (<usize>p << 4);
  const firstFlags = w != 0 ? DESC_F_AVAIL | DESC_F_USED : 0;
  let moved: u32 = 0;
  for (let i: u32 = 0; i < count; i++) {
    const tok = load<u32>(tokens + <usize>i * stride);
    const nd = tok >>> 16;
    const d = ring + (<usize>p << 4);
    // §2.8.22: id and len, then flags; addr is unused in a used descriptor.
    store<u32>(d, load<u32>(lens + <usize>i * lenStride), 8);
    store<u16>(d, <u16>tok, 12);
    if (i != 0) store<u16>(d, <u16>(w != 0 ? DESC_F_AVAIL | DESC_F_USED : 0), 14);
    moved += nd;
    p += nd;
    if (p >= size) { p -= size; w ^= 1; }
  }
  // Release: every store above is visible before the first flags flip.
  atomic.store<u16>(first, <u16>firstFlags, 14);
  store<u32>(q, p | (w << 15), Q_NEXT_USED);
  store<u32>(q, min(size, load<u32>(q, Q_UNSIGNALLED) + moved), Q_UNSIGNALLED);
  return <i32>count;
}

export function vqp_push_used(q: usize, token: u32, len: u32): i32 {
  store<u32>(q, token, 72);
  store<u32>(q, len, 76);
  const r = pushUsed(q, q + 72, 8, q + 76, 4, 1);
  return r < 0 ? r : 1;
}

export function vqp_push_used_batch(q: usize, elems: usize, count: u32): i32 {
  return pushUsed(q, elems, 8, elems + 4, 8, count);
}

export function vqp_push_used_chains(q: usize, chains: usize, count: u32, lens: usize): i32 {
  if (lens == 0) return pushUsed(q, chains, 24, chains + 20, 24, count);
  return pushUsed(q, chains, 24, lens, 4, count);
}

/**
 * §2.8.10: whether the caller must send a used buffer notification for the
 * used descriptors written since the last call. Driver event suppression:
 * DISABLE → no; ENABLE → yes; DESC (EVENT_IDX only) → yes when the used
 * side passed off_wrap (position + wrap counter), as vring_need_event does
 * in ring positions, the event moved one lap back when its wrap bit differs.
 */
export function vqp_needs_notification(q: usize): i32 {
  if (load<u32>(q, Q_READY) == 0 || load<u32>(q, Q_ERROR) != 0) return 0;
  const moved = load<u32>(q, Q_UNSIGNALLED);
  if (moved == 0) return 0;
  store<u32>(q, 0, Q_UNSIGNALLED);
  const size = load<u32>(q, Q_SIZE);
  const drv = <usize>load<u32>(q, Q_DRIVER);
  // Atomic: ordered after the used flags store (the driver's re-arm race).
  const flags = <u32>atomic.load<u16>(drv, 2) & 3;
  if (flags == EVENT_F_DISABLE) return 0;
  if (flags != EVENT_F_DESC || ((load<u32>(q, Q_FEATURES) >> VIRTIO_F_EVENT_IDX) & 1) == 0) {
    return 1; // ENABLE (or DESC without EVENT_IDX, reserved: notify)
  }
  // More than a lap since the last call: the event cannot be placed; notify.
  if (moved >= size) return 1;
  const offWrap = <u32>atomic.load<u16>(drv);
  const nu = load<u32>(q, Q_NEXT_USED);
  const newPos = nu & 0x7fff;
  let event = offWrap & 0x7fff;
  if ((offWrap >> 15) != (nu >> 15)) event -= size;
  return needEvent(event & 0xffff, newPos, (newPos - moved) & 0xffff) ? 1 : 0;
}

/**
 * Asks the driver for available buffer notifications again (§2.8.10):
 * with EVENT_IDX, off_wrap = next_avail and flags DESC, else flags ENABLE.
 * Returns 1 if a chain is already available (pop again instead of sleeping).
 */
export function vqp_enable_notification(q: usize): i32 {
  if (load<u32>(q, Q_READY) == 0 || load<u32>(q, Q_ERROR) != 0) return 0;
  const dev = <usize>load<u32>(q, Q_DEVICE);
  const na = load<u32>(q, Q_NEXT_AVAIL);
  if ((load<u32>(q, Q_FEATURES) >> VIRTIO_F_EVENT_IDX) & 1) {
    atomic.store<u16>(dev, <u16>na);
    atomic.store<u16>(dev, <u16>EVENT_F_DESC, 2);
  } else {
    atomic.store<u16>(dev, <u16>EVENT_F_ENABLE, 2);
  }
  // Seq-cst store then load: the full barrier against a driver that made
  // a chain available before it saw the new flags.
  const d = <usize>load<u32>(q, Q_DESC) + (<usize>(na & 0x7fff) << 4);
  return isAvail(<u32>atomic.load<u16>(d, 14), na >> 15) ? 1 : 0;
}

export function vqp_disable_notification(q: usize): i32 {
  if (load<u32>(q, Q_READY) == 0) return 0;
  atomic.store<u16>(<usize>load<u32>(q, Q_DEVICE), <u16>EVENT_F_DISABLE, 2);
  return 0;
}
