/**
 * Typed wrapper over assembly/virtio (split virtqueue, device side, virtio
 * 1.2 §2.7; and PackedVirtqueue, §2.8, at the end of this file). Owns each queue's scratch — the queue struct, the chain and
 * iovec tables one pop fills, the used elements one push publishes — inside
 * the shared HotMemory, and turns the module's status codes into
 * VirtqueueError kinds.
 *
 * Like rust-vmm's virtio-queue, a queue never signals the guest:
 * needsNotification() says whether the caller must raise the interrupt.
 * A guest error is sticky: the queue reports it until activate() again, and
 * the device model should set DEVICE_NEEDS_RESET (§2.1.2).
 *
 * Hot path: popBatch() is one JS→WASM call for a whole kick; results are
 * read straight from Uint32Array views (chainWord/iovOffset/iovLength) with
 * no per-chain allocation. chain()/buffers() are conveniences that allocate.
 */
import { KataError } from '../common/errors';
import { logger } from '../common/log';
import { HotMemory, type GuestRegion } from './memory';
import { instantiate } from './loader';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;
export const VIRTIO_F_INDIRECT_DESC = 28;
export const VIRTIO_F_EVENT_IDX = 29;
export const MAX_QUEUE_SIZE = 32768;
/** Regions the memory map holds (assembly/virtio MAX_REGIONS). */
export const MAX_MEM_REGIONS = 8;

/** assembly/virtio error codes, by kind. Codes 6–18 and 21 are guest errors. */
export const VQ_ERROR_CODES = {
  'not-ready': 1,
  'queue-size': 2,
  'ring-align': 3,
  'ring-addr': 4,
  'mem-map': 5,
  'avail-idx-ahead': 6,
  'head-range': 7,
  'next-range': 8,
  'desc-addr': 9,
  'loop': 10,
  'chain-too-long': 11,
  'indirect-not-negotiated': 12,
  'nested-indirect': 13,
  'indirect-with-next': 14,
  'indirect-len': 15,
  'indirect-addr': 16,
  'writable-order': 17,
  'chain-bytes': 18,
  'iov-too-small': 19,
  'used-id': 20,
  // Packed queue only (assembly/virtio/packed.ts): 21 is a guest error,
  // 22–23 host errors.
  'chain-not-avail': 21,
  'used-descs': 22,
  'ring-pos': 23,
} as const;
export type VirtqueueErrorKind = keyof typeof VQ_ERROR_CODES | 'config';

const KIND_BY_CODE: VirtqueueErrorKind[] = [];
for (const [k, v] of Object.entries(VQ_ERROR_CODES)) KIND_BY_CODE[v] = k as VirtqueueErrorKind;

export class VirtqueueError extends KataError<VirtqueueErrorKind> {
  /** Module code (0 for 'config'). */
  readonly code: number;
  /** Descriptor index / avail idx the module recorded, when it did. */
  readonly info: number;
  /** True when the queue is now unusable until re-activation (NEEDS_RESET). */
  readonly sticky: boolean;
  constructor(kind: VirtqueueErrorKind, message: string, code = 0, info = 0, sticky = false) {
    super(kind, message);
    this.code = code;
    this.info = info;
    this.sticky = sticky;
  }
}

/** The raw exports of build/wasm/virtio.wasm (ABI in assembly/virtio/index.ts). */
export interface VirtioExports {
  mem_map_check(mm: number): number;
  mem_translate(mm: number, gpa: bigint, len: bigint): bigint;
  vq_setup(q: number): number;
  vq_avail_pending(q: number): number;
  vq_pop_batch(q: number, chains: number, maxChains: number, iov: number, maxIov: number): number;
  vq_push_used(q: number, id: number, len: number): number;
  vq_push_used_batch(q: number, elems: number, count: number): number;
  vq_push_used_chains(q: number, chains: number, n: number, lens: number): number;
  vq_needs_notification(q: number): number;
  vq_enable_notification(q: number): number;
  vq_disable_notification(q: number): number;
  vring_need_event(event: number, newIdx: number, old: number): number;
  vqp_setup(q: number): number;
  vqp_avail_pending(q: number): number;
  vqp_pop_batch(q: number, chains: number, maxChains: number, iov: number, maxIov: number): number;
  vqp_push_used(q: number, token: number, len: number): number;
  vqp_push_used_batch(q: number, elems: number, count: number): number;
  vqp_push_used_chains(q: number, chains: number, n: number, lens: number): number;
  vqp_needs_notification(q: number): number;
  vqp_enable_notification(q: number): number;
  vqp_disable_notification(q: number): number;
}

// Queue struct layout (assembly/virtio/index.ts header).
const Q_BYTES = 128;
const Q_SIZE = 0, Q_FEATURES = 4, Q_DESC_GPA = 8, Q_AVAIL_GPA = 16, Q_USED_GPA = 24, Q_MEM_MAP = 32;
const Q_LAST_AVAIL = 48, Q_NEXT_USED = 52, Q_ERROR = 56, Q_ERROR_INFO = 60, Q_READY = 64;
/** u32 words per chain record. */
export const CHAIN_WORDS = 6;
export const CHAIN_HEAD = 0, CHAIN_IOV_FIRST = 1, CHAIN_N_READABLE = 2, CHAIN_N_WRITABLE = 3,
  CHAIN_READABLE_BYTES = 4, CHAIN_WRITABLE_BYTES = 5;


export interface QueueConfig {
  /** Queue Size: power of two, 1..32768. */
  size: number;
  /** Negotiated feature bits (only INDIRECT_DESC and EVENT_IDX matter here). */
  features: bigint;
  descGpa: bigint;
  availGpa: bigint;
  usedGpa: bigint;
  /** Restore: where the device had got to. Default 0. */
  lastAvailIdx?: number;
  nextUsedIdx?: number;
}

export interface Chain {
  head: number;
  readableBytes: number;
  writableBytes: number;
  /** Memory offset/length pairs, device-readable first. */
  readable: Array<{ offset: number; length: number }>;
  writable: Array<{ offset: number; length: number }>;
}

/** One instance of virtio.wasm over a HotMemory, with the guest memory map. */
export class VirtioModule {
  readonly wasm: VirtioExports;
  /** Offset of the memory map struct (count + regions). */
  readonly memMap: number;
  private queues = 0;

  constructor(readonly mem: HotMemory) {
    this.wasm = instantiate<VirtioExports>('virtio', mem);
    this.memMap = mem.reserve('virtio.memmap', 8 + MAX_MEM_REGIONS * 24, 8);
    this.writeMemoryMap();
  }

  /**
   * Writes the module's memory map: HotMemory's guest regions by default, or
   * `regions` when the guest's layout is learnt later (vhost-user
   * SET_MEM_TABLE maps the front end's regions into the guest RAM area).
   * Queues must be re-activated after the map changes.
   */
  writeMemoryMap(regions: ReadonlyArray<GuestRegion> = this.mem.guestRegions): void {
    if (regions.length > MAX_MEM_REGIONS) {
      throw new VirtqueueError('mem-map', `${regions.length} guest regions; at most ${MAX_MEM_REGIONS}`);
    }
    const v = this.mem.view;
    v.setUint32(this.memMap, regions.length, true);
    regions.forEach((r, i) => {
      const p = this.memMap + 8 + i * 24;
      v.setBigUint64(p, r.gpa, true);
      v.setBigUint64(p + 8, BigInt(r.size), true);
      v.setUint32(p + 16, r.offset, true);
    });
  }

  /** Memory offset of guest range [gpa, gpa+len), or undefined if not all in RAM. */
  translate(gpa: bigint, len: number): number | undefined {
    const r = this.wasm.mem_translate(this.memMap, BigInt.asUintN(64, gpa), BigInt(len));
    return r < 0n ? undefined : Number(r);
  }

  /**
   * Reserves scratch for one queue. Do this once per device queue at set-up
   * (scratch is never freed) and activate() it on every driver (re)start.
   */
  createQueue(opts: QueueScratchOptions = {}): Virtqueue {
    const { base, maxSize, maxChains, maxIov } = this.reserveQueue(opts, 'q');
    return new Virtqueue(this, base, maxSize, maxChains, maxIov);
  }

  /**
   * Reserves scratch for one packed queue (§2.8; assembly/virtio/packed.ts).
   * Same sizing rules as createQueue; maxSize need not be a power of two.
   */
  createPackedQueue(opts: QueueScratchOptions = {}): PackedVirtqueue {
    const { base, maxSize, maxChains, maxIov } = this.reserveQueue(opts, 'pq');
    return new PackedVirtqueue(this, base, maxSize, maxChains, maxIov);
  }

  private reserveQueue(opts: QueueScratchOptions, prefix: string): { base: number; maxSize: number; maxChains: number; maxIov: number } {
    const maxSize = opts.maxSize ?? 256;
    if (!Number.isInteger(maxSize) || maxSize < 1 || maxSize > MAX_QUEUE_SIZE) {
      throw new VirtqueueError('config', `maxSize ${maxSize} out of 1..${MAX_QUEUE_SIZE}`);
    }
    const maxChains = opts.maxChains ?? maxSize;
    // Any valid chain has ≤ Queue Size buffers, so ≥ maxSize iovecs means a
    // pop always makes progress.
    const maxIov = opts.maxIov ?? Math.max(2 * maxSize, 64);
    if (maxIov < maxSize) throw new VirtqueueError('config', `maxIov ${maxIov} < maxSize ${maxSize}`);
    const name = opts.name ?? `virtio.${prefix}${this.queues++}`;
    const base = this.mem.reserve(name, Q_BYTES + maxChains * (CHAIN_WORDS * 4 + 8) + maxIov * 8, 64);
    return { base, maxSize, maxChains, maxIov };
  }
}

export interface QueueScratchOptions { maxSize?: number; maxChains?: number; maxIov?: number; name?: string }

/** The wasm entry points of one ring layout: what split and packed differ in. */
interface RingCalls {
  setup(q: number): number;
  availPending(q: number): number;
  popBatch(q: number, chains: number, maxChains: number, iov: number, maxIov: number): number;
  pushUsed(q: number, id: number, len: number): number;
  pushUsedBatch(q: number, elems: number, n: number): number;
  pushUsedChains(q: number, chains: number, n: number, lens: number): number;
  needsNotification(q: number): number;
  enableNotification(q: number): number;
  disableNotification(q: number): number;
}

/**
 * What a split and a packed queue share: the scratch layout (queue struct,
 * chain records, used elements, iovecs), activation, the batch pop, staged
 * and batch completions, notification calls and the error reporting. The
 * subclasses add their configuration, positions and completion token.
 */
abstract class QueueBase {
  /** Offset of the queue struct. */
  readonly q: number;
  readonly chainsOff: number;
  readonly iovOff: number;
  readonly usedOff: number;
  /** Chain records of the last pop: CHAIN_WORDS u32 per chain. */
  readonly chainWords: Uint32Array;
  /** Iovecs of the last pop: [offset, length] u32 pairs. */
  readonly iovWords: Uint32Array;
  protected readonly usedWords: Uint32Array;
  protected readonly words: Uint32Array;
  protected staged = 0;
  private reported = false;

  constructor(
    readonly module: VirtioModule,
    base: number,
    readonly maxSize: number,
    readonly maxChains: number,
    readonly maxIov: number,
    protected readonly calls: RingCalls,
    /** Names the queue kind in errors and logs. */
    private readonly label: string,
  ) {
    const buf = module.mem.memory.buffer;
    this.q = base;
    this.chainsOff = base + Q_BYTES;
    this.usedOff = this.chainsOff + maxChains * CHAIN_WORDS * 4;
    this.iovOff = this.usedOff + maxChains * 8;
    this.words = new Uint32Array(buf, base, Q_BYTES / 4);
    this.chainWords = new Uint32Array(buf, this.chainsOff, maxChains * CHAIN_WORDS);
    this.usedWords = new Uint32Array(buf, this.usedOff, maxChains * 2);
    this.iovWords = new Uint32Array(buf, this.iovOff, maxIov * 2);
  }

  /** Writes the queue struct and runs the module's validation (DRIVER_OK). */
  protected start(size: number, features: bigint, descGpa: bigint, driverArea: bigint, deviceArea: bigint, nextAvail: number, nextUsed: number): void {
    if (size > this.maxSize) {
      throw new VirtqueueError('queue-size', `queue size ${size} exceeds this queue's maximum ${this.maxSize}`, VQ_ERROR_CODES['queue-size'], size, true);
    }
    const v = this.module.mem.view;
    const q = this.q;
    v.setUint32(q + Q_SIZE, size >>> 0, true);
    v.setUint32(q + Q_FEATURES, Number(BigInt.asUintN(32, features)), true);
    v.setBigUint64(q + Q_DESC_GPA, BigInt.asUintN(64, descGpa), true);
    v.setBigUint64(q + Q_AVAIL_GPA, BigInt.asUintN(64, driverArea), true);
    v.setBigUint64(q + Q_USED_GPA, BigInt.asUintN(64, deviceArea), true);
    v.setUint32(q + Q_MEM_MAP, this.module.memMap, true);
    v.setUint32(q + Q_LAST_AVAIL, nextAvail, true);
    v.setUint32(q + Q_NEXT_USED, nextUsed, true);
    this.staged = 0;
    this.reported = false;
    this.check(this.calls.setup(q));
  }

  /** Stops the queue (device reset); activate() starts it again. */
  reset(): void {
    this.words[Q_READY / 4] = 0;
    this.words[Q_ERROR / 4] = 0;
    this.staged = 0;
  }

  get ready(): boolean { return this.words[Q_READY / 4] === 1; }
  /** The sticky guest error, if the queue needs a reset. */
  get error(): VirtqueueErrorKind | undefined {
    const c = this.words[Q_ERROR / 4];
    return c === 0 ? undefined : KIND_BY_CODE[c];
  }

  /**
   * Pops up to `max` chains (default maxChains) in one call. Results stay
   * valid until the next pop: chain i is chainWords[i*CHAIN_WORDS + CHAIN_*].
   */
  popBatch(max = this.maxChains): number {
    return this.check(this.calls.popBatch(this.q, this.chainsOff, Math.min(max, this.maxChains), this.iovOff, this.maxIov));
  }

  /** Convenience view of chain i of the last pop (allocates). */
  chain(i: number): Chain {
    const c = this.chainWords;
    const b = i * CHAIN_WORDS;
    const first = c[b + CHAIN_IOV_FIRST];
    const nr = c[b + CHAIN_N_READABLE];
    const nw = c[b + CHAIN_N_WRITABLE];
    const io = this.iovWords;
    const pick = (from: number, n: number) => {
      const out: Array<{ offset: number; length: number }> = [];
      for (let k = from; k < from + n; k++) out.push({ offset: io[2 * k], length: io[2 * k + 1] });
      return out;
    };
    return {
      head: c[b + CHAIN_HEAD],
      readableBytes: c[b + CHAIN_READABLE_BYTES],
      writableBytes: c[b + CHAIN_WRITABLE_BYTES],
      readable: pick(first, nr),
      writable: pick(first + nr, nw),
    };
  }

  /** Buffers aliasing guest memory for chain i of the last pop (no copies). */
  buffers(i: number): { head: number; readable: Buffer[]; writable: Buffer[] } {
    const ch = this.chain(i);
    const mem = this.module.mem;
    return {
      head: ch.head,
      readable: ch.readable.map((v) => mem.buffer(v.offset, v.length)),
      writable: ch.writable.map((v) => mem.buffer(v.offset, v.length)),
    };
  }

  /** Stages a used element; flushUsed() publishes all staged with one update. */
  stageUsed(id: number, len: number): void {
    if (this.staged === this.maxChains) this.flushUsed();
    this.usedWords[2 * this.staged] = id;
    this.usedWords[2 * this.staged + 1] = len;
    this.staged++;
  }

  flushUsed(): number {
    const n = this.staged;
    if (n === 0) return 0;
    this.staged = 0;
    return this.check(this.calls.pushUsedBatch(this.q, this.usedOff, n));
  }

  /**
   * Publishes chains 0..n-1 of the last pop as used with one update, in
   * one call: len = lens[i], or each chain's writable bytes when lens is
   * omitted (a device that filled every writable buffer). Staged elements
   * are flushed first, so the used ring keeps the order of the calls.
   */
  pushUsedChains(n: number, lens?: ArrayLike<number>): number {
    if (this.staged !== 0) this.flushUsed();
    if (n > this.maxChains) throw new VirtqueueError('config', `pushUsedChains: ${n} chains > maxChains ${this.maxChains}`);
    if (lens === undefined) return this.check(this.calls.pushUsedChains(this.q, this.chainsOff, n, 0));
    const u = this.usedWords;
    for (let i = 0; i < n; i++) u[i] = lens[i];
    return this.check(this.calls.pushUsedChains(this.q, this.chainsOff, n, this.usedOff));
  }

  /** Whether the caller must send a used buffer notification now (§2.7.7.2, §2.8.10). */
  needsNotification(): boolean {
    return this.calls.needsNotification(this.q) === 1;
  }

  /** Re-enables kicks; true if chains arrived meanwhile (pop again, do not sleep). */
  enableNotification(): boolean {
    return this.calls.enableNotification(this.q) === 1;
  }

  disableNotification(): void {
    this.calls.disableNotification(this.q);
  }

  protected check(r: number): number {
    if (r >= 0) return r;
    const code = -r;
    const kind = KIND_BY_CODE[code] ?? 'config';
    const sticky = this.words[Q_ERROR / 4] === code;
    const info = sticky ? this.words[Q_ERROR_INFO / 4] : 0;
    if (sticky && !this.reported) {
      this.reported = true; // once per broken queue, not once per call
      // Looked up per use so a later configureLogging() is honoured.
      logger('hot.virtqueue').warn(`${this.label} error: device needs reset`, { kind, info, q: this.q });
    }
    throw new VirtqueueError(kind, `${this.label}: ${kind} (code ${code}, at ${info})`, code, info, sticky);
  }
}

/** Split virtqueue (§2.7). */
export class Virtqueue extends QueueBase {
  constructor(module: VirtioModule, base: number, maxSize: number, maxChains: number, maxIov: number) {
    const w = module.wasm;
    super(module, base, maxSize, maxChains, maxIov, {
      setup: w.vq_setup, availPending: w.vq_avail_pending, popBatch: w.vq_pop_batch, pushUsed: w.vq_push_used,
      pushUsedBatch: w.vq_push_used_batch, pushUsedChains: w.vq_push_used_chains, needsNotification: w.vq_needs_notification,
      enableNotification: w.vq_enable_notification, disableNotification: w.vq_disable_notification,
    }, 'virtqueue');
  }

  /** Validates the driver's configuration and starts the queue (DRIVER_OK). */
  activate(cfg: QueueConfig): void {
    this.start(cfg.size, cfg.features, cfg.descGpa, cfg.availGpa, cfg.usedGpa, (cfg.lastAvailIdx ?? 0) & 0xffff, (cfg.nextUsedIdx ?? 0) & 0xffff);
  }

  get lastAvailIdx(): number { return this.words[Q_LAST_AVAIL / 4]; }
  get nextUsedIdx(): number { return this.words[Q_NEXT_USED / 4]; }

  /** Chains available and not yet popped. */
  pending(): number {
    return this.check(this.calls.availPending(this.q));
  }

  /** Publishes one used element now. */
  pushUsed(id: number, len: number): void {
    this.check(this.calls.pushUsed(this.q, id >>> 0, len >>> 0));
  }
}

// ───────────── packed virtqueue (virtio 1.2 §2.8) ─────────────

export const VIRTIO_F_RING_PACKED = 34;
/** Packed descriptor flags (§2.8.1); NEXT/WRITE/INDIRECT as in split. */
export const VIRTQ_DESC_F_AVAIL = 1 << 7;
export const VIRTQ_DESC_F_USED = 1 << 15;
/** Event suppression flags (§2.8.10). */
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
export const RING_EVENT_FLAGS_DESC = 2;
/** Fresh ring position: 0 with wrap counter 1 (off_wrap encoding). */
export const PACKED_START = 0x8000;

export interface PackedQueueConfig {
  /** Queue Size: 1..32768, not necessarily a power of two. */
  size: number;
  features: bigint;
  /** Descriptor ring (16-byte aligned). */
  descGpa: bigint;
  /** Driver Area: driver event suppression structure (4-byte aligned). */
  driverGpa: bigint;
  /** Device Area: device event suppression structure (4-byte aligned). */
  deviceGpa: bigint;
  /** Restore: position | wrap counter << 15 (default PACKED_START). */
  nextAvail?: number;
  nextUsed?: number;
}

export interface PackedChain extends Chain {
  /** Descriptors the chain took in the ring (what its completion skips). */
  ringDescs: number;
  /** id | ringDescs << 16: what pushUsed/stageUsed take back. */
  token: number;
}

/**
 * Packed queue over the same scratch layout as Virtqueue: one pop fills
 * chain records and iovecs in the split layout, except that a record's
 * word 0 holds the buffer id (low 16 bits) and the ring descriptors the
 * chain took (high 16 bits) — its "token". A completion needs both (the
 * used side skips that many ring slots, §2.8.21.3), so pushUsed/stageUsed
 * take the token, and pushUsedChains reads it from the records.
 */
export class PackedVirtqueue extends QueueBase {
  constructor(module: VirtioModule, base: number, maxSize: number, maxChains: number, maxIov: number) {
    const w = module.wasm;
    super(module, base, maxSize, maxChains, maxIov, {
      setup: w.vqp_setup, availPending: w.vqp_avail_pending, popBatch: w.vqp_pop_batch, pushUsed: w.vqp_push_used,
      pushUsedBatch: w.vqp_push_used_batch, pushUsedChains: w.vqp_push_used_chains, needsNotification: w.vqp_needs_notification,
      enableNotification: w.vqp_enable_notification, disableNotification: w.vqp_disable_notification,
    }, 'packed virtqueue');
  }

  activate(cfg: PackedQueueConfig): void {
    this.start(cfg.size, cfg.features, cfg.descGpa, cfg.driverGpa, cfg.deviceGpa, (cfg.nextAvail ?? PACKED_START) >>> 0, (cfg.nextUsed ?? PACKED_START) >>> 0);
  }

  /** Next ring position to pop | wrap counter << 15. */
  get nextAvail(): number { return this.words[Q_LAST_AVAIL / 4]; }
  /** Next used ring position | wrap counter << 15. */
  get nextUsed(): number { return this.words[Q_NEXT_USED / 4]; }

  /** 1 if a chain is available to pop, else 0 (packed rings keep no count). */
  pending(): number {
    return this.check(this.calls.availPending(this.q));
  }

  /** Chain i of the last pop, its record's word 0 split into id and ring descriptors. */
  override chain(i: number): PackedChain {
    const token = this.chainWords[i * CHAIN_WORDS + CHAIN_HEAD];
    return { ...super.chain(i), head: token & 0xffff, ringDescs: token >>> 16, token };
  }

  override buffers(i: number): { head: number; token: number; readable: Buffer[]; writable: Buffer[] } {
    return { ...super.buffers(i), token: this.chainWords[i * CHAIN_WORDS + CHAIN_HEAD] };
  }

  /** Publishes one used descriptor for the chain with this token now. */
  pushUsed(token: number, len: number): void {
    if (this.staged !== 0) this.flushUsed();
    this.check(this.calls.pushUsed(this.q, token >>> 0, len >>> 0));
  }
}
