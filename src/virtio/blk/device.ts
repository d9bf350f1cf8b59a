/**
 * virtio-blk device (virtio 1.2 §5.2), file-backed: VIRTIO_BLK_T_IN/OUT
 * (read/write), FLUSH, GET_ID. Read-only is honoured twice: VIRTIO_BLK_F_RO
 * is offered (§5.2.6.2: the driver MUST NOT write), and since a hostile
 * driver may write anyway, the file is opened O_RDONLY and OUT requests get
 * VIRTIO_BLK_S_IOERR.
 *
 * Request layout (§5.2.6): struct virtio_blk_req { le32 type; le32 reserved;
 * le64 sector; u8 data[]; u8 status; } — the 16-byte header in
 * device-readable buffers, data readable (OUT) or writable (IN), and the
 * last writable byte is the status.
 *
 * I/O goes straight between the file and guest memory: the chain's iovecs
 * become Buffers aliasing the hot WebAssembly.Memory (decision 1) handed to
 * preadv/pwritev on the libuv pool. Requests complete out of order; a used
 * element is pushed when its I/O ends. Transport-agnostic (device.ts).
 *
 * Instead of a file, a disk may be served by a read-only BlkBackend (e.g. a
 * converted image's virtual blob device, src/image/blob-device.ts, whose
 * bytes are computed per request): IN requests go to backend.read(), and a
 * backend failure is VIRTIO_BLK_S_IOERR for that request only.
 */
import * as fs from 'node:fs';
import { KataError } from '../../common/errors';
import { splitDev } from '../../common/devnum';
import { logger } from '../../common/log';
import { CHAIN_HEAD, CHAIN_IOV_FIRST, CHAIN_N_READABLE, CHAIN_N_WRITABLE, CHAIN_WORDS, Virtqueue, VirtqueueError } from '../../hot/virtqueue';
import { ConfigSpace, VIRTIO_ID_BLOCK, VIRTIO_RING_FEATURES, type ActivateContext, type VirtioDevice } from '../device';
import { NeedsResetLatch } from '../needs-reset';

export type BlkErrorKind = 'config' | 'malformed';
/**
 * Bytes of an image file or a host block device: fstat's size is 0 for a
 * block device (a host disk or loop device given to a container through
 * linux.devices), and Node has no BLKGETSIZE64; the kernel's
 * /sys/dev/block/MAJOR:MINOR/size counts 512-byte sectors.
 */
function fileOrDeviceBytes(fd: number): number {
  const st = fs.fstatSync(fd, { bigint: true });
  if (!st.isBlockDevice()) return Number(st.size);
  const { major, minor } = splitDev(st.rdev);
  return Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim()) * 512;
}

export class BlkError extends KataError<BlkErrorKind> {}

/** §5.2.3 feature bits. */
export const VIRTIO_BLK_F_SEG_MAX = 1n << 2n;
export const VIRTIO_BLK_F_RO = 1n << 5n;
export const VIRTIO_BLK_F_BLK_SIZE = 1n << 6n;
export const VIRTIO_BLK_F_FLUSH = 1n << 9n;
/** §5.2.6 request types and status. */
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;
export const SECTOR = 512;
export const VIRTIO_BLK_ID_BYTES = 20;
const REQ_HDR = 16;

/**
 * A read-only source of a disk's bytes. read() fills `bufs` (in order) from
 * byte `offset`; it rejects when the bytes cannot be produced correctly, and
 * then the guest gets an I/O error, never other bytes.
 */
export interface BlkBackend {
  readonly size: number;
  read(bufs: Buffer[], offset: number): Promise<void>;
  close?(): void;
}

export interface BlkDeviceOptions {
  /** Backing file (ignored when `backend` is given). */
  path: string;
  /** Serve this read-only backend instead of a file (implies readonly). */
  backend?: BlkBackend;
  readonly?: boolean;
  /** GET_ID answer (≤ 20 bytes, the "serial"). */
  id?: string;
  /** The ring size the front-end is told to use (QEMU's queue-size); sets seg_max. */
  queueSize?: number;
  /**
   * The largest ring accepted (default: queueSize). QEMU's virtio-mmio
   * transport (the microvm machine) reports QueueNumMax = 1024 whatever the
   * device's queue-size, and Linux then sizes the ring at 1024.
   */
  queueMaxSize?: number;
}

export interface BlkMetrics { reads: number; writes: number; flushes: number; readBytes: number; writeBytes: number; errors: number; needsReset: number }

export class BlkDevice implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_BLOCK;
  readonly queueMaxSizes: ReadonlyArray<number>;
  readonly availableFeatures: bigint;
  /** Changes only by grow() (online resize). */
  capacitySectors: bigint;
  readonly metrics: BlkMetrics = { reads: 0, writes: 0, flushes: 0, readBytes: 0, writeBytes: 0, errors: 0, needsReset: 0 };
  private readonly fd: number;
  private readonly config = new ConfigSpace(60);
  private readonly log = logger('virtio.blk');
  private ctx: ActivateContext | undefined;
  /** A malformed request chain or ring: VirtqueueError from the walker, BlkError 'malformed' from request(). */
  private readonly needsReset = new NeedsResetLatch({ log: this.log, name: 'virtio-blk', guestErrors: [VirtqueueError, BlkError], metrics: this.metrics });
  /** Bumped on reset so completions of old requests are dropped. */
  private generation = 0;
  private closed = false;

  constructor(readonly opts: BlkDeviceOptions) {
    if (opts.backend) opts = this.opts = { ...opts, readonly: true };
    this.fd = opts.backend ? -1 : fs.openSync(opts.path, opts.readonly ? 'r' : 'r+');
    const size = opts.backend ? opts.backend.size : fileOrDeviceBytes(this.fd);
    this.capacitySectors = BigInt(Math.floor(size / SECTOR));
    const qs = opts.queueSize ?? 256;
    this.queueMaxSizes = [Math.max(qs, opts.queueMaxSize ?? qs)];
    this.availableFeatures = VIRTIO_RING_FEATURES | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_SEG_MAX | (opts.readonly ? VIRTIO_BLK_F_RO : 0n);
    // §5.2.4 struct virtio_blk_config: capacity @0, size_max @8, seg_max @12,
    // geometry @16, blk_size @20 ...
    this.config.setU64(0, this.capacitySectors);
    this.config.setU32(12, Math.max(1, qs - 2));
    this.config.setU32(20, SECTOR);
  }

  /**
   * Online resize (kata-ctl direct-volume resize): the disk becomes `bytes`
   * long — an image file is extended (ftruncate; new blocks read as zeros),
   * a host block device must already be that big (it is grown on the host)
   * — and the capacity in the config space follows. Only growth: a smaller
   * size would cut the tail off a mounted filesystem. The transport tells
   * the driver (a config-change interrupt); nothing changes on error.
   */
  grow(bytes: number): void {
    const what = `virtio-blk ${this.opts.id ?? this.opts.path}`;
    if (this.opts.backend) throw new BlkError('config', `${what} is a computed read-only disk: it cannot be resized`);
    if (this.opts.readonly) throw new BlkError('config', `${what} is read-only: it cannot be resized`);
    if (this.closed) throw new BlkError('config', `${what} is closed`);
    if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % SECTOR !== 0) throw new BlkError('config', `${what}: new size ${bytes} must be a positive multiple of ${SECTOR} bytes`);
    const cur = Number(this.capacitySectors) * SECTOR;
    if (bytes < cur) throw new BlkError('config', `${what}: new size ${bytes} is smaller than the disk (${cur} bytes); disks only grow`);
    const st = fs.fstatSync(this.fd);
    if (st.isBlockDevice()) {
      const have = fileOrDeviceBytes(this.fd);
      if (have < bytes) throw new BlkError('config', `${what}: the host block device has ${have} bytes, fewer than ${bytes}; grow it on the host first`);
    } else if (st.size < bytes) {
      fs.ftruncateSync(this.fd, bytes);
    }
    this.capacitySectors = BigInt(bytes / SECTOR);
    this.config.setU64(0, this.capacitySectors);
  }

  get configSize(): number { return this.config.size; }
  ackFeatures(_features: bigint): void { /* nothing feature-dependent */ }
  readConfig(offset: number, out: Uint8Array): void { this.config.read(offset, out); }
  writeConfig(_offset: number, _data: Uint8Array): void { /* writeback toggle not offered: read-only config */ }

  activate(ctx: ActivateContext): void {
    if (!ctx.queues[0]) throw new BlkError('config', 'virtio-blk needs its request queue');
    this.ctx = ctx;
    this.needsReset.clear();
  }

  reset(): void {
    this.ctx = undefined;
    this.needsReset.clear();
    this.generation++;
  }

  close(): void {
    this.reset();
    if (!this.closed) {
      this.closed = true;
      if (this.opts.backend) this.opts.backend.close?.();
      else fs.closeSync(this.fd);
    }
  }

  queueNotify(index: number): void {
    const ctx = this.ctx;
    if (!ctx || this.needsReset.tripped || index !== 0) return;
    const vq = ctx.queues[0]!;
    try {
      for (;;) {
        vq.disableNotification();
        let n: number;
        while ((n = vq.popBatch()) > 0) {
          for (let i = 0; i < n; i++) this.request(ctx, vq, i);
          if (this.ctx !== ctx || this.needsReset.tripped) return;
        }
        if (!vq.enableNotification()) break;
      }
    } catch (err) {
      this.fail(err);
    }
  }

  /** Parses chain i of the last pop and starts its I/O. */
  private request(ctx: ActivateContext, vq: Virtqueue, i: number): void {
    const w = vq.chainWords, b = i * CHAIN_WORDS, io = vq.iovWords;
    const head = w[b + CHAIN_HEAD], first = w[b + CHAIN_IOV_FIRST];
    const nr = w[b + CHAIN_N_READABLE], nw = w[b + CHAIN_N_WRITABLE];
    const hot = ctx.memory.hot;
    // §5.2.6: header readable, status the last writable byte.
    if (nr < 1 || io[2 * first + 1] < REQ_HDR || nw < 1) {
      throw new BlkError('malformed', `blk chain ${head}: ${nr} readable (${nr ? io[2 * first + 1] : 0} bytes first) / ${nw} writable descriptors`);
    }
    const hdrOff = io[2 * first];
    const type = hot.view.getUint32(hdrOff, true);
    const sector = hot.view.getBigUint64(hdrOff + 8, true);
    const lastW = first + nr + nw - 1;
    const statusLen = io[2 * lastW + 1];
    if (statusLen < 1) throw new BlkError('malformed', `blk chain ${head}: empty status descriptor`);
    const statusOff = io[2 * lastW] + statusLen - 1;
    // Data buffers: readable ones after the header (OUT), writable ones before the status (IN).
    const bufs: Buffer[] = [];
    const pick = (from: number, to: number, trimLast: boolean) => {
      for (let k = from; k < to; k++) {
        let len = io[2 * k + 1];
        if (trimLast && k === to - 1) len -= 1;
        if (len > 0) bufs.push(hot.buffer(io[2 * k], len));
      }
    };
    const gen = this.generation;
    const done = (status: number, written: number) => {
      if (gen !== this.generation || this.ctx !== ctx) return; // reset meanwhile: the guest forgot this request
      hot.u8[statusOff] = status;
      if (status !== VIRTIO_BLK_S_OK) this.metrics.errors++;
      try {
        vq.pushUsed(head, written + 1);
        if (vq.needsNotification()) ctx.interrupt(0);
      } catch (err) {
        this.fail(err);
      }
    };
    const total = () => bufs.reduce((a, x) => a + x.length, 0);
    switch (type) {
      case VIRTIO_BLK_T_IN: {
        pick(first + nr, first + nr + nw, true);
        const len = total();
        if (!this.inRange(sector, len)) { done(VIRTIO_BLK_S_IOERR, 0); return; }
        this.metrics.reads++;
        const backend = this.opts.backend;
        if (backend) {
          backend.read(bufs, Number(sector) * SECTOR).then(() => {
            this.metrics.readBytes += len;
            done(VIRTIO_BLK_S_OK, len);
          }, (err: unknown) => {
            this.log.warn('backend read failed', { id: this.opts.id, sector: String(sector), len, err: err instanceof Error ? err.message : String(err) });
            done(VIRTIO_BLK_S_IOERR, 0);
          });
          return;
        }
        fs.readv(this.fd, bufs, Number(sector) * SECTOR, (err, n) => {
          if (err) this.log.warn('read failed', { err: err.message });
          // Past EOF of a non-sector-multiple file: the tail reads as zeros.
          else if (n < len) { let z = n; for (const x of bufs) { if (z >= x.length) { z -= x.length; continue; } x.fill(0, z); z = 0; } }
          this.metrics.readBytes += err ? 0 : len;
          done(err ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK, err ? 0 : len);
        });
        return;
      }
      case VIRTIO_BLK_T_OUT: {
        if (this.opts.readonly) { done(VIRTIO_BLK_S_IOERR, 0); return; }
        pick(first + 1, first + nr, false);
        if (io[2 * first + 1] > REQ_HDR) bufs.unshift(hot.buffer(hdrOff + REQ_HDR, io[2 * first + 1] - REQ_HDR));
        const len = total();
        if (!this.inRange(sector, len)) { done(VIRTIO_BLK_S_IOERR, 0); return; }
        this.metrics.writes++;
        fs.writev(this.fd, bufs, Number(sector) * SECTOR, (err) => {
          if (err) this.log.warn('write failed', { err: err.message });
          this.metrics.writeBytes += err ? 0 : len;
          done(err ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK, 0);
        });
        return;
      }
      case VIRTIO_BLK_T_FLUSH:
        this.metrics.flushes++;
        if (this.opts.readonly) { done(VIRTIO_BLK_S_OK, 0); return; }
        fs.fdatasync(this.fd, (err) => done(err ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK, 0));
        return;
      case VIRTIO_BLK_T_GET_ID: {
        pick(first + nr, first + nr + nw, true);
        const id = Buffer.alloc(VIRTIO_BLK_ID_BYTES);
        id.write((this.opts.id ?? '').slice(0, VIRTIO_BLK_ID_BYTES), 'latin1');
        let o = 0;
        for (const x of bufs) { o += id.copy(x, 0, o); if (o >= id.length) break; }
        done(VIRTIO_BLK_S_OK, Math.min(o, VIRTIO_BLK_ID_BYTES));
        return;
      }
      default:
        done(VIRTIO_BLK_S_UNSUPP, 0);
    }
  }

  private inRange(sector: bigint, len: number): boolean {
    return len % SECTOR === 0 && sector + BigInt(len / SECTOR) <= this.capacitySectors;
  }

  private fail(err: unknown): void {
    this.needsReset.trip(this.ctx, err);
  }
}
