/**
 * One output stream (stdout or stderr) of a guest process, decoupled from
 * its reader: bytes produced before the host attaches are kept, a single
 * reader at a time drains them in order, and the end of the stream is
 * delivered once everything before it was read. When more than `highWater`
 * bytes are waiting unread, the source is paused (backpressure reaches the
 * container's write) instead of growing without bound.
 *
 * Fed from a pipe's fd (attachFd), a reader may instead take the bytes
 * where they are (readSpliceable): it is told how many are waiting in the
 * pipe and moves them into its socket with splice(2), so no JavaScript and
 * no user-space copy touches container output on the way to the host
 * (README performance, agent stdout). While such a reader holds the pipe,
 * the agent reads nothing from the fd itself; in memory is only what was
 * read before it came (delivered first, so order holds).
 */
import type { Readable } from 'node:stream';
import { native } from '../common/native';

export type Chunk = Buffer;

/** Largest message read() hands out (well under the host's 16 MiB gRPC limit). */
export const READ_MAX = 1024 * 1024;

/** One read from an output fd when the addon cannot say how much is waiting: a pipe's default capacity. */
const FD_READ = 64 * 1024;
/**
 * The capacity asked for an output pipe (F_SETPIPE_SZ; the agent is root,
 * so above the 1 MiB pipe-max-size; pages are taken only as it fills): a
 * writer runs several 1 MiB writes ahead of the agent instead of trading
 * the vCPU with it every 64 KiB (the default), each switch costly in a TCG
 * guest. Measured (bench/vsock.ts, interleaved, load 9-20): 1 MiB 1.3-2×
 * the default's MB/s, 4 MiB up to 2× more again, 8 MiB no better than 4.
 */
export const PIPE_SIZE = 4 * 1024 * 1024;
/** Linux's default pipe-max-size: what is asked when PIPE_SIZE is refused. */
const PIPE_SIZE_UNPRIVILEGED = 1024 * 1024;
const POLL_READ = 1;

/**
 * `length` bytes waiting in the pipe `fd`, for one reader to move with
 * splice(2) before it asks for more; `read()` takes them into a Buffer
 * instead (a connection that cannot splice).
 */
export interface SpliceSource {
  readonly fd: number;
  readonly length: number;
  read(): Buffer;
}

/** A pipe's read end this OutputPipe reads (attachFd). */
interface FdSource {
  fd: number;
  poll: number;
  closed: boolean;
}

export class OutputPipe {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private wake: (() => void) | undefined;
  private wakeSoon = false;
  private pauseSource: (() => void) | undefined;
  private resumeSource: (() => void) | undefined;
  private src: FdSource | undefined;
  /** Above highWater: the fd is not read until a reader drains to half. */
  private srcPaused = false;
  /** A splice reader holds the fd (readSpliceable until endSplice). */
  private splicing = false;
  /** ...and waits for the fd to become readable. */
  private spliceWaiting = false;
  /** The capacity attachFd gave the pipe (0: unchanged). */
  pipeCapacity = 0;

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
    // Best effort: without CAP_SYS_RESOURCE the kernel allows pipe-max-size
    // (1 MiB by default); a pipe keeps its default size if it refuses both.
    if (n.setPipeSize) {
      const got = n.setPipeSize(fd, PIPE_SIZE);
      this.pipeCapacity = got > 0 ? got : Math.max(n.setPipeSize(fd, PIPE_SIZE_UNPRIVILEGED), 0);
    }
    this.src = { fd, poll: 0, closed: false };
    this.pauseSource = () => { this.srcPaused = true; this.watch(); };
    this.resumeSource = () => { this.srcPaused = false; this.watch(); };
    this.watch();
  }

  /**
   * The watcher runs only while someone wants the fd: the agent's own reads
   * (no splice reader, not paused) or a splice reader waiting for data.
   * Stopped otherwise — a hung-up pipe would wake it in a loop.
   */
  private watch(): void {
    const s = this.src;
    if (!s || s.closed) return;
    const want = this.splicing ? this.spliceWaiting : !this.srcPaused;
    const n = native();
    if (want && !s.poll) s.poll = n.pollStart(s.fd, POLL_READ, () => this.onReadable());
    else if (!want && s.poll) {
      n.pollStop(s.poll);
      s.poll = 0;
    }
  }

  private closeSrc(): void {
    const s = this.src;
    if (!s || s.closed) return;
    s.closed = true;
    const n = native();
    if (s.poll) n.pollStop(s.poll);
    s.poll = 0;
    try { n.closeFd(s.fd); } catch { /* already gone */ }
    this.end();
  }

  private onReadable(): void {
    const s = this.src;
    if (!s || s.closed) return;
    if (this.splicing) {
      // The splice reader takes the bytes: just wake it.
      this.spliceWaiting = false;
      this.watch();
      this.notify();
      return;
    }
    const n = native();
    while (s.poll && !s.closed && !this.splicing) {
      // Read exactly what is waiting (FIONREAD) into a buffer of that
      // size: one read per wake, no slack, no copy of a short read.
      const waiting = n.pipeAvailable ? n.pipeAvailable(s.fd) : -1;
      const want = waiting > 0 ? Math.min(waiting, READ_MAX) : FD_READ;
      const buf = Buffer.allocUnsafe(want);
      let r: number;
      try {
        r = n.readFd(s.fd, buf, 0, want);
      } catch {
        this.closeSrc();
        return;
      }
      if (r < 0) return; // EAGAIN: wait for the watcher
      if (r === 0) {
        this.closeSrc(); // every writer closed it: end of output
        return;
      }
      this.push(r === want ? buf : r >= want / 2 ? buf.subarray(0, r) : Buffer.from(buf.subarray(0, r)));
      // All that was waiting is taken: the (level-triggered) watcher calls
      // again when there is more, so no extra read just to see EAGAIN.
      if (r === waiting) return;
    }
  }

  /**
   * Like readChunks(), but when nothing is held in memory and the source is
   * a pipe's fd (and the addon can splice), the bytes waiting in the pipe
   * (at most `max`) as a SpliceSource for the caller to move before it
   * calls again. From the first call until endSplice() the agent reads
   * nothing from the fd itself.
   */
  async readSpliceable(max = READ_MAX, signal?: AbortSignal): Promise<Buffer[] | SpliceSource | null> {
    const n = native();
    const s = this.src;
    if (!s || !n.spliceFd || !n.pipeAvailable) return this.readChunks(max, signal);
    this.splicing = true;
    this.spliceWaiting = false;
    this.watch();
    for (;;) {
      if (signal?.aborted) return null;
      if (this.chunks.length) return this.takeChunks(max);
      if (this.ended) return null;
      if (!s.closed) {
        const waiting = n.pipeAvailable(s.fd);
        if (waiting > 0) return this.spliceSource(s.fd, Math.min(waiting, max));
        // Nothing waiting: every writer gone (read gives 0), or not yet.
        const one = Buffer.allocUnsafe(1);
        let r: number;
        try {
          r = waiting < 0 ? 0 : n.readFd(s.fd, one, 0, 1);
        } catch {
          r = 0;
        }
        if (r === 0) this.closeSrc();
        else if (r > 0) this.push(one); // arrived just now: in order, before what follows
        else {
          this.spliceWaiting = true;
          this.watch();
        }
        if (r >= 0) continue;
      }
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  /** The splice reader is gone: the agent reads the fd itself again. */
  endSplice(): void {
    if (!this.splicing) return;
    this.splicing = false;
    this.spliceWaiting = false;
    this.watch();
  }

  private spliceSource(fd: number, length: number): SpliceSource {
    return {
      fd,
      length,
      read: () => {
        // The bytes are in the pipe and nobody else reads it: one read takes them.
        const b = Buffer.allocUnsafe(length);
        let got = 0;
        while (got < length) {
          const r = native().readFd(fd, b, got, length - got);
          if (r <= 0) throw new Error(`output pipe: ${got} of ${length} waiting bytes read`);
          got += r;
        }
        return b;
      },
    };
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
