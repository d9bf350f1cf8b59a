/**
 * A reader for the proto3 subset our own .proto files use — package,
 * messages (nested), enums, scalar / message / enum fields, `repeated`,
 * `map<K, V>`, services with (server/client) streaming rpcs, options and
 * reserved statements (skipped) — producing a resolved schema for codec.ts.
 *
 * Why not protobufjs/@grpc/proto-loader at run time: the guest agent starts
 * under instruction emulation on these hosts, where loading and running
 * them cost ~2.5 s of every VM's boot (67 ms on the host, ~40× slower under
 * TCG); this file and codec.ts load in well under a millisecond on the host.
 * The test suite checks both against protobufjs on proto/agent.proto.
 *
 * Anything outside the subset (proto2, imports, oneof, groups, extensions)
 * is refused with file:line, never guessed at.
 */
import { KataError } from '../../common/errors';

export class ProtoSchemaError extends KataError<'syntax' | 'unsupported' | 'unresolved'> {}

export type ScalarType =
  | 'double' | 'float' | 'int32' | 'int64' | 'uint32' | 'uint64' | 'sint32' | 'sint64'
  | 'fixed32' | 'fixed64' | 'sfixed32' | 'sfixed64' | 'bool' | 'string' | 'bytes';

const SCALARS = new Set<string>(['double', 'float', 'int32', 'int64', 'uint32', 'uint64', 'sint32', 'sint64',
  'fixed32', 'fixed64', 'sfixed32', 'sfixed64', 'bool', 'string', 'bytes']);
const MAP_KEYS = new Set<string>(['int32', 'int64', 'uint32', 'uint64', 'sint32', 'sint64', 'fixed32', 'fixed64',
  'sfixed32', 'sfixed64', 'bool', 'string']);

/** A field's value type after resolution. */
export type ValueType =
  | { kind: 'scalar'; type: ScalarType }
  | { kind: 'enum'; type: EnumSchema }
  | { kind: 'message'; type: MessageSchema };

export interface FieldSchema {
  name: string;
  number: number;
  /** 'single' | 'repeated' | 'map' (map: key is `key`, value is `value`). */
  label: 'single' | 'repeated' | 'map';
  value: ValueType;
  /** Map key type (label 'map' only). */
  key?: ScalarType;
}

export interface MessageSchema {
  fullName: string;
  fields: FieldSchema[];
  byNumber: Map<number, FieldSchema>;
}

export interface EnumSchema {
  fullName: string;
  /** name → number, and number → first name (aliases keep the first). */
  values: Map<string, number>;
  names: Map<number, string>;
}

export interface MethodSchema {
  name: string;
  request: MessageSchema;
  response: MessageSchema;
  requestStream: boolean;
  responseStream: boolean;
}

export interface ServiceSchema {
  fullName: string;
  methods: MethodSchema[];
}

export interface ProtoSchema {
  package: string;
  messages: Map<string, MessageSchema>;
  enums: Map<string, EnumSchema>;
  services: Map<string, ServiceSchema>;
}

interface Token { text: string; line: number; str?: boolean }

function tokenize(src: string, file: string): Token[] {
  const out: Token[] = [];
  let line = 1;
  let i = 0;
  while (i < src.length) {
    const c = src[i]!;
    if (c === '\n') { line++; i++; continue; }
    if (c === ' ' || c === '\t' || c === '\r') { i++; continue; }
    if (c === '/' && src[i + 1] === '/') { while (i < src.length && src[i] !== '\n') i++; continue; }
    if (c === '/' && src[i + 1] === '*') {
      const end = src.indexOf('*/', i + 2);
      if (end < 0) throw new ProtoSchemaError('syntax', `${file}:${line}: unterminated comment`);
      for (let k = i; k < end; k++) if (src[k] === '\n') line++;
      i = end + 2;
      continue;
    }
    if (c === '"' || c === "'") {
      let j = i + 1;
      let s = '';
      while (j < src.length && src[j] !== c) {
        if (src[j] === '\n') throw new ProtoSchemaError('syntax', `${file}:${line}: newline in string`);
        if (src[j] === '\\') { s += src[j + 1] ?? ''; j += 2; continue; }
        s += src[j];
        j++;
      }
      if (j >= src.length) throw new ProtoSchemaError('syntax', `${file}:${line}: unterminated string`);
      out.push({ text: s, line, str: true });
      i = j + 1;
      continue;
    }
    const m = /^[A-Za-z_.][A-Za-z0-9_.]*|^-?[0-9][0-9A-Za-z.+-]*/.exec(src.slice(i, i + 256));
    if (m) { out.push({ text: m[0], line }); i += m[0].length; continue; }
    if ('{}()<>[];=,'.includes(c)) { out.push({ text: c, line }); i++; continue; }
    throw new ProtoSchemaError('syntax', `${file}:${line}: unexpected character '${c}'`);
  }
  return out;
}

interface RawField { name: string; number: number; label: FieldSchema['label']; type: string; key?: string; line: number }
interface RawMessage { fullName: string; scope: string; fields: RawField[]; line: number }

/** Parses proto text (`file` only names it in errors) into a resolved schema. */
export function parseProto(src: string, file = '<proto>'): ProtoSchema {
  const toks = tokenize(src, file);
  let p = 0;
  const at = () => toks[p]?.line ?? toks[toks.length - 1]?.line ?? 1;
  const err = (kind: ProtoSchemaError['kind'], msg: string, line = at()) => new ProtoSchemaError(kind, `${file}:${line}: ${msg}`);
  const peek = () => toks[p]?.text;
  const next = (): string => {
    const t = toks[p++];
    if (!t) throw err('syntax', 'unexpected end of file');
    return t.text;
  };
  const expect = (s: string) => {
    const line = at();
    const t = next();
    if (t !== s) throw err('syntax', `expected '${s}', found '${t}'`, line);
  };
  const ident = (what: string): string => {
    const line = at();
    const t = toks[p];
    const s = next();
    if (t?.str || !/^[A-Za-z_.][A-Za-z0-9_.]*$/.test(s)) throw err('syntax', `expected ${what}, found '${s}'`, line);
    return s;
  };
  const int = (what: string): number => {
    const line = at();
    const s = next();
    const v = /^-?(0x[0-9a-fA-F]+|[0-9]+)$/.test(s) ? Number(s) : NaN;
    if (!Number.isSafeInteger(v)) throw err('syntax', `expected ${what}, found '${s}'`, line);
    return v;
  };
  /** Skips to the end of a statement, balancing brackets (options, reserved). */
  const skipStatement = () => {
    let depth = 0;
    for (;;) {
      const t = next();
      if (t === '{' || t === '[' || t === '(') depth++;
      else if (t === '}' || t === ']' || t === ')') depth--;
      else if (t === ';' && depth === 0) return;
      if (depth < 0) throw err('syntax', `unbalanced '${t}'`);
    }
  };

  let pkg = '';
  const rawMessages: RawMessage[] = [];
  const enums = new Map<string, EnumSchema>();
  const rawServices: Array<{ fullName: string; methods: Array<{ name: string; req: string; res: string; reqStream: boolean; resStream: boolean; line: number }> }> = [];
  const qualify = (scope: string, name: string) => (scope ? `${scope}.${name}` : name);

  const parseEnum = (scope: string) => {
    const name = ident('enum name');
    const e: EnumSchema = { fullName: qualify(scope, name), values: new Map(), names: new Map() };
    expect('{');
    while (peek() !== '}') {
      if (peek() === 'option' || peek() === 'reserved') { skipStatement(); continue; }
      if (peek() === ';') { next(); continue; }
      const v = ident('enum value name');
      expect('=');
      const n = int('enum value number');
      if (peek() === '[') skipStatement(); else expect(';');
      e.values.set(v, n);
      if (!e.names.has(n)) e.names.set(n, v);
    }
    expect('}');
    if (e.names.get(0) === undefined) throw err('syntax', `enum ${e.fullName}: proto3 enums need a zero value`);
    enums.set(e.fullName, e);
  };

  const parseMessage = (scope: string) => {
    const line = at();
    const name = ident('message name');
    const msg: RawMessage = { fullName: qualify(scope, name), scope, fields: [], line };
    rawMessages.push(msg);
    expect('{');
    while (peek() !== '}') {
      const t = peek();
      if (t === undefined) throw err('syntax', `message ${msg.fullName} is not closed`);
      if (t === ';') { next(); continue; }
      if (t === 'option' || t === 'reserved') { skipStatement(); continue; }
      if (t === 'message') { next(); parseMessage(msg.fullName); continue; }
      if (t === 'enum') { next(); parseEnum(msg.fullName); continue; }
      if (t === 'oneof' || t === 'extensions' || t === 'extend' || t === 'group' || t === 'optional' || t === 'required') {
        throw err('unsupported', `'${t}' is outside the proto3 subset this reader supports`);
      }
      const fline = at();
      let label: FieldSchema['label'] = 'single';
      let type: string;
      let key: string | undefined;
      if (t === 'repeated') { next(); label = 'repeated'; }
      if (peek() === 'map' && toks[p + 1]?.text === '<') {
        if (label === 'repeated') throw err('syntax', 'a map field cannot be repeated');
        next(); next();
        key = ident('map key type');
        if (!MAP_KEYS.has(key)) throw err('syntax', `map key type '${key}' is not allowed`);
        expect(',');
        type = ident('map value type');
        expect('>');
        label = 'map';
      } else {
        type = ident('field type');
      }
      const fname = ident('field name');
      expect('=');
      const number = int('field number');
      if (number < 1 || number > 536870911 || (number >= 19000 && number <= 19999)) throw err('syntax', `field number ${number} is out of range`, fline);
      if (peek() === '[') skipStatement(); else expect(';');
      msg.fields.push({ name: fname, number, label, type, key, line: fline });
    }
    expect('}');
  };

  while (p < toks.length) {
    const t = next();
    if (t === ';') continue;
    if (t === 'syntax') {
      expect('=');
      const line = at();
      const v = next();
      if (v !== 'proto3') throw err('unsupported', `syntax "${v}": only proto3 is supported`, line);
      expect(';');
    } else if (t === 'package') {
      pkg = ident('package name');
      expect(';');
    } else if (t === 'import') {
      throw err('unsupported', 'imports are not supported (keep the API in one file)');
    } else if (t === 'option') {
      skipStatement();
    } else if (t === 'message') {
      parseMessage(pkg);
    } else if (t === 'enum') {
      parseEnum(pkg);
    } else if (t === 'service') {
      const name = ident('service name');
      const svc = { fullName: qualify(pkg, name), methods: [] as (typeof rawServices)[number]['methods'] };
      expect('{');
      while (peek() !== '}') {
        if (peek() === ';') { next(); continue; }
        if (peek() === 'option') { skipStatement(); continue; }
        const line = at();
        expect('rpc');
        const mname = ident('rpc name');
        expect('(');
        let reqStream = false;
        if (peek() === 'stream') { next(); reqStream = true; }
        const req = ident('request type');
        expect(')');
        expect('returns');
        expect('(');
        let resStream = false;
        if (peek() === 'stream') { next(); resStream = true; }
        const res = ident('response type');
        expect(')');
        if (peek() === '{') {
          next();
          while (peek() !== '}') skipStatement();
          next();
          if (peek() === ';') next();
        } else {
          expect(';');
        }
        svc.methods.push({ name: mname, req, res, reqStream, resStream, line });
      }
      expect('}');
      rawServices.push(svc);
    } else {
      throw err('syntax', `unexpected '${t}'`, toks[p - 1]!.line);
    }
  }

  // Resolution: a name is looked up from the innermost scope outwards, as
  // protoc does; a leading '.' means fully qualified.
  const messages = new Map<string, MessageSchema>();
  for (const m of rawMessages) messages.set(m.fullName, { fullName: m.fullName, fields: [], byNumber: new Map() });
  const resolve = (scope: string, name: string, line: number): ValueType => {
    if (name.startsWith('.')) {
      const full = name.slice(1);
      const m = messages.get(full);
      if (m) return { kind: 'message', type: m };
      const e = enums.get(full);
      if (e) return { kind: 'enum', type: e };
    } else {
      for (let s = scope; ; s = s.includes('.') ? s.slice(0, s.lastIndexOf('.')) : '') {
        const full = qualify(s, name);
        const m = messages.get(full);
        if (m) return { kind: 'message', type: m };
        const e = enums.get(full);
        if (e) return { kind: 'enum', type: e };
        if (s === '') break;
      }
    }
    throw err('unresolved', `type '${name}' is not defined`, line);
  };
  for (const raw of rawMessages) {
    const m = messages.get(raw.fullName)!;
    for (const f of raw.fields) {
      if (m.byNumber.has(f.number)) throw err('syntax', `${raw.fullName}: field number ${f.number} used twice`, f.line);
      if (m.fields.some((g) => g.name === f.name)) throw err('syntax', `${raw.fullName}: field name ${f.name} used twice`, f.line);
      const value: ValueType = SCALARS.has(f.type) ? { kind: 'scalar', type: f.type as ScalarType } : resolve(raw.fullName, f.type, f.line);
      const field: FieldSchema = { name: f.name, number: f.number, label: f.label, value, ...(f.key ? { key: f.key as ScalarType } : {}) };
      m.fields.push(field);
      m.byNumber.set(f.number, field);
    }
  }
  const services = new Map<string, ServiceSchema>();
  for (const s of rawServices) {
    const scope = s.fullName.slice(0, Math.max(0, s.fullName.lastIndexOf('.')));
    const msgOf = (name: string, line: number): MessageSchema => {
      const v = resolve(scope, name, line);
      if (v.kind !== 'message') throw err('unresolved', `rpc type '${name}' is not a message`, line);
      return v.type;
    };
    services.set(s.fullName, {
      fullName: s.fullName,
      methods: s.methods.map((m) => ({ name: m.name, request: msgOf(m.req, m.line), response: msgOf(m.res, m.line), requestStream: m.reqStream, responseStream: m.resStream })),
    });
  }
  return { package: pkg, messages, enums, services };
}
