/**
 * Targets for the agent transport (ttrpc over vsock, README architecture):
 *
 *  agent-ttrpc-server  host → agent: the guest's RpcServer (rpc-server.ts)
 *      with the AgentService's real codecs (proto/agent.proto) and stand-in
 *      handlers, fed the input as one connection's bytes in split reads.
 *  agent-ttrpc-client  agent → host: the host's RpcClient (rpc-client.ts)
 *      with one unary call and one server-streaming call in flight, fed the
 *      input as the agent's answer.
 *
 * Oracle, server: nothing throws out of the server or a handler's promise;
 * every byte it writes parses as frames (Response or Data) on a stream a
 * request opened; after it reported a protocol violation it answers
 * nothing new and has ended the connection; it never answers a stream twice.
 * Oracle, client: both calls settle (a result or a TtrpcError, never
 * another error); after a violation the connection is destroyed.
 */
import { PassThrough, Duplex } from 'node:stream';
import { agentMethods, AGENT_SERVICE } from '../../../src/protocols/agent-api';
import { encodeFrame, FrameReader, FrameType, FLAG_NO_DATA, FLAG_REMOTE_CLOSED, HEADER_LENGTH } from '../../../src/protocols/ttrpc/frame';
import { decodeResponse, encodeRequest, encodeResponse } from '../../../src/protocols/ttrpc/envelope';
import { RpcServer, type RpcMethod } from '../../../src/protocols/ttrpc/rpc-server';
import { RpcClient } from '../../../src/protocols/ttrpc/rpc-client';
import { TtrpcError } from '../../../src/protocols/ttrpc/codes';
import { agentStatus } from '../../../src/agent/service';
import { KataError } from '../../../src/common/errors';
import { bucket, invariant, type Target } from '../engine';

const MAX = 64 << 10; // small, so oversize frames are reachable

/** A connection whose far end the target drives: `written` collects what the code under test wrote. */
function fakeConn(): { conn: Duplex; written: Buffer[]; feed(b: Buffer): void } {
  const written: Buffer[] = [];
  const inbound = new PassThrough();
  const conn = new Duplex({
    read() { /* fed below */ },
    write(chunk: Buffer, _enc, cb) { written.push(chunk); cb(); },
    final(cb) { cb(); },
  });
  inbound.on('data', (d: Buffer) => conn.push(d));
  return { conn, written, feed: (b) => inbound.write(b) };
}

/** Feeds `stream` in reads of sizes derived from `cut` (the input's last byte), as a socket would. */
function feedSplit(stream: Buffer, cut: number, feed: (b: Buffer) => void): void {
  let pos = 0;
  let step = 1 + (cut % 64);
  while (pos < stream.length) {
    feed(stream.subarray(pos, pos + step));
    pos += step;
    step = 1 + ((step * 7 + cut) % 97);
  }
}

const settle = () => new Promise<void>((r) => setImmediate(() => setImmediate(r)));

/** The AgentService's codecs with stand-in handlers: one that fails, streams that yield once. */
function serverMethods(): Map<string, RpcMethod> {
  const out = new Map<string, RpcMethod>();
  for (const [name, m] of agentMethods()) {
    out.set(name, {
      responseStream: m.responseStream, decodeRequest: m.decodeRequest, encodeResponse: m.encodeResponse,
      handle: m.responseStream
        ? async function* () { yield { data: Buffer.from('out') }; }
        : async () => {
          if (name === 'StatsContainer') throw new KataError('not-found', 'no such container');
          return {};
        },
    });
  }
  return out;
}

const req = (id: number, method: string, payload: Buffer, flags = 0, service = AGENT_SERVICE) =>
  encodeFrame(id, FrameType.Request, flags, encodeRequest({ service, method, payload, timeout_nano: 0 }));

export const agentTtrpcServer: Target = {
  name: 'agent-ttrpc-server',
  describe: 'host → agent: ttrpc frames into the guest RpcServer with the AgentService codecs (split reads); checks every answer frame, stream ids, close on violation',
  maxLen: 16 << 10,
  dictionary: [Buffer.from([0, 0, 0, 0]), Buffer.from([0xff, 0xff, 0xff, 0xff]), Buffer.from([1, 0]), Buffer.from([1, 1]), Buffer.from([3, 5]),
    ...['katats.agent.v1.AgentService', 'Check', 'ReadStdout', 'CreateContainer', 'StatsContainer', '\n', '\x12', '\x1a'].map((s) => Buffer.from(s))],
  seeds() {
    const m = agentMethods();
    const enc = (name: string, v: unknown) => m.get(name)!.encodeRequest(v);
    return [
      Buffer.concat([req(1, 'Check', enc('Check', { service: '' })), Buffer.from([7])]),
      Buffer.concat([req(1, 'StatsContainer', enc('StatsContainer', { container_id: 'c1' })), req(3, 'ReadStdout', enc('ReadStdout', { container_id: 'c1', exec_id: '' }), FLAG_REMOTE_CLOSED), Buffer.from([3])]),
      Buffer.concat([req(1, 'CreateContainer', enc('CreateContainer', { container_id: 'c', exec_id: '', storages: [{ driver: 'virtio-fs', source: 's', fstype: 'virtiofs', options: ['ro'], mount_point: '/m' }], oci_spec_json: '{}' })), Buffer.from([0x31])]),
      Buffer.concat([req(1, 'Nope', Buffer.alloc(0)), req(3, 'Check', Buffer.alloc(0), 0, 'other.Service'), req(5, 'Check', Buffer.alloc(0)), Buffer.from([2])]),
      Buffer.concat([req(2, 'Check', Buffer.alloc(0)), Buffer.from([1])]),
      Buffer.concat([encodeFrame(1, FrameType.Data, 0, Buffer.from('x')), Buffer.from([9])]),
      (() => { const h = Buffer.alloc(HEADER_LENGTH); h.writeUInt32BE(MAX + 1, 0); h.writeUInt32BE(1, 4); h[8] = 1; return Buffer.concat([h, Buffer.alloc(100, 0x41), Buffer.from([5])]); })(),
    ];
  },
  async run(input) {
    if (input.length === 0) return 'empty';
    const cut = input[input.length - 1]!;
    const stream = input.subarray(0, input.length - 1);
    const violations: string[] = [];
    const server = new RpcServer({ service: AGENT_SERVICE, methods: serverMethods(), status: agentStatus, maxLength: MAX, onProtocolError: (w) => violations.push(w) });
    const { conn, written, feed } = fakeConn();
    server.serve(conn);
    feedSplit(stream, cut, feed);
    await settle();
    await settle();
    // What the server wrote must be well-formed frames on odd (client) streams, each answered once.
    const r = new FrameReader(1 << 30);
    const finished = new Set<number>();
    let responses = 0, data = 0, errors = 0;
    const frames = r.push(Buffer.concat(written));
    for (const [i, f] of frames.entries()) {
      invariant(!('oversize' in f), 'server wrote an oversize frame');
      invariant(f.type === FrameType.Response || f.type === FrameType.Data, `server wrote frame type ${f.type}`);
      // The one exception: a re-used stream id is refused on that id, as the connection's last word.
      const refusal = i === frames.length - 1 && violations.length === 1 && f.type === FrameType.Response;
      invariant(!finished.has(f.streamId) || refusal, `stream ${f.streamId} answered after it was finished`);
      if (f.type === FrameType.Response) {
        const res = decodeResponse(f.payload);
        if (res.status && res.status.code !== 0) errors++;
        responses++;
        finished.add(f.streamId);
      } else {
        data++;
        if (f.flags & FLAG_REMOTE_CLOSED) finished.add(f.streamId);
        if (f.flags & FLAG_NO_DATA) invariant(f.payload.length === 0, 'no-data frame with data');
      }
    }
    invariant(r.pending === 0, `server wrote a truncated frame (${r.pending} bytes)`);
    invariant(violations.length <= 1, `${violations.length} violations reported for one connection`);
    if (violations.length) invariant(conn.writableEnded || conn.destroyed, 'connection left open after a protocol violation');
    conn.destroy();
    return `r${bucket(responses)}:d${bucket(data)}:e${bucket(errors)}:v${violations.length}`;
  },
  expected: () => false,
};

export const agentTtrpcClient: Target = {
  name: 'agent-ttrpc-client',
  describe: 'agent → host: bytes as the agent\'s answer to a unary call (stream 1) and a ReadStdout stream (stream 3) in the host RpcClient; both settle with a result or a TtrpcError',
  maxLen: 16 << 10,
  dictionary: [Buffer.from([0, 0, 0, 1]), Buffer.from([0, 0, 0, 3]), Buffer.from([2, 0]), Buffer.from([3, 0]), Buffer.from([3, 5]), Buffer.from([0xff, 0xff, 0xff, 0xff])],
  seeds() {
    const ok = encodeResponse({ payload: agentMethods().get('Check')!.encodeResponse({ status: 'SERVING' }) });
    const data = agentMethods().get('ReadStdout')!.encodeResponse({ data: Buffer.from('hello') });
    return [
      Buffer.concat([encodeFrame(1, FrameType.Response, 0, ok), encodeFrame(3, FrameType.Data, 0, data), encodeFrame(3, FrameType.Data, FLAG_REMOTE_CLOSED | FLAG_NO_DATA, Buffer.alloc(0)), Buffer.from([4])]),
      Buffer.concat([encodeFrame(3, FrameType.Response, 0, encodeResponse({ status: { code: 5, message: 'gone' } })), encodeFrame(1, FrameType.Response, 0, encodeResponse({ status: { code: 7, message: 'denied' } })), Buffer.from([1])]),
      Buffer.concat([encodeFrame(1, FrameType.Data, 0, data), Buffer.from([2])]),
      Buffer.concat([encodeFrame(9, FrameType.Request, 0, Buffer.alloc(3)), Buffer.from([6])]),
    ];
  },
  async run(input) {
    if (input.length === 0) return 'empty';
    const cut = input[input.length - 1]!;
    const stream = input.subarray(0, input.length - 1);
    const { conn, feed } = fakeConn();
    const c = new RpcClient(conn, AGENT_SERVICE, MAX);
    let unary: string | undefined;
    let streamEnd: string | undefined;
    let messages = 0;
    const check = (e: unknown) => {
      invariant(e instanceof TtrpcError, `client settled with a non-ttrpc error: ${(e as Error)?.stack ?? e}`);
      return e.kind;
    };
    c.call('Check', Buffer.alloc(0)).then(() => (unary = 'ok'), (e) => (unary = check(e)));
    c.stream('ReadStdout', Buffer.alloc(0), () => messages++, (e) => {
      invariant(streamEnd === undefined, 'stream ended twice');
      streamEnd = e ? check(e) : 'ok';
    });
    feedSplit(stream, cut, feed);
    await settle();
    c.close(); // settles whatever is still waiting
    await settle();
    invariant(unary !== undefined && streamEnd !== undefined, `a call never settled (unary ${unary}, stream ${streamEnd})`);
    return `u:${unary}:s:${streamEnd}:m${bucket(messages)}`;
  },
  expected: () => false,
};
