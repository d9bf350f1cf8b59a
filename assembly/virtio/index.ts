/*
 * assembly/virtio — split virtqueue, device side (virtio 1.2 §2.7).
 *
 * Pure functions over linear memory: the queue receives guest memory (as a
 * memory map) and never signals the guest itself — needs_notification returns
 * a bool and the caller raises the interrupt. No allocation, no static data
 * (the Memory is shared by every hot module; see src/hot/loader.ts).
 *
 * Guest input is hostile (ARCHITECTURE.md decision 2): every index, address
 * and length read from guest memory is checked here before use. A malformed
 * queue or chain stores a sticky error code in the queue struct (the device
 * goes to NEEDS_RESET) and every later call returns it, until vq_setup.
 *
 * ───────────────────────── exported ABI ─────────────────────────
 * All integers little-endian; "off" = byte offset in the WebAssembly.Memory.
 *
 * Memory map MM (host-written, ≤ 8 regions of guest RAM):
 *   +0  u32 count
 *   +8  + 24*i: u64 gpa, u64 size, u32 off, u32 pad
 *
 * Queue struct Q (host-written fields marked w, module-written m), 80 bytes:
 *   +0  u32 size          w  queue size: power of two, 1..32768
 *   +4  u32 features      w  low 32 feature bits; only VIRTIO_F_INDIRECT_DESC
 *                            (28) and VIRTIO_F_EVENT_IDX (29) are read
 *   +8  u64 desc_gpa      w  Descriptor Area
 *   +16 u64 avail_gpa     w  Driver Area (avail_ring)
 *   +24 u64 used_gpa      w  Device Area (used_ring)
 *   +32 u32 mem_map       w  off of MM
 *   +36 u32 desc_off      m  translated by vq_setup
 *   +40 u32 avail_off     m
 *   +44 u32 used_off      m
 *   +48 u32 last_avail_idx w/m  next avail_ring slot to consume (u16, free-running)
 *   +52 u32 next_used_idx  w/m  shadow of used_idx (u16, free-running)
 *   +56 u32 error         m  0, or the sticky VQ_ERR_* code
 *   +60 u32 error_info    m  descriptor index / avail idx that failed
 *   +64 u32 ready         m  1 after a successful vq_setup
 *   +68 u32 signalled_used m used_idx when needs_notification last ran
 *
 * Chain record (vq_pop_batch output), 24 bytes:
 *   +0 u32 head  +4 u32 iov_first  +8 u32 n_readable  +12 u32 n_writable
 *   +16 u32 readable_bytes  +20 u32 writable_bytes
 *   Its iovecs are iov[iov_first .. iov_first+n_readable+n_writable), the
 *   device-readable ones first (§2.7.4.2 makes the driver order them so).
 * Iovec, 8 bytes: +0 u32 off (inside the Memory), +4 u32 len.
 * Used element input (vq_push_used_batch), 8 bytes: +0 u32 id, +4 u32 len.
 *
 * vq_setup(q) → 0 | -VQ_ERR_*           validate + translate the three areas
 * vq_pop_batch(q, chains, max_chains, iov, max_iov) → chains popped | -VQ_ERR_*
 * vq_avail_pending(q) → chains available | -VQ_ERR_*
 * vq_push_used(q, id, len) → 1 | -VQ_ERR_*
 * vq_push_used_batch(q, elems, n) → n | -VQ_ERR_*
 * vq_push_used_chains(q, chains, n, lens) → n | -VQ_ERR_*
 *     pushes the first n chain records of a pop (chains as vq_pop_batch
 *     wrote them) with len = lens[i] (u32 array), or with each chain's
 *     writable_bytes when lens is 0: the whole "complete this kick" step in
 *     one call, no per-chain copy into used elements on the host side.
 * vq_needs_notification(q) → 1 | 0
 * vq_enable_notification(q) → 1 if more chains are already available, else 0
 * vq_disable_notification(q) → 0
 * vring_need_event(event, new, old) → 1 | 0   (the §2.7.7 / virtio_ring.h arithmetic)
 * mem_translate(mm, gpa, len) → off | -1     (u64 gpa/len; BigInt from JS)
 * mem_map_check(mm) → 0 | -VQ_ERR_MEM_MAP
 *
 * The packed virtqueue (§2.8: vqp_*) lives in packed.ts, its ABI in that
 * file's header; helpers and error codes both share are in common.ts.
 */

import {
  Q_ERROR, Q_ERROR_INFO, fail, memMapCheck, needEvent, translate, translateFast,
  VQ_ERR_NOT_READY, VQ_ERR_QUEUE_SIZE, VQ_ERR_RING_ALIGN, VQ_ERR_RING_ADDR, VQ_ERR_MEM_MAP,
  VQ_ERR_AVAIL_IDX_AHEAD, VQ_ERR_HEAD_RANGE, VQ_ERR_NEXT_RANGE, VQ_ERR_DESC_ADDR, VQ_ERR_LOOP,
  VQ_ERR_CHAIN_TOO_LONG, VQ_ERR_INDIRECT_NOT_NEGOTIATED, VQ_ERR_NESTED_INDIRECT,
  VQ_ERR_INDIRECT_WITH_NEXT, VQ_ERR_INDIRECT_LEN, VQ_ERR_INDIRECT_ADDR, VQ_ERR_WRITABLE_ORDER,
  VQ_ERR_CHAIN_BYTES, VQ_ERR_IOV_TOO_SMALL, VQ_ERR_USED_ID,
} from './common';
export {
  vqp_setup, vqp_avail_pending, vqp_pop_batch, vqp_push_used, vqp_push_used_batch,
  vqp_push_used_chains, vqp_needs_notification, vqp_enable_notification, vqp_disable_notification,
} from './packed';

// §2.7.5 The Virtqueue Descriptor Table
const VIRTQ_DESC_F_NEXT: u32 = 1;
const VIRTQ_DESC_F_WRITE: u32 = 2;
const VIRTQ_DESC_F_INDIRECT: u32 = 4;
// §2.7.6 The Virtqueue Available Ring / §2.7.8 The Virtqueue Used Ring
const VIRTQ_AVAIL_F_NO_INTERRUPT: u32 = 1;
const VIRTQ_USED_F_NO_NOTIFY: u32 = 1;
// §6 Reserved Feature Bits
const VIRTIO_F_INDIRECT_DESC: u32 = 28;
const VIRTIO_F_EVENT_IDX: u32 = 29;

const MAX_QUEUE_SIZE: u32 = 32768;

// Queue struct fields.
const Q_SIZE: usize = 0;
const Q_FEATURES: usize = 4;
const Q_DESC_GPA: usize = 8;
const Q_AVAIL_GPA: usize = 16;
const Q_USED_GPA: usize = 24;
const Q_MEM_MAP: usize = 32;
const Q_DESC: usize = 36;
const Q_AVAIL: usize = 40;
const Q_USED: usize = 44;
const Q_LAST_AVAIL: usize = 48;
const Q_NEXT_USED: usize = 52;
const Q_READY: usize = 64;
const Q_SIGNALLED_USED: usize = 68;

export function mem_map_check(mm: usize): i32 {
  return memMapCheck(mm);
}

export function mem_translate(mm: usize, gpa: u64, len: u64): i64 {
  if (mem_map_check(mm) != 0) return -1;
  return translate(mm, gpa, len);
}

/**
 * Validates the queue the driver configured and translates its three areas.
 * Resets error state; keeps last_avail_idx / next_used_idx as the host wrote
 * them (0 on a fresh activation, saved values on restore).
 */
export function vq_setup(q: usize): i32 {
  store<u32>(q, 0, Q_READY);
  store<u32>(q, 0, Q_ERROR);
  store<u32>(q, 0, Q_ERROR_INFO);
  const size = load<u32>(q, Q_SIZE);
  // §2.7: Queue Size is always a power of 2; the maximum is 32768.
  if (size == 0 || size > MAX_QUEUE_SIZE || (size & (size - 1)) != 0) return fail(q, VQ_ERR_QUEUE_SIZE, size);
  const mm = load<u32>(q, Q_MEM_MAP);
  if (mem_map_check(mm) != 0) return fail(q, VQ_ERR_MEM_MAP, 0);
  const descGpa = load<u64>(q, Q_DESC_GPA);
  const availGpa = load<u64>(q, Q_AVAIL_GPA);
  const usedGpa = load<u64>(q, Q_USED_GPA);
  // §2.7.1: areas aligned to 16, 2 and 4 bytes.
  if ((descGpa & 15) != 0) return fail(q, VQ_ERR_RING_ALIGN, 0);
  if ((availGpa & 1) != 0) return fail(q, VQ_ERR_RING_ALIGN, 1);
  if ((usedGpa & 3) != 0) return fail(q, VQ_ERR_RING_ALIGN, 2);
  // §2.7 table: sizes 16*Q, 6+2*Q, 6+8*Q (the trailing u16 is used_event /
  // avail_event, present whether or not EVENT_IDX is negotiated).
  const desc = translate(mm, descGpa, <u64>size * 16);
  if (desc < 0) return fail(q, VQ_ERR_RING_ADDR, 0);
  const avail = translate(mm, availGpa, 6 + <u64>size * 2);
  if (avail < 0) return fail(q, VQ_ERR_RING_ADDR, 1);
  const used = translate(mm, usedGpa, 6 + <u64>size * 8);
  if (used < 0) return fail(q, VQ_ERR_RING_ADDR, 2);
  store<u32>(q, <u32>desc, Q_DESC);
  store<u32>(q, <u32>avail, Q_AVAIL);
  store<u32>(q, <u32>used, Q_USED);
  const lastAvail = load<u32>(q, Q_LAST_AVAIL) & 0xffff;
  const nextUsed = load<u32>(q, Q_NEXT_USED) & 0xffff;
  store<u32>(q, lastAvail, Q_LAST_AVAIL);
  store<u32>(q, nextUsed, Q_NEXT_USED);
  store<u32>(q, nextUsed, Q_SIGNALLED_USED);
  store<u32>(q, 1, Q_READY);
  return 0;
}

/** Chains the driver has made available and we have not popped. */
export function vq_avail_pending(q: usize): i32 {
  const err = load<u32>(q, Q_ERROR);
  if (err != 0) return -<i32>err;
  if (load<u32>(q, Q_READY) == 0) return -VQ_ERR_NOT_READY;
  const size = load<u32>(q, Q_SIZE);
  const availIdx = <u32>atomic.load<u16>(load<u32>(q, Q_AVAIL), 2);
  const pending = (availIdx - load<u32>(q, Q_LAST_AVAIL)) & 0xffff;
  // The ring holds at most Queue Size entries (§2.7.13: the 16-bit idx can
  // always tell full from empty); more means a broken or hostile driver.
  if (pending > size) return fail(q, VQ_ERR_AVAIL_IDX_AHEAD, availIdx);
  return <i32>pending;
}

/**
 * Pops up to max_chains available chains. Each chain is fully validated
 * before any of it is reported; a chain that does not fit the remaining iov
 * capacity ends the batch unconsumed (it is popped by the next call).
 *
 * The walk is split in two loops — the descriptor table, then (at most one)
 * indirect table — so the common direct path carries no indirect-state tests.
 * Same checks as one loop would make: in the descriptor table a chain
 * cannot hold more buffers than descriptors visited, so the loop check
 * (visited > Queue Size) also bounds its length; in an indirect table both
 * the table's own loop check and the whole chain's length are tested. A
 * chain that does not fit the iov table is left before its next descriptor
 * is read, so errors past that point surface when it is popped again.
 */
export function vq_pop_batch(q: usize, chains: usize, maxChains: u32, iov: usize, maxIov: u32): i32 {
  const pend = vq_avail_pending(q);
  if (pend <= 0) return pend;
  const size = load<u32>(q, Q_SIZE);
  const mask = size - 1;
  const indirectOk = (load<u32>(q, Q_FEATURES) >> VIRTIO_F_INDIRECT_DESC) & 1;
  const descBase = <usize>load<u32>(q, Q_DESC);
  const ring = <usize>load<u32>(q, Q_AVAIL) + 4;
  const mm = <usize>load<u32>(q, Q_MEM_MAP);
  const last = load<u32>(q, Q_LAST_AVAIL);
  const limit = min(<u32>pend, maxChains);
  // Region 0 in locals: nearly every buffer lives there (one check, no loop).
  const r0start = load<u64>(mm, 8);
  const r0size = load<u64>(mm, 16);
  const r0off = <u64>load<u32>(mm, 24);
  let n: u32 = 0;
  let iovUsed: u32 = 0;
  while (n < limit) {
    const head = <u32>load<u16>(ring + (((last + n) & mask) << 1));
    if (head >= size) return fail(q, VQ_ERR_HEAD_RANGE, head);
    let idx = head;
    let nw: u32 = 0;
    let rbytes: u64 = 0;
    let wbytes: u64 = 0;
    let pos = iovUsed;
    let full = false;
    let indirect = false;
    // ── the descriptor table ──
    // Every descriptor visited here but an indirect one (which ends the
    // walk) took an iov slot, so pos - iovUsed counts the visits: one
    // bound test per descriptor covers loops and iov capacity at once.
    const lim = min(maxIov, iovUsed + size);
    while (true) {
      if (idx >= size) return fail(q, VQ_ERR_NEXT_RANGE, idx);
      if (pos >= lim) {
        // A chain that visits more descriptors than the table holds
        // revisits one: §2.7.5.2 forbids loops.
        if (pos - iovUsed >= size) return fail(q, VQ_ERR_LOOP, head);
        full = true; // does not fit the iov table: stays for the next call
        break;
      }
      // Nothing read here stays live past the loop (the indirect path
      // below reads its descriptor again, and checks what it reads): V8's
      // register allocator spilled such values to the stack at every visit.
      const d = descBase + (<usize>idx << 4);
      const addr = load<u64>(d);
      const flags = <u32>load<u16>(d, 12);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        indirect = true;
        break;
      }
      const len = load<u32>(d, 8);
      const off = translateFast(mm, r0start, r0size, r0off, addr, <u64>len);
      if (off < 0) return fail(q, VQ_ERR_DESC_ADDR, idx);
      if (flags & VIRTQ_DESC_F_WRITE) {
        nw++;
        wbytes += len;
      } else {
        if (nw != 0) return fail(q, VQ_ERR_WRITABLE_ORDER, idx);
        rbytes += len;
      }
      store<u64>(iov + (<usize>pos << 3), <u64>off | (<u64>len << 32));
      pos++;
      if ((flags & VIRTQ_DESC_F_NEXT) == 0) break;
      idx = <u32>load<u16>(d, 14);
    }
    if (indirect) {
      // ── an indirect table (§2.7.5.3.1): only if negotiated, never with
      // NEXT, never nested. §2.7.5.3.2: the device ignores WRITE here.
      const id = descBase + (<usize>idx << 4);
      if (!indirectOk) return fail(q, VQ_ERR_INDIRECT_NOT_NEGOTIATED, idx);
      if (load<u16>(id, 12) & VIRTQ_DESC_F_NEXT) return fail(q, VQ_ERR_INDIRECT_WITH_NEXT, idx);
      const addr = load<u64>(id);
      const tlen = load<u32>(id, 8);
      // struct indirect_descriptor_table { struct virtq_desc desc[len / 16]; }
      if (tlen == 0 || (tlen & 15) != 0) return fail(q, VQ_ERR_INDIRECT_LEN, idx);
      const t = translateFast(mm, r0start, r0size, r0off, addr, <u64>tlen);
      if (t < 0) return fail(q, VQ_ERR_INDIRECT_ADDR, idx);
      const table = <usize>t;
      const tsize = tlen >> 4;
      // Visits to this table, buffers in the whole chain and iov capacity
      // are all counted by pos: one bound test, then which one it was.
      const tstart = pos;
      const lim2 = min(lim, tstart + tsize);
      idx = 0;
      while (true) {
        if (idx >= tsize) return fail(q, VQ_ERR_NEXT_RANGE, idx);
        if (pos >= lim2) {
          if (pos - tstart >= tsize) return fail(q, VQ_ERR_LOOP, head);
          // §2.7.5.3.1: a driver MUST NOT create a chain longer than Queue Size.
          if (pos - iovUsed >= size) return fail(q, VQ_ERR_CHAIN_TOO_LONG, head);
          full = true;
          break;
        }
        const d = table + (<usize>idx << 4);
        const addr = load<u64>(d);
        const flags = <u32>load<u16>(d, 12);
        if (flags & VIRTQ_DESC_F_INDIRECT) return fail(q, VQ_ERR_NESTED_INDIRECT, idx);
        const len = load<u32>(d, 8);
        const off = translateFast(mm, r0start, r0size, r0off, addr, <u64>len);
        if (off < 0) return fail(q, VQ_ERR_DESC_ADDR, idx);
        if (flags & VIRTQ_DESC_F_WRITE) {
          nw++;
          wbytes += len;
        } else {
          if (nw != 0) return fail(q, VQ_ERR_WRITABLE_ORDER, idx);
          rbytes += len;
        }
        store<u64>(iov + (<usize>pos << 3), <u64>off | (<u64>len << 32));
        pos++;
        if ((flags & VIRTQ_DESC_F_NEXT) == 0) break;
        idx = <u32>load<u16>(d, 14);
      }
    }
    if (full) {
      if (n == 0) return -VQ_ERR_IOV_TOO_SMALL; // host error: not sticky
      break;
    }
    // §2.7.5.2: no chain longer than 2^32 bytes in total.
    // (Each sum is below 2^47: at most 32768 buffers of < 2^32 bytes.)
    if ((rbytes | wbytes) > 0xffffffff || rbytes + wbytes > 0x100000000) {
      return fail(q, VQ_ERR_CHAIN_BYTES, head);
    }
    const nbuf = pos - iovUsed;
    const c = chains + <usize>n * 24;
    store<u64>(c, <u64>head | (<u64>iovUsed << 32));
    store<u64>(c, <u64>(nbuf - nw) | (<u64>nw << 32), 8);
    store<u64>(c, rbytes | (wbytes << 32), 16); // both ≤ 2^32 - 1 here
    iovUsed = pos;
    n++;
  }
  store<u32>(q, (last + n) & 0xffff, Q_LAST_AVAIL);
  return <i32>n;
}

@inline function putUsed(used: usize, mask: u32, nu: u32, id: u32, len: u32): void {
  const e = used + 4 + (<usize>(nu & mask) << 3);
  store<u32>(e, id);
  store<u32>(e, len, 4);
}

export function vq_push_used(q: usize, id: u32, len: u32): i32 {
  const err = load<u32>(q, Q_ERROR);
  if (err != 0) return -<i32>err;
  if (load<u32>(q, Q_READY) == 0) return -VQ_ERR_NOT_READY;
  const size = load<u32>(q, Q_SIZE);
  if (id >= size) return -VQ_ERR_USED_ID;
  const used = <usize>load<u32>(q, Q_USED);
  const nu = load<u32>(q, Q_NEXT_USED);
  putUsed(used, size - 1, nu, id, len);
  const next = (nu + 1) & 0xffff;
  // §2.7.8.2: len is set before used idx is updated. The atomic store is the
  // release barrier that publishes the element to a running guest.
  atomic.store<u16>(used + 2, <u16>next);
  store<u32>(q, next, Q_NEXT_USED);
  return 1;
}

export function vq_push_used_batch(q: usize, elems: usize, count: u32): i32 {
  const err = load<u32>(q, Q_ERROR);
  if (err != 0) return -<i32>err;
  if (load<u32>(q, Q_READY) == 0) return -VQ_ERR_NOT_READY;
  const size = load<u32>(q, Q_SIZE);
  const mask = size - 1;
  const used = <usize>load<u32>(q, Q_USED);
  // A bad id ends the call before used idx moves: the slots written so far
  // lie past used idx, invisible to the driver, so a bad batch publishes
  // nothing (and the next push overwrites them).
  const nu = load<u32>(q, Q_NEXT_USED);
  for (let i: u32 = 0; i < count; i++) {
    const e = elems + (<usize>i << 3);
    const id = load<u32>(e);
    if (id >= size) return -VQ_ERR_USED_ID;
    putUsed(used, mask, nu + i, id, load<u32>(e, 4));
  }
  const next = (nu + count) & 0xffff;
  atomic.store<u16>(used + 2, <u16>next); // §2.7.8.2, as in vq_push_used
  store<u32>(q, next, Q_NEXT_USED);
  return <i32>count;
}

export function vq_push_used_chains(q: usize, chains: usize, count: u32, lens: usize): i32 {
  const err = load<u32>(q, Q_ERROR);
  if (err != 0) return -<i32>err;
  if (load<u32>(q, Q_READY) == 0) return -VQ_ERR_NOT_READY;
  const size = load<u32>(q, Q_SIZE);
  const mask = size - 1;
  const used = <usize>load<u32>(q, Q_USED);
  const nu = load<u32>(q, Q_NEXT_USED);
  // Ids come from the chain records in host scratch; checked all the same,
  // with the publish-nothing rule of vq_push_used_batch.
  if (lens == 0) {
    for (let i: u32 = 0; i < count; i++) {
      const c = chains + <usize>i * 24;
      const id = load<u32>(c);
      if (id >= size) return -VQ_ERR_USED_ID;
      // id | writable_bytes << 32: the used element, one store.
      store<u64>(used + 4 + (<usize>((nu + i) & mask) << 3), <u64>id | (<u64>load<u32>(c, 20) << 32));
    }
  } else {
    for (let i: u32 = 0; i < count; i++) {
      const id = load<u32>(chains + <usize>i * 24);
      if (id >= size) return -VQ_ERR_USED_ID;
      putUsed(used, mask, nu + i, id, load<u32>(lens + (<usize>i << 2)));
    }
  }
  const next = (nu + count) & 0xffff;
  atomic.store<u16>(used + 2, <u16>next); // §2.7.8.2, as in vq_push_used
  store<u32>(q, next, Q_NEXT_USED);
  return <i32>count;
}

export function vring_need_event(event: u32, newIdx: u32, old: u32): i32 {
  return needEvent(event & 0xffff, newIdx & 0xffff, old & 0xffff) ? 1 : 0;
}

/**
 * Whether the caller must send a used buffer notification for the elements
 * pushed since the last call. Never signals by itself.
 */
export function vq_needs_notification(q: usize): i32 {
  if (load<u32>(q, Q_READY) == 0 || load<u32>(q, Q_ERROR) != 0) return 0;
  const nu = load<u32>(q, Q_NEXT_USED);
  const old = load<u32>(q, Q_SIGNALLED_USED);
  if (nu == old) return 0; // nothing written to the used ring since
  store<u32>(q, nu, Q_SIGNALLED_USED);
  const size = load<u32>(q, Q_SIZE);
  const avail = <usize>load<u32>(q, Q_AVAIL);
  if ((load<u32>(q, Q_FEATURES) >> VIRTIO_F_EVENT_IDX) & 1) {
    // §2.7.7.2 with EVENT_IDX: ignore flags; notify when used idx reached
    // used_event + 1. Atomic load: ordered after the used idx store.
    const usedEvent = <u32>atomic.load<u16>(avail + 4 + (<usize>size << 1));
    return needEvent(usedEvent, nu, old) ? 1 : 0;
  }
  // §2.7.7.2 without EVENT_IDX: flags 0 → MUST notify; 1 → SHOULD NOT.
  return (<u32>atomic.load<u16>(avail) & VIRTQ_AVAIL_F_NO_INTERRUPT) != 0 ? 0 : 1;
}

/**
 * Asks the driver for available buffer notifications again (§2.7.10.2):
 * avail_event = last_avail_idx with EVENT_IDX, else used flags = 0. Returns 1
 * if chains arrived meanwhile, so the caller pops again instead of sleeping.
 */
export function vq_enable_notification(q: usize): i32 {
  if (load<u32>(q, Q_READY) == 0 || load<u32>(q, Q_ERROR) != 0) return 0;
  const size = load<u32>(q, Q_SIZE);
  const used = <usize>load<u32>(q, Q_USED);
  const last = load<u32>(q, Q_LAST_AVAIL);
  if ((load<u32>(q, Q_FEATURES) >> VIRTIO_F_EVENT_IDX) & 1) {
    atomic.store<u16>(used + 4 + (<usize>size << 3), <u16>last);
  } else {
    atomic.store<u16>(used, 0);
  }
  // Seq-cst store then load: the full barrier that closes the race with a
  // driver that added buffers before seeing the new event/flags.
  const availIdx = <u32>atomic.load<u16>(<usize>load<u32>(q, Q_AVAIL), 2);
  return availIdx != last ? 1 : 0;
}

/** Stops available buffer notifications (best effort, §2.7.10). */
export function vq_disable_notification(q: usize): i32 {
  if (load<u32>(q, Q_READY) == 0) return 0;
  // With EVENT_IDX the device MUST keep flags 0 (§2.7.10.2); a stale
  // avail_event already suppresses further kicks.
  if (((load<u32>(q, Q_FEATURES) >> VIRTIO_F_EVENT_IDX) & 1) == 0) {
    atomic.store<u16>(<usize>load<u32>(q, Q_USED), <u16>VIRTQ_USED_F_NO_NOTIFY);
  }
  return 0;
}
