/**
 * Driver-side packed virtqueue writer for tests — the other half of
 * assembly/virtio/packed.ts, written the way Linux's
 * drivers/virtio/virtio_ring.c lays out packed rings
 * (virtqueue_add_packed / virtqueue_add_indirect_packed /
 * virtqueue_get_buf_ctx_packed / detach_buf_packed / kick_prepare_packed /
 * enable_cb_prepare_packed): buffer ids from a free list independent of ring
 * positions, every descriptor of a chain written with the current
 * AVAIL/USED bits (flipped when the chain wraps the ring end) and the head's
 * flags written last, the used side advanced by the completed buffer's own
 * descriptor count, off_wrap event suppression both ways.
 *
 * It writes guest-physical structures through HotMemory; raw setters exist
 * for hostile-guest tests.
 */
import { HotMemory } from '../../../src/hot/memory';
import {
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
} from '../../../src/hot/virtqueue';
import { Buf, needEvent } from './driver-ring';

export interface PackedRingOptions {
  size: number;
  descGpa: bigint;
  driverGpa: bigint;
  deviceGpa: bigint;
  eventIdx: boolean;
  indirect: boolean;
  /** Guest area for indirect tables: size * maxIndirect * 16 bytes (one per id). */
  indirectGpa?: bigint;
  maxIndirect?: number;
}

/** Layout: descriptor ring, then the two event suppression structures. */
export function packedLayout(base: bigint, size: number): { descGpa: bigint; driverGpa: bigint; deviceGpa: bigint; end: bigint } {
  const descGpa = base;
  const driverGpa = descGpa + BigInt(16 * size);
  const deviceGpa = driverGpa + 4n;
  const end = (deviceGpa + 4n + 4095n) & ~4095n;
  return { descGpa, driverGpa, deviceGpa, end };
}

export class PackedRing {
  readonly size: number;
  numFree: number;
  freeHead = 0;
  nextAvailIdx = 0;
  availWrap = 1;
  availUsedFlags = VIRTQ_DESC_F_AVAIL;
  lastUsedIdx = 0;
  usedWrap = 1;
  /** Descriptors added since the last kickPrepare (Linux num_added). */
  private numAdded = 0;
  private eventFlagsShadow: number;
  /** Per id: ring descriptors the buffer took (0 = free), and the free-list link. */
  readonly stateNum: number[];
  private readonly nextId: number[];
  readonly v: DataView;

  constructor(readonly mem: HotMemory, readonly o: PackedRingOptions) {
    this.size = o.size;
    this.v = mem.view;
    this.numFree = o.size;
    this.stateNum = new Array(o.size).fill(0);
    this.nextId = Array.from({ length: o.size }, (_, i) => i + 1);
    mem.u8.fill(0, this.off(o.descGpa), this.off(o.descGpa) + 16 * o.size);
    // Linux starts with event flags ENABLE on both structures' driver side.
    this.eventFlagsShadow = RING_EVENT_FLAGS_ENABLE;
    this.setDriverEvent(0, RING_EVENT_FLAGS_ENABLE);
    this.setDeviceEvent(0, RING_EVENT_FLAGS_ENABLE);
  }

  off(gpa: bigint, len = 1): number {
    return this.mem.gpaToOffset(gpa, len);
  }

  // ── raw structure access ──
  setDesc(i: number, addr: bigint, len: number, id: number, flags: number, table?: bigint): void {
    const p = this.off((table ?? this.o.descGpa) + BigInt(16 * i), 16);
    this.v.setBigUint64(p, BigInt.asUintN(64, addr), true);
    this.v.setUint32(p + 8, len >>> 0, true);
    this.v.setUint16(p + 12, id & 0xffff, true);
    this.v.setUint16(p + 14, flags & 0xffff, true);
  }
  descFlags(i: number): number { return this.v.getUint16(this.off(this.o.descGpa + BigInt(16 * i + 14)), true); }
  setDescFlags(i: number, f: number): void { this.v.setUint16(this.off(this.o.descGpa + BigInt(16 * i + 14)), f, true); }
  descId(i: number): number { return this.v.getUint16(this.off(this.o.descGpa + BigInt(16 * i + 12)), true); }
  descLen(i: number): number { return this.v.getUint32(this.off(this.o.descGpa + BigInt(16 * i + 8)), true); }
  /** AVAIL/USED bits marking a descriptor available under wrap counter w. */
  static availBits(w: number): number { return w ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED; }
  setDriverEvent(offWrap: number, flags: number): void {
    const p = this.off(this.o.driverGpa, 4);
    this.v.setUint16(p, offWrap, true);
    this.v.setUint16(p + 2, flags, true);
  }
  setDeviceEvent(offWrap: number, flags: number): void {
    const p = this.off(this.o.deviceGpa, 4);
    this.v.setUint16(p, offWrap, true);
    this.v.setUint16(p + 2, flags, true);
  }
  get deviceOffWrap(): number { return this.v.getUint16(this.off(this.o.deviceGpa), true); }
  get deviceFlags(): number { return this.v.getUint16(this.off(this.o.deviceGpa + 2n), true); }
  get driverOffWrap(): number { return this.v.getUint16(this.off(this.o.driverGpa), true); }
  get driverFlags(): number { return this.v.getUint16(this.off(this.o.driverGpa + 2n), true); }

  indirectTable(id: number): bigint {
    if (this.o.indirectGpa === undefined) throw new Error('no indirect area');
    return this.o.indirectGpa + BigInt(id * (this.o.maxIndirect ?? 16) * 16);
  }

  /**
   * virtqueue_add_packed: `out` then `in`; an indirect table when negotiated
   * and more than one buffer (unless `direct`). Returns the buffer id, or
   * undefined when there is no room.
   */
  add(out: Buf[], inn: Buf[], opts: { direct?: boolean } = {}): number | undefined {
    const total = out.length + inn.length;
    if (total === 0) throw new Error('empty chain');
    const useIndirect = this.o.indirect && !opts.direct && total > 1 && total <= (this.o.maxIndirect ?? 16);
    const need = useIndirect ? 1 : total;
    if (this.numFree < need) return undefined;
    const id = this.freeHead;
    const all = [...out.map((b) => ({ ...b, w: 0 })), ...inn.map((b) => ({ ...b, w: VIRTQ_DESC_F_WRITE }))];
    const head = this.nextAvailIdx;
    let headFlags = 0;
    if (useIndirect) {
      // virtqueue_add_indirect_packed: WRITE is the only flag in the table.
      const table = this.indirectTable(id);
      all.forEach((b, k) => this.setDesc(k, b.gpa, b.len, 0, b.w, table));
      headFlags = VIRTQ_DESC_F_INDIRECT | this.availUsedFlags;
      this.setDesc(head, table, total * 16, id, 0);
      if (++this.nextAvailIdx >= this.size) this.wrapAvail();
    } else {
      let i = head;
      all.forEach((b, k) => {
        const flags = this.availUsedFlags | (k < total - 1 ? VIRTQ_DESC_F_NEXT : 0) | b.w;
        if (i === head) {
          headFlags = flags;
          this.setDesc(i, b.gpa, b.len, id, 0); // flags written last
        } else {
          this.setDesc(i, b.gpa, b.len, id, flags);
        }
        if (++i >= this.size) {
          i = 0;
          this.availUsedFlags ^= VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;
          this.availWrap ^= 1;
        }
      });
      this.nextAvailIdx = i;
    }
    this.numFree -= need;
    this.freeHead = this.nextId[id];
    this.stateNum[id] = need;
    this.numAdded += need;
    this.setDescFlags(head, headFlags); // virtio_wmb(); desc[head].flags = head_flags
    return id;
  }

  private wrapAvail(): void {
    this.nextAvailIdx = 0;
    this.availWrap ^= 1;
    this.availUsedFlags ^= VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;
  }

  /** virtqueue_kick_prepare_packed. */
  kickPrepare(): boolean {
    const newIdx = this.nextAvailIdx;
    const old = (newIdx - this.numAdded) & 0xffff;
    this.numAdded = 0;
    const flags = this.deviceFlags;
    if (flags !== RING_EVENT_FLAGS_DESC) return flags !== RING_EVENT_FLAGS_DISABLE;
    const offWrap = this.deviceOffWrap;
    let event = offWrap & 0x7fff;
    if (offWrap >> 15 !== this.availWrap) event -= this.size;
    return needEvent(event & 0xffff, newIdx, old);
  }

  /** more_used_packed + virtqueue_get_buf_ctx_packed + detach_buf_packed. */
  getBuf(): { id: number; len: number } | undefined {
    const f = this.descFlags(this.lastUsedIdx);
    const avail = (f & VIRTQ_DESC_F_AVAIL) !== 0 ? 1 : 0;
    const used = (f & VIRTQ_DESC_F_USED) !== 0 ? 1 : 0;
    if (!(avail === used && used === this.usedWrap)) return undefined;
    const id = this.descId(this.lastUsedIdx);
    const len = this.descLen(this.lastUsedIdx);
    if (id >= this.size || this.stateNum[id] === 0) throw new Error(`driver: bad used id ${id}`);
    this.lastUsedIdx += this.stateNum[id];
    if (this.lastUsedIdx >= this.size) {
      this.lastUsedIdx -= this.size;
      this.usedWrap ^= 1;
    }
    this.numFree += this.stateNum[id];
    this.stateNum[id] = 0;
    this.nextId[id] = this.freeHead;
    this.freeHead = id;
    // virtqueue_get_buf_ctx_packed: with EVENT_IDX and callbacks on DESC,
    // move the event to the new last_used (off_wrap with the wrap counter).
    if (this.eventFlagsShadow === RING_EVENT_FLAGS_DESC) this.setDriverEvent(this.lastUsedIdx | (this.usedWrap << 15), RING_EVENT_FLAGS_DESC);
    return { id, len };
  }

  /** virtqueue_enable_cb_prepare_packed. */
  enableCb(): void {
    if (this.o.eventIdx) {
      this.eventFlagsShadow = RING_EVENT_FLAGS_DESC;
      this.setDriverEvent(this.lastUsedIdx | (this.usedWrap << 15), RING_EVENT_FLAGS_DESC);
    } else {
      this.eventFlagsShadow = RING_EVENT_FLAGS_ENABLE;
      this.setDriverEvent(this.driverOffWrap, RING_EVENT_FLAGS_ENABLE);
    }
  }
  /** virtqueue_disable_cb_packed. */
  disableCb(): void {
    this.eventFlagsShadow = RING_EVENT_FLAGS_DISABLE;
    this.setDriverEvent(this.driverOffWrap, RING_EVENT_FLAGS_DISABLE);
  }
}
