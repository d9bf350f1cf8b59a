/**
 * What virtio-net (device.ts) talks to on the host side. Like Firecracker's
 * net device, the device model moves frames and a backend owns the host
 * endpoint: a tap (tap.ts), or a test double (MemoryBackend).
 */
export interface NetBackend {
  /**
   * Guest → host: one Ethernet frame. `frame` aliases guest memory and is
   * only valid during the call: copy it or write it out before returning.
   */
  send(frame: Buffer): void;
  /** Host → guest: the device registers its receiver once. */
  onFrame(cb: (frame: Buffer) => void): void;
  /** Release the host endpoint. Idempotent. */
  close(): void;
}

/** Test double: records what the guest sent, injects frames on request. */
export class MemoryBackend implements NetBackend {
  readonly sent: Buffer[] = [];
  private cb: ((f: Buffer) => void) | undefined;
  private waiters: Array<() => void> = [];
  closed = false;
  /** Called for every guest frame after it is recorded (e.g. to answer). */
  onSend: ((frame: Buffer) => void) | undefined;

  send(frame: Buffer): void {
    const f = Buffer.from(frame);
    this.sent.push(f);
    for (const w of this.waiters.splice(0)) w();
    this.onSend?.(f);
  }
  onFrame(cb: (frame: Buffer) => void): void { this.cb = cb; }
  inject(frame: Buffer): void {
    if (!this.cb) throw new Error('no device attached');
    this.cb(frame);
  }
  /** Resolves once `n` frames have been sent by the guest. */
  async waitSent(n = 1): Promise<Buffer[]> {
    while (this.sent.length < n) await new Promise<void>((r) => this.waiters.push(r));
    return this.sent;
  }
  close(): void { this.closed = true; }
}
