/**
 * ttrpc client: odd, increasing stream ids, one request frame per call,
 * responses matched by stream id so calls overlap. Used by the shim to
 * forward events to containerd, and by tests to drive the shim directly.
 */
import * as net from 'node:net';
import { codeName, TtrpcError } from './codes';
import { FrameReader, FrameType, encodeFrame } from './frame';
import { decode, encode, type TtrpcResponse } from './messages';

interface Pending {
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

export class TtrpcClient {
  private nextStream = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly reader = new FrameReader();
  private closedErr: Error | undefined;

  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      for (const f of this.reader.push(d)) {
        if ('oversize' in f || f.type !== FrameType.Response) continue;
        const p = this.pending.get(f.streamId);
        if (!p) continue;
        this.pending.delete(f.streamId);
        let res: TtrpcResponse;
        try {
          res = decode<TtrpcResponse>('ttrpc.Response', f.payload);
        } catch (err) {
          p.reject(err as Error);
          continue;
        }
        if (res.status && res.status.code !== 0) p.reject(new TtrpcError(codeName(res.status.code), res.status.message));
        else p.resolve(res.payload);
      }
    });
    sock.on('error', (e) => (this.closedErr ??= e));
    sock.on('close', () => {
      const e = this.closedErr ?? new TtrpcError('Unavailable', 'ttrpc: connection closed');
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    });
  }

  /** Connect to "unix:///path", "unix:/path" or a plain path. */
  static connect(address: string, timeoutMs = 5000): Promise<TtrpcClient> {
    const p = address.replace(/^unix:\/\//, '').replace(/^unix:/, '');
    return new Promise((resolve, reject) => {
      const s = net.createConnection(p);
      const t = setTimeout(() => {
        s.destroy();
        reject(new TtrpcError('DeadlineExceeded', `ttrpc: connect ${p} timed out`));
      }, timeoutMs);
      s.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
      s.once('connect', () => {
        clearTimeout(t);
        resolve(new TtrpcClient(s));
      });
    });
  }

  /** Raw call: payload bytes in, payload bytes out; errors are TtrpcError. */
  call(service: string, method: string, payload: Buffer, timeoutMs = 0): Promise<Buffer> {
    if (this.sock.destroyed) return Promise.reject(new TtrpcError('Unavailable', 'ttrpc: connection closed'));
    const id = this.nextStream;
    this.nextStream += 2;
    const req = encode('ttrpc.Request', { service, method, payload, timeout_nano: timeoutMs * 1e6 });
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.sock.write(encodeFrame(id, FrameType.Request, 0, req));
    });
  }

  /** Typed call: request and response as objects of the named protobuf types. */
  async request<T>(service: string, method: string, reqType: string, resType: string, value: Record<string, unknown>): Promise<T> {
    return decode<T>(resType, await this.call(service, method, encode(reqType, value)));
  }

  close(): void {
    this.sock.destroy();
  }
}
