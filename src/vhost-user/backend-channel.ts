/**
 * The vhost-user back-end channel (vhost-user.rst "Back-end communication";
 * QEMU 7.2 calls it the slave channel): a second AF_UNIX stream whose other
 * end the front end keeps, handed to us with SET_BACKEND_REQ_FD once
 * PROTOCOL_F_BACKEND_REQ is negotiated. Here the backend is the one asking:
 * it sends a back-end message (same 12-byte header framing as the main
 * channel) and, when REPLY_ACK was negotiated, sets NEED_REPLY and waits for
 * the front end's u64 ack (0 = done).
 *
 * QEMU handles a back-end message on its main loop and, for
 * CONFIG_CHANGE_MSG, issues GET_CONFIG on the main channel before it acks;
 * that request is answered by this same Node event loop, so waiting here
 * must never block: the ack is awaited as a promise, one request at a time.
 *
 * The front end is another process: a reply that is malformed, unexpected
 * or late closes the channel (its state is unknown), and every later
 * request fails with that reason.
 */
import { native } from '../common/native';
import { errorMessage } from '../common/errors';
import {
  decodeAck, decodeHeader, encodeMessage, HEADER_SIZE, VHOST_USER_NEED_REPLY_MASK, VHOST_USER_VERSION, VhostUserError,
} from './protocol';

/** How long a back-end request waits for the front end's ack by default. */
export const BACKEND_ACK_TIMEOUT_MS = 5000;
const ACK_BYTES = HEADER_SIZE + 8;

interface Pending {
  request: number;
  resolve: (status: bigint) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class BackendChannel {
  private poll = 0;
  private readonly rx = Buffer.alloc(ACK_BYTES);
  private have = 0;
  private pending: Pending | undefined;
  /** Requests are serialised: an ack names only the request type. */
  private tail: Promise<unknown> = Promise.resolve();
  private closedWhy: string | undefined;
  /** Back-end requests sent (tests, logs). */
  sent = 0;

  /**
   * `fd` is the front end's socket end (owned from now on); `replyAck`
   * says whether the front end negotiated REPLY_ACK (then every request
   * asks for an ack).
   */
  constructor(readonly fd: number, readonly replyAck: boolean) {
    // Readable: an ack, or EOF when the front end closed its end. Unref'd:
    // an idle channel must not keep the process alive.
    this.poll = native().pollStart(fd, 1, () => this.onReadable(), true);
  }

  get isOpen(): boolean { return this.closedWhy === undefined; }
  get closedReason(): string | undefined { return this.closedWhy; }

  /**
   * Sends back-end message `request` (no payload) and resolves when the
   * front end acked it with 0 (at once without REPLY_ACK). Rejects with a
   * VhostUserError on a failure ack, a malformed reply, a closed channel or
   * no ack within `timeoutMs`.
   */
  request(request: number, timeoutMs = BACKEND_ACK_TIMEOUT_MS): Promise<void> {
    const run = this.tail.then(() => this.send(request, timeoutMs));
    this.tail = run.catch(() => undefined);
    return run;
  }

  private async send(request: number, timeoutMs: number): Promise<void> {
    if (this.closedWhy !== undefined) throw new VhostUserError('protocol', `the back-end channel is closed (${this.closedWhy})`);
    const msg = encodeMessage(request, VHOST_USER_VERSION | (this.replyAck ? VHOST_USER_NEED_REPLY_MASK : 0));
    let sent: number;
    try {
      sent = native().sendMsg(this.fd, msg);
    } catch (err) {
      this.close(`send failed: ${errorMessage(err)}`);
      throw new VhostUserError('protocol', `back-end request ${request}: ${errorMessage(err)}`, { cause: err });
    }
    if (sent !== msg.length) {
      // 12 bytes on a socket nobody reads: the front end is stuck.
      this.close('the front end does not read the back-end channel');
      throw new VhostUserError('protocol', `back-end request ${request}: the channel is full (sent ${sent} of ${msg.length} bytes)`);
    }
    this.sent++;
    if (!this.replyAck) return;
    const status = await new Promise<bigint>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending = undefined;
        this.close(`no ack to request ${request} within ${timeoutMs} ms`);
        reject(new VhostUserError('protocol', `the front end did not acknowledge back-end request ${request} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending = { request, resolve, reject, timer };
    });
    if (status !== 0n) throw new VhostUserError('protocol', `the front end failed back-end request ${request} (ack ${status})`);
  }

  private onReadable(): void {
    const n = native();
    while (this.closedWhy === undefined) {
      const want = this.have < HEADER_SIZE ? HEADER_SIZE - this.have : ACK_BYTES - this.have;
      let r: { bytes: number; fds: number[] };
      try {
        r = n.recvMsg(this.fd, this.rx, this.have, want);
      } catch (err) {
        this.fail(`recvmsg: ${errorMessage(err)}`);
        return;
      }
      // Acks carry no fds; never keep one the front end pushed at us.
      for (const fd of r.fds) try { n.closeFd(fd); } catch { /* gone */ }
      if (r.bytes < 0) return;
      if (r.bytes === 0) {
        this.fail('the front end closed the back-end channel');
        return;
      }
      const p = this.pending;
      if (!p) {
        this.fail('the front end sent a message nobody asked for on the back-end channel');
        return;
      }
      this.have += r.bytes;
      if (this.have === HEADER_SIZE && decodeHeader(this.rx).size !== 8) {
        // Not an ack: decodeAck names the problem; do not wait for its payload.
        this.failPending(p, this.rx.subarray(0, HEADER_SIZE));
        return;
      }
      if (this.have < ACK_BYTES) continue;
      this.have = 0;
      let status: bigint;
      try {
        status = decodeAck(this.rx, p.request);
      } catch (err) {
        this.failPending(p, undefined, err as Error);
        return;
      }
      clearTimeout(p.timer);
      this.pending = undefined;
      p.resolve(status);
    }
  }

  private failPending(p: Pending, header: Buffer | undefined, err?: Error): void {
    let e = err;
    if (!e) {
      try { decodeAck(header!, p.request); e = new VhostUserError('protocol', 'malformed reply on the back-end channel'); } catch (x) { e = x as Error; }
    }
    this.fail(e.message, e);
  }

  private fail(why: string, err?: Error): void {
    const p = this.pending;
    this.pending = undefined;
    this.close(why);
    if (p) {
      clearTimeout(p.timer);
      p.reject(err ?? new VhostUserError('protocol', `back-end request ${p.request}: ${why}`));
    }
  }

  /** Closes our end; a pending request fails. Idempotent. */
  close(why = 'closed'): void {
    if (this.closedWhy !== undefined) return;
    this.closedWhy = why;
    const n = native();
    if (this.poll) n.pollStop(this.poll);
    this.poll = 0;
    try { n.closeFd(this.fd); } catch { /* gone */ }
    const p = this.pending;
    this.pending = undefined;
    if (p) {
      clearTimeout(p.timer);
      p.reject(new VhostUserError('protocol', `back-end request ${p.request}: ${why}`));
    }
  }
}
