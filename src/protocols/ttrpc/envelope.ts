/**
 * ttrpc's own wire messages (Request, Response, Status; proto/ttrpc/ttrpc.proto,
 * github.com/containerd/ttrpc PROTOCOL.md) through our protobuf codec
 * (src/protocols/protobuf) instead of protobufjs: what the guest agent and
 * the host's agent client speak. messages.ts keeps protobufjs for the shim,
 * which also needs containerd's types; the guest must not load protobufjs
 * (seconds under TCG, see README performance).
 *
 * Status.details (google.protobuf.Any) is left out of the schema: the codec
 * skips unknown fields, and neither side sends details.
 */
import { decodeMessage, encodeMessage } from '../protobuf/codec';
import { parseProto, type MessageSchema } from '../protobuf/schema';

const ENVELOPE_PROTO = `
syntax = "proto3";
package ttrpc;
message KeyValue { string key = 1; string value = 2; }
message Request { string service = 1; string method = 2; bytes payload = 3; int64 timeout_nano = 4; repeated KeyValue metadata = 5; }
message Status { int32 code = 1; string message = 2; }
message Response { Status status = 1; bytes payload = 2; }
`;

export interface EnvelopeRequest {
  service: string;
  method: string;
  payload: Buffer;
  timeout_nano: number;
  metadata: { key: string; value: string }[];
}

export interface EnvelopeResponse {
  status: { code: number; message: string } | null;
  payload: Buffer;
}

let schemas: { req: MessageSchema; res: MessageSchema } | undefined;

function load(): { req: MessageSchema; res: MessageSchema } {
  if (schemas) return schemas;
  const s = parseProto(ENVELOPE_PROTO, 'ttrpc/envelope.proto');
  schemas = { req: s.messages.get('ttrpc.Request')!, res: s.messages.get('ttrpc.Response')! };
  return schemas;
}

export function encodeRequest(r: Partial<EnvelopeRequest> & { service: string; method: string; payload: Buffer }): Buffer {
  return encodeMessage(load().req, r as unknown as Record<string, unknown>);
}

/** Throws ProtoDecodeError on malformed bytes. */
export function decodeRequest(b: Buffer): EnvelopeRequest {
  return decodeMessage(load().req, b) as unknown as EnvelopeRequest;
}

export function encodeResponse(r: { status?: { code: number; message: string } | null; payload?: Buffer }): Buffer {
  return encodeMessage(load().res, r as Record<string, unknown>);
}

/** Throws ProtoDecodeError on malformed bytes. */
export function decodeResponse(b: Buffer): EnvelopeResponse {
  return decodeMessage(load().res, b) as unknown as EnvelopeResponse;
}
