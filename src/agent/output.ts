/**
 * One output stream (stdout or stderr) of a guest process, decoupled from
 * its reader: bytes produced before the host attaches are kept, a single
 * reader at a time drains them in order, and the end of the stream is
 * delivered once everything before it was read. When more than `highWater`
 * bytes are waiting unread, the source is paused (backpressure reaches the
 * container's write) instead of growing without bound.
 */
import type { Readable } from 'node:stream';
import { native } from '../common/native';

export type Chunk = Buffer;

/** Largest message read() hands out (well under the host's 16 MiB gRPC limit). */
export const READ_MAX = 1024 * 1024;

/** One read from an output fd: a pipe's whole default capacity. */
const FD_READ = 64 * 1024;
const POLL_READ = 1;

export class OutputPipe {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private wake: (() => void) | undefined;
  private wakeSoon = false;
  private pauseSource: (() => void) | undefined;
  private resumeSource: (() => void) | undefined;

  constructor(private readonly highWater = 4 * 1024 * 1024) {}

  /** Feed from a readable stream until it ends. */
  attachSource(src: Readable): void {
    this.pauseSource = () => src.pause();
    this.resumeSource = () => src.resume();
    src.on('data', (b: Buffer) => this.push(b));
    src.on('end', () => this.end());
    src.on('error', () => this.end());
    src.on('close', () => this.end());
  }

  /**
   * Feed from the read end of a pipe (non-blocking; this pipe owns and closes
   * it) until every writer has closed it. Read straight from the fd on a
   * uv_poll watcher rather than through a net.Socket: under TCG, Node's
   * stream machinery per 64 KiB read (a zero-filled buffer, the Readable's
   * events) cost the agent more CPU than moving the bytes — a relay in the
   * guest doing plain reads ran at ~2× the net.Socket one (README
   * performance, agent stdout). Backpressure stops the watcher.
   */
  attachFd(fd: number): void {
    const n = native();
    let poll = 0;
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      if (poll) n.pollStop(poll);
      poll = 0;
      try { n.closeFd(fd); } catch { /* already gone */ }
      this.end();
    };
    const onReadable = () => {
      while (poll && !closed) {
        const buf = Buffer.allocUnsafe(FD_READ);
        let r: number;
        try {
          r = n.readFd(fd, buf, 0, FD_READ);
        } catch {
          close();
          return;
        }
        if (r < 0) return; // EAGAIN: wait for the watcher
        if (r === 0) {
          close(); // every writer closed it: end of output
          return;
        }
        // A short read keeps a right-sized copy, not a mostly empty 64 KiB buffer.
        this.push(r === FD_READ ? buf : r >= FD_READ / 2 ? buf.subarray(0, r) : Buffer.from(buf.subarray(0, r)));
      }
    };
    // Paused = no watcher at all: a hung-up pipe would otherwise wake it in a loop.
    this.pauseSource = () => {
      if (poll) n.pollStop(poll);
      poll = 0;
    };
    this.resumeSource = () => {
      if (poll || closed) return;
      poll = n.pollStart(fd, POLL_READ, onReadable);
      onReadable();
    };
    poll = n.pollStart(fd, POLL_READ, onReadable);
  }

  push(b: Buffer): void {
    if (this.ended || b.length === 0) return;
    this.chunks.push(b);
    this.buffered += b.length;
    if (this.buffered > this.highWater) this.pauseSource?.();
    this.notifySoon();
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.notify();
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /**
   * Everything waiting (up to `max` bytes, whole chunks) as one Buffer, or
   * null at end of stream. One read is one gRPC message, one HTTP/2 write
   * and — on vsock — one or a few packets and kicks: handing out what piled
   * up while the previous message was being sent, instead of one pipe read
   * at a time, is what lets a stream keep up in a slow (TCG) guest.
   */
  async read(max = READ_MAX): Promise<Buffer | null> {
    for (;;) {
      if (this.chunks.length) {
        const taken = this.takeChunks(max);
        return taken.length === 1 ? taken[0] : Buffer.concat(taken);
      }
      if (this.ended) return null;
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  /**
   * Like read(), but the waiting chunks as they are (up to `max` bytes,
   * whole chunks), not joined: the stream handler sends them as one message
   * without copying them (service.ts). Under TCG a 1 MiB copy and the fresh
   * 1 MiB allocation it needs cost more than the syscall per chunk saved.
   * With `signal` aborted it returns null at once or when woken.
   */
  async readChunks(max = READ_MAX, signal?: AbortSignal): Promise<Buffer[] | null> {
    for (;;) {
      // A reader whose caller went away takes nothing: what is waiting, or
      // arrives before the next reader, is that reader's.
      if (signal?.aborted) return null;
      if (this.chunks.length) return this.takeChunks(max);
      if (this.ended) return null;
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  /** Whatever is waiting now (up to `max` bytes, whole chunks; at least one if any), without waiting. */
  takeChunks(max = READ_MAX): Buffer[] {
    let n = 0;
    let k = 0;
    while (k < this.chunks.length && (k === 0 || n + this.chunks[k].length <= max)) n += this.chunks[k++].length;
    const taken = this.chunks.splice(0, k);
    this.buffered -= n;
    if (this.buffered <= this.highWater / 2) this.resumeSource?.();
    return taken;
  }

  /** Wake a pending read without data (reader cancelled). */
  interrupt(): void {
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /**
   * Wake a waiting reader after this turn of the event loop, not at once:
   * libuv hands a socket's queued bytes over in several 64 KiB reads in one
   * turn, and each would otherwise be its own message (frame header, prefix
   * and a vsock packet each, plus a turn of the stream handler). Waking on
   * setImmediate lets one message carry all of them.
   */
  private notifySoon(): void {
    if (!this.wake || this.wakeSoon) return;
    this.wakeSoon = true;
    setImmediate(() => {
      this.wakeSoon = false;
      this.notify();
    });
  }
}
