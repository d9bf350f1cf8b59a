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

/** Decodes or throws (a RangeError/Error from protobufjs on malformed input). */
export function decode<T>(type: string, data: Buffer): T {
  const t = messageType(type);
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
