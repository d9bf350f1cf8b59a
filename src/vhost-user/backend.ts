/**
 * vhost-user backend server: serves one VirtioDevice (src/virtio/device.ts)
 * to a vhost-user front end — QEMU 7.2's vhost-user-{vsock,blk,fs}-pci —
 * over a unix socket. Follows QEMU's docs/interop/vhost-user.rst
 * ("Starting and stopping rings", "Communication", "Front-end message
 * types") for the backend side.
 *
 * Lifecycle of one front-end connection:
 *   GET_FEATURES / SET_FEATURES, GET/SET_PROTOCOL_FEATURES,
 *   SET_BACKEND_REQ_FD (the back-end channel, backend-channel.ts, on which
 *   we send CONFIG_CHANGE_MSG when a disk grows), SET_OWNER,
 *   GET_CONFIG (device config space), SET_MEM_TABLE (guest RAM fds mapped
 *   into the hot-path Memory, memory.ts), then per ring SET_VRING_NUM,
 *   SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL and — when
 *   protocol features were negotiated — SET_VRING_ENABLE. Once every ring the
 *   front end runs is started and enabled, the device is activate()d with the
 *   queues; GET_VRING_BASE (stop), disabling a ring, RESET_OWNER/
 *   RESET_DEVICE or a disconnect reset it. A new memory table while it runs
 *   (memory hotplug) does not: the rings are re-pointed and carry on.
 *
 * Notifications are eventfds watched on the Node loop (native uv_poll):
 * a kick calls device.queueNotify(i); the device's interrupt(i) writes the
 * call eventfd. A device that meets a malformed ring asks for NEEDS_RESET;
 * vhost-user has no status bit for that, so we stop the device, log, and
 * signal the ring's error eventfd (QEMU logs "vhost vring error"); the
 * runtime process carries on.
 *
 * One front end at a time: QEMU connects once per device (a second
 * connection while one is live is refused by closing it).
 */
import * as fs from 'node:fs';
import { native } from '../common/native';
import { logger } from '../common/log';
import { errorMessage } from '../common/errors';
import { HotMemory, WASM_PAGE } from '../hot/memory';
import { VirtioModule, Virtqueue } from '../hot/virtqueue';
import type { ActivateContext, GuestMemory, VirtioDevice } from '../virtio/device';
import { VhostUserMemory } from './memory';
import { BackendChannel, BACKEND_ACK_TIMEOUT_MS } from './backend-channel';
import {
  BackendReq, decodeConfig, decodeHeader, decodeMemTable, decodeVringAddr, decodeVringState, encodeConfig, encodeMessage,
  encodeU64, encodeVringState, HEADER_SIZE, MAX_PAYLOAD, PROTOCOL_F_BACKEND_REQ, PROTOCOL_F_CONFIG, PROTOCOL_F_MQ, PROTOCOL_F_REPLY_ACK,
  PROTOCOL_F_RESET_DEVICE, Req, REQ_NAMES, u64, VHOST_USER_F_PROTOCOL_FEATURES, VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK, VHOST_USER_VERSION, VHOST_USER_VERSION_MASK, VhostUserError, VRING_IDX_MASK, VRING_NOFD_MASK,
  type VringAddr,
} from './protocol';

/** Protocol features this backend implements. */
export const BACKEND_PROTOCOL_FEATURES = PROTOCOL_F_MQ | PROTOCOL_F_REPLY_ACK | PROTOCOL_F_CONFIG | PROTOCOL_F_RESET_DEVICE | PROTOCOL_F_BACKEND_REQ;
/** VHOST_F_LOG_ALL (bit 26): dirty logging for migration; never offered. */
const VHOST_F_LOG_ALL = 1n << 26n;

/** Requests whose reply is the message itself (no REPLY_ACK on top). */
const HAS_REPLY = new Set<number>([Req.GET_FEATURES, Req.GET_PROTOCOL_FEATURES, Req.GET_VRING_BASE, Req.GET_QUEUE_NUM, Req.GET_CONFIG, Req.GET_MAX_MEM_SLOTS, Req.GET_INFLIGHT_FD, Req.GET_STATUS]);

export interface VhostUserBackendOptions {
  /** Unix socket path to listen on (QEMU's `-chardev socket,path=`). */
  socketPath: string;
  device: VirtioDevice;
  /**
   * Bytes of guest RAM the front end may map (the VM's -m). Sizes the hot
   * Memory once (decision 1: never grown). Ignored when `hot` is given.
   */
  guestBytes?: number;
  /** Bring your own HotMemory (tests); its guest area must hold the guest's RAM. */
  hot?: HotMemory;
  /**
   * Rings the front end runs (GET_QUEUE_NUM, and the set that must be started
   * before activate()). Default: all the device's queues. vsock under QEMU
   * runs 2 of 3: QEMU serves the event queue itself.
   */
  queues?: number;
  /** Name for logs. */
  name?: string;
}

interface Vring {
  size: number;
  base: number;
  addr: VringAddr | undefined;
  kickFd: number;
  kickPoll: number;
  callFd: number;
  errFd: number;
  started: boolean;
  enabled: boolean;
  vq: Virtqueue;
}

let backendSeq = 0;

export class VhostUserBackend {
  readonly hot: HotMemory;
  readonly module: VirtioModule;
  readonly device: VirtioDevice;
  readonly queueCount: number;
  private readonly mem: VhostUserMemory;
  private readonly rings: Vring[];
  private readonly log;
  private listenFd = -1;
  private listenPoll = 0;
  private connFd = -1;
  private connPoll = 0;
  private closed = false;
  // Read state: header first, then exactly `size` payload bytes, so the fds
  // sent with a message are always received with that message.
  private readonly rx = Buffer.alloc(HEADER_SIZE + MAX_PAYLOAD);
  private have = 0;
  private header: ReturnType<typeof decodeHeader> | undefined;
  private rxFds: number[] = [];
  // Negotiated state, per connection.
  private ackedFeatures = 0n;
  private protocolFeatures = 0n;
  /** Whether SET_FEATURES included VHOST_USER_F_PROTOCOL_FEATURES (rings then start disabled). */
  private protoAcked = false;
  private active = false;
  private broken = false;
  /** The back-end channel (SET_BACKEND_REQ_FD), per connection. */
  private channel: BackendChannel | undefined;
  /** Connections served (tests, metrics). */
  connections = 0;
  /** Messages handled on the current and past connections. */
  messages = 0;
  /**
   * performance.now() when the front end last connected and when the
   * device was last activated (the guest driver started it): the hotplug
   * bench (bench/hotplug.ts) splits request → usable with them.
   */
  connectedAt = 0;
  activatedAt = 0;
  /**
   * When set (benchmarks), every message handled is appended: arrival
   * (performance.now()), name, and the time our handler took — to tell
   * the front end's pace from ours.
   */
  trace: Array<{ at: number; req: string; ms: number }> | undefined;
  /** Backends created while this is true start with a trace (bench/hotplug.ts). */
  static traceNew = false;
  /** Memory tables accepted (the first, then one per memory hotplug). */
  memoryTables = 0;

  /**
   * Guest RAM as the front end's last SET_MEM_TABLE mapped it into `hot`
   * (empty before one, or after a disconnect): the page scanner
   * (src/resource/memory/scanner.ts) reads the guest's pages here, in place.
   */
  get guestMemoryRegions(): ReadonlyArray<{ gpa: bigint; size: number; offset: number }> {
    return this.mem.regions;
  }

  constructor(readonly opts: VhostUserBackendOptions) {
    this.device = opts.device;
    if (VhostUserBackend.traceNew) this.trace = [];
    this.queueCount = opts.queues ?? opts.device.queueMaxSizes.length;
    if (this.queueCount < 1 || this.queueCount > opts.device.queueMaxSizes.length) {
      throw new VhostUserError('config', `queues ${this.queueCount} out of 1..${opts.device.queueMaxSizes.length}`);
    }
    this.log = logger('vhost-user', { dev: opts.name ?? `type${opts.device.deviceType}` });
    if (opts.hot) this.hot = opts.hot;
    else {
      const bytes = Math.ceil((opts.guestBytes ?? 0) / WASM_PAGE) * WASM_PAGE;
      if (bytes <= 0) throw new VhostUserError('config', 'guestBytes (the VM RAM size) is required without a HotMemory');
      // A placeholder region sizes the guest area; the real layout arrives
      // with SET_MEM_TABLE and is written to the module's memory map.
      this.hot = new HotMemory({ scratchBytes: 1 << 20, guestRegions: [{ gpa: 0n, size: bytes }] });
    }
    this.module = new VirtioModule(this.hot);
    this.module.writeMemoryMap([]);
    this.mem = new VhostUserMemory(this.hot);
    this.rings = [];
    backendSeq++;
    for (let i = 0; i < this.queueCount; i++) {
      const maxSize = opts.device.queueMaxSizes[i];
      this.rings.push({
        size: 0, base: 0, addr: undefined, kickFd: -1, kickPoll: 0, callFd: -1, errFd: -1, started: false, enabled: false,
        vq: this.module.createQueue({ maxSize, name: `vhost-user.${backendSeq}.q${i}` }),
      });
    }
  }

  /** Listens on the socket (replacing a stale socket file). */
  listen(): void {
    const n = native();
    try { fs.unlinkSync(this.opts.socketPath); } catch { /* none */ }
    this.listenFd = n.unixListenNb(this.opts.socketPath, 4);
    this.listenPoll = n.pollStart(this.listenFd, 1, () => this.onAccept(), true);
  }

  get isActive(): boolean { return this.active; }

  /**
   * Why a config change cannot reach the guest now, or undefined when it
   * can: it needs a front end that opened the back-end channel and a guest
   * driver that started the device (QEMU 7.2's vhost-user-blk ignores a
   * config change on a stopped device).
   */
  configChangeBlocker(): string | undefined {
    if (this.connFd < 0) return 'no vhost-user front end is connected';
    if (!(this.protocolFeatures & PROTOCOL_F_BACKEND_REQ)) return 'the front end did not negotiate PROTOCOL_F_BACKEND_REQ (no back-end channel)';
    if (!this.channel) return 'the front end has not opened the back-end channel (no SET_BACKEND_REQ_FD yet)';
    if (!this.channel.isOpen) return `the back-end channel is closed (${this.channel.closedReason})`;
    if (!this.active) return 'the guest driver has not started the device';
    return undefined;
  }

  /**
   * Tells the front end the config space changed (CONFIG_CHANGE_MSG on the
   * back-end channel): QEMU re-reads it with GET_CONFIG and raises the
   * guest's config-change interrupt. Resolves once the front end acked
   * (with REPLY_ACK), so the guest has been notified when it returns.
   */
  async notifyConfigChange(timeoutMs = BACKEND_ACK_TIMEOUT_MS): Promise<void> {
    const why = this.configChangeBlocker();
    if (why) throw new VhostUserError('config', `config change not delivered: ${why}`);
    await this.channel!.request(BackendReq.CONFIG_CHANGE_MSG, timeoutMs);
    this.log.debug('config change delivered');
  }
  get isConnected(): boolean { return this.connFd >= 0; }

  /** Stops listening, drops the front end, resets the device. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.disconnect('backend closed');
    const n = native();
    if (this.listenPoll) n.pollStop(this.listenPoll);
    if (this.listenFd >= 0) n.closeFd(this.listenFd);
    this.listenPoll = 0;
    this.listenFd = -1;
    try { fs.unlinkSync(this.opts.socketPath); } catch { /* gone */ }
  }

  private onAccept(): void {
    const n = native();
    for (;;) {
      let fd: number;
      try {
        fd = n.acceptNb(this.listenFd);
      } catch (err) {
        this.log.warn('accept failed', { err: errorMessage(err) });
        return;
      }
      if (fd < 0) return;
      if (this.connFd >= 0 || this.closed) {
        this.log.warn('refusing a second front-end connection');
        n.closeFd(fd);
        continue;
      }
      this.connFd = fd;
      this.connections++;
      this.connectedAt = performance.now();
      this.resetConnectionState();
      // The connection keeps the process alive while the VM runs.
      this.connPoll = n.pollStart(fd, 1, (ev) => this.onReadable(ev));
      this.log.debug('front end connected');
    }
  }

  private resetConnectionState(): void {
    this.have = 0;
    this.header = undefined;
    this.rxFds = [];
    this.ackedFeatures = 0n;
    this.protocolFeatures = 0n;
    this.protoAcked = false;
    this.broken = false;
  }

  private onReadable(_ev: number): void {
    const n = native();
    while (this.connFd >= 0) {
      const want = this.header ? HEADER_SIZE + this.header.size - this.have : HEADER_SIZE - this.have;
      let r: { bytes: number; fds: number[]; truncated?: boolean };
      try {
        r = n.recvMsg(this.connFd, this.rx, this.have, want);
      } catch (err) {
        this.disconnect(`recvmsg: ${errorMessage(err)}`);
        return;
      }
      this.rxFds.push(...r.fds);
      if (r.bytes < 0) return; // EAGAIN: wait for more
      if (r.bytes === 0) {
        this.disconnect('front end closed the connection');
        return;
      }
      if (r.truncated) {
        this.disconnect('fds were truncated (too many in one message)');
        return;
      }
      this.have += r.bytes;
      if (!this.header) {
        if (this.have < HEADER_SIZE) continue;
        const h = decodeHeader(this.rx);
        if ((h.flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION || h.size > MAX_PAYLOAD) {
          this.disconnect(`bad message header (request ${h.request}, flags 0x${h.flags.toString(16)}, size ${h.size})`);
          return;
        }
        this.header = h;
      }
      if (this.have < HEADER_SIZE + this.header.size) continue;
      const h = this.header;
      const payload = Buffer.from(this.rx.subarray(HEADER_SIZE, HEADER_SIZE + h.size));
      const fds = this.rxFds;
      this.header = undefined;
      this.have = 0;
      this.rxFds = [];
      this.dispatch(h.request, h.flags, payload, fds);
    }
  }

  private dispatch(request: number, flags: number, payload: Buffer, fds: number[]): void {
    this.messages++;
    const name = REQ_NAMES[request] ?? `request ${request}`;
    let reply: Buffer | undefined;
    let ok = true;
    const at = this.trace ? performance.now() : 0;
    try {
      reply = this.handle(request, payload, fds);
    } catch (err) {
      ok = false;
      this.log.warn('vhost-user request failed', { request: name, err: errorMessage(err) });
      // Fds not consumed by a failed handler must not leak.
      for (const fd of fds) try { native().closeFd(fd); } catch { /* consumed */ }
    }
    this.trace?.push({ at, req: name, ms: performance.now() - at });
    if (this.connFd < 0) return;
    if (HAS_REPLY.has(request)) {
      // The front end blocks for this reply: answer even on failure (an
      // empty payload, which QEMU reports as an error instead of hanging).
      this.send(request, reply ?? Buffer.alloc(0));
    } else if ((flags & VHOST_USER_NEED_REPLY_MASK) && (this.protocolFeatures & PROTOCOL_F_REPLY_ACK)) {
      this.send(request, encodeU64(ok ? 0n : 1n));
    }
  }

  private send(request: number, payload: Buffer): void {
    const msg = encodeMessage(request, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, payload);
    const n = native();
    let off = 0;
    // Replies are tiny; a full socket buffer here means the front end is not
    // reading at all. Give it a short grace, then drop the connection.
    for (let tries = 0; off < msg.length; tries++) {
      const sent = n.sendMsg(this.connFd, off === 0 ? msg : msg.subarray(off));
      if (sent > 0) off += sent;
      else if (tries > 1000) {
        this.disconnect('front end does not read replies');
        return;
      }
    }
  }

  private ring(index: number | bigint, what: string): Vring {
    const i = Number(index);
    const r = this.rings[i];
    if (!r) throw new VhostUserError('vring', `${what}: ring ${i} out of 0..${this.queueCount - 1}`);
    return r;
  }

  private singleFd(fds: number[], what: string): number {
    if (fds.length !== 1) throw new VhostUserError('protocol', `${what}: expected 1 fd, got ${fds.length}`);
    return fds[0];
  }

  /** Handles one message; returns the reply payload for requests that have one. */
  private handle(request: number, p: Buffer, fds: number[]): Buffer | undefined {
    const n = native();
    const noFds = (what: string) => {
      if (fds.length) throw new VhostUserError('protocol', `${what}: unexpected fds`);
    };
    switch (request) {
      case Req.GET_FEATURES:
        return encodeU64(this.device.availableFeatures | VHOST_USER_F_PROTOCOL_FEATURES);
      case Req.SET_FEATURES: {
        noFds('SET_FEATURES');
        const f = u64(p, 'SET_FEATURES');
        const offered = this.device.availableFeatures | VHOST_USER_F_PROTOCOL_FEATURES;
        if ((f & ~offered & ~VHOST_F_LOG_ALL) !== 0n) throw new VhostUserError('protocol', `SET_FEATURES 0x${f.toString(16)} has bits never offered`);
        this.ackedFeatures = f & ~VHOST_USER_F_PROTOCOL_FEATURES & ~VHOST_F_LOG_ALL;
        this.protoAcked = (f & VHOST_USER_F_PROTOCOL_FEATURES) !== 0n;
        this.device.ackFeatures(this.ackedFeatures);
        return undefined;
      }
      case Req.GET_PROTOCOL_FEATURES:
        return encodeU64(BACKEND_PROTOCOL_FEATURES);
      case Req.SET_PROTOCOL_FEATURES: {
        noFds('SET_PROTOCOL_FEATURES');
        this.protocolFeatures = u64(p, 'SET_PROTOCOL_FEATURES') & BACKEND_PROTOCOL_FEATURES;
        return undefined;
      }
      case Req.SET_OWNER:
        noFds('SET_OWNER');
        return undefined;
      case Req.SET_BACKEND_REQ_FD: {
        if (!(this.protocolFeatures & PROTOCOL_F_BACKEND_REQ)) throw new VhostUserError('protocol', 'SET_BACKEND_REQ_FD without PROTOCOL_F_BACKEND_REQ');
        const fd = this.singleFd(fds, 'SET_BACKEND_REQ_FD');
        fds.length = 0;
        this.channel?.close('replaced by a new SET_BACKEND_REQ_FD');
        this.channel = new BackendChannel(fd, (this.protocolFeatures & PROTOCOL_F_REPLY_ACK) !== 0n);
        return undefined;
      }
      case Req.RESET_OWNER:
      case Req.RESET_DEVICE:
        this.resetRings();
        this.mem.unmapAll();
        this.module.writeMemoryMap([]);
        return undefined;
      case Req.GET_QUEUE_NUM:
        return encodeU64(BigInt(this.queueCount));
      case Req.SET_MEM_TABLE: {
        // A table while the device runs is a memory hotplug (QEMU's vhost
        // memory listener commits the new layout without stopping the
        // rings): the device must carry on with its state — resetting it
        // here dropped every vsock connection (the agent's channel died
        // after a DIMM hotplug). memory.ts keeps mapped files in place, so
        // the rings are only re-pointed at their (unchanged) offsets.
        const table = decodeMemTable(p);
        // memory.ts owns (and closes) the fds from here; a bad table throws
        // before anything changes.
        const regions = this.mem.set(table, fds.splice(0));
        this.module.writeMemoryMap(regions);
        if (this.module.wasm.mem_map_check(this.module.memMap) !== 0) {
          this.deactivate('memory map rejected');
          this.mem.unmapAll();
          this.module.writeMemoryMap([]);
          throw new VhostUserError('memory', 'memory map rejected by the virtqueue module');
        }
        this.log.debug('memory table', { regions: regions.map((r) => ({ gpa: `0x${r.gpa.toString(16)}`, size: r.size, offset: r.offset })) });
        if (this.active) {
          if (this.mem.moved) {
            // Pages the device was using moved: it cannot carry on in place.
            this.log.warn('new memory table moved mapped guest RAM; device restarted', { regions: regions.length });
            this.deactivate('memory moved');
            this.maybeActivate();
          } else this.repointRings();
        } else this.maybeActivate();
        this.memoryTables++;
        return undefined;
      }
      case Req.SET_VRING_NUM: {
        noFds('SET_VRING_NUM');
        const s = decodeVringState(p, 'SET_VRING_NUM');
        const r = this.ring(s.index, 'SET_VRING_NUM');
        if (s.num < 1 || s.num > r.vq.maxSize || (s.num & (s.num - 1)) !== 0) {
          throw new VhostUserError('vring', `SET_VRING_NUM: size ${s.num} is not a power of two ≤ ${r.vq.maxSize}`);
        }
        r.size = s.num;
        return undefined;
      }
      case Req.SET_VRING_ADDR: {
        noFds('SET_VRING_ADDR');
        const a = decodeVringAddr(p);
        this.ring(a.index, 'SET_VRING_ADDR').addr = a;
        return undefined;
      }
      case Req.SET_VRING_BASE: {
        noFds('SET_VRING_BASE');
        const s = decodeVringState(p, 'SET_VRING_BASE');
        this.ring(s.index, 'SET_VRING_BASE').base = s.num & 0xffff;
        return undefined;
      }
      case Req.GET_VRING_BASE: {
        // "Stop the ring": the device stops, and the front end learns where
        // we got to so it can restart the ring there later.
        const s = decodeVringState(p, 'GET_VRING_BASE');
        const r = this.ring(s.index, 'GET_VRING_BASE');
        this.deactivate('ring stopped');
        // Stopping rings is how the front end resets the device (the guest
        // driver's reset reaches us as vhost_dev_stop): a NEEDS_RESET is over.
        this.broken = false;
        r.started = false;
        this.stopKick(r);
        return encodeVringState({ index: s.index, num: r.base });
      }
      case Req.SET_VRING_KICK:
      case Req.SET_VRING_CALL:
      case Req.SET_VRING_ERR: {
        const v = u64(p, REQ_NAMES[request]);
        const r = this.ring(v & VRING_IDX_MASK, REQ_NAMES[request]);
        const nofd = (v & VRING_NOFD_MASK) !== 0n;
        const fd = nofd ? -1 : this.singleFd(fds, REQ_NAMES[request]);
        fds.length = 0;
        if (request === Req.SET_VRING_CALL) {
          if (r.callFd >= 0) n.closeFd(r.callFd);
          r.callFd = fd;
        } else if (request === Req.SET_VRING_ERR) {
          if (r.errFd >= 0) n.closeFd(r.errFd);
          r.errFd = fd;
        } else {
          this.stopKick(r);
          if (nofd) this.log.warn('ring without a kick fd (polling mode) is not supported; it will not be served', { ring: Number(v & VRING_IDX_MASK) });
          r.kickFd = fd;
          const index = this.rings.indexOf(r);
          if (fd >= 0) r.kickPoll = n.pollStart(fd, 1, () => this.onKick(index), true);
          r.started = fd >= 0;
          // Without protocol features a ring is enabled as soon as it starts.
          if (!this.protoAcked) r.enabled = true;
          this.maybeActivate();
        }
        return undefined;
      }
      case Req.SET_VRING_ENABLE: {
        noFds('SET_VRING_ENABLE');
        const s = decodeVringState(p, 'SET_VRING_ENABLE');
        const r = this.ring(s.index, 'SET_VRING_ENABLE');
        r.enabled = s.num === 1;
        if (!r.enabled) this.deactivate('ring disabled');
        else this.maybeActivate();
        return undefined;
      }
      case Req.GET_CONFIG: {
        const c = decodeConfig(p, 'GET_CONFIG');
        const out = new Uint8Array(c.size);
        this.device.readConfig(c.offset, out);
        return encodeConfig(c.offset, out, c.flags);
      }
      case Req.SET_CONFIG: {
        noFds('SET_CONFIG');
        const c = decodeConfig(p, 'SET_CONFIG');
        this.device.writeConfig(c.offset, c.data);
        return undefined;
      }
      default:
        throw new VhostUserError('protocol', `unsupported request ${REQ_NAMES[request] ?? request}`);
    }
  }


  private onKick(index: number): void {
    const r = this.rings[index];
    if (!r || r.kickFd < 0) return;
    // Always drain the eventfd: the poll is level-triggered.
    let v: number;
    try {
      v = native().eventfdRead(r.kickFd);
    } catch {
      return;
    }
    if (v < 0 || !this.active || this.broken) return;
    this.notifyDevice(index);
  }

  private notifyDevice(index: number): void {
    try {
      this.device.queueNotify(index);
    } catch (err) {
      // Device bugs must not take the runtime down; treat like a broken ring.
      this.needsReset(index, `device threw: ${errorMessage(err)}`);
    }
  }

  private stopKick(r: Vring): void {
    const n = native();
    if (r.kickPoll) n.pollStop(r.kickPoll);
    if (r.kickFd >= 0) n.closeFd(r.kickFd);
    r.kickPoll = 0;
    r.kickFd = -1;
  }

  /** Activates the device once every ring the front end runs is ready. */
  private maybeActivate(): void {
    if (this.active || this.broken || this.mem.regions.length === 0) return;
    if (!this.rings.every((r) => r.started && r.enabled && r.addr && r.size > 0)) return;
    const queues: Virtqueue[] = [];
    try {
      for (const r of this.rings) {
        const a = r.addr!;
        const descGpa = this.mem.uvaToGpa(a.descUser, 16 * r.size);
        const availGpa = this.mem.uvaToGpa(a.availUser, 6 + 2 * r.size);
        const usedGpa = this.mem.uvaToGpa(a.usedUser, 6 + 8 * r.size);
        if (descGpa === undefined || availGpa === undefined || usedGpa === undefined) {
          throw new VhostUserError('vring', `ring ${this.rings.indexOf(r)}: addresses are outside the memory table`);
        }
        // The used idx lives in guest memory; resume from it (it equals the
        // base on a fresh start, where the driver zeroed the ring).
        const usedOff = this.module.translate(usedGpa, 4)!;
        const nextUsedIdx = this.hot.view.getUint16(usedOff + 2, true);
        r.vq.activate({ size: r.size, features: this.ackedFeatures, descGpa, availGpa, usedGpa, lastAvailIdx: r.base, nextUsedIdx });
        queues.push(r.vq);
      }
    } catch (err) {
      this.log.warn('cannot start rings', { err: errorMessage(err) });
      this.signalErr(-1);
      return;
    }
    const memory: GuestMemory = {
      hot: this.hot,
      module: this.module,
      translate: (gpa, len) => this.module.translate(gpa, len),
    };
    const ctx: ActivateContext = {
      memory,
      queues,
      features: this.ackedFeatures,
      interrupt: (i) => {
        const fd = this.rings[i]?.callFd ?? -1;
        if (fd >= 0) native().eventfdWrite(fd, 1);
      },
      // The device changed its config space on its own: tell the front end
      // (best effort; the runtime's resize path awaits notifyConfigChange).
      configChanged: () => void this.notifyConfigChange().catch((err) => this.log.warn('config change not delivered', { err: errorMessage(err) })),
      needsReset: (reason) => this.needsReset(-1, reason),
    };
    this.active = true;
    this.activatedAt = performance.now();
    this.log.debug('device activated', { queues: queues.length });
    try {
      this.device.activate(ctx);
    } catch (err) {
      this.active = false;
      this.log.warn('device activation failed', { err: errorMessage(err) });
      return;
    }
    // Kicks that came before activation were drained; look at every queue.
    for (let i = 0; i < this.rings.length && this.active; i++) this.notifyDevice(i);
  }

  /**
   * After a new memory table that kept the mapped RAM in place: restarts each
   * running ring at its current position with offsets from the new map (the
   * virtqueue module caches them), without resetting the device.
   */
  private repointRings(): void {
    try {
      for (const r of this.rings) {
        if (!r.vq.ready) continue;
        const a = r.addr!;
        const descGpa = this.mem.uvaToGpa(a.descUser, 16 * r.size);
        const availGpa = this.mem.uvaToGpa(a.availUser, 6 + 2 * r.size);
        const usedGpa = this.mem.uvaToGpa(a.usedUser, 6 + 8 * r.size);
        if (descGpa === undefined || availGpa === undefined || usedGpa === undefined) {
          throw new VhostUserError('vring', `ring ${this.rings.indexOf(r)}: addresses are outside the new memory table`);
        }
        r.vq.activate({ size: r.size, features: this.ackedFeatures, descGpa, availGpa, usedGpa, lastAvailIdx: r.vq.lastAvailIdx, nextUsedIdx: r.vq.nextUsedIdx });
      }
    } catch (err) {
      this.needsReset(-1, `rings after a new memory table: ${errorMessage(err)}`);
      return;
    }
    // Kicks that came while the table was handled were drained by their polls.
    for (let i = 0; i < this.rings.length && this.active; i++) this.notifyDevice(i);
  }

  private needsReset(ring: number, reason: string): void {
    if (this.broken) return;
    this.broken = true;
    this.log.error('device needs reset (malformed guest input); device stopped until the driver resets it', { reason });
    this.deactivate('needs reset');
    this.signalErr(ring);
  }

  /** Signals the error eventfd of `ring`, or of every ring (-1) when the device as a whole failed. */
  private signalErr(ring: number): void {
    for (const r of ring < 0 ? this.rings : [this.rings[ring]]) {
      const fd = r?.errFd ?? -1;
      if (fd >= 0) try { native().eventfdWrite(fd, 1); } catch { /* closed */ }
    }
  }

  /** Stops the device; remembers each ring's position for GET_VRING_BASE. */
  private deactivate(why: string): void {
    if (!this.active) return;
    this.active = false;
    for (const r of this.rings) {
      if (r.vq.ready) r.base = r.vq.lastAvailIdx & 0xffff;
      r.vq.reset();
    }
    this.log.debug('device reset', { why });
    try {
      this.device.reset();
    } catch (err) {
      this.log.warn('device reset threw', { err: errorMessage(err) });
    }
  }

  private resetRings(): void {
    this.deactivate('reset');
    const n = native();
    for (const r of this.rings) {
      this.stopKick(r);
      if (r.callFd >= 0) n.closeFd(r.callFd);
      if (r.errFd >= 0) n.closeFd(r.errFd);
      r.callFd = r.errFd = -1;
      r.size = 0;
      r.base = 0;
      r.addr = undefined;
      r.started = r.enabled = false;
    }
    this.broken = false;
  }

  private disconnect(why: string): void {
    if (this.connFd < 0) return;
    this.log.debug('front end disconnected', { why });
    const n = native();
    this.resetRings();
    this.mem.unmapAll();
    this.module.writeMemoryMap([]);
    for (const fd of this.rxFds) try { n.closeFd(fd); } catch { /* gone */ }
    this.rxFds = [];
    this.channel?.close('front end disconnected');
    this.channel = undefined;
    if (this.connPoll) n.pollStop(this.connPoll);
    n.closeFd(this.connFd);
    this.connPoll = 0;
    this.connFd = -1;
    this.resetConnectionState();
  }
}
