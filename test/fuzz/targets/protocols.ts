/**
 * Targets for the byte/text protocols: ttrpc frames, protobuf messages
 * (agent schema), OCI config.json, TOML, rtnetlink, LZ4 blocks/frames.
 * Seeds are made by our own encoders; each target's `expected` names the
 * module's documented refusal.
 */
import * as fs from 'node:fs';
import { decodeMessage, encodeMessage, ProtoDecodeError } from '../../../src/protocols/protobuf/codec';
import { parseProto, type MessageSchema } from '../../../src/protocols/protobuf/schema';
import { AGENT_PROTO } from '../../../src/protocols/agent-api';
import { encodeFrame, FrameReader, HEADER_LENGTH } from '../../../src/protocols/ttrpc/frame';
import { decode as ttrpcDecode, encode as ttrpcEncode } from '../../../src/protocols/ttrpc/messages';
import { TASK_METHODS } from '../../../src/shim/registration';
import { BundleError, validateSpec } from '../../../src/protocols/oci';
import { parseToml, TomlError } from '../../../src/common/toml';
import {
  NLMSG_DONE, NLMSG_ERROR, NLM_F_MULTI, NetlinkError, attr, decodeError, decodeMessages, encodeMessage as nlEncode, parseAttrs,
} from '../../../src/protocols/netlink/message';
import { NetlinkSocket, type NetlinkTransport } from '../../../src/protocols/netlink/socket';
import { listAddresses, listLinks, listNeighbours, listRoutes, setLink } from '../../../src/protocols/netlink/route';
import { Lz4, Lz4Error, legacyFrame, parseFrames, LZ4_FRAME_MAGIC } from '../../../src/hot/lz4';
import { bucket, invariant, type Rng, mutate, type Target } from '../engine';

const enc = (s: string) => Buffer.from(s, 'utf8');
const words = (xs: string[]) => xs.map(enc);

// ───────────────────────────── ttrpc ─────────────────────────────

/**
 * Input: a stream of ttrpc frames, cut into socket reads at points taken
 * from the input's last byte. Every request frame's payload goes through
 * the server's decode (ttrpc.Request, protobufjs behind a wire check), and
 * its payload through the decoder of the task method it names.
 * Oracle: FrameReader never throws; frames are within the limit and account
 * for every byte (payload bytes + headers + skipped + pending = input);
 * decoding throws only the wire checker's / protobufjs's own errors.
 */
const TTRPC_MAX = 64 << 10; // a small limit so oversize frames are reachable

function isProtobufRefusal(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  // checkWire's own errors, protobufjs's (util.ProtocolError, "index out
  // of range", "invalid wire type", "illegal …"); the ttrpc server answers
  // every one of them with InvalidArgument (decodeRequest).
  if (err.message.startsWith('protobuf: ')) return true;
  if (err.name === 'ProtocolError') return true;
  return /^(index out of range|invalid wire type|illegal |invalid (?:varint|utf8)|max depth exceeded)/.test(err.message);
}

export const ttrpc: Target = {
  name: 'ttrpc',
  describe: 'ttrpc frames (src/protocols/ttrpc/frame.ts FrameReader, split reads) + ttrpc.Request and task-method payload decoding',
  maxLen: 16 << 10,
  dictionary: [Buffer.from([0, 0, 0, 0]), Buffer.from([0, 1, 0, 0]), Buffer.from([0xff, 0xff, 0xff, 0xff]), Buffer.from([1, 0]), Buffer.from([2, 0]), Buffer.from([3, 4]),
    ...words(['containerd.task.v2.Task', 'Create', 'Exec', 'State', 'Kill', 'Wait', '\n', '\x12', '\x1a', '\x22'])],
  seeds() {
    const out: Buffer[] = [];
    const req = (id: number, method: string, payload: Buffer) => encodeFrame(id, 1, 0, ttrpcEncode('ttrpc.Request', {
      service: 'containerd.task.v2.Task', method, payload, timeout_nano: 1e9, metadata: [{ key: 'k', value: 'v' }],
    }));
    const P = 'containerd.task.v2.';
    out.push(Buffer.concat([req(1, 'State', ttrpcEncode(`${P}StateRequest`, { id: 'c1', exec_id: '' })), Buffer.from([7])]));
    out.push(Buffer.concat([
      req(3, 'Create', ttrpcEncode(`${P}CreateTaskRequest`, { id: 'c1', bundle: '/run/b', rootfs: [{ type: 'overlay', source: 'o', options: ['lowerdir=/a'] }], terminal: true, stdin: '/s', stdout: '/o', stderr: '/e' })),
      req(5, 'Kill', ttrpcEncode(`${P}KillRequest`, { id: 'c1', signal: 9, all: true })),
      Buffer.from([3]),
    ]));
    out.push(Buffer.concat([req(7, 'Exec', ttrpcEncode(`${P}ExecProcessRequest`, { id: 'c1', exec_id: 'e1', terminal: false, spec: { type_url: 'types.containerd.io/opencontainers/runtime-spec/1/Process', value: Buffer.from('{"args":["sh"]}') } })), Buffer.from([0x31])]));
    out.push(Buffer.concat([encodeFrame(9, 3, 1, Buffer.alloc(0)), encodeFrame(11, 2, 0, ttrpcEncode('ttrpc.Response', { status: { code: 5, message: 'not found' }, payload: Buffer.alloc(0) })), Buffer.from([2])]));
    // An oversize frame followed by a good one.
    const big = Buffer.alloc(HEADER_LENGTH);
    big.writeUInt32BE(TTRPC_MAX + 1, 0);
    big.writeUInt32BE(13, 4);
    big[8] = 1;
    out.push(Buffer.concat([big, Buffer.alloc(300, 0x41), Buffer.from([5])]));
    return out;
  },
  run(input) {
    if (input.length === 0) return 'empty';
    const cut = input[input.length - 1]!;
    const stream = input.subarray(0, input.length - 1);
    const r = new FrameReader(TTRPC_MAX);
    let frames = 0, oversize = 0, accounted = 0, skippedDeclared = 0;
    let pos = 0, step = 1 + (cut % 64);
    let decoded = 0, refused = 0;
    while (pos <= stream.length) {
      const chunk = stream.subarray(pos, pos + step);
      for (const f of r.push(chunk)) {
        if ('oversize' in f) {
          oversize++;
          invariant(f.length > TTRPC_MAX, `oversize frame of ${f.length} bytes is within the limit`);
          accounted += HEADER_LENGTH;
          skippedDeclared += f.length;
          continue;
        }
        frames++;
        invariant(f.payload.length <= TTRPC_MAX, 'frame payload over the limit');
        accounted += HEADER_LENGTH + f.payload.length;
        if (f.type === 1) {
          try {
            const req = ttrpcDecode<{ service: string; method: string; payload: Buffer }>('ttrpc.Request', f.payload);
            const m = TASK_METHODS[req.method];
            if (m && req.service === 'containerd.task.v2.Task') ttrpcDecode(m[0], req.payload);
            decoded++;
          } catch (err) {
            if (!isProtobufRefusal(err)) throw err;
            refused++;
          }
        }
      }
      if (pos === stream.length) break;
      pos += chunk.length;
      step = 1 + ((step * 7 + cut) % 97);
    }
    // Every byte is a header, a payload, part of a skipped payload, or pending.
    invariant(accounted + Math.min(skippedDeclared, stream.length) + r.pending >= stream.length || skippedDeclared > 0,
      `bytes unaccounted: ${stream.length} in, ${accounted} framed, ${r.pending} pending`);
    if (skippedDeclared === 0) invariant(accounted + r.pending === stream.length, `framing lost bytes: ${stream.length} in, ${accounted} framed + ${r.pending} pending`);
    return `f${bucket(frames)}:o${bucket(oversize)}:d${bucket(decoded)}:r${bucket(refused)}:p${r.pending > 0 ? 1 : 0}`;
  },
  expected: () => false,
};

// ───────────────────────────── protobuf ─────────────────────────────

let agentSchema: { messages: MessageSchema[] } | undefined;
function agentMessages(): MessageSchema[] {
  if (!agentSchema) {
    const schema = parseProto(fs.readFileSync(AGENT_PROTO, 'utf8'), AGENT_PROTO);
    agentSchema = { messages: [...schema.messages.values()].sort((a, b) => a.fullName.localeCompare(b.fullName)) };
  }
  return agentSchema.messages;
}

/** Sample objects for seeds: every field set to something non-default. */
function sample(m: MessageSchema, depth = 0): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const f of m.fields) {
    let v: unknown;
    const val = f.value;
    if (val.kind === 'message') v = depth < 3 ? sample(val.type, depth + 1) : undefined;
    else if (val.kind === 'enum') v = [...val.type.values.keys()].at(-1);
    else {
      switch (val.type) {
        case 'string': v = `${f.name}-x`; break;
        case 'bytes': v = Buffer.from([1, 2, 3, 0xff]); break;
        case 'bool': v = true; break;
        case 'double': case 'float': v = 1.5; break;
        case 'int32': case 'sint32': case 'sfixed32': case 'int64': case 'sint64': case 'sfixed64': v = -7; break;
        default: v = 300;
      }
    }
    if (v === undefined) continue;
    if (f.label === 'repeated') o[f.name] = [v, v];
    else if (f.label === 'map') o[f.name] = { a: v, b: v };
    else o[f.name] = v;
  }
  return o;
}

/** Deep equality for decoded objects (NaN equals NaN; Buffers by bytes). */
function same(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a === 'number' && typeof b === 'number') return Number.isNaN(a) && Number.isNaN(b);
  if (Buffer.isBuffer(a) && Buffer.isBuffer(b)) return a.equals(b);
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => same(x, b[i]));
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a), kb = Object.keys(b);
    return ka.length === kb.length && ka.every((k) => same((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
  }
  return false;
}

/**
 * Input: byte 0 picks the agent message type, the rest is its encoding.
 * Oracle: decodeMessage throws only ProtoDecodeError; what it accepts
 * re-encodes, and decoding that gives the same object (the canonical form
 * is stable).
 */
export const protobuf: Target = {
  name: 'protobuf',
  describe: 'protobuf decoder (src/protocols/protobuf/codec.ts) over every proto/agent.proto message; decode→encode→decode is stable',
  maxLen: 8 << 10,
  dictionary: [Buffer.from([0x08]), Buffer.from([0x0a]), Buffer.from([0x12]), Buffer.from([0x1a]), Buffer.from([0x80, 0x80, 0x80, 0x80, 0x10]),
    Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), Buffer.from([0x0b]), Buffer.from([0x0c]), Buffer.from([0x0d]), Buffer.from([0x09])],
  seeds() {
    const ms = agentMessages();
    return ms.map((m, i) => Buffer.concat([Buffer.from([i]), encodeMessage(m, sample(m))]));
  },
  run(input) {
    const ms = agentMessages();
    if (input.length === 0) return 'empty';
    const m = ms[input[0]! % ms.length]!;
    const body = input.subarray(1);
    const obj = decodeMessage(m, body);
    let again: Buffer;
    try {
      again = encodeMessage(m, obj);
    } catch (err) {
      invariant(false, `${m.fullName}: a decoded message does not re-encode: ${(err as Error).message}`);
    }
    const obj2 = decodeMessage(m, again);
    invariant(same(obj, obj2), () => `${m.fullName}: decode(encode(decode(x))) differs from decode(x)`);
    return `${m.fullName}:${bucket(body.length)}`;
  },
  expected: (err) => err instanceof ProtoDecodeError,
};

// ───────────────────────────── OCI ─────────────────────────────

const OCI_SEED = {
  ociVersion: '1.0.2',
  process: {
    terminal: false, user: { uid: 0, gid: 0, additionalGids: [1, 2] }, args: ['sh', '-c', 'echo hi'],
    env: ['PATH=/usr/bin:/bin', 'TERM=xterm'], cwd: '/', capabilities: { bounding: ['CAP_CHOWN'], effective: ['CAP_CHOWN'] },
    rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }], noNewPrivileges: true, oomScoreAdj: 0,
  },
  root: { path: 'rootfs', readonly: true },
  hostname: 'pod',
  mounts: [{ destination: '/proc', type: 'proc', source: 'proc' }, { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'mode=755'] }],
  annotations: { 'io.kubernetes.cri.container-type': 'container' },
  linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }, { type: 'network', path: '/var/run/netns/x' }], maskedPaths: ['/proc/kcore'], resources: { memory: { limit: 1 << 28 } } },
};

const JSON_VALUES: unknown[] = [null, true, false, 0, -1, 1.5, 1e308, -0, 2 ** 53, '', '/', 'a=b', 'x', [], [''], ['/'], {}, { destination: '/' }, { uid: 1, gid: 1 }, [null], ['sh']];

/** Replaces, deletes or adds one node of a JSON tree (structure-aware). */
function mutateJson(rng: Rng, v: unknown, depth = 0): unknown {
  if (v === null || typeof v !== 'object' || (depth > 0 && rng.chance(0.15))) return rng.pick(JSON_VALUES);
  if (Array.isArray(v)) {
    const a = [...v];
    if (a.length && rng.chance(0.7)) { const i = rng.below(a.length); a[i] = mutateJson(rng, a[i], depth + 1); } else if (a.length && rng.chance(0.5)) a.splice(rng.below(a.length), 1);
    else a.push(rng.pick(JSON_VALUES));
    return a;
  }
  const o = { ...(v as Record<string, unknown>) };
  const keys = Object.keys(o);
  const r = rng.below(10);
  if (keys.length && r < 7) { const k = rng.pick(keys); o[k] = mutateJson(rng, o[k], depth + 1); } else if (keys.length && r < 9) delete o[rng.pick(keys)];
  else o[rng.pick(['__proto__', 'constructor', 'toString', 'process', 'args', 'mounts', 'ociVersion', 'user'])] = rng.pick(JSON_VALUES);
  return o;
}

export const oci: Target = {
  name: 'oci',
  describe: 'OCI config.json (JSON.parse + src/protocols/oci.ts validateSpec): tree and byte mutations',
  maxLen: 16 << 10,
  dictionary: words(['"ociVersion"', '"process"', '"args"', '"cwd"', '"user"', '"uid"', '"gid"', '"env"', '"mounts"', '"destination"', 'null', '[]', '{}', '"/"', '"__proto__"', '1e999', '-0', '"\\u0000"']),
  seeds: () => [Buffer.from(JSON.stringify(OCI_SEED)), Buffer.from(JSON.stringify(OCI_SEED, null, 2)), Buffer.from(JSON.stringify({ ociVersion: '1.0.0', process: { user: { uid: 1000, gid: 1000 }, args: ['/pause'], cwd: '/' } }))],
  mutate(rng, input, other) {
    if (rng.chance(0.6)) {
      try {
        return Buffer.from(JSON.stringify(mutateJson(rng, JSON.parse(input.toString('utf8')))));
      } catch { /* not JSON any more: bytes */ }
    }
    return mutate(rng, input, other, { maxLen: 16 << 10, dictionary: this.dictionary });
  },
  run(input) {
    let spec: unknown;
    try {
      spec = JSON.parse(input.toString('utf8'));
    } catch (err) {
      if (err instanceof SyntaxError) return 'not-json'; // the caller's documented refusal of bad JSON
      throw err;
    }
    validateSpec(spec);
    // Accepted: what the rest of the runtime relies on must hold.
    const s = spec as { process: { args: unknown[]; cwd: string; user: { uid: unknown; gid: unknown } }; mounts?: unknown[] };
    invariant(Array.isArray(s.process.args) && s.process.args.length > 0 && s.process.cwd.startsWith('/'), 'accepted a spec without args/cwd');
    invariant(Number.isInteger(s.process.user.uid) && Number.isInteger(s.process.user.gid), 'accepted non-integer uid/gid');
    return `ok:m${bucket(s.mounts?.length ?? 0)}`;
  },
  expected: (err) => err instanceof BundleError,
};

// ───────────────────────────── TOML ─────────────────────────────

const TOML_SEED = `# kata-ts configuration
[hypervisor.qemu]
path = "/usr/bin/qemu-system-x86_64"
kernel = '/usr/share/kata-ts/vmlinux'
default_vcpus = 1
default_memory = 2048
kernel_params = """
console=hvc0
quiet"""
enable_debug = false
machine_accelerators = ""

[hypervisor.builtin]
default_vcpus = 2
ratio = 0.5
big = 1_000_000
hex = 0xdead_beef
oct = 0o755
bin = 0b1010
neg = -17
exp = 6.02e23
inf = inf

[runtime]
internetworking_model = "tcfilter"
sandbox_cgroup_only = true
experimental = ["a", 'b', """c"""]
nested = [[1, 2], ["x"]]
escapes = "tab\\t nl\\n quote\\" \\u00e9 \\U0001F600"
"quoted key" = 1
dotted.key.here = "v"
inline = { a = 1, b = "two", c = [true, false] }

[agent.kata]
debug_console_enabled = false
dial_timeout = 45
`;

export const toml: Target = {
  name: 'toml',
  describe: 'TOML (src/common/toml.ts parseToml) over configuration-shaped text',
  maxLen: 8 << 10,
  dictionary: words(['[', ']', '[[', ']]', '=', '"', "'", '"""', "'''", '\\', '\\u', '\\U', '\\U0011FFFF', '\\UFFFFFFFF', '\\uD800', '{', '}', ',', '.', '#', '\n', '\r\n', 'true', 'false',
    'inf', 'nan', '+inf', '-nan', '0x', '0o', '0b', '1_000', '1e', '__proto__', 'constructor', 'toString', '1979-05-27T07:32:00Z', '\t', '\x00', '\x7f']),
  seeds: () => [Buffer.from(TOML_SEED), Buffer.from('a = 1\n'), Buffer.from('[x]\ny = "z"\n[x.w]\nq = [1,\n 2,\n]\n')],
  run(input) {
    const { value, lines } = parseToml(input.toString('utf8'));
    invariant(typeof value === 'object' && value !== null, 'parseToml returned no table');
    for (const [, n] of lines) invariant(Number.isInteger(n) && n >= 1, 'a key with no line number');
    return `ok:k${bucket(lines.size)}`;
  },
  expected: (err) => err instanceof TomlError,
};

// ───────────────────────────── netlink ─────────────────────────────

/** Plays a hostile kernel: answers every request with the input's datagrams. */
class HostileKernel implements NetlinkTransport {
  constructor(private readonly datagrams: Buffer[]) {}
  send(): void { /* requests are ours */ }
  receive(): Buffer { return this.datagrams.shift() ?? Buffer.alloc(0); }
  close(): void {}
}

/** Input: byte 0 = operation, then datagrams as u16 length + bytes. */
function nlDatagrams(input: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let p = 1;
  while (p + 2 <= input.length) {
    const n = input.readUInt16LE(p);
    p += 2;
    out.push(input.subarray(p, p + n));
    p += n;
  }
  return out;
}

function nlInput(op: number, datagrams: Buffer[]): Buffer {
  return Buffer.concat([Buffer.from([op]), ...datagrams.flatMap((d) => { const l = Buffer.alloc(2); l.writeUInt16LE(d.length); return [l, d]; })]);
}

/** Request seq the socket sends first (we pin its counter). */
const NL_SEQ = 1;

function nlLink(index: number, name: string): Buffer {
  const hdr = Buffer.alloc(16);
  hdr.writeUInt16LE(1, 2);
  hdr.writeInt32LE(index, 4);
  hdr.writeUInt32LE(1, 8);
  return nlEncode(16, NLM_F_MULTI, NL_SEQ, hdr, [attr.str(3, name), attr.raw(1, Buffer.from([2, 0, 0, 0, 0, index])), attr.u32(4, 1500), attr.nested(18, [attr.str(1, 'veth')]), attr.u32(5, 1), attr.u32(10, 2)]);
}
function nlAddr(index: number, v6: boolean): Buffer {
  const h = Buffer.from([v6 ? 10 : 2, v6 ? 64 : 24, 0x80, 0, index, 0, 0, 0]);
  const ip = v6 ? Buffer.from('fe800000000000000000000000000001', 'hex') : Buffer.from([10, 0, 0, index]);
  return nlEncode(20, NLM_F_MULTI, NL_SEQ, h, [attr.raw(2, ip), attr.raw(1, ip), attr.u32(8, 0x80), attr.str(3, 'eth0')]);
}
function nlRoute(v6: boolean): Buffer {
  const h = Buffer.from([v6 ? 10 : 2, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0]);
  const gw = v6 ? Buffer.from('fe800000000000000000000000000001', 'hex') : Buffer.from([10, 0, 0, 1]);
  return nlEncode(24, NLM_F_MULTI, NL_SEQ, h, [attr.u32(15, 254), attr.raw(5, gw), attr.u32(4, 2), attr.u32(6, 100)]);
}
function nlNeigh(): Buffer {
  const h = Buffer.alloc(12);
  h[0] = 2;
  h.writeInt32LE(2, 4);
  h.writeUInt16LE(0x80, 8);
  return nlEncode(28, NLM_F_MULTI, NL_SEQ, h, [attr.raw(1, Buffer.from([10, 0, 0, 9])), attr.raw(2, Buffer.from([2, 0, 0, 0, 0, 9]))]);
}
function nlDone(): Buffer { return nlEncode(NLMSG_DONE, NLM_F_MULTI, NL_SEQ, Buffer.alloc(4)); }
function nlAck(errno: number, text?: string): Buffer {
  const orig = Buffer.alloc(16);
  orig.writeUInt32LE(16, 0);
  const body = Buffer.alloc(4);
  body.writeInt32LE(-errno, 0);
  return nlEncode(NLMSG_ERROR, text ? 0x300 : 0, NL_SEQ, Buffer.concat([body, orig]), text ? [attr.str(1, text)] : []);
}

const NL_OPS = ['links', 'addresses', 'routes', 'neighbours', 'set-link'] as const;

export const netlink: Target = {
  name: 'netlink',
  describe: 'rtnetlink answers (src/protocols/netlink: decodeMessages, parseAttrs, decodeError, the route.ts list parsers) from a hostile kernel',
  maxLen: 8 << 10,
  dictionary: [Buffer.from([2, 0]), Buffer.from([3, 0]), Buffer.from([16, 0]), Buffer.from([20, 0]), Buffer.from([24, 0]), Buffer.from([28, 0]), Buffer.from([0, 0x80]), Buffer.from([0, 0x40]),
    Buffer.from([1, 0, 0, 0]), Buffer.from([0x10, 0, 0, 0]), Buffer.from([0xff, 0xff]), Buffer.from([4, 0]), Buffer.from([0x00, 0x03])],
  seeds: () => [
    nlInput(0, [Buffer.concat([nlLink(1, 'lo'), nlLink(2, 'eth0')]), Buffer.concat([nlLink(3, 'tap0_kata'), nlDone()])]),
    nlInput(1, [Buffer.concat([nlAddr(2, false), nlAddr(2, true), nlDone()])]),
    nlInput(2, [Buffer.concat([nlRoute(false), nlRoute(true)]), nlDone()]),
    nlInput(3, [Buffer.concat([nlNeigh(), nlDone()])]),
    nlInput(4, [nlAck(0)]),
    nlInput(4, [nlAck(17, 'Exclusivity flag on, cannot modify')]),
    nlInput(0, [Buffer.concat([nlAck(1)])]),
  ],
  run(input) {
    if (input.length === 0) return 'empty';
    const op = NL_OPS[input[0]! % NL_OPS.length]!;
    const dgs = nlDatagrams(input);
    // The codec directly on every datagram, nested attributes included.
    let msgs = 0, attrs = 0;
    for (const d of dgs) {
      let ms;
      try { ms = decodeMessages(d); } catch (err) { if (err instanceof NetlinkError) continue; throw err; }
      for (const m of ms) {
        msgs++;
        invariant(m.payload.length <= d.length, 'payload longer than its datagram');
        if (m.type === NLMSG_ERROR) { try { decodeError(m); } catch (err) { if (!(err instanceof NetlinkError)) throw err; } continue; }
        for (const skip of [4, 8, 12, 16]) {
          try {
            for (const a of parseAttrs(m.payload, skip)) {
              attrs++;
              invariant(a.data.length <= m.payload.length, 'attribute longer than its message');
              try { parseAttrs(a.data); } catch (err) { if (!(err instanceof NetlinkError)) throw err; }
            }
          } catch (err) { if (!(err instanceof NetlinkError)) throw err; }
        }
      }
    }
    // The socket and the parsers the runtime and agent really call.
    const s = new NetlinkSocket(new HostileKernel([...dgs]));
    (s as unknown as { seq: number }).seq = NL_SEQ - 1;
    let n = 0;
    switch (op) {
      case 'links': n = listLinks(s).length; break;
      case 'addresses': n = listAddresses(s).length; break;
      case 'routes': n = listRoutes(s).length; break;
      case 'neighbours': n = listNeighbours(s).length; break;
      case 'set-link': setLink(s, 2, { name: 'eth0', mtu: 1400, up: true }); break;
    }
    return `${op}:${bucket(n)}:m${bucket(msgs)}:a${bucket(attrs)}`;
  },
  expected: (err) => err instanceof NetlinkError,
};

// ───────────────────────────── LZ4 ─────────────────────────────

let lz4: Lz4 | undefined;
function getLz4(): Lz4 {
  return (lz4 ??= new Lz4({ maxBlockBytes: 1 << 20 }));
}

/**
 * Input: byte 0 = mode (block / partial block / frame file), bytes 1-2 =
 * output cap (KiB, for blocks), rest = compressed data. Oracle: only
 * Lz4Error; the decoded length is within the cap; bytes past the output cap in the Memory are untouched; the
 * lz4 CLI's frame splitter returns blocks inside the file.
 */
export const lz4Target: Target = {
  name: 'lz4',
  describe: 'LZ4 blocks (assembly/lz4 via src/hot/lz4.ts decompressBlock, partial too) and frame files (parseFrames)',
  maxLen: 64 << 10,
  dictionary: [Buffer.from([0xf0]), Buffer.from([0xff]), Buffer.from([0x00, 0x00]), Buffer.from([0x01, 0x00]), Buffer.from([0xff, 0xff]), Buffer.from([0x1f]),
    Buffer.from([0x04, 0x22, 0x4d, 0x18]), Buffer.from([0x02, 0x21, 0x4c, 0x18]), Buffer.from([0x50, 0x2a, 0x4d, 0x18]), Buffer.from([0x60]), Buffer.from([0x40])],
  seeds() {
    const z = getLz4();
    const texts = [
      Buffer.from('hello hello hello hello hello, lz4 world; '.repeat(40)),
      Buffer.alloc(5000, 0x61),
      Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7919) & 0xff)),
      Buffer.from('abcabcabcabcab'),
      Buffer.alloc(0),
    ];
    const out: Buffer[] = [];
    for (const t of texts) {
      const c = z.compressBlock(t);
      const cap = Buffer.alloc(2);
      cap.writeUInt16LE(Math.max(1, Math.ceil(t.length / 1024)));
      out.push(Buffer.concat([Buffer.from([0]), cap, c]), Buffer.concat([Buffer.from([1]), cap, c]));
    }
    out.push(Buffer.concat([Buffer.from([2, 0, 0]), legacyFrame([z.compressBlock(texts[0]!), z.compressBlock(texts[1]!)])]));
    // A modern frame: FLG (version 1, independent blocks, block checksums, content size), BD, HC, one compressed + one stored block, end mark.
    const b1 = z.compressBlock(texts[0]!);
    const f = Buffer.alloc(4 + 3 + 8);
    f.writeUInt32LE(LZ4_FRAME_MAGIC, 0);
    f[4] = 0x40 | 0x20 | 0x10 | 0x08;
    f[5] = 0x40;
    f.writeBigUInt64LE(BigInt(texts[0]!.length + 4), 6);
    const hdrFix = Buffer.concat([f.subarray(0, 14), Buffer.from([0x55])]);
    const blk = (data: Buffer, stored: boolean) => { const w = Buffer.alloc(4); w.writeUInt32LE((data.length | (stored ? 0x80000000 : 0)) >>> 0); return Buffer.concat([w, data, Buffer.alloc(4)]); };
    out.push(Buffer.concat([Buffer.from([2, 0, 0]), hdrFix, blk(b1, false), blk(Buffer.from('tail'), true), Buffer.alloc(4)]));
    return out;
  },
  run(input) {
    if (input.length < 3) return 'short';
    const mode = input[0]! % 3;
    const z = getLz4();
    const data = input.subarray(3);
    if (mode === 2) {
      const blocks = parseFrames(data);
      let total = 0;
      for (const b of blocks) {
        invariant(b.data.buffer === data.buffer && b.data.byteOffset >= data.byteOffset && b.data.byteOffset + b.data.length <= data.byteOffset + data.length, 'frame block outside the file');
        if (b.compressed && b.data.length <= 64 << 10) total += z.decompressBlock(b.data, 256 << 10).length;
      }
      return `frame:b${bucket(blocks.length)}:t${bucket(total)}`;
    }
    const cap = Math.min(input.readUInt16LE(1), 1024) * 1024;
    const partial = mode === 1;
    // Guard bytes just past the cap: the decoder must not write there.
    const guard = z.dstOff + cap;
    const u8 = z.mem.u8;
    const guardLen = Math.min(256, z.mem.byteLength - guard);
    u8.fill(0xee, guard, guard + guardLen);
    let out: Buffer;
    try {
      out = z.decompressBlock(data, cap, partial);
    } finally {
      for (let i = 0; i < guardLen; i++) if (u8[guard + i] !== 0xee) invariant(false, `lz4 wrote ${i} bytes past its output cap of ${cap}`);
    }
    invariant(out.length <= cap, `decoded ${out.length} bytes, cap ${cap}`);
    return `${partial ? 'partial' : 'block'}:${bucket(out.length)}`;
  },
  expected: (err) => err instanceof Lz4Error,
};
