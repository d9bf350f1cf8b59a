/**
 * The transport-agnostic virtio device interface (virtio 1.2 §2, §3, §4).
 *
 * One device model (src/virtio/<dev>) serves every transport: the builtin
 * VMM's virtio-mmio transport (§4.2, src/vmm) and the vhost-user backend
 * (src/vhost-user) that QEMU drives. Like Firecracker's VirtioDevice trait,
 * a device never sees MMIO registers, PCI capabilities or vhost-user
 * messages. It declares what it offers (type, features, queue sizes, config
 * space) and at activate() it gets everything it needs to run: guest memory,
 * started queues and a way to interrupt the guest.
 *
 * Division of labour (who does what):
 *   transport                              device
 *   ─────────                              ──────
 *   feature negotiation (§2.2, §3.1.1)     availableFeatures / ackFeatures()
 *   config space access (§2.5)             readConfig() / writeConfig()
 *   queue set-up: size, desc/avail/used    —
 *     GPAs, Virtqueue.activate()
 *   DRIVER_OK → activate(ctx)              starts serving its queues
 *   queue notification (kick)              queueNotify(index)
 *   raise the interrupt line / call fd     decides *when*: after
 *                                            Virtqueue.needsNotification()
 *   device reset (status 0, vhost-user     reset(): drop in-flight state,
 *     GET_VRING_BASE, disconnect)            forget ctx; activate() may follow
 *   DEVICE_NEEDS_RESET (§2.1.2) status     ctx.needsReset(reason) when a
 *     bit + config interrupt                 queue/chain is malformed
 *
 * The device column's common parts live in one place so the device models
 * cannot drift apart: ConfigSpace (below) builds and serves a read-only,
 * little-endian config struct; NeedsResetLatch (needs-reset.ts) is the
 * log-once/stop/ctx.needsReset side of DEVICE_NEEDS_RESET.
 *
 * Guest memory: ctx.memory.translate(gpa, len) gives the offset in the one
 * hot-path WebAssembly.Memory (ARCHITECTURE.md decision 1), and
 * ctx.memory.hot.buffer(off, len) a Buffer aliasing it — do file/socket I/O
 * on that Buffer, no copies. Chains popped from a Virtqueue are already
 * translated and bounds-checked in WASM (decision 2). Never cache Buffers or
 * offsets across a reset: the next activate() may bring a new memory map.
 *
 * Threading: everything runs on the Node event loop. A device must not block
 * it; long I/O is async, and queueNotify() may be called again before earlier
 * work completes.
 */
import type { HotMemory } from '../hot/memory';
import type { Virtqueue, VirtioModule } from '../hot/virtqueue';

/** §5 Device Types (the ids a transport reports as DeviceID). */
export const VIRTIO_ID_NET = 1;
export const VIRTIO_ID_BLOCK = 2;
export const VIRTIO_ID_CONSOLE = 3;
export const VIRTIO_ID_RNG = 4;
export const VIRTIO_ID_BALLOON = 5;
export const VIRTIO_ID_VSOCK = 19;
export const VIRTIO_ID_FS = 26;

/** §2.1 Device Status Field bits (transports keep the status; listed for them). */
export const VIRTIO_CONFIG_S_ACKNOWLEDGE = 1;
export const VIRTIO_CONFIG_S_DRIVER = 2;
export const VIRTIO_CONFIG_S_DRIVER_OK = 4;
export const VIRTIO_CONFIG_S_FEATURES_OK = 8;
export const VIRTIO_CONFIG_S_NEEDS_RESET = 0x40;
export const VIRTIO_CONFIG_S_FAILED = 0x80;

/** §6 Reserved Feature Bits, as bigint masks. */
export const VIRTIO_F_INDIRECT_DESC = 1n << 28n;
export const VIRTIO_F_EVENT_IDX = 1n << 29n;
export const VIRTIO_F_VERSION_1 = 1n << 32n;
export const VIRTIO_F_ACCESS_PLATFORM = 1n << 33n;
/**
 * Ring features assembly/virtio implements (split ring, indirect, event idx).
 * Devices normally offer these plus VERSION_1 plus their own bits.
 */
export const VIRTIO_RING_FEATURES = VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_F_VERSION_1;

/** Guest memory as a device sees it: translation into the hot-path Memory. */
export interface GuestMemory {
  /** The shared WebAssembly.Memory wrapper (views, Buffers aliasing it). */
  readonly hot: HotMemory;
  /** The virtqueue module with the current guest memory map. */
  readonly module: VirtioModule;
  /**
   * Memory offset of guest-physical [gpa, gpa+len), or undefined when any
   * byte of it lies outside guest RAM (hostile address: fail the request).
   */
  translate(gpa: bigint, len: number): number | undefined;
}

/** What a transport hands a device when the driver sets DRIVER_OK. */
export interface ActivateContext {
  readonly memory: GuestMemory;
  /**
   * The device's queues, index i = virtqueue i of the device type (e.g.
   * vsock: 0 rx, 1 tx, 2 event). Each is already activated on the driver's
   * ring addresses. An entry is undefined when the driver did not set that
   * queue up (allowed for optional queues; vhost-user also leaves out queues
   * the front end serves itself, e.g. vsock's event queue under QEMU).
   */
  readonly queues: ReadonlyArray<Virtqueue | undefined>;
  /** Negotiated features (the driver's subset of availableFeatures). */
  readonly features: bigint;
  /**
   * Used buffer notification for queue `index` (§2.3.2). Call it only when
   * Virtqueue.needsNotification() said so; the transport does not filter.
   */
  interrupt(index: number): void;
  /** Configuration change notification (§2.3.1), after config space changed. */
  configChanged(): void;
  /**
   * The device met a malformed queue or chain (§2.1.2): the transport sets
   * DEVICE_NEEDS_RESET where it can and logs. The device stops using the
   * queues until reset(); the host process carries on.
   */
  needsReset(reason: string): void;
}

export interface VirtioDevice {
  /** §5 device type (VIRTIO_ID_*). */
  readonly deviceType: number;
  /** Max size of each queue; length = number of queues the device has. */
  readonly queueMaxSizes: ReadonlyArray<number>;
  /** Feature bits offered to the driver (64-bit). */
  readonly availableFeatures: bigint;
  /** Bytes of device-specific configuration space (0 if none). */
  readonly configSize: number;
  /** The driver accepted `features` (FEATURES_OK); a subset of availableFeatures. */
  ackFeatures(features: bigint): void;
  /** Reads config space [offset, offset+out.length) into out; out-of-range bytes read as 0. */
  readConfig(offset: number, out: Uint8Array): void;
  /** Driver write to config space; devices with read-only config ignore it. */
  writeConfig(offset: number, data: Uint8Array): void;
  /** DRIVER_OK: start serving. Called once per reset cycle. */
  activate(ctx: ActivateContext): void;
  /** The driver notified queue `index` (MMIO QueueNotify, vhost-user kick fd). */
  queueNotify(index: number): void;
  /** Device reset: stop using memory and queues, drop in-flight work. */
  reset(): void;
  /** Host shutdown: release host resources (files, sockets). Idempotent. */
  close?(): Promise<void> | void;
  /**
   * Before a snapshot: complete chains the device holds on purpose (not
   * in-flight I/O) so the queues drain — the balloon's statistics buffer,
   * which it keeps until it wants fresh figures (§5.5.6.3).
   */
  releaseHeld?(): void;
}

/** Reads `src` (a device's config struct) into `out` at `offset`, zero-filling past its end. */
export function copyConfig(src: Uint8Array, offset: number, out: Uint8Array): void {
  for (let i = 0; i < out.length; i++) {
    const p = offset + i;
    out[i] = p >= 0 && p < src.length ? src[p] : 0;
  }
}

/**
 * A device's configuration space (§2.5) as the device models here have it:
 * a fixed struct filled in once at construction and read-only afterwards.
 * Every multi-byte field is little-endian (§2.5: "in little-endian format"
 * for VERSION_1 devices), so the setters take no endianness flag to forget.
 * Reads go through copyConfig, which makes any offset/length a transport
 * passes (MMIO access, vhost-user GET_CONFIG) safe: bytes past the struct
 * read as 0, nothing throws.
 */
export class ConfigSpace {
  readonly bytes: Uint8Array;
  private readonly view: DataView;

  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
  }

  /** configSize for VirtioDevice. */
  get size(): number { return this.bytes.length; }

  setU16(offset: number, v: number): void { this.view.setUint16(offset, v, true); }
  setU32(offset: number, v: number): void { this.view.setUint32(offset, v, true); }
  setU64(offset: number, v: bigint): void { this.view.setBigUint64(offset, v, true); }
  setBytes(offset: number, src: Uint8Array): void { this.bytes.set(src, offset); }

  /** VirtioDevice.readConfig. */
  read(offset: number, out: Uint8Array): void { copyConfig(this.bytes, offset, out); }
}
