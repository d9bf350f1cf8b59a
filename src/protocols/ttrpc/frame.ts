/**
 * ttrpc framing (github.com/containerd/ttrpc PROTOCOL.md): every message is
 * a 10-byte header — data length (uint32 BE), stream id (uint32 BE), type
 * (uint8: 1 request, 2 response, 3 data), flags (uint8) — then `length`
 * bytes. Streams are opened by the client with odd ids.
 *
 * FrameReader turns a byte stream into frames. Input is hostile (decision
 * 2): a length above the limit is not buffered; its payload is skipped and
 * the frame is reported as oversize so the server can answer that stream with
 * ResourceExhausted and keep the connection, as ttrpc's Go server does.
 */
export const HEADER_LENGTH = 10;
/** ttrpc's default maximum message size (4 MiB). */
export const MAX_MESSAGE_LENGTH = 4 << 20;

export const enum FrameType {
  Request = 1,
  Response = 2,
  Data = 3,
}

export const FLAG_REMOTE_CLOSED = 0x1;
export const FLAG_REMOTE_OPEN = 0x2;
export const FLAG_NO_DATA = 0x4;

export interface Frame {
  streamId: number;
  type: number;
  flags: number;
  payload: Buffer;
}

/** A frame whose declared length exceeded the limit; its payload was dropped. */
export interface OversizeFrame {
  streamId: number;
  type: number;
  length: number;
  oversize: true;
}

export function encodeFrame(streamId: number, type: number, flags: number, payload: Buffer): Buffer {
  const h = Buffer.allocUnsafe(HEADER_LENGTH);
  h.writeUInt32BE(payload.length, 0);
  h.writeUInt32BE(streamId >>> 0, 4);
  h.writeUInt8(type, 8);
  h.writeUInt8(flags, 9);
  return Buffer.concat([h, payload]);
}

export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Bytes of an oversize payload still to be thrown away. */
  private skipping = 0;

  constructor(private readonly maxLength = MAX_MESSAGE_LENGTH) {}

  /** Feed bytes; returns every frame completed by them, in order. */
  push(data: Buffer): (Frame | OversizeFrame)[] {
    const out: (Frame | OversizeFrame)[] = [];
    if (this.skipping > 0) {
      const n = Math.min(this.skipping, data.length);
      this.skipping -= n;
      data = data.subarray(n);
    }
    if (data.length) {
      this.chunks.push(data);
      this.buffered += data.length;
    }
    for (;;) {
      if (this.skipping > 0 || this.buffered < HEADER_LENGTH) break;
      const head = this.peek(HEADER_LENGTH);
      const length = head.readUInt32BE(0);
      const streamId = head.readUInt32BE(4);
      const type = head.readUInt8(8);
      const flags = head.readUInt8(9);
      if (length > this.maxLength) {
        this.take(HEADER_LENGTH);
        const n = Math.min(length, this.buffered);
        this.take(n);
        this.skipping = length - n;
        out.push({ streamId, type, length, oversize: true });
        continue;
      }
      if (this.buffered < HEADER_LENGTH + length) break;
      this.take(HEADER_LENGTH);
      out.push({ streamId, type, flags, payload: this.take(length) });
    }
    return out;
  }

  /** Bytes held waiting for the rest of a frame (a truncated frame at close). */
  get pending(): number {
    return this.buffered;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length < n) {
      // Join only the reads the header spans, not everything buffered.
      let k = 0;
      for (let t = 0; t < n; k++) t += this.chunks[k]!.length;
      this.chunks.splice(0, k, Buffer.concat(this.chunks.slice(0, k)));
    }
    return this.chunks[0]!.subarray(0, n);
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    this.buffered -= n;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      // A frame that is (nearly) all of its read buffer is handed out as it
      // is; a small one is copied so it does not pin a large read buffer.
      return n >= first.length / 2 ? out : Buffer.from(out);
    }
    // Spread over several reads (a 1 MiB stdout message arrives in 64 KiB
    // socket reads): copied once, straight into its own buffer, not joined
    // with everything buffered and then copied again.
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}
