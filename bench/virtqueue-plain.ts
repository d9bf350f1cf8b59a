/**
 * The device-side split-virtqueue algorithm of assembly/virtio written in
 * plain TypeScript over a DataView of the same Memory — same checks, same
 * outputs — as the "plain TS" peer of bench/hot-virtqueue.ts. Not used by
 * the runtime.
 */
const F_NEXT = 1, F_WRITE = 2, F_INDIRECT = 4;

export interface PlainRegion { gpa: number; size: number; offset: number }

export class PlainQueue {
  lastAvail = 0;
  nextUsed = 0;
  signalled = 0;
  error = 0;
  /** Per popped chain: head, iov first, nr, nw, rbytes, wbytes. */
  readonly chains: Uint32Array;
  /** Per iovec: offset, len. */
  readonly iov: Uint32Array;
  private readonly v: DataView;

  constructor(
    buf: ArrayBuffer,
    readonly regions: PlainRegion[],
    readonly size: number,
    readonly desc: number,
    readonly avail: number,
    readonly used: number,
    readonly indirect: boolean,
    readonly eventIdx: boolean,
    maxIov: number,
  ) {
    this.v = new DataView(buf);
    this.chains = new Uint32Array(size * 6);
    this.iov = new Uint32Array(maxIov * 2);
  }

  private translate(lo: number, hi: number, len: number): number {
    const gpa = hi * 4294967296 + lo; // exact below 2^53; larger never matches a region
    for (const r of this.regions) {
      const rel = gpa - r.gpa;
      if (rel >= 0 && rel <= r.size && len <= r.size - rel) return r.offset + rel;
    }
    return -1;
  }

  private fail(code: number): number {
    this.error = code;
    return -code;
  }

  popBatch(max: number): number {
    if (this.error) return -this.error;
    const v = this.v, size = this.size, mask = size - 1;
    const availIdx = v.getUint16(this.avail + 2, true);
    let pending = (availIdx - this.lastAvail) & 0xffff;
    if (pending > size) return this.fail(6);
    if (pending > max) pending = max;
    const maxIov = this.iov.length >> 1;
    let n = 0, usedIov = 0;
    while (n < pending) {
      const head = v.getUint16(this.avail + 4 + 2 * ((this.lastAvail + n) & mask), true);
      if (head >= size) return this.fail(7);
      let table = this.desc, tsize = size, idx = head, visited = 0, total = 0, nr = 0, nw = 0, rb = 0, wb = 0;
      let inInd = false, full = false, pos = usedIov;
      for (;;) {
        if (idx >= tsize) return this.fail(8);
        if (++visited > tsize) return this.fail(10);
        const d = table + 16 * idx;
        const lo = v.getUint32(d, true), hi = v.getUint32(d + 4, true);
        const len = v.getUint32(d + 8, true), flags = v.getUint16(d + 12, true);
        if (flags & F_INDIRECT) {
          if (!this.indirect) return this.fail(12);
          if (inInd) return this.fail(13);
          if (flags & F_NEXT) return this.fail(14);
          if (len === 0 || (len & 15) !== 0) return this.fail(15);
          const t = this.translate(lo, hi, len);
          if (t < 0) return this.fail(16);
          table = t; tsize = len >>> 4; idx = 0; visited = 0; inInd = true;
          continue;
        }
        if (++total > size) return this.fail(11);
        const off = this.translate(lo, hi, len);
        if (off < 0) return this.fail(9);
        if (flags & F_WRITE) { nw++; wb += len; } else { if (nw) return this.fail(17); nr++; rb += len; }
        if (pos >= maxIov) { if (n === 0) return -19; full = true; break; }
        this.iov[2 * pos] = off; this.iov[2 * pos + 1] = len; pos++;
        if (!(flags & F_NEXT)) break;
        idx = v.getUint16(d + 14, true);
      }
      if (full) break;
      if (rb > 0xffffffff || wb > 0xffffffff || rb + wb > 0x100000000) return this.fail(18);
      const c = n * 6;
      this.chains[c] = head; this.chains[c + 1] = usedIov; this.chains[c + 2] = nr;
      this.chains[c + 3] = nw; this.chains[c + 4] = rb; this.chains[c + 5] = wb;
      usedIov = pos;
      n++;
    }
    this.lastAvail = (this.lastAvail + n) & 0xffff;
    return n;
  }

  pushUsedBatch(elems: Uint32Array, n: number): number {
    if (this.error) return -this.error;
    for (let i = 0; i < n; i++) if (elems[2 * i] >= this.size) return -20;
    const v = this.v;
    for (let i = 0; i < n; i++) {
      const e = this.used + 4 + 8 * ((this.nextUsed + i) & (this.size - 1));
      v.setUint32(e, elems[2 * i], true);
      v.setUint32(e + 4, elems[2 * i + 1], true);
    }
    this.nextUsed = (this.nextUsed + n) & 0xffff;
    v.setUint16(this.used + 2, this.nextUsed, true);
    return n;
  }

  /** vq_push_used_chains with lens 0: chains 0..n-1 of the last pop, len = writable bytes. */
  pushUsedChains(n: number): number {
    if (this.error) return -this.error;
    const v = this.v, c = this.chains, size = this.size, mask = size - 1, nu = this.nextUsed;
    for (let i = 0; i < n; i++) {
      const id = c[6 * i];
      if (id >= size) return -20;
      const e = this.used + 4 + 8 * ((nu + i) & mask);
      v.setUint32(e, id, true);
      v.setUint32(e + 4, c[6 * i + 5], true);
    }
    this.nextUsed = (nu + n) & 0xffff;
    v.setUint16(this.used + 2, this.nextUsed, true);
    return n;
  }

  needsNotification(): boolean {
    const nu = this.nextUsed, old = this.signalled;
    if (nu === old) return false;
    this.signalled = nu;
    if (this.eventIdx) {
      const ev = this.v.getUint16(this.avail + 4 + 2 * this.size, true);
      return ((nu - ev - 1) & 0xffff) < ((nu - old) & 0xffff);
    }
    return (this.v.getUint16(this.avail, true) & 1) === 0;
  }
}
