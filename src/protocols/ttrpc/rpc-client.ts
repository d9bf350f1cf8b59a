/**
 * A ttrpc 1.2 client over one connected byte stream: unary calls (many in
 * flight, matched by stream id) and server-streaming calls (Request flagged
 * `remote closed`, then Data frames until one flagged `remote closed`, or a
 * Response that ends the stream, with an error or not). PROTOCOL.md of
 * github.com/containerd/ttrpc; envelopes through our codec (envelope.ts).
 *
 * The server is not trusted either (a guest agent may be compromised): a
 * frame over `maxLength`, a response or data frame that cannot be decoded,
 * a frame of a type a client never receives — each fails every call on the
 * connection with one TtrpcError naming what was wrong ('DataLoss') and
 * closes the connection. Frames for streams no call waits for (answers to
 * calls that timed out) are dropped.
 */
import type { Duplex } from 'node:stream';
import { TtrpcError, codeName } from './codes';
import { FLAG_NO_DATA, FLAG_REMOTE_CLOSED, FrameReader, FrameType, encodeFrame, MAX_MESSAGE_LENGTH } from './frame';
import { decodeResponse, encodeRequest } from './envelope';

interface Call {
  onMessage?: (payload: Buffer) => void;
  done(err: Error | null, payload?: Buffer): void;
}

export class RpcClient {
  private nextStream = 1;
  private readonly calls = new Map<number, Call>();
  private readonly reader: FrameReader;
  private failure: Error | undefined;

  constructor(private readonly conn: Duplex, private readonly service: string, private readonly maxLength = MAX_MESSAGE_LENGTH) {
    this.reader = new FrameReader(maxLength);
    conn.on('data', (d: Buffer) => {
      if (this.failure) return;
      for (const f of this.reader.push(d)) {
        this.onFrame(f);
        if (this.failure) return;
      }
    });
    conn.on('error', (e: Error) => this.fail(new TtrpcError('Unavailable', `ttrpc: connection to the agent failed: ${e.message}`)));
    conn.on('close', () => this.fail(new TtrpcError('Unavailable', 'ttrpc: connection to the agent closed')));
    conn.on('end', () => conn.end());
  }

  get closed(): boolean {
    return this.failure !== undefined;
  }

  private onFrame(f: ReturnType<FrameReader['push']>[number]): void {
    if ('oversize' in f) return this.fail(new TtrpcError('DataLoss', `ttrpc: the agent sent a ${f.length}-byte message on stream ${f.streamId}, over the ${this.maxLength}-byte limit`), true);
    const call = this.calls.get(f.streamId);
    if (f.type === FrameType.Response) {
      let res;
      try {
        res = decodeResponse(f.payload);
      } catch (err) {
        return this.fail(new TtrpcError('DataLoss', `ttrpc: malformed response on stream ${f.streamId}: ${(err as Error).message}`), true);
      }
      if (!call) return;
      this.calls.delete(f.streamId);
      if (res.status && res.status.code !== 0) call.done(new TtrpcError(codeName(res.status.code), res.status.message));
      else call.done(null, res.payload);
      return;
    }
    if (f.type === FrameType.Data) {
      if (!call) return;
      if (!call.onMessage) return this.fail(new TtrpcError('DataLoss', `ttrpc: data frame on unary stream ${f.streamId}`), true);
      if (!(f.flags & FLAG_NO_DATA)) call.onMessage(f.payload);
      if (f.flags & FLAG_REMOTE_CLOSED) {
        this.calls.delete(f.streamId);
        call.done(null);
      }
      return;
    }
    this.fail(new TtrpcError('DataLoss', `ttrpc: unexpected frame type ${f.type} from the agent on stream ${f.streamId}`), true);
  }

  private fail(err: Error, close = false): void {
    this.failure ??= err;
    const calls = [...this.calls.values()];
    this.calls.clear();
    for (const c of calls) c.done(this.failure);
    if (close) this.conn.destroy();
  }

  private open(method: string, payload: Buffer, timeoutMs: number, flags: number, call: Call): number {
    if (this.failure) {
      call.done(this.failure);
      return 0;
    }
    const id = this.nextStream;
    this.nextStream += 2;
    const body = encodeRequest({ service: this.service, method, payload, timeout_nano: timeoutMs * 1e6 });
    if (body.length > this.maxLength) {
      call.done(new TtrpcError('ResourceExhausted', `ttrpc: ${method} request of ${body.length} bytes is over the ${this.maxLength}-byte limit`));
      return 0;
    }
    this.calls.set(id, call);
    this.conn.write(encodeFrame(id, FrameType.Request, flags, body));
    return id;
  }

  /** A unary call: payload bytes in, payload bytes out; errors are TtrpcError. */
  call(method: string, payload: Buffer, timeoutMs = 0): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const id = this.open(method, payload, timeoutMs, 0, {
        done: (err, res) => {
          if (timer) clearTimeout(timer);
          if (err) reject(err);
          else resolve(res!);
        },
      });
      if (id && timeoutMs > 0) {
        timer = setTimeout(() => {
          const c = this.calls.get(id);
          this.calls.delete(id);
          c?.done(new TtrpcError('DeadlineExceeded', `ttrpc: ${method} got no answer within ${timeoutMs} ms`));
        }, timeoutMs);
      }
    });
  }

  /**
   * A server-streaming call: `onMessage` for each message, then `onEnd`
   * once (null at the stream's normal end). Returns a function that stops
   * listening (the stream's frames are dropped from then on).
   */
  stream(method: string, payload: Buffer, onMessage: (payload: Buffer) => void, onEnd: (err: Error | null) => void): () => void {
    const id = this.open(method, payload, 0, FLAG_REMOTE_CLOSED, { onMessage, done: (err) => onEnd(err) });
    return () => {
      this.calls.delete(id);
    };
  }

  close(): void {
    this.fail(new TtrpcError('Canceled', 'ttrpc: client closed'));
    this.conn.destroy();
  }
}
