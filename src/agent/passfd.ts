/**
 * Passfd IO in the guest (Kata 3's "passfd IO", agent side): a vsock
 * listener on the port the kernel command line names
 * (`agent.passfd_listener_port=N`, Kata's parameter) to which the host opens
 * one connection per stdio stream of a process. The agent then gives the
 * vsock socket itself to the container process as its stdin, stdout or
 * stderr: the process writes straight into vsock, no agent copy (README
 * Performance, container stdout; Configuration, use_passfd_io).
 *
 * Identifying a connection: Kata's agent keys accepted streams by the
 * peer's (host's) vsock port. Our hybrid vsock tells the host that port
 * (`OK <port>`), and the host writes it as the connection's first 4 bytes
 * (little-endian u32) — our addon's accept does not report the peer
 * address, and the header keeps the guest from guessing. CreateContainer,
 * ExecProcess (and, for the bench, StartDebugConsole) then carry
 * `stdin_port`/`stdout_port`/`stderr_port` (proto/agent.proto, numbered as
 * Kata's agent.proto) and the agent takes those streams here.
 *
 * Bookkeeping: a stream waits here until a request takes it; a request
 * naming a port not (yet) here waits up to TAKE_WAIT_MS (the header may
 * still be on its way on its own connection) and then fails with one clear
 * error. A stream nobody takes within UNCLAIMED_MS is closed (a host that
 * went away between its connects and its request). A connection that does
 * not send its 4 bytes within HEADER_WAIT_MS, ends before them, or names a
 * port already waiting is closed and logged. Nothing else is affected.
 */
import { native, type NativeAddon } from '../common/native';
import { acceptFds } from '../common/fd-stream';
import { listenVsockSized } from './vsock-transport';
import { KataError } from '../common/errors';
import type { StdioPorts } from '../protocols/agent-api';

/** Its kinds are the agent's (service.ts maps them to status codes). */
export class PassfdError extends KataError<'not-found' | 'invalid' | 'already-exists' | 'failed-precondition'> {}

/** Kata runtime-rs's default passfd listener port ([runtime] passfd_listener_port). */
export const DEFAULT_PASSFD_PORT = 1027;
export const PASSFD_CMDLINE_PARAM = 'agent.passfd_listener_port';
export const HEADER_BYTES = 4;
export const HEADER_WAIT_MS = 10_000;
export const TAKE_WAIT_MS = 10_000;
export const UNCLAIMED_MS = 120_000;

const POLL_READ = 1;

/** The ports a request names (0 or absent: that stream is not passed). */
export type { StdioPorts };

/** The sockets taken for one process: fds the agent owns until the child has them. */
export interface PassedStdio {
  stdin?: number;
  stdout?: number;
  stderr?: number;
}

/** The listener port from the kernel command line, or 0 when passfd IO is off. */
export function passfdPortFromCmdline(cmdline: string): number {
  const m = new RegExp(`(^|\\s)${PASSFD_CMDLINE_PARAM.replace('.', '\\.')}=([0-9]+)(\\s|$)`).exec(cmdline);
  if (!m) return 0;
  const port = Number(m[2]);
  return port > 0 && port < 0xffffffff ? port : 0;
}

/** Whether a request asks for any passed stream. */
export function wantsPassfd(p: StdioPorts | undefined): boolean {
  return !!p && !!(p.stdin_port || p.stdout_port || p.stderr_port);
}

interface Waiting { fd: number; timer: NodeJS.Timeout }
interface Taker { resolve: (fd: number) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }

export class PassfdStreams {
  private readonly waiting = new Map<number, Waiting>();
  private readonly takers = new Map<number, Taker>();
  private readonly pendingHeaders = new Set<number>();
  private stopAccept: (() => void) | undefined;
  /** Connections dropped for a bad or missing header (tests, metrics). */
  rejected = 0;

  constructor(
    private readonly opts: { log?: (msg: string) => void; headerWaitMs?: number; takeWaitMs?: number; unclaimedMs?: number; n?: NativeAddon } = {},
  ) {}

  private get n(): NativeAddon {
    return this.opts.n ?? native();
  }

  private log(msg: string): void {
    (this.opts.log ?? ((m: string) => process.stderr.write(`kata-agent: passfd: ${m}\n`)))(msg);
  }

  /** Listens on vsock `port` with `bufferBytes` windows (the agent's, vsock-transport.ts). */
  listenVsock(port: number, bufferBytes: number): void {
    this.stopAccept = this.listenFd(listenVsockSized(port, bufferBytes, (m) => this.log(m), this.n));
  }

  /** Accepts on an already listening socket (unit tests use a unix socket). */
  listenFd(listenFd: number): () => void {
    return acceptFds(listenFd, (fd) => this.adopt(fd), (err) => this.log(`accept: ${err.message}`), this.n);
  }

  /** A freshly accepted connection: read its 4-byte header, then hold it for a request. */
  adopt(fd: number): void {
    const n = this.n;
    const header = Buffer.alloc(HEADER_BYTES);
    let got = 0;
    this.pendingHeaders.add(fd);
    let poll = 0;
    const done = (why?: string) => {
      clearTimeout(timer);
      if (poll) n.pollStop(poll);
      poll = 0;
      this.pendingHeaders.delete(fd);
      if (why) {
        this.rejected++;
        this.log(`closed a connection: ${why}`);
        n.closeFd(fd);
        return;
      }
      this.hold(header.readUInt32LE(0), fd);
    };
    const timer = setTimeout(() => done(`no ${HEADER_BYTES}-byte port header within ${this.opts.headerWaitMs ?? HEADER_WAIT_MS} ms`), this.opts.headerWaitMs ?? HEADER_WAIT_MS);
    timer.unref();
    const readSome = (): void => {
      if (!this.pendingHeaders.has(fd)) return;
      let r: number;
      try {
        // Exactly the header: what follows (stdin) is the process's.
        r = n.readFd(fd, header, got, HEADER_BYTES - got);
      } catch (err) {
        return done(`reading the port header: ${(err as Error).message}`);
      }
      if (r < 0) return; // EAGAIN: wait for the poll
      if (r === 0) return done(`the host closed it after ${got} of ${HEADER_BYTES} header bytes`);
      got += r;
      if (got === HEADER_BYTES) done();
    };
    poll = n.pollStart(fd, POLL_READ, (ev) => { if (ev) readSome(); });
    readSome();
  }

  private hold(port: number, fd: number): void {
    if (port === 0) {
      this.rejected++;
      this.log('closed a connection: port header 0 (0 means "not passed")');
      this.n.closeFd(fd);
      return;
    }
    const taker = this.takers.get(port);
    if (taker) {
      this.takers.delete(port);
      clearTimeout(taker.timer);
      taker.resolve(fd);
      return;
    }
    if (this.waiting.has(port)) {
      this.rejected++;
      this.log(`closed a connection: a stream for host port ${port} is already waiting`);
      this.n.closeFd(fd);
      return;
    }
    const ms = this.opts.unclaimedMs ?? UNCLAIMED_MS;
    const timer = setTimeout(() => {
      if (this.waiting.get(port)?.fd !== fd) return;
      this.waiting.delete(port);
      this.log(`closed the stream of host port ${port}: no request took it within ${ms} ms`);
      this.n.closeFd(fd);
    }, ms);
    timer.unref();
    this.waiting.set(port, { fd, timer });
  }

  /** The stream the host opened from `port`; waits for it a while, then a clear error. */
  take(port: number): Promise<number> {
    const w = this.waiting.get(port);
    if (w) {
      this.waiting.delete(port);
      clearTimeout(w.timer);
      return Promise.resolve(w.fd);
    }
    if (this.takers.has(port)) return Promise.reject(new PassfdError('already-exists', `passfd stream of host port ${port} is already asked for by another request`));
    const ms = this.opts.takeWaitMs ?? TAKE_WAIT_MS;
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.takers.delete(port);
        reject(new PassfdError('not-found', `no passfd stream from host port ${port} arrived within ${ms} ms (the host connects one per stdio stream before the request)`));
      }, ms);
      this.takers.set(port, { resolve, reject, timer });
    });
  }

  /**
   * Takes every stream `ports` names, all or nothing: on any failure the
   * ones already taken are closed and the error names the first missing port.
   */
  async takeAll(ports: StdioPorts): Promise<PassedStdio> {
    const want: Array<[keyof PassedStdio, number]> = [];
    for (const [k, v] of [['stdin', ports.stdin_port], ['stdout', ports.stdout_port], ['stderr', ports.stderr_port]] as const) {
      if (v === undefined || v === 0) continue;
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new PassfdError('invalid', `${k}_port ${v} is not a vsock port`);
      if (want.some(([, p]) => p === v)) throw new PassfdError('invalid', `${k}_port ${v} names the same stream as another of this process's ports`);
      want.push([k, v]);
    }
    const results = await Promise.allSettled(want.map(([, p]) => this.take(p)));
    const out: PassedStdio = {};
    const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
    results.forEach((r, i) => { if (r.status === 'fulfilled') out[want[i]![0]] = r.value; });
    if (failed) {
      closePassed(out, this.n);
      throw failed.reason;
    }
    return out;
  }

  /** Streams waiting (tests, leak checks). */
  get waitingCount(): number {
    return this.waiting.size + this.pendingHeaders.size;
  }

  close(): void {
    this.stopAccept?.();
    this.stopAccept = undefined;
    for (const [, w] of this.waiting) { clearTimeout(w.timer); this.n.closeFd(w.fd); }
    this.waiting.clear();
    for (const [port, t] of this.takers) {
      clearTimeout(t.timer);
      t.reject(new PassfdError('failed-precondition', `the passfd listener closed before the stream of host port ${port} arrived`));
    }
    this.takers.clear();
  }
}

/** Closes the agent's copies (after spawn the child holds them; on failure nobody does). */
export function closePassed(p: PassedStdio | undefined, n: NativeAddon = native()): void {
  if (!p) return;
  for (const k of ['stdin', 'stdout', 'stderr'] as const) {
    const fd = p[k];
    if (fd !== undefined && fd >= 0) {
      try { n.closeFd(fd); } catch { /* already closed */ }
    }
    delete p[k];
  }
}

/**
 * The child's stdio with the passed sockets in place of the agent's pipes:
 * stdin a socket instead of our stdin FIFO; stdout/stderr a socket instead of
 * the FIFO's write end (whose read end then just sees end of file once the
 * agent closes its copy, so ReadStdout ends at once).
 */
export function childStdio(base: [number, number, number], p: PassedStdio | undefined): [number, number, number] {
  if (!p) return base;
  return [p.stdin ?? base[0], p.stdout ?? base[1], p.stderr ?? base[2]];
}
