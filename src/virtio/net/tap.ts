/**
 * Tap backend for virtio-net: frames go to and come from a Linux tap
 * interface (IFF_TAP | IFF_NO_PI, opened by the addon's tapOpen, native/src/tap.cc).
 * The fd is non-blocking: a readability watcher (uv_poll via the addon)
 * drains it with read(2) until EAGAIN; a write that would block drops the
 * frame (the guest's tx is never held up by the host stack). Needs
 * CAP_NET_ADMIN (or a persistent tap owned by the caller); the tap
 * disappears when closed unless it was made persistent beforehand.
 */
import * as fs from 'node:fs';
import { errorMessage } from '../../common/errors';
import { logger } from '../../common/log';
import { native } from '../../common/native';
import type { NetBackend } from './backend';
import { NetError } from './device';

interface TapAddon {
  tapOpen(name: string): { fd: number; name: string };
  pollStart(fd: number, events: number, cb: (events: number) => void, unref?: boolean): number;
  pollStop(id: number): void;
  closeFd(fd: number): void;
}

const POLL_READABLE = 1;
/** Largest read: a frame plus slack (no GSO, so frames are ≤ MTU + headers). */
const READ_BUF = 65536;

export class TapBackend implements NetBackend {
  readonly name: string;
  readonly stats = { sent: 0, received: 0, dropped: 0 };
  private readonly fd: number;
  private poll: number | undefined;
  private cb: ((f: Buffer) => void) | undefined;
  private readonly buf = Buffer.alloc(READ_BUF);
  private closed = false;
  private readonly log = logger('virtio.net.tap');
  private readonly addon = native() as unknown as TapAddon;

  /** `name`: an interface name or pattern ("kts%d"). */
  constructor(name = 'kts%d') {
    try {
      const t = this.addon.tapOpen(name);
      this.fd = t.fd;
      this.name = t.name;
    } catch (err) {
      throw new NetError('io', `cannot open tap ${name}: ${errorMessage(err)} (needs /dev/net/tun and CAP_NET_ADMIN)`, { cause: err });
    }
  }

  send(frame: Buffer): void {
    if (this.closed) return;
    try {
      fs.writeSync(this.fd, frame);
      this.stats.sent++;
    } catch (err) {
      // EAGAIN (queue full), EIO (interface down): a NIC drops.
      this.stats.dropped++;
      this.log.debug('tap write dropped a frame', { err: errorMessage(err) });
    }
  }

  onFrame(cb: (frame: Buffer) => void): void {
    this.cb = cb;
    if (this.poll === undefined && !this.closed) this.poll = this.addon.pollStart(this.fd, POLL_READABLE, () => this.drain(), true);
  }

  private drain(): void {
    for (let i = 0; i < 256 && !this.closed; i++) {
      let n: number;
      try { n = fs.readSync(this.fd, this.buf, 0, READ_BUF, null); } catch { return; } // EAGAIN: drained
      if (n <= 0) return;
      this.stats.received++;
      this.cb?.(this.buf.subarray(0, n));
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.poll !== undefined) this.addon.pollStop(this.poll);
    this.addon.closeFd(this.fd);
  }
}
