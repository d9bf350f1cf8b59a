/**
 * A process in the guest: a container's init or an exec'd process. Owns its
 * stdio (pipes, or a pty whose master crun hands over through a console
 * socket), its exit status and the waiters for it.
 *
 * Exit status is reported the way a shell does: the code, or 128 + signal
 * number when the process was killed (crun passes that through; a crun that
 * itself dies by a signal is reported the same way).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import * as tty from 'node:tty';
import type { ChildProcess } from 'node:child_process';
import type { Writable } from 'node:stream';
import { OutputPipe } from './output';
import { native } from '../common/native';
import { SIGNALS } from '../protocols/oci';

export interface ExitStatus {
  status: number;
  signal: number;
  exitedAt: Date;
}

export class GuestProcess {
  readonly stdout = new OutputPipe();
  readonly stderr = new OutputPipe();
  pid = 0;
  private stdin: Writable | undefined;
  private ptyFd = -1;
  private exit: ExitStatus | undefined;
  private readonly exited: Promise<ExitStatus>;
  private resolveExit!: (e: ExitStatus) => void;
  /** crun's own diagnostics (its stderr when a pty carries the process's). */
  runtimeErrors = '';

  constructor(readonly containerId: string, readonly execId: string, readonly terminal: boolean) {
    this.exited = new Promise((r) => (this.resolveExit = r));
  }

  /**
   * Wire a freshly spawned runtime child. With a terminal, `consoleListenFd`
   * is the console-socket listener crun sends the pty master to.
   */
  async attach(child: ChildProcess, consoleListenFd?: number, outputs?: OutputFifos, stdinPassed = false): Promise<void> {
    const stdinIsOurs = !stdinPassed;
    child.on('exit', (code, signal) => {
      const sig = signal ? (SIGNALS[signal] ?? 0) : code !== null && code > 128 ? code - 128 : 0;
      const status = code ?? 128 + sig;
      this.finish({ status, signal: sig, exitedAt: new Date() });
    });
    child.on('error', (err) => {
      this.runtimeErrors += `${err.message}\n`;
      this.finish({ status: 127, signal: 0, exitedAt: new Date() });
    });
    if (consoleListenFd === undefined) {
      // Our stdin FIFO (OutputFifos), unless passfd IO gave the child a stream of the host's.
      this.stdin = child.stdin ?? (outputs && stdinIsOurs ? outputs.takeStdin() : undefined);
      this.stdin?.on('error', () => undefined); // EPIPE once the process is gone
      // Node destroys a child's own stdin pipe when it exits; ours goes the same way.
      const own = !child.stdin ? this.stdin : undefined;
      if (own) void this.exited.then(() => own.destroy());
      if (outputs) {
        // The child has its ends now (spawn returned): ours must go, or the
        // pipes would never reach end of file.
        outputs.closeChildEnds();
        if (!stdinIsOurs) outputs.dropStdin();
        this.stdout.attachFd(outputs.stdoutRead);
        this.stderr.attachFd(outputs.stderrRead);
        return;
      }
      if (child.stdout) this.stdout.attachSource(child.stdout);
      else this.stdout.end();
      if (child.stderr) this.stderr.attachSource(child.stderr);
      else this.stderr.end();
      return;
    }
    child.stderr?.on('data', (b: Buffer) => (this.runtimeErrors += b.toString()));
    this.stderr.end(); // a terminal merges stderr into stdout
    const received = native().recvFd(consoleListenFd).then((fd) => ({ fd }), () => ({ fd: -1 }));
    let got = await Promise.race([received, this.exited.then(() => ({ fd: -2 }))]);
    // A short command can exit right after its runtime sent the pty master:
    // the fd (and the output buffered in the pty) may already be on its way,
    // so give the receive a moment before concluding there is no terminal.
    if (got.fd === -2) got = await Promise.race([received, new Promise<{ fd: number }>((r) => setTimeout(() => r({ fd: -1 }), 1000))]);
    native().closeFd(consoleListenFd);
    if (got.fd < 0) {
      this.stdout.end();
      return;
    }
    this.ptyFd = got.fd;
    const rs = new tty.ReadStream(got.fd);
    // EIO on the master means every slave fd is closed: end of output.
    rs.on('error', () => this.stdout.end());
    this.stdout.attachSource(rs);
  }

  get exitStatus(): ExitStatus | undefined {
    return this.exit;
  }

  wait(): Promise<ExitStatus> {
    return this.exited;
  }

  async writeStdin(data: Buffer): Promise<number> {
    if (this.ptyFd >= 0) {
      let off = 0;
      while (off < data.length) off += await new Promise<number>((res, rej) => fs.write(this.ptyFd, data, off, data.length - off, null, (e, n) => (e ? rej(e) : res(n))));
      return data.length;
    }
    if (!this.stdin || this.stdin.destroyed || this.stdin.writableEnded) throw new Error('stdin is closed');
    const s = this.stdin;
    await new Promise<void>((res, rej) => s.write(data, (e) => (e ? rej(e) : res())));
    return data.length;
  }

  closeStdin(): void {
    // On a terminal, end-of-input is the EOF character (^D) as a user would type it.
    if (this.ptyFd >= 0) fs.write(this.ptyFd, Buffer.from([4]), () => undefined);
    else this.stdin?.end();
  }

  resize(rows: number, cols: number): void {
    if (this.ptyFd < 0) throw new Error('process has no terminal');
    native().setWinsize(this.ptyFd, rows, cols);
  }

  private finish(e: ExitStatus): void {
    if (this.exit) return;
    this.exit = e;
    this.resolveExit(e);
  }
}

/**
 * A console socket path for one process: `dir` plus a 16-hex-digit hash of
 * the ids, so its length does not depend on them (sun_path holds 108 bytes;
 * CRI ids alone are 64 characters). 64 bits of hash: no two live processes
 * of one guest collide in practice.
 */
export function consoleSocketPath(dir: string, execId: string, containerId = ''): string {
  const h = createHash('sha256').update(`${containerId}\0${execId}`).digest('hex').slice(0, 16);
  return path.join(dir, `console-${h}.sock`);
}

/**
 * Pipes for a child's stdio: FIFOs made in `dir` and unlinked at once, so
 * they are anonymous pipes with a name for a moment.
 * - stdout and stderr the agent reads from the fd itself
 *   (OutputPipe.attachFd) instead of through Node's net.Socket. The child
 *   gets `stdoutWrite`/`stderrWrite` as its fds 1 and 2 (blocking, as a
 *   program expects); the agent keeps the non-blocking read ends.
 * - stdin is a pipe too, not the unix socketpair Node's spawn makes for
 *   'pipe': busybox cat copies a socket stdin with sendfile(2), which under
 *   Linux 6.1 keeps splicing until its 16 MiB count or end of input, so
 *   `printf 'hello\n' | kata-ts run -- cat` showed nothing until stdin closed,
 *   and with the host's CloseStdin stuck behind it, never (7 of 8 runs,
 *   2026-12-01). From a pipe, sendfile is refused and cat read(2)s, as Kata's
 *   agent's pipes make it. The child gets `stdinRead` (blocking); the agent
 *   writes `takeStdin()`'s stream (non-blocking).
 * `closeChildEnds()` once spawned; `closeAll()` if the spawn never happened.
 */
export class OutputFifos {
  private constructor(
    readonly stdinRead: number, readonly stdinWrite: number,
    readonly stdoutRead: number, readonly stdoutWrite: number, readonly stderrRead: number, readonly stderrWrite: number,
  ) {}

  static open(dir: string, tag: string): OutputFifos {
    const fds: number[] = [];
    const mkfifo = (p: string) => {
      fs.rmSync(p, { force: true });
      const r = native().fsMknodat(-100 /* AT_FDCWD */, Buffer.from(p), fs.constants.S_IFIFO | 0o600, 0, -1, -1);
      if (r < 0) throw new Error(`mkfifo ${p}: errno ${-r}`);
    };
    try {
      const inPath = path.join(dir, `${tag}.in.fifo`);
      mkfifo(inPath);
      try {
        // A non-blocking read end lets the agent's write end open without
        // waiting; the child's own read end, opened once a writer exists,
        // returns at once and stays blocking.
        const probe = fs.openSync(inPath, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
        try {
          const w = fs.openSync(inPath, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
          fds.push(fs.openSync(inPath, fs.constants.O_RDONLY), w);
        } finally {
          fs.closeSync(probe);
        }
      } finally {
        fs.rmSync(inPath, { force: true });
      }
      for (const which of ['out', 'err']) {
        const p = path.join(dir, `${tag}.${which}.fifo`);
        mkfifo(p);
        try {
          // The read end first, non-blocking: then opening the write end does not wait.
          fds.push(fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK));
          fds.push(fs.openSync(p, fs.constants.O_WRONLY));
        } finally {
          fs.rmSync(p, { force: true });
        }
      }
    } catch (err) {
      for (const fd of fds) fs.closeSync(fd);
      throw err;
    }
    return new OutputFifos(fds[0]!, fds[1]!, fds[2]!, fds[3]!, fds[4]!, fds[5]!);
  }

  /** The child's stdio as spawn() takes it: all three fds ours. */
  stdio(): [number, number, number] {
    return [this.stdinRead, this.stdoutWrite, this.stderrWrite];
  }

  private stdinTaken = false;
  /** The agent's end of the child's stdin, as a stream (once; closing it is end of input). */
  takeStdin(): Writable {
    this.stdinTaken = true;
    return new net.Socket({ fd: this.stdinWrite, readable: false, writable: true });
  }

  /** The child reads a stdin of its own (passfd IO): our writer goes. */
  dropStdin(): void {
    if (this.stdinTaken) return;
    this.stdinTaken = true;
    fs.closeSync(this.stdinWrite);
  }

  private childClosed = false;
  closeChildEnds(): void {
    if (this.childClosed) return;
    this.childClosed = true;
    fs.closeSync(this.stdinRead);
    fs.closeSync(this.stdoutWrite);
    fs.closeSync(this.stderrWrite);
  }

  closeAll(): void {
    this.closeChildEnds();
    const ours = this.stdinTaken ? [this.stdoutRead, this.stderrRead] : [this.stdinWrite, this.stdoutRead, this.stderrRead];
    for (const fd of ours) try { fs.closeSync(fd); } catch { /* closed */ }
  }
}
