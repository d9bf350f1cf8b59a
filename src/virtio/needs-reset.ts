/**
 * The device side of DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2), shared by the
 * device models in src/virtio/<dev>. Its one job: turn the first
 * malformed-guest-input error of an activate/reset cycle into exactly one
 * log line, one metrics tick and one ctx.needsReset(reason), and remember
 * that the device must not touch its queues again until reset().
 *
 * What happens next is the transport's (device.ts, "Division of labour"):
 * virtio-mmio (src/vmm) sets the status bit and raises a config interrupt;
 * vhost-user (src/vhost-user) signals the rings' err eventfds and calls
 * device.reset() — synchronously, from inside ctx.needsReset(). That is why
 * trip() raises the latch and logs *before* it calls the transport, and why
 * devices re-check `tripped` (and their ctx) after any call that can fail.
 */
import { errorMessage } from '../common/errors';
import type { Logger } from '../common/log';
import type { ActivateContext } from './device';

type ErrorClass = abstract new (...args: never[]) => Error;

export interface NeedsResetOptions {
  /** The device's logger (module virtio.<dev>). */
  readonly log: Logger;
  /** Prefix of the default log line, e.g. "virtio-blk". */
  readonly name: string;
  /**
   * Error classes that mean the guest broke its ring or a chain (the WASM
   * walker's VirtqueueError, the device's own 'malformed' error). Anything
   * else is a bug of ours and is rethrown, so the transport's catch around
   * queueNotify() reports it as such. Omitted: every error counts.
   */
  readonly guestErrors?: ReadonlyArray<ErrorClass>;
  /** Where the trip is counted (the device's metrics.needsReset), if anywhere. */
  readonly metrics?: { needsReset: number };
  /**
   * Logs the trip and returns the reason given to ctx.needsReset. Default:
   * error "<name>: malformed guest queue, device needs reset" {err}, and the
   * error's message as the reason.
   */
  readonly report?: (log: Logger, message: string) => string;
}

export class NeedsResetLatch {
  private isTripped = false;

  constructor(private readonly opts: NeedsResetOptions) {}

  /** True from the first trip() until clear(): the device leaves its queues alone. */
  get tripped(): boolean { return this.isTripped; }

  /** A new cycle (activate/reset): the queues may be served again. */
  clear(): void { this.isTripped = false; }

  /**
   * The guest handed us something malformed: latch, count, log, tell the
   * transport through `ctx` (absent after a reset: nothing to tell). Later
   * trips of the same cycle are dropped so one bad ring logs once.
   */
  trip(ctx: ActivateContext | undefined, err: unknown): void {
    const { guestErrors } = this.opts;
    if (guestErrors && !guestErrors.some((c) => err instanceof c)) throw err;
    if (this.isTripped) return;
    this.isTripped = true;
    if (this.opts.metrics) this.opts.metrics.needsReset++;
    const message = errorMessage(err);
    let reason = message;
    if (this.opts.report) reason = this.opts.report(this.opts.log, message);
    else this.opts.log.error(`${this.opts.name}: malformed guest queue, device needs reset`, { err: message });
    ctx?.needsReset(reason);
  }
}
