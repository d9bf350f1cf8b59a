/**
 * The cached side of a `kata-ts run` claim (vm-cache-run-protocol.ts): a
 * pre-started VM cache entry (src/shim/vm-cache-serve.ts) that a run
 * claimed takes the claimer's stdin/stdout/stderr (fds passed with
 * SCM_RIGHTS on a one-shot unix socket in its VM directory: the claim
 * socket itself is read by Node's net module, which drops passed fds), runs
 * the container on its running VM through the same code `kata-ts run` uses
 * (src/runtime/run-sandbox.ts), follows the claimer's signal and resize
 * lines, and reports the exit status as the last line. The caller then
 * stops the VM and exits.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tty from 'node:tty';
import type { Readable, Writable } from 'node:stream';
import { errorMessage } from '../common/errors';
import { configureLogging, logger } from '../common/log';
import { native, type NativeAddon } from '../common/native';
import { acceptFds } from '../common/fd-stream';
import type { Config } from '../runtime/config';
import type { Hypervisor } from '../hypervisor/hypervisor';
import type { PrestartedVm } from '../runtime/sandbox';
import { runInSandbox, type RunIo } from '../runtime/run-sandbox';
import { exitCodeFor } from '../runtime/run-status';
import { lineReader } from './vm-cache-protocol';
import { checkStdioFds, parseRunControl, type RunClaimRequest, type RunReport } from './vm-cache-run-protocol';

/** How long the claimer may take to pass its stdio fds. */
export const STDIO_FDS_TIMEOUT_MS = 5000;

const POLL_READ = 1;

/**
 * Listens on `sock` for one connection carrying the stdio fds in one
 * message; resolves them, or rejects (timeout, wrong count). Every fd that
 * is not returned is closed, the socket file removed.
 */
export function receiveStdioFds(sock: string, timeoutMs: number, n: NativeAddon = native()): { ready: Promise<[number, number, number]> } {
  fs.rmSync(sock, { force: true });
  const listenFd = n.unixListenNb(sock, 1);
  const ready = new Promise<[number, number, number]>((resolve, reject) => {
    let conn = -1;
    let poll = -1;
    let settled = false;
    const settle = (err: Error | undefined, fds?: [number, number, number]) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (poll >= 0) n.pollStop(poll);
      if (conn >= 0) n.closeFd(conn);
      stopAccept();
      fs.rmSync(sock, { force: true });
      if (err) reject(err);
      else resolve(fds!);
    };
    const timer = setTimeout(() => settle(new Error(`the claimer did not pass its stdio within ${timeoutMs} ms`)), timeoutMs);
    const buf = Buffer.alloc(64);
    // One connection is wanted: any other is closed; settle() stops the listener.
    const stopAccept = acceptFds(listenFd, (fd) => {
      if (conn >= 0 || settled) return n.closeFd(fd);
      conn = fd;
      poll = n.pollStart(fd, POLL_READ, () => {
        let r: ReturnType<NativeAddon['recvMsg']>;
        try {
          r = n.recvMsg(fd, buf, 0, buf.length);
        } catch (err) {
          return settle(err as Error);
        }
        if (r.bytes < 0) return;
        if (r.bytes === 0 && !r.fds.length) return settle(new Error('the claimer closed its stdio socket without passing fds'));
        try {
          settle(undefined, checkStdioFds(r.fds, r.truncated));
        } catch (err) {
          for (const f of r.fds) n.closeFd(f);
          settle(err as Error);
        }
      });
    }, (err) => settle(err), n);
  });
  return { ready };
}

function readableFrom(fd: number): Readable {
  const st = fs.fstatSync(fd);
  if (tty.isatty(fd)) return new tty.ReadStream(fd);
  // Half-open: at the end of input Node must not shutdown() the claimer's socket.
  if (st.isFIFO() || st.isSocket()) return new net.Socket({ fd, readable: true, writable: false, allowHalfOpen: true });
  return fs.createReadStream('', { fd });
}

function writableFrom(fd: number): Writable {
  const st = fs.fstatSync(fd);
  if (tty.isatty(fd)) return new tty.WriteStream(fd);
  if (st.isFIFO() || st.isSocket()) return new net.Socket({ fd, readable: false, writable: true });
  return fs.createWriteStream('', { fd, flags: 'a' });
}

/**
 * Waits until what was written has gone out (writes complete in order: an
 * empty one's callback comes last), then closes our copy of the fd. Not
 * end(): on a socket (spawn's stdio pairs) that is shutdown(SHUT_WR), which
 * would close the claimer's own stdout/stderr too.
 */
function flush(w: Writable): Promise<void> {
  return new Promise((resolve) => {
    const close = () => {
      w.destroy();
      resolve();
    };
    if (w.destroyed) return resolve();
    w.once('error', close);
    w.write('', close);
  });
}

export interface RunClaimHost {
  config: Config;
  hv: Hypervisor;
  vmDir: string;
  /** The running VM, for the sandbox (the cache's idle services stop). */
  handOver(): Promise<PrestartedVm>;
}

/**
 * Serves one run claim on `conn`; resolves when the run is over and its last
 * line sent (the caller stops the VM and exits). Rejects only if it never
 * got the claimer's stdio (nothing ran).
 */
export async function serveRunClaim(req: RunClaimRequest, conn: net.Socket, host: RunClaimHost): Promise<void> {
  const send = (r: object) => conn.write(JSON.stringify(r) + '\n');
  const stdioSock = path.join(host.vmDir, 'stdio.sock');
  let fds: [number, number, number];
  try {
    const { ready } = receiveStdioFds(stdioSock, STDIO_FDS_TIMEOUT_MS);
    send({ ok: true, phase: 'claimed', stdio: stdioSock });
    const gone = new Promise<never>((_, reject) => conn.once('close', () => reject(new Error('the claimer went away before passing its stdio'))));
    gone.catch(() => undefined);
    fds = await Promise.race([ready, gone]);
  } catch (err) {
    send({ ok: false, error: errorMessage(err) });
    conn.end();
    throw err;
  }
  const [stdin, stdout, stderr] = [readableFrom(fds[0]), writableFrom(fds[1]), writableFrom(fds[2])];
  // Errors on the claimer's streams (its terminal closed) end nothing here: the run goes on, its output is lost.
  for (const s of [stdin, stdout, stderr]) s.on('error', () => undefined);
  // From here on this process's log lines are the run's: on the claimer's stderr, at its level (the slot's log is the next entry's).
  configureLogging({ level: req.logLevel ?? 'warn', stream: stderr, source: 'kata-ts' });
  const log = logger('vm-cache', { cachePid: process.pid });
  const cs = req.run.spec.process?.consoleSize;
  let size = cs ? { rows: cs.height, cols: cs.width } : undefined;
  const resizers = new Set<() => void>();
  const interrupters = new Set<(why: string) => void>();
  const interrupt = (why: string) => { for (const cb of interrupters) cb(why); };
  conn.on('data', lineReader((line) => {
    let c;
    try {
      c = parseRunControl(line);
    } catch (err) {
      log.warn('run claim: ignored a control line', { err: errorMessage(err) });
      return;
    }
    if ('signal' in c) interrupt(c.signal);
    else {
      size = c.resize;
      for (const cb of resizers) cb();
    }
  }, () => log.warn('run claim: control line too long')));
  let done = false;
  conn.on('close', () => { if (!done) interrupt('the claimer going away'); });
  const io: RunIo = {
    stdin, stdout, stderr,
    size: () => size,
    onResize: (cb) => { resizers.add(cb); return () => resizers.delete(cb); },
    onInterrupt: (cb) => { interrupters.add(cb); return () => interrupters.delete(cb); },
    started: () => send({ started: true }),
    finished: () => undefined,
  };
  let report: RunReport;
  try {
    const pre = await host.handOver();
    const status = await runInSandbox({ ...req.run }, host.config, host.hv, io, pre);
    report = { exit: status };
  } catch (err) {
    report = { error: errorMessage(err), code: exitCodeFor(err) };
  }
  log.debug('run from the VM cache finished', { container: req.run.id, ...report });
  // The output is out before the status: the claimer exits on it. No log line after this.
  configureLogging({ silent: true });
  await Promise.all([flush(stdout), flush(stderr)]);
  done = true;
  await new Promise<void>((resolve) => conn.end(JSON.stringify(report) + '\n', () => resolve()));
}
