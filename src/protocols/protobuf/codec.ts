/**
 * Protocol Buffers binary encoding (proto3) for schemas from schema.ts, with
 * the object shape @grpc/proto-loader gives for { keepCase, longs: Number,
 * enums: String, defaults: true }: field names as in the .proto, 64-bit
 * integers as JS numbers (exact up to 2^53), enums as value names, bytes as
 * Buffers, every absent field at its default (message fields null, repeated
 * [], maps {}), so code written against proto-loader reads the same objects.
 *
 * Encoding writes proto3's canonical form: default scalars are omitted,
 * repeated numeric fields are packed. Decoding accepts packed and unpacked
 * repeated fields, skips unknown fields, and treats the input as hostile —
 * a truncated value, an overlong varint, a length past the end, a wire type
 * that does not fit the field or a group is a ProtoDecodeError, never a read
 * outside the buffer. Decoded bytes fields are views into the input buffer
 * (no copy: stdout chunks are the hot path).
 */
import { KataError } from '../../common/errors';
import type { FieldSchema, MessageSchema, ScalarType, ValueType } from './schema';

export class ProtoDecodeError extends KataError<'malformed'> {}
export class ProtoEncodeError extends KataError<'invalid'> {}

const WIRE_VARINT = 0, WIRE_I64 = 1, WIRE_LEN = 2, WIRE_I32 = 5;
const TWO32 = 4294967296;
const TWO64 = TWO32 * TWO32;

function wireOf(v: ValueType): number {
  if (v.kind === 'message') return WIRE_LEN;
  if (v.kind === 'enum') return WIRE_VARINT;
  switch (v.type) {
    case 'string': case 'bytes': return WIRE_LEN;
    case 'double': case 'fixed64': case 'sfixed64': return WIRE_I64;
    case 'float': case 'fixed32': case 'sfixed32': return WIRE_I32;
    default: return WIRE_VARINT;
  }
}

// ───────────────────────────── writing ─────────────────────────────

class Writer {
  buf: Buffer;
  pos = 0;
  constructor(size = 256) { this.buf = Buffer.allocUnsafe(size); }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const b = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(b, 0, 0, this.pos);
    this.buf = b;
  }

  /** Unsigned varint of lo + hi·2^32 (both uint32). */
  varint64(lo: number, hi: number): void {
    this.room(10);
    const b = this.buf;
    while (hi !== 0 || lo > 127) {
      b[this.pos++] = (lo & 0x7f) | 0x80;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    b[this.pos++] = lo;
  }

  varint32(v: number): void {
    this.room(5);
    const b = this.buf;
    v >>>= 0;
    while (v > 127) {
      b[this.pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    b[this.pos++] = v;
  }

  tag(number: number, wire: number): void {
    // number ≤ 2^29 - 1: (number << 3 | wire) fits 32 bits unsigned.
    this.varint32(((number << 3) | wire) >>> 0);
  }

  bytes(data: Uint8Array): void {
    this.varint32(data.length);
    this.room(data.length);
    this.buf.set(data, this.pos);
    this.pos += data.length;
  }

  string(s: string): void {
    const n = Buffer.byteLength(s);
    this.varint32(n);
    this.room(n);
    this.buf.write(s, this.pos, n, 'utf8');
    this.pos += n;
  }

  fixed32(v: number): void { this.room(4); this.buf.writeUInt32LE(v >>> 0, this.pos); this.pos += 4; }
  fixed64(lo: number, hi: number): void { this.room(8); this.buf.writeUInt32LE(lo, this.pos); this.buf.writeUInt32LE(hi, this.pos + 4); this.pos += 8; }
  double(v: number): void { this.room(8); this.buf.writeDoubleLE(v, this.pos); this.pos += 8; }
  float(v: number): void { this.room(4); this.buf.writeFloatLE(v, this.pos); this.pos += 4; }

  finish(): Buffer { return this.buf.subarray(0, this.pos); }
}

/** double/float: IEEE 754 values, NaN and ±Infinity included (what the decoder gives back). */
function toFloat(field: string, v: unknown): number {
  return typeof v === 'number' ? v : toNumber(field, v);
}

function toNumber(field: string, v: unknown): number {
  const n = typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : typeof v === 'string' && v.trim() !== '' ? Number(v) : typeof v === 'boolean' ? Number(v) : NaN;
  if (!Number.isFinite(n)) throw new ProtoEncodeError('invalid', `field ${field}: ${String(v)} is not a number`);
  return n;
}

/**
 * A JS number as the two uint32 halves of its 64-bit two's complement.
 * Out of range saturates (as protobufjs's Long.fromNumber does): 2^64 and
 * above → 2^64-1, below -2^63 → -2^63. 2^64-1 itself is not a double: a
 * uint64 max decodes to 2^64, and must not come back as 0.
 */
function split64(n: number): [number, number] {
  n = Math.trunc(n);
  if (n >= TWO64) return [0xffffffff, 0xffffffff];
  if (n < -TWO64 / 2) return [0, 0x80000000];
  if (n >= 0) return [n % TWO32 >>> 0, Math.floor(n / TWO32) >>> 0];
  const m = -n;
  let lo = ~(m % TWO32 >>> 0) >>> 0;
  let hi = ~(Math.floor(m / TWO32) >>> 0) >>> 0;
  lo = (lo + 1) >>> 0;
  if (lo === 0) hi = (hi + 1) >>> 0;
  return [lo, hi];
}

function isDefault(v: ValueType, x: unknown): boolean {
  if (v.kind === 'enum') return x === 0 || x === v.type.names.get(0);
  if (v.kind === 'message') return false;
  switch (v.type) {
    case 'string': return x === '';
    case 'bytes': return typeof x === 'string' ? x === '' : (x as Uint8Array).length === 0;
    case 'bool': return !x;
    default: return Number(x) === 0 && !Object.is(Number(x), -0);
  }
}

function enumNumber(field: FieldSchema, x: unknown): number {
  if (field.value.kind !== 'enum') throw new Error('unreachable');
  if (typeof x === 'string') {
    const n = field.value.type.values.get(x);
    if (n === undefined) throw new ProtoEncodeError('invalid', `field ${field.name}: '${x}' is not a value of ${field.value.type.fullName}`);
    return n;
  }
  return toNumber(field.name, x) | 0;
}

/** Writes one value (no tag) of a scalar or enum type. */
function writeScalar(w: Writer, field: FieldSchema, type: ScalarType | 'enum', x: unknown): void {
  switch (type) {
    case 'string':
      if (typeof x !== 'string') throw new ProtoEncodeError('invalid', `field ${field.name}: expected a string`);
      w.string(x);
      return;
    case 'bytes':
      if (typeof x === 'string') w.bytes(Buffer.from(x, 'base64'));
      else if (x instanceof Uint8Array) w.bytes(x);
      else throw new ProtoEncodeError('invalid', `field ${field.name}: expected bytes`);
      return;
    case 'bool': w.varint32(x ? 1 : 0); return;
    case 'enum': { const n = enumNumber(field, x); if (n < 0) w.varint64(...split64(n)); else w.varint32(n); return; }
    case 'int32': { const n = toNumber(field.name, x) | 0; if (n < 0) w.varint64(...split64(n)); else w.varint32(n); return; }
    case 'uint32': w.varint32(toNumber(field.name, x) >>> 0); return;
    case 'sint32': { const n = toNumber(field.name, x) | 0; w.varint32(((n << 1) ^ (n >> 31)) >>> 0); return; }
    case 'int64': case 'uint64': w.varint64(...split64(toNumber(field.name, x))); return;
    case 'sint64': {
      // zigzag: 2n for n ≥ 0, -2n - 1 for n < 0.
      const n = Math.trunc(toNumber(field.name, x));
      // 2^63 and above saturate to the largest sint64 (zigzag 2^64-2).
      if (n >= TWO64 / 2) w.varint64(0xfffffffe, 0xffffffff);
      else w.varint64(...split64(n >= 0 ? 2 * n : -2 * n - 1));
      return;
    }
    case 'fixed32': w.fixed32(toNumber(field.name, x) >>> 0); return;
    case 'sfixed32': w.fixed32(toNumber(field.name, x) | 0); return;
    case 'fixed64': case 'sfixed64': w.fixed64(...split64(toNumber(field.name, x))); return;
    case 'double': w.double(toFloat(field.name, x)); return;
    case 'float': w.float(toFloat(field.name, x)); return;
  }
}

function writeValue(w: Writer, field: FieldSchema, v: ValueType, number: number, x: unknown): void {
  if (v.kind === 'message') {
    w.tag(number, WIRE_LEN);
    w.bytes(encodeMessage(v.type, x as Record<string, unknown>));
    return;
  }
  w.tag(number, wireOf(v));
  writeScalar(w, field, v.kind === 'enum' ? 'enum' : v.type, x);
}

function writeMessage(w: Writer, schema: MessageSchema, obj: Record<string, unknown>): void {
  if (obj === null || typeof obj !== 'object') throw new ProtoEncodeError('invalid', `${schema.fullName}: expected an object`);
  for (const f of schema.fields) {
    const x = obj[f.name];
    if (x === undefined || x === null) continue;
    if (f.label === 'single') {
      if (!isDefault(f.value, x)) writeValue(w, f, f.value, f.number, x);
    } else if (f.label === 'repeated') {
      if (!Array.isArray(x)) throw new ProtoEncodeError('invalid', `field ${f.name}: expected an array`);
      if (x.length === 0) continue;
      if (wireOf(f.value) !== WIRE_LEN) {
        // proto3 packs repeated scalars: one length-delimited run.
        const inner = new Writer(x.length * 10);
        for (const e of x) writeScalar(inner, f, f.value.kind === 'enum' ? 'enum' : (f.value as { type: ScalarType }).type, e);
        w.tag(f.number, WIRE_LEN);
        w.bytes(inner.finish());
      } else {
        for (const e of x) {
          if (e === null || e === undefined) throw new ProtoEncodeError('invalid', `field ${f.name}: null element`);
          writeValue(w, f, f.value, f.number, e);
        }
      }
    } else {
      if (typeof x !== 'object') throw new ProtoEncodeError('invalid', `field ${f.name}: expected a map object`);
      const keyField: FieldSchema = { name: `${f.name} key`, number: 1, label: 'single', value: { kind: 'scalar', type: f.key! } };
      for (const [k, val] of (x instanceof Map ? x.entries() : Object.entries(x as Record<string, unknown>))) {
        const entry = new Writer(32);
        const key = f.key === 'string' ? String(k) : f.key === 'bool' ? k === true || k === 'true' : k;
        writeValue(entry, keyField, keyField.value, 1, key);
        if (val !== undefined && val !== null) writeValue(entry, f, f.value, 2, val);
        w.tag(f.number, WIRE_LEN);
        w.bytes(entry.finish());
      }
    }
  }
}

/** Encodes a plain object (proto-loader shape; enums by name or number). */
export function encodeMessage(schema: MessageSchema, obj: Record<string, unknown>): Buffer {
  const w = new Writer();
  writeMessage(w, schema, obj);
  return w.finish();
}

// ───────────────────────────── reading ─────────────────────────────

class Reader {
  pos: number;
  constructor(readonly buf: Buffer, start: number, readonly end: number) { this.pos = start; }

  fail(what: string): never {
    throw new ProtoDecodeError('malformed', `protobuf: ${what} at byte ${this.pos}`);
  }

  /** Unsigned varint as [lo, hi] uint32 halves; at most 10 bytes. */
  varint64(): [number, number] {
    let lo = 0, hi = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail('truncated varint');
      const b = this.buf[this.pos++]!;
      if (i < 4) lo |= (b & 0x7f) << (7 * i);
      else if (i === 4) { lo |= (b & 0x0f) << 28; hi |= (b & 0x7f) >> 4; }
      else hi |= (b & 0x7f) << (7 * i - 32);
      if (b < 0x80) return [lo >>> 0, hi >>> 0];
    }
    this.fail('varint longer than 10 bytes');
  }

  /** Low 32 bits of a varint (what int32/uint32/enum/bool fields keep). */
  varint32(): number { return this.varint64()[0]; }

  length(): number {
    const [lo, hi] = this.varint64();
    if (hi !== 0 || lo > this.end - this.pos) this.fail(`length ${hi ? 'over 2^32' : lo} past the end`);
    return lo;
  }

  fixed(n: 4 | 8): number {
    if (this.end - this.pos < n) this.fail(`truncated ${n * 8}-bit value`);
    const at = this.pos;
    this.pos += n;
    return at;
  }

  skip(wire: number): void {
    switch (wire) {
      case WIRE_VARINT: this.varint64(); return;
      case WIRE_I64: this.fixed(8); return;
      case WIRE_LEN: { const n = this.length(); this.pos += n; return; } // length() moves pos first
      case WIRE_I32: this.fixed(4); return;
      default: this.fail(`wire type ${wire} (groups are not supported)`);
    }
  }
}

const unsigned64 = (lo: number, hi: number) => hi * TWO32 + lo;
function signed64(lo: number, hi: number): number {
  if (hi < 0x80000000) return hi * TWO32 + lo;
  // two's complement: -(~v + 1)
  const nlo = (~lo + 1) >>> 0;
  const nhi = (~hi + (nlo === 0 ? 1 : 0)) >>> 0;
  return -(nhi * TWO32 + nlo);
}

function readScalar(r: Reader, type: ScalarType): unknown {
  switch (type) {
    case 'string': { const n = r.length(); const s = r.buf.toString('utf8', r.pos, r.pos + n); r.pos += n; return s; }
    case 'bytes': { const n = r.length(); const b = r.buf.subarray(r.pos, r.pos + n); r.pos += n; return b; }
    case 'bool': { const [lo, hi] = r.varint64(); return lo !== 0 || hi !== 0; }
    case 'int32': return r.varint32() | 0;
    case 'uint32': return r.varint32();
    case 'sint32': { const v = r.varint32(); return (v >>> 1) ^ -(v & 1); }
    case 'int64': return signed64(...r.varint64());
    case 'uint64': return unsigned64(...r.varint64());
    case 'sint64': {
      const [lo, hi] = r.varint64();
      const u = unsigned64(lo, hi);
      return lo & 1 ? -(u + 1) / 2 : u / 2;
    }
    case 'fixed32': return r.buf.readUInt32LE(r.fixed(4));
    case 'sfixed32': return r.buf.readInt32LE(r.fixed(4));
    case 'fixed64': { const at = r.fixed(8); return unsigned64(r.buf.readUInt32LE(at), r.buf.readUInt32LE(at + 4)); }
    case 'sfixed64': { const at = r.fixed(8); return signed64(r.buf.readUInt32LE(at), r.buf.readUInt32LE(at + 4)); }
    case 'double': return r.buf.readDoubleLE(r.fixed(8));
    case 'float': return r.buf.readFloatLE(r.fixed(4));
  }
}

function readValue(r: Reader, v: ValueType): unknown {
  if (v.kind === 'message') {
    const n = r.length();
    const o = readMessage(r.buf, r.pos, r.pos + n, v.type);
    r.pos += n;
    return o;
  }
  if (v.kind === 'enum') {
    const n = r.varint32() | 0;
    return v.type.names.get(n) ?? n; // an unknown value stays a number
  }
  return readScalar(r, v.type);
}

function defaultOf(f: FieldSchema): unknown {
  if (f.label === 'repeated') return [];
  if (f.label === 'map') return {};
  const v = f.value;
  if (v.kind === 'message') return null;
  if (v.kind === 'enum') return v.type.names.get(0);
  switch (v.type) {
    case 'string': return '';
    case 'bytes': return Buffer.alloc(0);
    case 'bool': return false;
    default: return 0;
  }
}

function readMessage(buf: Buffer, start: number, end: number, schema: MessageSchema): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of schema.fields) out[f.name] = defaultOf(f);
  const r = new Reader(buf, start, end);
  while (r.pos < end) {
    const tag = r.varint32();
    const number = tag >>> 3;
    const wire = tag & 7;
    if (number === 0) r.fail('field number 0');
    const f = schema.byNumber.get(number);
    if (!f) { r.skip(wire); continue; }
    const want = wireOf(f.value);
    if (f.label === 'map') {
      if (wire !== WIRE_LEN) r.fail(`field ${f.name}: wire type ${wire}, a map entry needs 2`);
      const n = r.length();
      const e = new Reader(buf, r.pos, r.pos + n);
      r.pos += n;
      let key: unknown = defaultOf({ name: 'key', number: 1, label: 'single', value: { kind: 'scalar', type: f.key! } });
      let val: unknown = defaultOf({ ...f, label: 'single' });
      while (e.pos < e.end) {
        const t = e.varint32();
        const kw = t & 7;
        if (t >>> 3 === 1) {
          if (kw !== wireOf({ kind: 'scalar', type: f.key! })) e.fail(`field ${f.name}: map key wire type ${kw}`);
          key = readScalar(e, f.key!);
        } else if (t >>> 3 === 2) {
          if (kw !== want) e.fail(`field ${f.name}: map value wire type ${kw}`);
          val = readValue(e, f.value);
        } else {
          e.skip(kw);
        }
      }
      (out[f.name] as Record<string, unknown>)[String(key)] = val;
    } else if (f.label === 'repeated') {
      const list = out[f.name] as unknown[];
      if (wire === WIRE_LEN && want !== WIRE_LEN) {
        // packed run of scalars
        const n = r.length();
        const p = new Reader(buf, r.pos, r.pos + n);
        r.pos += n;
        while (p.pos < p.end) list.push(readValue(p, f.value));
      } else {
        if (wire !== want) r.fail(`field ${f.name}: wire type ${wire}, expected ${want}`);
        list.push(readValue(r, f.value));
      }
    } else {
      if (wire !== want) r.fail(`field ${f.name}: wire type ${wire}, expected ${want}`);
      out[f.name] = readValue(r, f.value);
    }
  }
  return out;
}

/** Decodes a whole buffer as one message of `schema` (proto-loader shape). */
export function decodeMessage(schema: MessageSchema, buf: Buffer): Record<string, unknown> {
  return readMessage(buf, 0, buf.length, schema);
}
