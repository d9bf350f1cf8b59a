/**
 * A ttrpc 1.2 server for one service table over any byte stream (an accepted
 * AF_VSOCK socket in the guest, a unix socket in tests): unary methods and
 * server-streaming methods (PROTOCOL.md "Streaming": the client's Request
 * carries `remote closed`, the server answers with Data frames, the last
 * one flagged `remote closed`, or with one Response carrying an error).
 *
 * This is the guest agent's transport, so it loads nothing heavy: frames
 * from frame.ts, envelopes through our protobuf codec (envelope.ts), no
 * protobufjs, no winston (server.ts, the shim's, has both).
 *
 * Peers are hostile (decision 2). A frame that breaks the protocol — an
 * oversize length, a type other than Request, an even or re-used stream id,
 * an undecodable envelope or request payload — is answered on its stream
 * when it has one (ResourceExhausted / InvalidArgument), reported once
 * through `onProtocolError`, and ends that connection; other connections
 * and the process carry on. An unknown method is Unimplemented and keeps the
 * connection (an older agent asked for a newer RPC is not a broken peer).
 * A connection that closes aborts the `signal` of every call still running
 * on it: that is how a host cancels a stream or a long poll.
 */
import type { Duplex } from 'node:stream';
import { Code, TtrpcError } from './codes';
import { FLAG_NO_DATA, FLAG_REMOTE_CLOSED, FrameReader, FrameType, encodeFrame, HEADER_LENGTH, MAX_MESSAGE_LENGTH } from './frame';
import { decodeRequest, encodeResponse, type EnvelopeRequest } from './envelope';

export interface CallContext {
  /** Aborted when the connection carrying the call closes. */
  signal: AbortSignal;
  /** The caller's deadline (ttrpc Request.timeout_nano; 0 = none). */
  timeoutNano: number;
}

export interface RpcMethod {
  responseStream: boolean;
  decodeRequest(b: Buffer): unknown;
  encodeResponse(v: unknown): Buffer;
  /** Unary: resolves with the response. Streaming: yields each message. */
  handle(req: unknown, ctx: CallContext): Promise<unknown> | AsyncIterable<unknown>;
}

export interface RpcStatus {
  code: number;
  message: string;
}

export interface RpcServerOptions {
  /** Full service name clients address (`package.Service`). */
  service: string;
  methods: ReadonlyMap<string, RpcMethod>;
  /** A handler's error as a wire status (the RPC edge). */
  status(err: unknown): RpcStatus;
  maxLength?: number;
  /** Called once per connection ended for a protocol violation. */
  onProtocolError?(why: string): void;
}

/**
 * Bytes waiting in a pipe that end a streamed message: moved into the
 * connection with splice(2) when it can (SpliceWriter), else read().
 */
export interface SpliceTail {
  readonly fd: number;
  readonly length: number;
  read(): Buffer;
}

/**
 * A connection that can move a pipe's bytes into itself in the kernel, in
 * order with what was written before (src/common/fd-stream.ts); `cb` once
 * all `length` bytes went, or with the error that ended it — always, also
 * when the connection is destroyed, and only once it no longer reads the pipe.
 */
export interface SpliceWriter {
  writeSplice(fd: number, length: number, cb: (err?: Error | null) => void): boolean;
}

function canSplice(c: Duplex): c is Duplex & SpliceWriter {
  return typeof (c as Partial<SpliceWriter>).writeSplice === 'function';
}

/**
 * A streamed message already encoded, as the buffers that make it up in
 * order: the server writes them one by one after the frame header, so a
 * large payload (container stdout) is never copied into one buffer. A
 * `tail` (container stdout waiting in its pipe) follows them without
 * passing through JavaScript at all.
 */
export class EncodedMessage {
  readonly length: number;
  constructor(readonly parts: Buffer[], readonly tail?: SpliceTail) {
    this.length = parts.reduce((n, p) => n + p.length, 0) + (tail?.length ?? 0);
  }
}

export class RpcServer {
  private readonly maxLength: number;
  private readonly conns = new Set<Duplex>();

  constructor(private readonly opts: RpcServerOptions) {
    this.maxLength = opts.maxLength ?? MAX_MESSAGE_LENGTH;
  }

  get connections(): number {
    return this.conns.size;
  }

  /** Serves one connected stream until it closes (or breaks the protocol). */
  serve(c: Duplex): void {
    this.conns.add(c);
    const reader = new FrameReader(this.maxLength);
    const abort = new AbortController();
    let lastStream = 0;
    let broken = false;
    const send = (streamId: number, type: number, flags: number, body: Buffer): boolean => (c.destroyed || c.writableEnded ? false : c.write(encodeFrame(streamId, type, flags, body)));
    const reply = (streamId: number, status: RpcStatus | undefined, payload?: Buffer) =>
      send(streamId, FrameType.Response, 0, encodeResponse(status ? { status } : { payload }));
    const violate = (streamId: number | undefined, code: number, why: string) => {
      if (broken) return;
      broken = true;
      if (streamId !== undefined) reply(streamId, { code, message: why });
      this.opts.onProtocolError?.(why);
      c.end();
      // A peer that stops reading must not hold the connection open.
      setTimeout(() => c.destroy(), 1000).unref();
    };
    const onFrame = (f: ReturnType<FrameReader['push']>[number]) => {
      if ('oversize' in f) return violate(f.streamId, Code.ResourceExhausted, `ttrpc: message length ${f.length} exceeds the maximum of ${this.maxLength}`);
      if (f.type !== FrameType.Request) return violate(undefined, Code.InvalidArgument, `ttrpc: unexpected frame type ${f.type} on stream ${f.streamId} (this server takes requests only)`);
      if (f.streamId % 2 !== 1) return violate(f.streamId, Code.InvalidArgument, `ttrpc: stream id ${f.streamId} must be odd for client initiated streams`);
      if (f.streamId <= lastStream) return violate(f.streamId, Code.InvalidArgument, `ttrpc: stream id ${f.streamId} cannot be re-used and must increase`);
      lastStream = f.streamId;
      let req: EnvelopeRequest;
      try {
        req = decodeRequest(f.payload);
      } catch (err) {
        return violate(f.streamId, Code.InvalidArgument, `ttrpc: malformed request envelope: ${(err as Error).message}`);
      }
      const m = req.service === this.opts.service ? this.opts.methods.get(req.method) : undefined;
      if (!m) {
        reply(f.streamId, { code: Code.Unimplemented, message: req.service === this.opts.service ? `method ${req.method} is not implemented by this agent` : `service ${req.service} is not served here` });
        return;
      }
      let arg: unknown;
      try {
        arg = m.decodeRequest(req.payload);
      } catch (err) {
        return violate(f.streamId, Code.InvalidArgument, `ttrpc: malformed ${req.method} request: ${(err as Error).message}`);
      }
      this.run(m, f.streamId, arg, { signal: abort.signal, timeoutNano: req.timeout_nano }, c, send, reply);
    };
    c.on('data', (d: Buffer) => {
      if (broken) return;
      for (const f of reader.push(d)) {
        onFrame(f);
        if (broken) return;
      }
    });
    c.on('error', () => c.destroy());
    c.on('close', () => {
      this.conns.delete(c);
      abort.abort();
    });
    c.on('end', () => c.end());
  }

  private run(m: RpcMethod, streamId: number, arg: unknown, ctx: CallContext, c: Duplex,
    send: (id: number, type: number, flags: number, body: Buffer) => boolean, reply: (id: number, s: RpcStatus | undefined, p?: Buffer) => void): void {
    // The server's own refusals (TtrpcError: an oversize stream message) keep
    // their code; a handler's error is the service's to map.
    const fail = (err: unknown) => reply(streamId, err instanceof TtrpcError ? { code: err.code, message: err.message } : this.opts.status(err));
    let out: Promise<unknown> | AsyncIterable<unknown>;
    try {
      out = m.handle(arg, ctx);
    } catch (err) {
      fail(err);
      return;
    }
    if (!m.responseStream) {
      (out as Promise<unknown>).then((res) => {
        let body: Buffer;
        try {
          body = m.encodeResponse(res);
        } catch (err) {
          return fail(err);
        }
        reply(streamId, undefined, body);
      }, fail);
      return;
    }
    (async () => {
      for await (const msg of out as AsyncIterable<unknown>) {
        if (ctx.signal.aborted) return;
        let more: boolean;
        if (msg instanceof EncodedMessage) {
          if (msg.length > this.maxLength) throw new TtrpcError('ResourceExhausted', `stream message of ${msg.length} bytes is over the ${this.maxLength}-byte limit`);
          const head = Buffer.allocUnsafe(HEADER_LENGTH);
          head.writeUInt32BE(msg.length, 0);
          head.writeUInt32BE(streamId >>> 0, 4);
          head.writeUInt8(FrameType.Data, 8);
          head.writeUInt8(0, 9);
          // The header goes out with a small first part (the message's
          // prefix bytes): on vsock each write is a packet.
          const tail = msg.tail;
          const parts = tail && !canSplice(c) ? [...msg.parts, tail.read()] : msg.parts;
          const [first, ...rest] = parts;
          const joinFirst = first !== undefined && first.length <= 64;
          more = !c.destroyed && c.write(joinFirst ? Buffer.concat([head, first]) : head);
          for (const p of joinFirst ? rest : parts) more = !c.destroyed && c.write(p);
          if (tail && canSplice(c) && !c.destroyed) {
            // The pipe's bytes must be gone before the source is asked
            // again: wait for this write itself, not just for room — also
            // when the connection closes (a SpliceWriter always calls back,
            // once nothing reads the pipe for it any more).
            await new Promise<void>((resolve) => c.writeSplice(tail.fd, tail.length, () => resolve()));
            continue;
          }
        } else {
          more = send(streamId, FrameType.Data, 0, m.encodeResponse(msg));
        }
        if (!more && !c.destroyed) {
          // Socket-level backpressure is this stream's flow control.
          await new Promise<void>((r) => {
            const done = () => { c.off('drain', done); c.off('close', done); r(); };
            c.on('drain', done);
            c.on('close', done);
          });
        }
      }
      if (!ctx.signal.aborted) send(streamId, FrameType.Data, FLAG_REMOTE_CLOSED | FLAG_NO_DATA, Buffer.alloc(0));
    })().catch((err) => { if (!ctx.signal.aborted) fail(err); });
  }

  /** Ends every connection (they finish writing first). */
  close(): void {
    for (const c of this.conns) c.end();
  }
}
