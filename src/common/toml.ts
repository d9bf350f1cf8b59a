/**
 * A TOML reader for kata-ts configuration files (TOML 1.0 subset that Kata's
 * configuration.toml uses): [tables] and [dotted.tables], key = value with
 * basic/literal strings, integers (with _ separators, hex), floats, booleans,
 * arrays (multi-line allowed), inline tables, comments. Every error names the
 * line it was found on. No dependency: the allowed package set has no TOML.
 */
import { KataError } from './errors';

/**
 * A file that is not TOML we read: `syntax` (malformed text, bad escapes),
 * `duplicate` (a key or table defined twice), `unsupported` (valid TOML
 * outside our subset). The message starts with `line N:`; readers that know
 * the file name prefix it (runtime/config: `<file>:<line>: …`).
 */
export class TomlError extends KataError<'syntax' | 'duplicate' | 'unsupported'> {
  constructor(readonly line: number, message: string, kind: 'syntax' | 'duplicate' | 'unsupported' = 'syntax') {
    super(kind, `line ${line}: ${message}`);
  }
}

export type TomlValue = string | number | boolean | TomlValue[] | TomlTable;
export interface TomlTable { [k: string]: TomlValue }

/** Where each key was defined, "a.b.c" -> line, for error messages. */
export type TomlLines = Map<string, number>;

class Cursor {
  pos = 0;
  line = 1;
  constructor(readonly s: string) {}
  peek(n = 0): string { return this.s[this.pos + n] ?? ''; }
  eof(): boolean { return this.pos >= this.s.length; }
  next(): string {
    const c = this.s[this.pos++] ?? '';
    if (c === '\n') this.line++;
    return c;
  }
  fail(msg: string, kind?: TomlError['kind']): never { throw new TomlError(this.line, msg, kind); }
  /** Consume `ch` if it is next (never swallowing a newline by mistake). */
  eat(ch: string): boolean {
    if (this.peek() !== ch) return false;
    this.next();
    return true;
  }
  skipWs(): void { while (this.peek() === ' ' || this.peek() === '\t') this.pos++; }
  skipComment(): void { if (this.peek() === '#') while (!this.eof() && this.peek() !== '\n') this.pos++; }
  /** whitespace, newlines and comments (inside arrays) */
  skipAll(): void {
    for (;;) {
      this.skipWs();
      this.skipComment();
      if (this.peek() === '\n' || this.peek() === '\r') this.next();
      else break;
    }
  }
  endOfLine(): void {
    this.skipWs();
    this.skipComment();
    if (this.peek() === '\r') this.pos++;
    if (!this.eof() && this.peek() !== '\n') this.fail(`unexpected "${this.peek()}" after value`);
    if (!this.eof()) this.next();
  }
}

function parseKey(c: Cursor): string[] {
  const parts: string[] = [];
  for (;;) {
    c.skipWs();
    if (c.peek() === '"' || c.peek() === "'") parts.push(parseString(c));
    else {
      const start = c.pos;
      while (/[A-Za-z0-9_-]/.test(c.peek())) c.pos++;
      if (c.pos === start) c.fail(`expected a key, found "${c.peek() || 'end of file'}"`);
      parts.push(c.s.slice(start, c.pos));
    }
    c.skipWs();
    if (c.peek() !== '.') return parts;
    c.pos++;
  }
}

function parseString(c: Cursor): string {
  const q = c.next();
  if (c.peek() === q && c.peek(1) === q) c.fail('multi-line strings are not supported', 'unsupported');
  let out = '';
  for (;;) {
    if (c.peek() === '' || c.peek() === '\n') c.fail('unterminated string');
    const ch = c.next();
    if (ch === q) return out;
    if (q === '"' && ch === '\\') {
      const e = c.next();
      const map: Record<string, string> = { n: '\n', t: '\t', r: '\r', '"': '"', '\\': '\\', b: '\b', f: '\f' };
      if (e in map) out += map[e];
      else if (e === 'u' || e === 'U') {
        const len = e === 'u' ? 4 : 8;
        const hex = c.s.slice(c.pos, c.pos + len);
        if (!/^[0-9a-fA-F]+$/.test(hex) || hex.length !== len) c.fail('bad unicode escape');
        const cp = parseInt(hex, 16);
        // TOML 1.0: \uXXXX and \UXXXXXXXX name Unicode scalar values only.
        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) c.fail(`unicode escape \\${e}${hex} is not a Unicode scalar value (at most U+10FFFF, no surrogates)`);
        c.pos += len;
        out += String.fromCodePoint(cp);
      } else c.fail(`bad escape "\\${e}"`);
    } else out += ch;
  }
}

function parseValue(c: Cursor): TomlValue {
  c.skipWs();
  const ch = c.peek();
  if (ch === '"' || ch === "'") return parseString(c);
  if (ch === '[') {
    c.next();
    const arr: TomlValue[] = [];
    for (;;) {
      c.skipAll();
      if (c.peek() === ']') { c.next(); return arr; }
      arr.push(parseValue(c));
      c.skipAll();
      if (c.peek() === ',') { c.next(); continue; }
      if (c.peek() === ']') { c.next(); return arr; }
      c.fail('expected "," or "]" in array');
    }
  }
  if (ch === '{') {
    c.next();
    const t: TomlTable = {};
    c.skipWs();
    if (c.peek() === '}') { c.next(); return t; }
    for (;;) {
      const k = parseKey(c);
      c.skipWs();
      if (!c.eat('=')) c.fail('expected "=" in inline table');
      setPath(c, t, k, parseValue(c), new Map(), '');
      c.skipWs();
      const d = c.next();
      if (d === '}') return t;
      if (d !== ',') c.fail('expected "," or "}" in inline table');
    }
  }
  const start = c.pos;
  while (!c.eof() && !/[\s,\]}#]/.test(c.peek())) c.pos++;
  const tok = c.s.slice(start, c.pos);
  if (tok === 'true') return true;
  if (tok === 'false') return false;
  if (/^[+-]?(0|[1-9](_?\d)*)$/.test(tok)) return Number(tok.replace(/_/g, ''));
  if (/^0x[0-9a-fA-F](_?[0-9a-fA-F])*$/.test(tok)) return parseInt(tok.slice(2).replace(/_/g, ''), 16);
  if (/^[+-]?(0|[1-9](_?\d)*)(\.\d(_?\d)*)?([eE][+-]?\d+)?$/.test(tok)) return Number(tok.replace(/_/g, ''));
  if (tok === '') c.fail('expected a value');
  return c.fail(`invalid value "${tok}" (strings need quotes)`);
}

function setPath(c: Cursor, root: TomlTable, keys: string[], v: TomlValue, lines: TomlLines, prefix: string): void {
  let t = root;
  for (const k of keys.slice(0, -1)) {
    const cur = t[k];
    if (cur === undefined) t = t[k] = {};
    else if (typeof cur === 'object' && !Array.isArray(cur)) t = cur;
    else c.fail(`key "${k}" is not a table`);
  }
  const last = keys[keys.length - 1]!;
  if (last in t) c.fail(`duplicate key "${[...keys].join('.')}"`, 'duplicate');
  t[last] = v;
  lines.set(prefix + keys.join('.'), c.line);
}

export function parseToml(text: string): { value: TomlTable; lines: TomlLines } {
  const c = new Cursor(text);
  const root: TomlTable = {};
  const lines: TomlLines = new Map();
  let table = root;
  let prefix = '';
  const declared = new Set<string>();
  while (!c.eof()) {
    c.skipAll();
    if (c.eof()) break;
    if (c.peek() === '[') {
      c.next();
      if (c.peek() === '[') c.fail('arrays of tables are not supported', 'unsupported');
      const keys = parseKey(c);
      if (!c.eat(']')) c.fail('expected "]" after table name');
      const name = keys.join('.');
      if (declared.has(name)) c.fail(`table [${name}] defined twice`, 'duplicate');
      declared.add(name);
      lines.set(name, c.line);
      table = root;
      for (const k of keys) {
        const cur = table[k];
        if (cur === undefined) table = table[k] = {};
        else if (typeof cur === 'object' && !Array.isArray(cur)) table = cur;
        else c.fail(`"${k}" is not a table`);
      }
      prefix = name + '.';
      c.endOfLine();
      continue;
    }
    const keys = parseKey(c);
    c.skipWs();
    if (!c.eat('=')) c.fail(`expected "=" after key "${keys.join('.')}"`);
    const line = c.line;
    const v = parseValue(c);
    setPath(c, table, keys, v, lines, prefix);
    lines.set(prefix + keys.join('.'), line);
    c.endOfLine();
  }
  return { value: root, lines };
}
