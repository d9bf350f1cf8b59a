/**
 * Driver-side split virtqueue writer for tests — the other half of
 * assembly/virtio, written the way Linux's drivers/virtio/virtio_ring.c
 * (virtqueue_add_split / detach_buf_split / virtqueue_get_buf) lays out rings:
 * a free list threaded through desc.next, a shadow avail idx, indirect tables
 * for multi-buffer requests when negotiated, used_event / avail_event
 * suppression, 16-bit free-running indices that wrap at 65536.
 *
 * It writes guest-physical structures through HotMemory, so the device side
 * under test only ever sees what a guest would give it. Raw setters exist for
 * hostile-guest tests.
 */
import { HotMemory } from '../../../src/hot/memory';
import {
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from '../../../src/hot/virtqueue';

export interface Buf { gpa: bigint; len: number }

export interface DriverRingOptions {
  size: number;
  descGpa: bigint;
  availGpa: bigint;
  usedGpa: bigint;
  eventIdx: boolean;
  indirect: boolean;
  /** Guest area for indirect tables: size * maxIndirect * 16 bytes. */
  indirectGpa?: bigint;
  maxIndirect?: number;
  /** Both sides start here (Linux starts at 0; tests use 65530 to wrap soon). */
  startIdx?: number;
}

/** vring_need_event, independently written for the driver side. */
export function needEvent(event: number, newIdx: number, old: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - old) & 0xffff);
}

/** Layout of one queue in a guest area: desc, avail, used (page aligned). */
export function ringLayout(base: bigint, size: number): { descGpa: bigint; availGpa: bigint; usedGpa: bigint; end: bigint } {
  const descGpa = base;
  const availGpa = descGpa + BigInt(16 * size);
  const usedGpa = (availGpa + BigInt(6 + 2 * size) + 4095n) & ~4095n;
  const end = (usedGpa + BigInt(6 + 8 * size) + 4095n) & ~4095n;
  return { descGpa, availGpa, usedGpa, end };
}

export class DriverRing {
  readonly size: number;
  numFree: number;
  freeHead = 0;
  availIdxShadow: number;
  lastUsedIdx: number;
  /** avail idx at the previous kickPrepare (Linux: num_added bookkeeping). */
  private kickedIdx: number;
  /** Per head: descriptors the chain used in the table (0 for indirect). */
  private readonly chainDescs: number[];
  private readonly indirectOf: boolean[];
  readonly v: DataView;

  constructor(readonly mem: HotMemory, readonly o: DriverRingOptions) {
    this.size = o.size;
    this.v = mem.view;
    this.numFree = o.size;
    const start = (o.startIdx ?? 0) & 0xffff;
    this.availIdxShadow = start;
    this.lastUsedIdx = start;
    this.kickedIdx = start;
    this.chainDescs = new Array(o.size).fill(0);
    this.indirectOf = new Array(o.size).fill(false);
    // Zero the rings, thread the free list (vring_init + virtqueue_init).
    mem.u8.fill(0, this.off(o.descGpa), this.off(o.descGpa) + 16 * o.size);
    mem.u8.fill(0, this.off(o.availGpa), this.off(o.availGpa) + 6 + 2 * o.size);
    mem.u8.fill(0, this.off(o.usedGpa), this.off(o.usedGpa) + 6 + 8 * o.size);
    for (let i = 0; i < o.size - 1; i++) this.setDesc(i, 0n, 0, 0, i + 1);
    this.v.setUint16(this.off(o.availGpa) + 2, start, true);
    this.v.setUint16(this.off(o.usedGpa) + 2, start, true);
  }

  off(gpa: bigint, len = 1): number {
    return this.mem.gpaToOffset(gpa, len);
  }

  // ── raw structure access (also used by hostile tests) ──
  setDesc(i: number, addr: bigint, len: number, flags: number, next: number, table?: bigint): void {
    const p = this.off((table ?? this.o.descGpa) + BigInt(16 * i), 16);
    this.v.setBigUint64(p, BigInt.asUintN(64, addr), true);
    this.v.setUint32(p + 8, len >>> 0, true);
    this.v.setUint16(p + 12, flags, true);
    this.v.setUint16(p + 14, next & 0xffff, true);
  }
  descNext(i: number): number {
    return this.v.getUint16(this.off(this.o.descGpa + BigInt(16 * i + 14)), true);
  }
  setAvailRing(slot: number, head: number): void {
    this.v.setUint16(this.off(this.o.availGpa + BigInt(4 + 2 * (slot & (this.size - 1)))), head, true);
  }
  setAvailIdx(idx: number): void {
    this.v.setUint16(this.off(this.o.availGpa + 2n), idx & 0xffff, true);
  }
  get availIdx(): number { return this.v.getUint16(this.off(this.o.availGpa + 2n), true); }
  get availFlags(): number { return this.v.getUint16(this.off(this.o.availGpa), true); }
  set availFlags(f: number) { this.v.setUint16(this.off(this.o.availGpa), f, true); }
  set usedEvent(e: number) { this.v.setUint16(this.off(this.o.availGpa + BigInt(4 + 2 * this.size)), e & 0xffff, true); }
  get usedIdx(): number { return this.v.getUint16(this.off(this.o.usedGpa + 2n), true); }
  get usedFlags(): number { return this.v.getUint16(this.off(this.o.usedGpa), true); }
  get availEvent(): number { return this.v.getUint16(this.off(this.o.usedGpa + BigInt(4 + 8 * this.size)), true); }

  indirectTable(head: number): bigint {
    if (this.o.indirectGpa === undefined) throw new Error('no indirect area');
    return this.o.indirectGpa + BigInt(head * (this.o.maxIndirect ?? 16) * 16);
  }

  /**
   * virtqueue_add_split: device-readable `out` then device-writable `in`.
   * Uses an indirect table when negotiated and more than one buffer (as
   * Linux does), unless `direct` forces a plain chain. Returns the head, or
   * undefined when the ring has no room (-ENOSPC).
   */
  add(out: Buf[], inn: Buf[], opts: { direct?: boolean } = {}): number | undefined {
    const total = out.length + inn.length;
    if (total === 0) throw new Error('empty chain');
    const useIndirect = this.o.indirect && !opts.direct && total > 1 && total <= (this.o.maxIndirect ?? 16);
    const need = useIndirect ? 1 : total;
    if (this.numFree < need) return undefined;
    const head = this.freeHead;
    const all = [...out.map((b) => ({ ...b, w: 0 })), ...inn.map((b) => ({ ...b, w: VIRTQ_DESC_F_WRITE }))];
    if (useIndirect) {
      const table = this.indirectTable(head);
      all.forEach((b, k) => this.setDesc(k, b.gpa, b.len, b.w | (k < total - 1 ? VIRTQ_DESC_F_NEXT : 0), k + 1, table));
      const next = this.descNext(head);
      this.setDesc(head, table, total * 16, VIRTQ_DESC_F_INDIRECT, next);
      this.freeHead = next;
    } else {
      let i = head;
      for (let k = 0; k < total; k++) {
        const next = this.descNext(i);
        const b = all[k];
        // Keep `next` on the last descriptor: Linux leaves the free-list link.
        this.setDesc(i, b.gpa, b.len, b.w | (k < total - 1 ? VIRTQ_DESC_F_NEXT : 0), next);
        i = next;
      }
      this.freeHead = i;
    }
    this.numFree -= need;
    this.chainDescs[head] = need;
    this.indirectOf[head] = useIndirect;
    // Expose: ring entry, then (after the barrier) the idx.
    this.setAvailRing(this.availIdxShadow, head);
    this.availIdxShadow = (this.availIdxShadow + 1) & 0xffff;
    this.setAvailIdx(this.availIdxShadow);
    return head;
  }

  /** virtqueue_kick_prepare: must the driver notify the device? */
  kickPrepare(): boolean {
    const old = this.kickedIdx;
    const now = this.availIdxShadow;
    this.kickedIdx = now;
    if (this.o.eventIdx) return needEvent(this.availEvent, now, old);
    return (this.usedFlags & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /** virtqueue_get_buf: next used element, its descriptors freed. */
  getBuf(): { id: number; len: number } | undefined {
    if (this.lastUsedIdx === this.usedIdx) return undefined;
    const slot = this.lastUsedIdx & (this.size - 1);
    const p = this.off(this.o.usedGpa + BigInt(4 + 8 * slot));
    const id = this.v.getUint32(p, true);
    const len = this.v.getUint32(p + 4, true);
    if (id >= this.size || this.chainDescs[id] === 0) throw new Error(`driver: bad used id ${id}`);
    // detach_buf_split: walk the chain back onto the free list.
    let i = id;
    for (let k = 1; k < this.chainDescs[id]; k++) i = this.descNext(i);
    const p2 = this.off(this.o.descGpa + BigInt(16 * i));
    this.v.setUint16(p2 + 14, this.freeHead, true);
    this.freeHead = id;
    this.numFree += this.chainDescs[id];
    this.chainDescs[id] = 0;
    this.lastUsedIdx = (this.lastUsedIdx + 1) & 0xffff;
    if (this.o.eventIdx) this.usedEvent = this.lastUsedIdx; // virtqueue_get_buf updates used_event
    return { id, len };
  }

  /** virtqueue_enable_cb: re-arm used buffer notifications. */
  enableCb(): void {
    if (this.o.eventIdx) this.usedEvent = this.lastUsedIdx;
    else this.availFlags = 0;
  }
  /** virtqueue_disable_cb. */
  disableCb(): void {
    if (!this.o.eventIdx) this.availFlags = VIRTQ_AVAIL_F_NO_INTERRUPT;
  }
}
