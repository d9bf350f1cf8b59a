/**
 * protobuf messages of ttrpc itself and of the containerd APIs the shim
 * speaks, loaded from proto/ with protobufjs reflection (google/protobuf
 * well-known types come built in). Decoding uses plain objects with the
 * proto's snake_case field names, 64-bit integers as numbers.
 */
import * as path from 'node:path';
import * as protobuf from 'protobufjs';

export const PROTO_DIR = path.resolve(__dirname, '..', '..', '..', '..', 'proto');

let root: protobuf.Root | undefined;

/** All protos the shim needs, loaded once. */
export function protoRoot(): protobuf.Root {
  if (root) return root;
  const r = new protobuf.Root();
  r.resolvePath = (_origin, target) => (target.startsWith('google/protobuf/') ? target : path.join(PROTO_DIR, target));
  r.loadSync(['ttrpc/ttrpc.proto', 'containerd/task/v2/shim.proto', 'containerd/events/task.proto', 'containerd/types/cgroups-v2-metrics.proto'], { keepCase: true });
  r.resolveAll();
  root = r;
  return r;
}

export function messageType(name: string): protobuf.Type {
  return protoRoot().lookupType(name);
}

export const DECODE_OPTIONS: protobuf.IConversionOptions = { longs: Number, enums: String, bytes: Buffer, defaults: true, arrays: true, objects: true };

export function encode(type: string, value: Record<string, unknown>): Buffer {
  const t = messageType(type);
  return Buffer.from(t.encode(t.fromObject(value)).finish());
}

/**
 * Checks the protobuf wire format of `data` as message type `t` before
 * protobufjs sees it: every tag, varint and length must lie inside the
 * buffer (protobufjs 7 reads a truncated length-delimited field leniently),
 * wire types must be valid, and embedded messages are checked recursively.
 * Input from sockets is hostile (decision 2).
 */
export function checkWire(t: protobuf.Type, data: Uint8Array, depth = 0): void {
  if (depth > 32) throw new Error('protobuf: nesting too deep');
  let pos = 0;
  const varint = (): number => {
    let v = 0;
    for (let shift = 0; ; shift += 7) {
      if (pos >= data.length) throw new Error('protobuf: truncated varint');
      if (shift > 63) throw new Error('protobuf: varint too long');
      const b = data[pos++]!;
      v += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) return v;
    }
  };
  while (pos < data.length) {
    const tag = varint();
    const fieldNo = Math.floor(tag / 8);
    if (fieldNo === 0) throw new Error('protobuf: field number 0');
    switch (tag & 7) {
      case 0: varint(); break;
      case 1: pos += 8; break;
      case 5: pos += 4; break;
      case 2: {
        const len = varint();
        if (pos + len > data.length) throw new Error(`protobuf: field ${fieldNo} length ${len} runs past the end`);
        const f = t.fieldsById[fieldNo];
        if (f && f.resolvedType instanceof protobuf.Type && !f.map) checkWire(f.resolvedType, data.subarray(pos, pos + len), depth + 1);
        pos += len;
        break;
      }
      default:
        throw new Error(`protobuf: invalid wire type ${tag & 7}`);
    }
    if (pos > data.length) throw new Error('protobuf: truncated field');
  }
}

/** Decodes or throws on malformed input. */
export function decode<T>(type: string, data: Buffer): T {
  const t = messageType(type);
  checkWire(t, data);
  return t.toObject(t.decode(data), DECODE_OPTIONS) as T;
}

export interface TtrpcRequest {
  service: string;
  method: string;
  payload: Buffer;
  timeout_nano: number;
  metadata: { key: string; value: string }[];
}

export interface TtrpcStatus {
  code: number;
  message: string;
}

export interface TtrpcResponse {
  status?: TtrpcStatus | null;
  payload: Buffer;
}

/** google.protobuf.Timestamp from a Date (nanosecond precision from ms). */
export function timestamp(d: Date | undefined): { seconds: number; nanos: number } | undefined {
  if (!d) return undefined;
  const ms = d.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}
