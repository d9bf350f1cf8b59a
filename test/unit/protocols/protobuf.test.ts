/**
 * Our proto3 reader and codec (src/protocols/protobuf) against the
 * references: protobufjs reads proto/agent.proto into the same fields, and
 * bytes cross both ways — ours decoded by @grpc/proto-loader's deserializers
 * and theirs decoded by ours — to equal objects, for random values of every
 * message of the agent API. Then scalar edge cases (negative int32, 2^53-1,
 * zigzag, packed and unpacked repeats, maps), hostile bytes (every
 * truncation, overlong varints, lengths past the end, wrong wire types,
 * groups), schema errors with file:line, and a real gRPC call between a
 * server on our definition and a client on proto-loader's.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';
import { AGENT_PROTO } from '../../../src/protocols/agent-api';
import { parseProto, ProtoSchemaError, type MessageSchema, type ValueType } from '../../../src/protocols/protobuf/schema';
import { decodeMessage, encodeMessage, ProtoDecodeError } from '../../../src/protocols/protobuf/codec';
import { grpcServiceDefinition } from '../../../src/protocols/protobuf/grpc-service';

const LOADER_OPTS = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

/** The varint bytes of a field tag. */
function tag(number: number, wire: number): number[] {
  let v = (number << 3) | wire;
  const out: number[] = [];
  while (v > 127) { out.push((v & 0x7f) | 0x80); v >>>= 7; }
  out.push(v);
  return out;
}

/** Deterministic PRNG so a failure reproduces. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomValue(v: ValueType, r: () => number, depth: number): unknown {
  if (v.kind === 'enum') { const names = [...v.type.values.keys()]; return names[Math.floor(r() * names.length)]; }
  if (v.kind === 'message') return randomMessage(v.type, r, depth + 1);
  const pick = r();
  switch (v.type) {
    case 'string': return pick < 0.2 ? '' : ['a', 'sandbox-1', 'ünïcødé ✓ 🐳', 'x'.repeat(300), '{"json":true}'][Math.floor(r() * 5)];
    case 'bytes': return pick < 0.2 ? Buffer.alloc(0) : Buffer.from(Array.from({ length: Math.floor(r() * 700) }, () => Math.floor(r() * 256)));
    case 'bool': return pick < 0.5;
    case 'uint32': return pick < 0.2 ? 0 : pick < 0.4 ? 4294967295 : Math.floor(r() * 4294967296);
    case 'int32': return pick < 0.2 ? 0 : pick < 0.4 ? -2147483648 : Math.floor(r() * 4294967296) - 2147483648;
    case 'uint64': return pick < 0.2 ? 0 : pick < 0.4 ? Number.MAX_SAFE_INTEGER : Math.floor(r() * 2 ** 40) * (pick < 0.7 ? 1 : 4096);
    case 'int64': return pick < 0.2 ? 0 : pick < 0.3 ? -1 : pick < 0.4 ? -(2 ** 40) : Math.floor(r() * 2 ** 40); // SetGuestDateTimeRequest
    case 'double': return pick < 0.2 ? 0 : pick < 0.3 ? -1.5 : r() * 1e6;
    default: throw new Error(`test generator lacks ${v.type}`);
  }
}

function randomMessage(m: MessageSchema, r: () => number, depth = 0): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const f of m.fields) {
    if (r() < 0.15) continue; // absent
    if (f.label === 'repeated') o[f.name] = Array.from({ length: Math.floor(r() * 4) }, () => randomValue(f.value, r, depth));
    else if (f.label === 'map') o[f.name] = Object.fromEntries(Array.from({ length: Math.floor(r() * 4) }, (_, i) => [`k${i}.${Math.floor(r() * 99)}`, randomValue(f.value, r, depth)]));
    else o[f.name] = randomValue(f.value, r, depth);
  }
  return o;
}

/** Two decoded objects equal, Buffers by content. */
function normalize(x: unknown): unknown {
  if (Buffer.isBuffer(x) || x instanceof Uint8Array) return { bytes: Buffer.from(x).toString('hex') };
  if (Array.isArray(x)) return x.map(normalize);
  if (x && typeof x === 'object') return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, normalize(v)]));
  return x;
}

describe('unit: protobuf reader and codec (src/protocols/protobuf)', () => {
  const text = fs.readFileSync(AGENT_PROTO, 'utf8');
  const ours = parseProto(text, AGENT_PROTO);
  const theirs = new protobuf.Root().loadSync(AGENT_PROTO, { keepCase: true });
  const loaderDef = protoLoader.loadSync(AGENT_PROTO, LOADER_OPTS);
  const svcName = 'katats.agent.v1.AgentService';
  const loaderSvc = loaderDef[svcName] as unknown as Record<string, protoLoader.MethodDefinition<object, object>>;

  it('reads proto/agent.proto into the fields, types, labels and rpcs protobufjs sees', () => {
    expect(ours.package).to.equal('katats.agent.v1');
    const names = new Set<string>();
    theirs.nestedArray.length; // resolve lazily
    const walk = (ns: protobuf.NamespaceBase) => {
      for (const n of ns.nestedArray) {
        if (n instanceof protobuf.Type) {
          const full = n.fullName.slice(1);
          names.add(full);
          const m = ours.messages.get(full);
          expect(m, full).to.not.equal(undefined);
          expect(m!.fields.map((f) => f.name)).to.deep.equal(n.fieldsArray.map((f) => f.name), full);
          for (const tf of n.fieldsArray) {
            tf.resolve();
            const of = m!.fields.find((f) => f.name === tf.name)!;
            expect(of.number, `${full}.${tf.name}`).to.equal(tf.id);
            const label = tf instanceof protobuf.MapField ? 'map' : tf.repeated ? 'repeated' : 'single';
            expect(of.label, `${full}.${tf.name}`).to.equal(label);
            const t = of.value.kind === 'scalar' ? of.value.type : of.value.type.fullName;
            expect(t, `${full}.${tf.name}`).to.equal(tf.resolvedType ? tf.resolvedType.fullName.slice(1) : tf.type);
          }
        }
        if (n instanceof protobuf.Enum) {
          const e = ours.enums.get(n.fullName.slice(1))!;
          expect(Object.fromEntries(e.values)).to.deep.equal({ ...n.values });
        }
        if (n instanceof protobuf.Service) {
          const s = ours.services.get(n.fullName.slice(1))!;
          expect(s.methods.map((m) => [m.name, m.request.fullName, m.response.fullName, m.requestStream, m.responseStream])).to.deep.equal(
            n.methodsArray.map((m) => { m.resolve(); return [m.name, m.resolvedRequestType!.fullName.slice(1), m.resolvedResponseType!.fullName.slice(1), !!m.requestStream, !!m.responseStream]; }));
        }
        if (n instanceof protobuf.Namespace) walk(n);
      }
    };
    walk(theirs);
    expect([...ours.messages.keys()].sort()).to.deep.equal([...names].sort());
  });

  it('encodes every agent message so proto-loader decodes it, and decodes what proto-loader encodes (random values)', () => {
    const r = rng(20261126);
    const def = grpcServiceDefinition(ours, svcName);
    let checked = 0;
    for (let round = 0; round < 40; round++) {
      for (const [name, m] of Object.entries(loaderSvc)) {
        const mine = def[name]!;
        for (const [dir, schema] of [['request', ours.services.get(svcName)!.methods.find((x) => x.name === name)!.request], ['response', ours.services.get(svcName)!.methods.find((x) => x.name === name)!.response]] as const) {
          const obj = randomMessage(schema, r);
          const ourBytes = dir === 'request' ? mine.requestSerialize(obj) : mine.responseSerialize(obj);
          const theirBytes = dir === 'request' ? m.requestSerialize(obj) : m.responseSerialize(obj);
          const theyRead = dir === 'request' ? m.requestDeserialize(ourBytes) : m.responseDeserialize(ourBytes);
          const weRead = dir === 'request' ? mine.requestDeserialize(theirBytes) : mine.responseDeserialize(theirBytes);
          const weReadOurs = dir === 'request' ? mine.requestDeserialize(ourBytes) : mine.responseDeserialize(ourBytes);
          expect(normalize(weRead), `${name} ${dir}: ours reading theirs`).to.deep.equal(normalize(theyRead));
          expect(normalize(weReadOurs), `${name} ${dir}: ours round trip`).to.deep.equal(normalize(theyRead));
          checked++;
        }
      }
    }
    expect(checked).to.equal(40 * Object.keys(loaderSvc).length * 2);
  });

  describe('scalar edge cases and wire forms', () => {
    // One source, read by both parsers.
    const EDGE_PROTO = `syntax = "proto3"; package t;
      message All {
        int32 i32 = 1; int64 i64 = 2; uint32 u32 = 3; uint64 u64 = 4; sint32 s32 = 5; sint64 s64 = 6;
        fixed32 f32 = 7; fixed64 f64 = 8; sfixed32 sf32 = 9; sfixed64 sf64 = 10; bool b = 11; float fl = 12; double d = 13;
        string str = 14; bytes by = 15; E e = 16; repeated int32 ri = 17; repeated string rs = 18; map<uint32, Inner> mi = 19;
        Inner inner = 20; repeated Inner rin = 21; map<string, int64> ms = 22;
        enum E { ZERO = 0; ONE = 1; NEG = -1; }
        message Inner { string name = 1; }
      }`;
    const s = parseProto(EDGE_PROTO, 'edge.proto');
    const root = protobuf.parse(EDGE_PROTO, { keepCase: true }).root;
    const All = root.lookupType('t.All');
    const schema = s.messages.get('t.All')!;
    const toObj = (b: Uint8Array) => All.toObject(All.decode(b), { longs: Number, enums: String, defaults: true, bytes: Buffer } as protobuf.IConversionOptions);

    const cases: Array<Record<string, unknown>> = [
      { i32: -1, i64: -1, u32: 4294967295, u64: Number.MAX_SAFE_INTEGER, s32: -2147483648, s64: -(2 ** 52) },
      { i32: 2147483647, i64: -(2 ** 53 - 1), s32: 2147483647, s64: 2 ** 52 - 1, f32: 4294967295, f64: 2 ** 53 - 1, sf32: -5, sf64: -(2 ** 40) },
      { b: true, fl: 1.5, d: -0.000123, str: '\u0000nul and ✓', by: Buffer.from([0, 255, 128]), e: 'NEG' },
      { ri: [0, -1, 300, 2147483647], rs: ['', 'a'], mi: { 0: { name: 'zero' }, 4294967295: { name: 'max' } }, inner: { name: '' }, rin: [{ name: 'x' }, { name: '' }], ms: { '': -7, a: 2 ** 50 } },
      {},
    ];

    it('matches protobufjs on every scalar type, zigzag, negative varints, enums, maps and nested messages', () => {
      for (const c of cases) {
        const ourBytes = encodeMessage(schema, c);
        const theirBytes = All.encode(All.fromObject(c)).finish();
        expect(normalize(toObj(ourBytes)), JSON.stringify(c)).to.deep.equal(normalize(toObj(theirBytes)));
        expect(normalize(decodeMessage(schema, Buffer.from(theirBytes))), JSON.stringify(c)).to.deep.equal(normalize(toObj(theirBytes)));
      }
    });

    it('writes proto3 canonical bytes: defaults omitted, repeated scalars packed; reads unpacked repeats too', () => {
      expect(encodeMessage(schema, { i32: 0, str: '', b: false, e: 'ZERO', ri: [], inner: null }).length).to.equal(0);
      // an explicitly set empty message is present
      expect([...encodeMessage(schema, { inner: {} })]).to.deep.equal([...tag(20, 2), 0]);
      // packed: one tag, one length
      expect([...encodeMessage(schema, { ri: [1, 2, 300] })]).to.deep.equal([...tag(17, 2), 4, 1, 2, 0xac, 0x02]);
      // unpacked (proto2 style / other encoders): field 17 as three varints
      const unpacked = Buffer.from([...tag(17, 0), 1, ...tag(17, 0), 2, ...tag(17, 0), 0xac, 0x02]);
      expect(decodeMessage(schema, unpacked).ri).to.deep.equal([1, 2, 300]);
      // int32 -1 is a 10-byte varint, as the spec requires
      expect(encodeMessage(schema, { i32: -1 }).length).to.equal(11);
    });

    it('skips unknown fields of every wire type; defaults absent fields the proto-loader way', () => {
      const unknown = Buffer.from([...tag(99, 0), 0x96, 0x01, ...tag(98, 1), 1, 2, 3, 4, 5, 6, 7, 8, ...tag(97, 2), 2, 0xaa, 0xbb, ...tag(96, 5), 1, 2, 3, 4, ...tag(14, 2), 1, 0x41]);
      const o = decodeMessage(schema, unknown);
      expect(o.str).to.equal('A');
      expect(o).to.include({ i32: 0, u64: 0, b: false, e: 'ZERO', inner: null });
      expect(o.ri).to.deep.equal([]);
      expect(o.mi).to.deep.equal({});
      expect(Buffer.isBuffer(o.by) && (o.by as Buffer).length === 0).to.equal(true);
    });

    it('encodes what it decodes for float/double: NaN and ±Infinity round-trip, as protobufjs writes them (found by test/fuzz)', () => {
      // Before: decode gave NaN for a double's NaN bits, and encoding that object threw 'NaN is not a number'.
      const theirs = All.encode(All.fromObject({ d: NaN, fl: -Infinity })).finish();
      const o = decodeMessage(schema, Buffer.from(theirs));
      expect(Number.isNaN(o.d)).to.equal(true);
      expect(o.fl).to.equal(-Infinity);
      const ours = encodeMessage(schema, o);
      expect([...ours]).to.deep.equal([...theirs]);
      const again = decodeMessage(schema, ours);
      expect(Number.isNaN(again.d) && again.fl === -Infinity).to.equal(true);
      expect(() => encodeMessage(schema, { d: 'x' })).to.throw(/field d: x is not a number/);
    });

    it('saturates 64-bit values out of range instead of wrapping: a decoded uint64 max encodes as uint64 max, not 0 (found by test/fuzz)', () => {
      // 2^64-1 is not a double: it decodes to 2^64, which split into two
      // uint32 halves wrapped to 0 (a pids limit of "max" would become 0).
      const max = Buffer.from([...tag(4, 0), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
      const o = decodeMessage(schema, max);
      expect(o.u64).to.equal(2 ** 64);
      expect([...encodeMessage(schema, o)]).to.deep.equal([...max]);
      const f64 = encodeMessage(schema, { f64: 2 ** 64, sf64: -(2 ** 70), i64: -(2 ** 64), s64: 2 ** 63 });
      const back = toObj(f64);
      expect(back.f64).to.equal(2 ** 64); // 0xffff_ffff_ffff_ffff read back as a number
      expect(back.sf64).to.equal(-(2 ** 63));
      expect(back.i64).to.equal(-(2 ** 63));
      expect(back.s64).to.equal(2 ** 63); // the largest sint64, not -2^63
      expect(decodeMessage(schema, f64)).to.include({ f64: 2 ** 64, sf64: -(2 ** 63), i64: -(2 ** 63), s64: 2 ** 63 });
    });

    it('refuses values that are not of the field type, naming the field', () => {
      expect(() => encodeMessage(schema, { str: 5 })).to.throw(/field str: expected a string/);
      expect(() => encodeMessage(schema, { u32: 'many' })).to.throw(/field u32: many is not a number/);
      expect(() => encodeMessage(schema, { e: 'TWO' })).to.throw(/'TWO' is not a value of t\.All\.E/);
      expect(() => encodeMessage(schema, { ri: 3 })).to.throw(/field ri: expected an array/);
    });
  });

  describe('hostile bytes', () => {
    const schema = ours.messages.get('katats.agent.v1.CreateContainerRequest')!;
    const good = encodeMessage(schema, {
      container_id: 'c1', exec_id: 'e', oci_spec_json: '{"x":1}',
      storages: [{ driver: 'virtio-fs', source: 'kataShared', fstype: 'virtiofs', options: ['ro', 'nodev'], mount_point: '/run/r' }],
    });

    it('every truncation is either a clean ProtoDecodeError or a shorter valid message', () => {
      let errors = 0;
      for (let n = 0; n < good.length; n++) {
        // a view that ends early inside a larger buffer, as a frame would
        const cut = Buffer.concat([good.subarray(0, n), Buffer.alloc(64, 0xee)]).subarray(0, n);
        try {
          decodeMessage(schema, cut);
        } catch (e) {
          expect(e).to.be.instanceOf(ProtoDecodeError);
          expect((e as Error).message).to.match(/^protobuf: .* at byte \d+$/);
          errors++;
        }
      }
      expect(errors).to.be.greaterThan(good.length / 2);
    });

    it('names overlong varints, lengths past the end, wrong wire types, field 0 and groups', () => {
      const bad: Array<[number[], RegExp]> = [
        [[0x78, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], /varint longer than 10 bytes/],
        [[0x0a, 0x05, 0x61], /length 5 past the end/],
        [[0x0a, 0xff, 0xff, 0xff, 0xff, 0x7f], /length over 2\^32 past the end|past the end/],
        [[0x08, 0x01], /field container_id: wire type 0, expected 2/],
        [[0x00, 0x01], /field number 0/],
        [[0x7b], /wire type 3 \(groups are not supported\)/],
        [[0x1a, 0x02, 0x0a, 0x09], /length 9 past the end/],
      ];
      for (const [bytes, re] of bad) {
        expect(() => decodeMessage(schema, Buffer.from(bytes)), Buffer.from(bytes).toString('hex')).to.throw(ProtoDecodeError, re);
      }
    });

    it('random bytes (fuzz, 20000 inputs) either decode or throw ProtoDecodeError', () => {
      const r = rng(7);
      for (let i = 0; i < 20000; i++) {
        const b = Buffer.from(Array.from({ length: Math.floor(r() * 40) }, () => Math.floor(r() * 256)));
        if (i % 2) b.set(good.subarray(0, Math.min(b.length, Math.floor(r() * good.length))));
        try { decodeMessage(schema, b); } catch (e) { expect(e, b.toString('hex')).to.be.instanceOf(ProtoDecodeError); }
      }
    });
  });

  it('refuses what it does not support and bad syntax, with file:line', () => {
    const bad: Array<[string, RegExp]> = [
      ['syntax = "proto2";', /x\.proto:1: syntax "proto2": only proto3/],
      ['syntax = "proto3";\nimport "other.proto";', /x\.proto:2: imports are not supported/],
      ['syntax = "proto3";\nmessage A {\n  oneof o { string a = 1; }\n}', /x\.proto:3: 'oneof' is outside/],
      ['syntax = "proto3";\nmessage A {\n  Missing m = 1;\n}', /x\.proto:3: type 'Missing' is not defined/],
      ['syntax = "proto3";\nmessage A {\n  string a = 1;\n  string b = 1;\n}', /x\.proto:4: A: field number 1 used twice/],
      ['syntax = "proto3";\nmessage A {\n  string a = 1\n}', /x\.proto:4: expected ';', found '}'/],
      ['syntax = "proto3";\nenum E { ONE = 1; }', /proto3 enums need a zero value/],
      ['syntax = "proto3";\nmessage A { string a = 0; }', /field number 0 is out of range/],
      ['syntax = "proto3";\nmessage A { map<double, string> m = 1; }', /map key type 'double' is not allowed/],
      ['syntax = "proto3";\nservice S { rpc M(A) returns (B); }', /type 'A' is not defined/],
      ['syntax = "proto3";\n/* never closed', /unterminated comment/],
      ['syntax = "proto3";\nmessage A {', /message A is not closed|unexpected end of file/],
    ];
    for (const [src, re] of bad) expect(() => parseProto(src, 'x.proto'), src).to.throw(ProtoSchemaError, re);
  });

  it('serves a real gRPC call: our definition on the server, proto-loader on the client (unary and server stream)', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-pb-'));
    const sock = `unix:${path.join(dir, 's.sock')}`;
    const server = new grpc.Server();
    server.addService(grpcServiceDefinition(ours, svcName), {
      StartContainer: (call: grpc.ServerUnaryCall<{ container_id: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => cb(null, { pid: call.request.container_id.length + 4000000000 }),
      ReadStdout: (call: grpc.ServerWritableStream<{ container_id: string }, unknown>) => {
        for (let i = 0; i < 3; i++) call.write({ data: Buffer.alloc(100000, 65 + i) });
        call.end();
      },
    });
    try {
      await new Promise<void>((res, rej) => server.bindAsync(sock, grpc.ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
      const pkg = grpc.loadPackageDefinition(loaderDef) as unknown as { katats: { agent: { v1: { AgentService: grpc.ServiceClientConstructor } } } };
      const client = new pkg.katats.agent.v1.AgentService(sock, grpc.credentials.createInsecure()) as unknown as {
        StartContainer(r: object, cb: (e: Error | null, r: { pid: number }) => void): void;
        ReadStdout(r: object): NodeJS.ReadableStream;
        close(): void;
      };
      const res = await new Promise<{ pid: number }>((ok, ko) => client.StartContainer({ container_id: 'abc' }, (e, r) => (e ? ko(e) : ok(r))));
      expect(res.pid).to.equal(4000000003);
      const chunks: Buffer[] = [];
      await new Promise<void>((ok, ko) => {
        const st = client.ReadStdout({ container_id: 'abc' });
        st.on('data', (m: { data: Buffer }) => chunks.push(m.data));
        st.on('end', ok);
        st.on('error', ko);
      });
      expect(chunks.map((c) => [c.length, c[0]])).to.deep.equal([[100000, 65], [100000, 66], [100000, 67]]);
      client.close();
    } finally {
      await new Promise<void>((res) => server.tryShutdown(() => res()));
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
