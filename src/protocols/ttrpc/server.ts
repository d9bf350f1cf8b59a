/**
 * ttrpc server over unix sockets: each connection is read through a
 * FrameReader; each request frame runs its handler concurrently and is
 * answered on its own stream id, in whatever order handlers finish.
 *
 * Errors per ttrpc's Go server: a stream id that is even or not increasing is
 * answered InvalidArgument; an oversize message ResourceExhausted; an
 * undecodable Request InvalidArgument; an unknown service or method
 * Unimplemented. None of these closes the connection — a bad client cannot
 * take the shim down. Handler errors become a Status: TtrpcError keeps its
 * code, anything else is Unknown with its message (the RPC edge).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { errorMessage } from '../../common/errors';
import { logger } from '../../common/log';
import { Code, TtrpcError } from './codes';
import { FrameReader, FrameType, encodeFrame, MAX_MESSAGE_LENGTH } from './frame';
import { decode, encode, type TtrpcRequest } from './messages';

export type Handler = (payload: Buffer, ctx: { metadata: TtrpcRequest['metadata']; timeoutNano: number }) => Promise<Buffer>;

export class TtrpcServer {
  private readonly services = new Map<string, Map<string, Handler>>();
  private server: net.Server | undefined;
  private readonly conns = new Set<net.Socket>();
  private readonly log = logger('ttrpc');
  private inflight = 0;

  constructor(private readonly maxLength = MAX_MESSAGE_LENGTH) {}

  register(service: string, method: string, handler: Handler): void {
    let s = this.services.get(service);
    if (!s) this.services.set(service, (s = new Map()));
    s.set(method, handler);
  }

  /** Listen on a unix socket path (a stale socket file is replaced). */
  listen(socketPath: string): Promise<void> {
    fs.rmSync(socketPath, { force: true });
    const srv = net.createServer((c) => this.serve(c));
    this.server = srv;
    return new Promise((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(socketPath, () => {
        srv.off('error', reject);
        resolve();
      });
    });
  }

  /** Serve one already-connected stream (also used by tests with socket pairs). */
  serve(c: net.Socket): void {
    this.conns.add(c);
    const reader = new FrameReader(this.maxLength);
    let lastStream = 0;
    const reply = (streamId: number, status: { code: number; message: string } | undefined, payload: Buffer) => {
      if (c.destroyed) return;
      const body = encode('ttrpc.Response', status ? { status, payload: Buffer.alloc(0) } : { payload });
      c.write(encodeFrame(streamId, FrameType.Response, 0, body));
    };
    c.on('data', (data: Buffer) => {
      for (const f of reader.push(data)) {
        if ('oversize' in f) {
          reply(f.streamId, { code: Code.ResourceExhausted, message: `message length ${f.length} exceed maximum message size of ${this.maxLength}` }, Buffer.alloc(0));
          continue;
        }
        if (f.type !== FrameType.Request) continue; // responses/data from a client: not ours to answer
        if (f.streamId % 2 !== 1) {
          reply(f.streamId, { code: Code.InvalidArgument, message: 'StreamID must be odd for client initiated streams' }, Buffer.alloc(0));
          continue;
        }
        if (f.streamId <= lastStream) {
          reply(f.streamId, { code: Code.InvalidArgument, message: 'StreamID cannot be re-used and must increment' }, Buffer.alloc(0));
          continue;
        }
        lastStream = f.streamId;
        let req: TtrpcRequest;
        try {
          req = decode<TtrpcRequest>('ttrpc.Request', f.payload);
        } catch (err) {
          reply(f.streamId, { code: Code.InvalidArgument, message: `malformed request: ${errorMessage(err)}` }, Buffer.alloc(0));
          continue;
        }
        const svc = this.services.get(req.service);
        const handler = svc?.get(req.method);
        if (!handler) {
          reply(f.streamId, { code: Code.Unimplemented, message: svc ? `method ${req.method}` : `service ${req.service}` }, Buffer.alloc(0));
          continue;
        }
        this.inflight++;
        handler(req.payload, { metadata: req.metadata, timeoutNano: req.timeout_nano }).then(
          (res) => reply(f.streamId, undefined, res),
          (err: unknown) => {
            const code = err instanceof TtrpcError ? err.code : Code.Unknown;
            if (!(err instanceof TtrpcError)) this.log.warn('handler failed', { method: `${req.service}/${req.method}`, err: errorMessage(err) });
            reply(f.streamId, { code, message: errorMessage(err) }, Buffer.alloc(0));
          },
        ).finally(() => this.inflight--);
      }
    });
    c.on('error', () => undefined);
    c.on('close', () => this.conns.delete(c));
  }

  /** Resolves once no client is connected (or after timeoutMs). */
  idle(timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        clearInterval(i);
        resolve();
      }, timeoutMs);
      const i = setInterval(() => {
        if (this.conns.size === 0) {
          clearTimeout(t);
          clearInterval(i);
          resolve();
        }
      }, 20);
    });
  }

  get activeRequests(): number {
    return this.inflight;
  }

  /** Stop accepting; existing connections are closed once written out. */
  async close(): Promise<void> {
    for (const c of this.conns) c.end();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

/** Wraps a decode failure of a handler's request as InvalidArgument. */
export function decodeRequest<T>(type: string, payload: Buffer): T {
  try {
    return decode<T>(type, payload);
  } catch (err) {
    throw new TtrpcError('InvalidArgument', `cannot decode ${type}: ${errorMessage(err)}`);
  }
}
