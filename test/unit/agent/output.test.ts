/**
 * The agent's stdout path and container start helpers without a VM:
 * OutputPipe batching and backpressure, the ttrpc server sending a streamed
 * EncodedMessage (header merged with its prefix, oversize refused, a closed
 * connection), FdStream's writes, and crun's status file as the
 * started-container pid.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { OutputPipe, PIPE_SIZE } from '../../../src/agent/output';
import { spawn } from 'node:child_process';
import { OutputFifos } from '../../../src/agent/process';
import { CrunRuntime, crunStatusPid } from '../../../src/agent/oci-runtime';
import { EncodedMessage, RpcServer, type RpcMethod } from '../../../src/protocols/ttrpc/rpc-server';
import { FrameReader, FrameType, FLAG_REMOTE_CLOSED, encodeFrame, type Frame } from '../../../src/protocols/ttrpc/frame';
import { decodeResponse, encodeRequest } from '../../../src/protocols/ttrpc/envelope';
import { Code } from '../../../src/protocols/ttrpc/codes';
import { FdStream } from '../../../src/common/fd-stream';
import { native } from '../../../src/common/native';
import { dialAgent } from '../../../src/protocols/agent-dialer';
import { AgentSandbox } from '../../../src/agent/sandbox';
import { agentHandlers } from '../../../src/agent/service';
import { AgentClient } from '../../../src/runtime/agent-client';
import { defaultSpec } from '../../../src/runtime/spec';
import { DirectRuntime } from '../../helpers/direct-runtime';
import { serveAgentOnUnix } from '../../helpers/agent-rig';

const turn = () => new Promise((r) => setImmediate(r));

describe('unit: agent stdout path and start helpers', function () {
  this.timeout(10000);
  let dir: string;
  before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-output-')); });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  describe('OutputPipe', () => {
    it('hands a waiting reader every chunk pushed in one event-loop turn as one batch, in order', async () => {
      const p = new OutputPipe();
      const read = p.readChunks();
      for (let i = 0; i < 5; i++) p.push(Buffer.from(`c${i}`));
      const got = await read;
      expect(got!.map((b) => b.toString())).to.deep.equal(['c0', 'c1', 'c2', 'c3', 'c4']);
    });

    it('keeps whole chunks under max, at least one even when it is larger, then the rest', async () => {
      const p = new OutputPipe();
      p.push(Buffer.alloc(10, 1));
      p.push(Buffer.alloc(10, 2));
      p.push(Buffer.alloc(30, 3));
      expect((await p.readChunks(25))!.map((b) => b.length)).to.deep.equal([10, 10]);
      expect((await p.readChunks(25))!.map((b) => b.length)).to.deep.equal([30]);
    });

    it('delivers what is left before the end, then null; data pushed after the end is dropped', async () => {
      const p = new OutputPipe();
      p.push(Buffer.from('last'));
      p.end();
      p.push(Buffer.from('late'));
      expect(Buffer.concat((await p.readChunks())!).toString()).to.equal('last');
      expect(await p.readChunks()).to.equal(null);
      expect(await p.read()).to.equal(null);
    });

    it('ignores empty chunks (a zero-length read is not data)', async () => {
      const p = new OutputPipe();
      p.push(Buffer.alloc(0));
      p.push(Buffer.from('x'));
      expect((await p.readChunks())!.map((b) => b.toString())).to.deep.equal(['x']);
    });

    it('pauses its source above highWater and resumes it once drained below half', async () => {
      const src = new PassThrough();
      const p = new OutputPipe(100);
      p.attachSource(src);
      src.write(Buffer.alloc(150));
      await turn();
      expect(src.isPaused()).to.equal(true);
      await p.readChunks();
      expect(src.isPaused()).to.equal(false);
      src.end();
      await turn();
      expect(p.isEnded).to.equal(true);
    });
  });

  describe('OutputFifos + OutputPipe.attachFd (a child\'s stdout read from the fd)', () => {
    /** Spawns sh -c `script` on fresh FIFOs; resolves with all of stdout and stderr once both ended. */
    async function run(script: string, highWater?: number, slowReader = false): Promise<{ out: Buffer; err: Buffer }> {
      const fifos = OutputFifos.open(dir, 't');
      const child = spawn('/bin/sh', ['-c', script], { stdio: fifos.stdio() });
      fifos.closeChildEnds();
      fifos.dropStdin();
      const out = new OutputPipe(highWater);
      const err = new OutputPipe(highWater);
      out.attachFd(fifos.stdoutRead);
      err.attachFd(fifos.stderrRead);
      const drain = async (p: OutputPipe) => {
        const got: Buffer[] = [];
        for (let c = await p.readChunks(); c; c = await p.readChunks()) {
          got.push(...c);
          if (slowReader) await new Promise((r) => setTimeout(r, 5));
        }
        return Buffer.concat(got);
      };
      const [o, e] = await Promise.all([drain(out), drain(err), new Promise((r) => child.on('exit', r))]);
      return { out: o, err: e };
    }

    it('gives the child a blocking pipe as stdin: busybox cat echoes a line before its input ends, then ends with it', async () => {
      // busybox cat copies a socket stdin with sendfile(2), which held the
      // line until end of input (Node's spawn 'pipe' is a socketpair).
      const fifos = OutputFifos.open(dir, 'cat');
      const child = spawn('/bin/busybox', ['cat'], { stdio: fifos.stdio() });
      fifos.closeChildEnds();
      const stdin = fifos.takeStdin();
      const flags = fs.readFileSync(`/proc/${child.pid}/fdinfo/0`, 'utf8').match(/flags:\s+(\d+)/)![1]!;
      expect(parseInt(flags, 8) & fs.constants.O_NONBLOCK, 'the child\'s stdin blocks').to.equal(0);
      expect(fs.statSync(`/proc/${child.pid}/fd/0`).isFIFO(), 'a pipe, not a socket').to.equal(true);
      const out = new OutputPipe();
      out.attachFd(fifos.stdoutRead);
      const err = new OutputPipe();
      err.attachFd(fifos.stderrRead);
      stdin.write('hello\n');
      const first = await Promise.race([out.readChunks(), new Promise<null>((r) => setTimeout(() => r(null), 3000))]);
      expect(first && Buffer.concat(first).toString(), 'the line comes back while stdin is still open').to.equal('hello\n');
      const exited = new Promise<number | null>((r) => child.on('exit', r));
      stdin.end();
      expect(await exited).to.equal(0);
      expect(await out.readChunks(), 'then end of output').to.equal(null);
      expect(await err.readChunks()).to.equal(null);
    });

    it('delivers everything the child wrote, in order, then the end, and leaves no FIFO behind', async () => {
      const r = await run('head -c 3000000 /dev/zero | tr "\\0" x; echo -n E >&2');
      expect(r.out.length).to.equal(3000000);
      expect(r.out.every((b) => b === 0x78)).to.equal(true);
      expect(r.err.toString()).to.equal('E');
      expect(fs.readdirSync(dir).filter((f) => f.endsWith('.fifo'))).to.deep.equal([]);
    });

    it('pauses the fd above highWater and loses nothing when resumed', async () => {
      const r = await run('seq 1 200000', 64 * 1024, true);
      const lines = r.out.toString().trim().split('\n');
      expect(lines.length).to.equal(200000);
      expect(lines[0]).to.equal('1');
      expect(lines[199999]).to.equal('200000');
    });

    it('ends at once for a child that writes nothing, and when no child ever held the write ends', async () => {
      expect((await run('true')).out.length).to.equal(0);
      const fifos = OutputFifos.open(dir, 'none');
      fifos.closeChildEnds();
      const p = new OutputPipe();
      p.attachFd(fifos.stdoutRead);
      expect(await p.readChunks()).to.equal(null);
      fifos.closeAll();
    });

    it('is one error, with nothing left open or behind, in a directory that does not exist', () => {
      expect(() => OutputFifos.open(path.join(dir, 'missing'), 'x')).to.throw(/mkfifo .*missing.*errno 2/);
    });
  });

  describe('ttrpc server: streamed EncodedMessage', () => {
    const SERVICE = 'test.Svc';
    let server: RpcServer;
    let sockPath: string;
    let srv: net.Server;
    let parts: Buffer[];

    before(async () => {
      const methods = new Map<string, RpcMethod>([['Stream', {
        responseStream: true,
        decodeRequest: (b) => b,
        encodeResponse: () => Buffer.alloc(0),
        handle: async function* () { yield new EncodedMessage(parts); },
      }]]);
      server = new RpcServer({ service: SERVICE, methods, status: (e) => ({ code: Code.Internal, message: String(e) }), maxLength: 1024 });
      sockPath = path.join(dir, 's.sock');
      srv = net.createServer((c) => server.serve(c));
      await new Promise<void>((r) => srv.listen(sockPath, () => r()));
    });
    after(async () => {
      server.close();
      await new Promise<void>((r) => srv.close(() => r()));
    });

    /** One Stream call on a fresh connection: the frames received until the stream ends. */
    async function call(): Promise<Frame[]> {
      const c = net.connect(sockPath);
      const reader = new FrameReader();
      const frames: Frame[] = [];
      const done = new Promise<void>((resolve) => {
        c.on('data', (d: Buffer) => {
          for (const f of reader.push(d)) {
            frames.push(f as Frame);
            if (f.type === FrameType.Response || ((f as Frame).flags & FLAG_REMOTE_CLOSED)) resolve();
          }
        });
        c.on('close', () => resolve());
      });
      c.write(encodeFrame(1, FrameType.Request, FLAG_REMOTE_CLOSED, encodeRequest({ service: SERVICE, method: 'Stream', payload: Buffer.alloc(0) })));
      await done;
      c.destroy();
      return frames;
    }

    it('sends the parts as one Data frame whose payload is their concatenation (prefix joined to the header)', async () => {
      parts = [Buffer.from([0x0a, 0x05]), Buffer.from('he'), Buffer.from('llo')];
      const frames = await call();
      expect(frames[0]!.type).to.equal(FrameType.Data);
      expect(frames[0]!.payload).to.deep.equal(Buffer.concat(parts));
      expect(frames[1]!.flags & FLAG_REMOTE_CLOSED).to.equal(FLAG_REMOTE_CLOSED);
    });

    it('sends a large first part as it is', async () => {
      parts = [Buffer.alloc(300, 7), Buffer.alloc(5, 8)];
      const frames = await call();
      expect(frames[0]!.payload).to.deep.equal(Buffer.concat(parts));
    });

    it('refuses a message over the limit with ResourceExhausted and sends none of it', async () => {
      parts = [Buffer.from([1]), Buffer.alloc(2000)];
      const frames = await call();
      expect(frames).to.have.length(1);
      expect(frames[0]!.type).to.equal(FrameType.Response);
      expect(decodeResponse(frames[0]!.payload).status?.code).to.equal(Code.ResourceExhausted);
    });

    it('keeps serving after a client closes its connection mid-call', async () => {
      parts = [Buffer.from([1]), Buffer.from('x')];
      const c = net.connect(sockPath);
      await new Promise<void>((r) => c.once('connect', () => r()));
      c.write(encodeFrame(1, FrameType.Request, FLAG_REMOTE_CLOSED, encodeRequest({ service: SERVICE, method: 'Stream', payload: Buffer.alloc(0) })));
      c.destroy();
      await turn();
      const frames = await call();
      expect(frames[0]!.payload).to.deep.equal(Buffer.concat(parts));
    });
  });

  describe('FdStream writes (the agent\'s vsock side)', () => {
    it('sends corked small and large chunks intact and in order, past a full socket buffer', async () => {
      const n = native();
      const sock = path.join(dir, 'fd.sock');
      const lfd = n.unixListenNb(sock);
      const a = new FdStream(n.unixConnect(sock));
      let bfd = -1;
      while (bfd < 0) { bfd = n.acceptNb(lfd); if (bfd < 0) await turn(); }
      n.closeFd(lfd);
      const b = new FdStream(bfd);
      const parts = [Buffer.from('hd'), Buffer.alloc(3 << 20, 1), Buffer.from('mid'), ...Array.from({ length: 20 }, (_, i) => Buffer.alloc(70000, i + 2)), Buffer.from('x')];
      const got: Buffer[] = [];
      const ended = new Promise<void>((r) => { b.on('data', (d: Buffer) => got.push(d)); b.on('end', () => r()); });
      a.cork();
      for (const p of parts) a.write(p);
      a.uncork();
      a.end();
      await ended;
      expect(Buffer.concat(got).equals(Buffer.concat(parts))).to.equal(true);
      a.destroy();
      b.destroy();
    });
  });

  describe('spliced stdout (readSpliceable + FdStream.writeSplice)', () => {
    const SERVICE = 'test.Splice';

    /**
     * A child writing `script`'s output into a FIFO, read by a stream method
     * the way the agent's ReadStdout is (service.ts), served on an FdStream
     * (unix socket fd, as the agent's vsock one) or a net.Socket; returns the
     * payloads the client received and how many splice calls moved them.
     */
    async function stream(script: string, opts: { fdStream: boolean; readEarly?: boolean; stallMs?: number; abort?: boolean }): Promise<{ payload: Buffer; spliceCalls: number; asyncCalls: number; messages: number; out: OutputPipe }> {
      const n = native();
      const realSplice = n.spliceFd!;
      const realAsync = n.spliceAsync!;
      const realCopy = n.copyAsync;
      let spliceCalls = 0;
      let asyncCalls = 0;
      n.spliceFd = (a, b, len) => { spliceCalls++; return realSplice(a, b, len); };
      n.spliceAsync = (a, b, len, cancel, cb) => { asyncCalls++; return realAsync(a, b, len, cancel, cb); };
      // An addon without copyAsync (a test removes it) stays without it.
      if (realCopy) n.copyAsync = (a, b, len, cancel, cb) => { asyncCalls++; return realCopy(a, b, len, cancel, cb); };
      const fifos = OutputFifos.open(dir, 'sp');
      const child = spawn('/bin/sh', ['-c', script], { stdio: fifos.stdio() });
      fifos.closeChildEnds();
      const out = new OutputPipe();
      out.attachFd(fifos.stdoutRead);
      // Let some output be read into memory before the reader comes.
      if (opts.readEarly) await new Promise((r) => setTimeout(r, 300));
      const methods = new Map<string, RpcMethod>([['Out', {
        responseStream: true,
        decodeRequest: (b) => b,
        encodeResponse: () => Buffer.alloc(0),
        handle: async function* (_req: unknown, ctx: { signal: AbortSignal }) {
          try {
            for (;;) {
              const o = await out.readSpliceable(undefined, ctx.signal);
              if (o === null) return;
              yield Array.isArray(o) ? new EncodedMessage(o) : new EncodedMessage([], o);
            }
          } finally {
            out.endSplice();
          }
        },
      }]]);
      const server = new RpcServer({ service: SERVICE, methods, status: (e) => ({ code: Code.Internal, message: String(e) }), maxLength: 4 << 20 });
      const sock = path.join(dir, 'splice.sock');
      fs.rmSync(sock, { force: true });
      let lfd = -1;
      let srv: net.Server | undefined;
      if (opts.fdStream) lfd = n.unixListenNb(sock);
      else {
        srv = net.createServer((c) => server.serve(c));
        await new Promise<void>((r) => srv!.listen(sock, () => r()));
      }
      const c = net.connect(sock);
      if (opts.fdStream) {
        let fd = -1;
        while (fd < 0) { fd = n.acceptNb(lfd); if (fd < 0) await turn(); }
        n.closeFd(lfd);
        server.serve(new FdStream(fd));
      }
      const reader = new FrameReader(4 << 20);
      const got: Buffer[] = [];
      let messages = 0;
      await new Promise<void>((resolve) => {
        c.on('data', (d: Buffer) => {
          for (const f of reader.push(d) as Frame[]) {
            if (f.payload.length) { got.push(f.payload); messages++; }
            if (f.type === FrameType.Response || (f.flags & FLAG_REMOTE_CLOSED)) resolve();
          }
        });
        c.on('close', () => resolve());
        c.write(encodeFrame(1, FrameType.Request, FLAG_REMOTE_CLOSED, encodeRequest({ service: SERVICE, method: 'Out', payload: Buffer.alloc(0) })));
        // A host that stops reading: the socket fills, the splice goes to a pool thread.
        if (opts.stallMs) {
          c.pause();
          // Until the splice went to a pool thread (or stallMs: then the assertion fails).
          const t0 = Date.now();
          const check = () => {
            if (asyncCalls === 0 && Date.now() - t0 < opts.stallMs!) return void setTimeout(check, 10);
            if (opts.abort) c.destroy();
            else c.resume();
          };
          check();
        }
      });
      c.destroy();
      server.close();
      if (srv) await new Promise<void>((r) => srv!.close(() => r()));
      if (opts.abort) {
        // The reader is gone: the agent reads the pipe itself again, so the child can finish.
        while (!out.isEnded) await out.readChunks();
      }
      await new Promise((r) => (child.exitCode === null ? child.on('exit', r) : r(null)));
      n.spliceFd = realSplice;
      n.spliceAsync = realAsync;
      if (realCopy) n.copyAsync = realCopy;
      fs.rmSync(sock, { force: true });
      return { payload: Buffer.concat(got), spliceCalls, asyncCalls, messages, out };
    }

    const expected = (k: number) => Buffer.concat(Array.from({ length: k }, (_, i) => Buffer.from(`${i}\n`)));

    it('moves a FIFO\'s bytes into an FdStream off the JS thread (copyAsync), all of them, in order, then ends the stream', async () => {
      const r = await stream('sleep 1; seq 0 299999', { fdStream: true });
      expect(r.payload.equals(expected(300000))).to.equal(true);
      expect(r.asyncCalls, 'pool-thread moves').to.be.greaterThan(0);
      expect(r.spliceCalls, 'copyAsync replaces the splice on the JS thread').to.equal(0);
    });

    it('still splices (spliceFd, then spliceAsync) with an addon that has no copyAsync', async () => {
      const n = native();
      const realCopy = n.copyAsync;
      delete n.copyAsync;
      try {
        const r = await stream('sleep 1; seq 0 299999', { fdStream: true });
        expect(r.payload.equals(expected(300000))).to.equal(true);
        expect(r.spliceCalls).to.be.greaterThan(0);
      } finally {
        n.copyAsync = realCopy;
      }
    });

    it('sends what was read into memory before the reader came first, then splices the rest', async () => {
      const r = await stream('seq 0 9999; sleep 0.5; seq 10000 299999', { fdStream: true, readEarly: true });
      expect(r.payload.equals(expected(300000))).to.equal(true);
      expect(r.asyncCalls).to.be.greaterThan(0);
      expect(r.messages).to.be.greaterThan(1);
    });

    it('finishes a splice on a pool thread when the socket is full, losing nothing', async () => {
      const r = await stream('seq 0 599999', { fdStream: true, stallMs: 5000 });
      expect(r.payload.equals(expected(600000))).to.equal(true);
      expect(r.asyncCalls).to.be.greaterThan(0);
    });

    it('ends a stream held up by a full socket when the connection goes, and the agent reads the pipe again', async () => {
      // Held up in the splice or in the header write before it: either way the reader must let go.
      const r = await stream('seq 0 599999', { fdStream: true, stallMs: 2000, abort: true });
      expect(r.out.isEnded).to.equal(true);
    });

    it('a destroyed FdStream cancels its pool-thread splice, calls the write back, then closes the fd', async () => {
      const { n, fifos, a, b } = await pipeAndSocket('cx');
      // Fill the socket, so the splice cannot start on this thread.
      const fill = Buffer.alloc(65536);
      while (n.writeFd(b, fill, 0, fill.length) > 0);
      fs.writeSync(fifos.stdoutWrite, Buffer.alloc(1000, 1));
      const realCopy = n.copyAsync!;
      let asyncCalls = 0;
      n.copyAsync = (...args) => { asyncCalls++; return realCopy(...args); };
      try {
        const s = new FdStream(b);
        s.on('error', () => undefined);
        const called = new Promise<Error | null | undefined>((r) => s.writeSplice(fifos.stdoutRead, 1000, (e) => r(e)));
        await turn();
        expect(asyncCalls).to.equal(1);
        s.destroy();
        const err = await called;
        expect(err).to.be.instanceOf(Error);
        // The fd was closed after the thread let go of it: it is gone now.
        expect(() => n.writeFd(b, fill, 0, 1)).to.throw(/Bad file descriptor/);
      } finally {
        // Not close(): b is the FdStream's, closed by its destroy().
        n.copyAsync = realCopy;
        n.closeFd(a);
        fifos.closeAll();
        fs.rmSync(path.join(dir, 'cx.sock'), { force: true });
      }
    });

    for (const fn of ['spliceAsync', 'copyAsync'] as const) it(`${fn} waits (without spinning) for bytes another reader took, then moves them`, async () => {
      const n = native();
      const fifos = OutputFifos.open(dir, `sa-${fn}`);
      const sock = path.join(dir, 'sa.sock');
      fs.rmSync(sock, { force: true });
      const lfd = n.unixListenNb(sock);
      const a = n.unixConnect(sock);
      let b = -1;
      while (b < 0) { b = n.acceptNb(lfd); if (b < 0) await turn(); }
      try {
        const cpu0 = process.cpuUsage();
        const done = new Promise<[Error | null, number]>((r) => n[fn]!(fifos.stdoutRead, b, 10, new Int32Array(1), (e, moved) => r([e, moved])));
        await new Promise((r) => setTimeout(r, 500));
        const cpu = process.cpuUsage(cpu0);
        expect((cpu.user + cpu.system) / 1000, 'CPU ms while the pipe was empty').to.be.lessThan(150);
        fs.writeSync(fifos.stdoutWrite, Buffer.from('0123456789'));
        const [err, moved] = await done;
        expect(err).to.equal(null);
        expect(moved).to.equal(10);
        const got = Buffer.alloc(16);
        expect(n.readFd(a, got, 0, 16)).to.equal(10);
        expect(got.subarray(0, 10).toString()).to.equal('0123456789');
      } finally {
        for (const fd of [lfd, a, b]) n.closeFd(fd);
        fifos.closeAll();
        fs.rmSync(sock, { force: true });
      }
    });

    /** A unix socket pair through a listener (read end a, write end b) and a FIFO, closed by `fn`'s finally. */
    async function pipeAndSocket(name: string) {
      const n = native();
      const fifos = OutputFifos.open(dir, name);
      const sock = path.join(dir, `${name}.sock`);
      fs.rmSync(sock, { force: true });
      const lfd = n.unixListenNb(sock);
      const a = n.unixConnect(sock);
      let b = -1;
      while (b < 0) { b = n.acceptNb(lfd); if (b < 0) await turn(); }
      n.closeFd(lfd);
      const close = () => { for (const fd of [a, b]) n.closeFd(fd); fifos.closeAll(); fs.rmSync(sock, { force: true }); };
      return { n, fifos, a, b, close };
    }

    it('copyAsync moves 3 MiB through a full socket and a refilled pipe, in order, reporting every byte', async () => {
      const { n, fifos, a, b, close } = await pipeAndSocket('cp');
      try {
        // More than the pipe holds: the writer refills it while the thread
        // copies, and the socket fills because nobody reads it at first.
        const data = Buffer.alloc(3 << 20);
        for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i, i);
        const writer = fs.createWriteStream('', { fd: fifos.stdoutWrite, autoClose: false });
        writer.write(data);
        const done = new Promise<[Error | null, number]>((r) => n.copyAsync!(fifos.stdoutRead, b, data.length, new Int32Array(1), (e, moved) => r([e, moved])));
        await new Promise((r) => setTimeout(r, 100));
        const got: Buffer[] = [];
        let total = 0;
        const chunk = Buffer.alloc(1 << 20);
        while (total < data.length) {
          const r = n.readFd(a, chunk, 0, chunk.length);
          if (r > 0) { got.push(Buffer.from(chunk.subarray(0, r))); total += r; } else await turn();
        }
        const [err, moved] = await done;
        expect(err).to.equal(null);
        expect(moved).to.equal(data.length);
        expect(Buffer.concat(got).equals(data)).to.equal(true);
      } finally {
        close();
      }
    });

    it('copyAsync reports a pipe that ends early (EPIPE) with the bytes it did move', async () => {
      const { n, fifos, a, b, close } = await pipeAndSocket('ce');
      try {
        fs.writeSync(fifos.stdoutWrite, Buffer.from('abc'));
        fifos.closeChildEnds(); // every writer gone: the pipe ends after 'abc'
        const [err, moved] = await new Promise<[Error | null, number]>((r) => n.copyAsync!(fifos.stdoutRead, b, 10, new Int32Array(1), (e, m) => r([e, m])));
        expect(err?.message).to.match(/EPIPE|[Bb]roken pipe/);
        expect(moved).to.equal(3);
        const got = Buffer.alloc(8);
        expect(n.readFd(a, got, 0, 8)).to.equal(3);
      } finally {
        close();
      }
    });

    it('reads the waiting bytes instead on a connection that cannot splice (a net.Socket)', async () => {
      const r = await stream('seq 0 299999', { fdStream: false });
      expect(r.payload.equals(expected(300000))).to.equal(true);
      expect(r.spliceCalls).to.equal(0);
    });

    it('ends at once for a child that writes nothing', async () => {
      const r = await stream('true', { fdStream: true });
      expect(r.payload.length).to.equal(0);
    });

    it('grows the pipe (PIPE_SIZE, or 1 MiB without CAP_SYS_RESOURCE) so a writer runs 1 MiB writes ahead', async () => {
      const fifos = OutputFifos.open(dir, 'sz');
      const p = new OutputPipe();
      p.attachFd(fifos.stdoutRead);
      try {
        expect([PIPE_SIZE, 1 << 20]).to.include(p.pipeCapacity);
        const big = Buffer.alloc(p.pipeCapacity, 7);
        expect(fs.writeSync(fifos.stdoutWrite, big)).to.equal(p.pipeCapacity);
      } finally {
        fifos.closeChildEnds();
        while (await p.readChunks());
      }
    });
  });

  describe('ReadStdout through the agent service', () => {
    it('a reader that goes away loses nothing: the next ReadStdout gets the rest, then the end', async () => {
      const sandbox = new AgentSandbox({ runtime: new DirectRuntime(), stateDir: path.join(dir, 'state'), cgroupRoot: path.join(dir, 'cgroup') });
      const rig = await serveAgentOnUnix(agentHandlers(sandbox), path.join(dir, 'agent.sock'));
      const client = new AgentClient(dialAgent(rig.socket));
      try {
        await client.check(5000);
        const spec = JSON.stringify({ ...defaultSpec({ args: ['sh', '-c', 'echo one; read x; echo two $x; head -c 200000 /dev/zero | tr "\\0" z'] }), root: { path: '/' } });
        await client.createContainer({ container_id: 'c-cancel', exec_id: '', storages: [], oci_spec_json: spec });
        await client.startContainer('c-cancel');
        const ref = { container_id: 'c-cancel', exec_id: '' };
        const first = client.readStdout(ref);
        const one = await new Promise<string>((r) => first.once('data', (m: { data: Buffer }) => r(m.data.toString())));
        expect(one).to.equal('one\n');
        first.cancel();
        await new Promise((r) => setTimeout(r, 100));
        await client.writeStdin(ref, Buffer.from('go\n'));
        const second = client.readStdout(ref);
        let rest = '';
        await new Promise<void>((r) => { second.on('data', (m: { data: Buffer }) => { rest += m.data.toString(); }); second.on('end', () => r()); });
        expect(rest.slice(0, 7)).to.equal('two go\n');
        expect(rest.length).to.equal(7 + 200000);
        expect((await client.waitProcess(ref)).status).to.equal(0);
      } finally {
        await sandbox.destroySandbox();
        client.close();
        await rig.close();
      }
    });
  });

  describe('crun status file', () => {
    it('reads the pid crun recorded', async () => {
      const root = path.join(dir, 'crun');
      fs.mkdirSync(path.join(root, 'c1'), { recursive: true });
      fs.writeFileSync(path.join(root, 'c1', 'status'), '{\n    "pid" : 4242,\n    "cgroup-path" : "/c1"\n}\n');
      const rt = new CrunRuntime('/nonexistent/crun', root);
      expect(await rt.pid('c1')).to.equal(4242);
      expect(await rt.pid('absent')).to.equal(0);
    });

    it('gives 0 for anything that does not name a positive integer pid', () => {
      for (const t of ['', '{', 'null', '[]', '{"pid":0}', '{"pid":-3}', '{"pid":1.5}', '{"pid":"12"}', '{}']) expect(crunStatusPid(t), t).to.equal(0);
      expect(crunStatusPid('{"pid":7}')).to.equal(7);
    });
  });
});
