/**
 * containerd's stdio for a process: named pipes (fifos) created by the
 * client (ctr, CRI), or a file:// log URI. The shim opens them like the runc
 * shim does:
 *   stdout/stderr — opened read-write, so opening never waits for a reader
 *     and a client that goes away never makes the process die of SIGPIPE;
 *     closed by us after the process exits, which is the EOF the client's
 *     copy loop waits for.
 *   stdin — opened read-only in the background (the open completes when the
 *     client's writer is there), copied into a proxy stream whose end is the
 *     process's end of input; CloseIO ends it too.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { PassThrough, Writable, type Readable } from 'node:stream';
import { KataError } from '../common/errors';

export class StdioError extends KataError<'open' | 'unsupported'> {}

export interface StdioPaths {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

export interface HostIo {
  stdin?: Readable;
  stdout: Writable;
  stderr?: Writable;
  /** End of input for the process (CloseIO). */
  closeStdin(): void;
  /** Flush and close outputs; stop waiting for a stdin writer. */
  close(): Promise<void>;
}

function discard(): Writable {
  return new Writable({ write: (_c, _e, cb) => cb() });
}

function pathOf(uri: string): { kind: 'fifo' | 'file'; path: string } {
  if (uri.startsWith('file://')) return { kind: 'file', path: uri.slice('file://'.length) };
  if (/^[a-z]+:\/\//.test(uri)) throw new StdioError('unsupported', `stdio URI ${uri}: only fifos and file:// are supported`);
  return { kind: 'fifo', path: uri };
}

function openOutput(uri: string): fs.WriteStream | Writable {
  if (!uri) return discard();
  const p = pathOf(uri);
  try {
    const fd = fs.openSync(p.path, p.kind === 'file' ? 'a' : fs.constants.O_RDWR);
    return fs.createWriteStream('', { fd, autoClose: true });
  } catch (err) {
    throw new StdioError('open', `open ${p.path}: ${(err as Error).message}`, { cause: err });
  }
}

function finish(w: Writable): Promise<void> {
  return new Promise((resolve) => {
    if (w.writableFinished || w.destroyed) return resolve();
    w.once('close', () => resolve());
    w.once('error', () => resolve());
    w.end(() => resolve());
  });
}

export function openHostIo(paths: StdioPaths): HostIo {
  const stdout = openOutput(paths.stdout);
  let stderr: Writable | undefined;
  try {
    stderr = paths.terminal ? undefined : openOutput(paths.stderr);
  } catch (err) {
    stdout.destroy();
    throw err;
  }
  let stdin: PassThrough | undefined;
  let sock: net.Socket | undefined;
  let closed = false;
  if (paths.stdin) {
    const p = pathOf(paths.stdin);
    const proxy = new PassThrough();
    stdin = proxy;
    // A raw fd, not a FileHandle: a FileHandle closes its fd when garbage
    // collected, and the socket below owns the fd — two owners would close it
    // twice, the second time under whatever reused the number.
    fs.open(p.path, fs.constants.O_RDONLY, (err, fd) => {
      if (err) return void proxy.end();
      if (closed || proxy.writableEnded) return void fs.close(fd, () => undefined);
      const s = new net.Socket({ fd, readable: true, writable: false });
      sock = s;
      s.on('error', () => proxy.end());
      s.pipe(proxy);
      if (closeRequested) drainThenEnd();
    });
  }
  let closeRequested = false;
  // CloseIO comes when the client has written everything and closed its end:
  // what is still in the fifo must reach the process before end of input, so
  // let the fifo run to EOF, and only force the end if a writer lingers.
  const drainThenEnd = () => {
    const t = setTimeout(() => {
      sock?.unpipe(stdin!);
      sock?.destroy();
      stdin?.end();
    }, 2000);
    sock!.once('close', () => clearTimeout(t));
  };
  const out: HostIo = {
    stdin,
    stdout,
    stderr,
    closeStdin: () => {
      if (!stdin || closeRequested) return;
      closeRequested = true;
      if (sock) drainThenEnd();
    },
    close: async () => {
      if (closed) return;
      closed = true;
      sock?.unpipe(stdin!);
      sock?.destroy();
      stdin?.end();
      if (paths.stdin && !sock) {
        // A pending open waits for a writer that may never come: be that writer.
        try {
          fs.closeSync(fs.openSync(pathOf(paths.stdin).path, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK));
        } catch {
          /* no fifo or no reader left: nothing is waiting */
        }
      }
      await Promise.all([finish(stdout), stderr ? finish(stderr) : Promise.resolve()]);
    },
  };
  return out;
}
