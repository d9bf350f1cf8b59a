/**
 * A Duplex over a raw non-blocking socket fd that Node's net module cannot
 * wrap — an accepted AF_VSOCK socket in the guest agent (libuv's
 * uv_guess_handle calls AF_VSOCK "unknown", so `new net.Socket({ fd })`
 * refuses it). Readiness comes from the addon's uv_poll watcher on Node's
 * own loop; reads and writes are plain non-blocking syscalls. No threads,
 * no busy waiting. Owns the fd: closes it when the stream is destroyed.
 */
import { Duplex } from 'node:stream';
import { native, type NativeAddon } from './native';

const READ_CHUNK = 64 * 1024;
const POLL_READ = 1;
const POLL_WRITE = 2;

/** On the zero-length chunk writeSplice() queues: the pipe and byte count to splice in its place. */
const SPLICE = Symbol('splice');
interface SpliceItem { fd: number; length: number }
type Chunk = Buffer & { [SPLICE]?: SpliceItem };

export class FdStream extends Duplex {
  private readonly n: NativeAddon;
  private poll = 0;
  private wantRead = false;
  /** What is being written: `bufs` in order, from bufs[i] at offset off (a splice item: bytes moved). */
  private pendingWrite: { bufs: Chunk[]; i: number; off: number; cb: (e?: Error | null) => void } | undefined;
  private fdClosed = false;
  /** A splice item handed to a pool thread (copyAsync, spliceAsync): its cancel flag; the fd stays open until it is back. */
  private spliceCancel: Int32Array | undefined;

  constructor(readonly fd: number) {
    super({ allowHalfOpen: true });
    this.n = native();
    this.poll = this.n.pollStart(fd, 0, (ev) => this.onPoll(ev));
  }

  private interest(): void {
    if (this.fdClosed) return;
    this.n.pollUpdate(this.poll, (this.wantRead ? POLL_READ : 0) | (this.pendingWrite && !this.spliceCancel ? POLL_WRITE : 0));
  }

  private onPoll(ev: number): void {
    if (this.pendingWrite && !this.spliceCancel && (ev & (POLL_WRITE | 4))) this.flushWrite();
    if (this.wantRead && (ev & (POLL_READ | 4))) this.readSome();
  }

  override _read(): void {
    this.wantRead = true;
    this.readSome();
  }

  private readSome(): void {
    while (this.wantRead && !this.fdClosed) {
      const buf = Buffer.allocUnsafe(READ_CHUNK);
      let r: number;
      try {
        r = this.n.readFd(this.fd, buf, 0, READ_CHUNK);
      } catch (err) {
        this.destroy(err as Error);
        return;
      }
      if (r < 0) break; // EAGAIN: wait for readiness
      if (r === 0) {
        this.wantRead = false;
        this.push(null);
        break;
      }
      if (!this.push(buf.subarray(0, r))) this.wantRead = false;
    }
    this.interest();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.pendingWrite = { bufs: [chunk], i: 0, off: 0, cb };
    this.flushWrite();
  }

  private flushWrite(): void {
    const w = this.pendingWrite;
    if (!w || this.fdClosed || this.spliceCancel) return;
    try {
      for (; w.i < w.bufs.length; w.i++, w.off = 0) {
        const buf = w.bufs[w.i]!;
        const sp = buf[SPLICE];
        // Copied on a pool thread when the addon can (copyAsync: 64 KiB
        // vsock packets where a splice makes one per 4 KiB pipe page).
        if (sp && w.off < sp.length && this.n.copyAsync) return this.spliceOffThread(sp, w);
        while (sp && w.off < sp.length) {
          const r = this.n.spliceFd!(sp.fd, this.fd, sp.length - w.off);
          if (r < 0 && this.n.spliceAsync) return this.spliceOffThread(sp, w);
          if (r < 0) { this.interest(); return; }
          if (r === 0) throw new Error(`splice: the pipe ended ${sp.length - w.off} bytes short`);
          w.off += r;
        }
        while (w.off < buf.length) {
          const r = this.n.writeFd(this.fd, buf, w.off, buf.length - w.off);
          if (r < 0) { this.interest(); return; }
          w.off += r;
        }
      }
    } catch (err) {
      this.pendingWrite = undefined;
      this.interest();
      w.cb(err as Error);
      return;
    }
    this.pendingWrite = undefined;
    this.interest();
    w.cb();
  }

  /**
   * A splice item (the rest of it) on a pool thread: copyAsync's read and
   * write when the addon has it, else spliceAsync once the socket is full
   * (vsock: out of the host's credit), so the agent's thread is not woken
   * for every credit update. Back here once all went (or on error / cancel).
   */
  private spliceOffThread(sp: SpliceItem, w: NonNullable<FdStream['pendingWrite']>): void {
    const cancel = new Int32Array(1);
    this.spliceCancel = cancel;
    this.interest();
    const move = this.n.copyAsync ?? this.n.spliceAsync!;
    move(sp.fd, this.fd, sp.length - w.off, cancel, (err, moved) => {
      this.spliceCancel = undefined;
      if (this.fdClosed) {
        // Destroyed meanwhile: the fd waited for this thread to let go of it.
        try { this.n.closeFd(this.fd); } catch { /* already gone */ }
        this.pendingWrite = undefined;
        w.cb(err ?? new Error('FdStream destroyed during splice'));
        return;
      }
      w.off += moved;
      if (err) {
        this.pendingWrite = undefined;
        this.interest();
        w.cb(err);
        return;
      }
      this.flushWrite();
    });
  }

  /**
   * Chunks written while corked (Node's http2 over an injected stream writes
   * every HTTP/2 frame of a response corked: JSStreamSocket.doWrite) go out
   * in one write: on vsock each write is a packet, a kick and, in a TCG
   * guest, a costly exit — measured 4-5 kicks per agent RPC before, 1-2
   * after. The concat copies a few small frames; big chunks pass alone.
   */
  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (e?: Error | null) => void): void {
    const bufs = chunks.map((c) => c.chunk);
    const total = bufs.reduce((n, b) => n + b.length, 0);
    // Big chunks (agent stdout: up to 1 MiB of 64 KiB reads queued behind a
    // full vsock) go one write each: joining them would copy them all, which
    // under TCG costs more than the writes it saves.
    const join = total <= 64 * 1024 && bufs.length > 1 && !bufs.some((b) => (b as Chunk)[SPLICE]);
    this.pendingWrite = { bufs: join ? [Buffer.concat(bufs)] : bufs, i: 0, off: 0, cb };
    this.flushWrite();
  }

  /**
   * Moves `length` bytes waiting in the pipe `fd` into this socket with
   * splice(2), after everything written before and before anything written
   * after (it is queued as a zero-length chunk that carries the request).
   * `cb` once all of them went. Container stdout takes this path in the
   * agent (src/agent/output.ts): the bytes never enter JavaScript.
   */
  writeSplice(fd: number, length: number, cb: (err?: Error | null) => void): boolean {
    if (!this.n.spliceFd) throw new Error('writeSplice: the native addon has no spliceFd');
    const marker = Buffer.alloc(0) as Chunk;
    marker[SPLICE] = { fd, length };
    return this.write(marker, cb);
  }

  override _final(cb: (e?: Error | null) => void): void {
    try {
      if (!this.fdClosed) this.n.shutdownFd(this.fd, 1);
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    if (!this.fdClosed) {
      this.fdClosed = true;
      this.n.pollStop(this.poll);
      if (this.spliceCancel) {
        // A pool thread still splices into the fd: it stops within 50 ms
        // and its callback closes the fd (closing it now could let the
        // number be reused under that thread) and ends the write.
        Atomics.store(this.spliceCancel, 0, 1);
      } else {
        try { this.n.closeFd(this.fd); } catch { /* already gone */ }
        // A splice write waiting for room ends too: its writer waits for it.
        const w = this.pendingWrite;
        if (w?.bufs.some((b) => b[SPLICE])) {
          this.pendingWrite = undefined;
          w.cb(new Error('FdStream destroyed during splice'));
        }
      }
    }
    cb(err);
  }
}

/**
 * Accepts connections on a non-blocking listening fd (e.g. native
 * vsockListen) and hands each accepted fd to `onFd`, which owns it.
 * Returns a function that stops listening and closes the listener.
 */
export function acceptFds(listenFd: number, onFd: (fd: number) => void, onError: (e: Error) => void = () => undefined, n: NativeAddon = native()): () => void {
  const poll = n.pollStart(listenFd, POLL_READ, () => {
    for (;;) {
      let fd: number;
      try {
        fd = n.acceptNb(listenFd);
      } catch (err) {
        onError(err as Error);
        return;
      }
      if (fd < 0) return;
      onFd(fd);
    }
  });
  return () => {
    n.pollStop(poll);
    n.closeFd(listenFd);
  };
}

/** acceptFds with each connection handed to `onConnection` as an FdStream. */
export function acceptLoop(listenFd: number, onConnection: (s: FdStream) => void, onError: (e: Error) => void = () => undefined): () => void {
  return acceptFds(listenFd, (fd) => onConnection(new FdStream(fd)), onError);
}
