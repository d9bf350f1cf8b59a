/**
 * TOML for kata-ts configuration files: smol-toml (TOML 1.0, npm) parses and
 * writes; this module adds what our readers need on top — the line of every
 * key and table (for "file:line" in configuration errors) and errors that
 * always carry a line.
 *
 * Why smol-toml rather than our own reader (which this file held before):
 * it is complete TOML 1.0 (multi-line strings, arrays of tables, dates) and
 * measured faster on Kata's configuration-qemu.toml — 240–290 µs against
 * 620–800 µs for the 29 KB shipped file with its comments, 83–89 µs against
 * 227–236 µs for the 2.4 KB test fixture (Node 20, 2000 parses after warm-up),
 * with the same values. Line finding is one more pass over text smol-toml has
 * already accepted (keyLines).
 */
import { parse, stringify, TomlError as SmolTomlError, TomlDate } from 'smol-toml';
import { KataError } from './errors';

/**
 * A file that is not TOML we read: `syntax` (malformed text, bad escapes),
 * `duplicate` (a key or table defined twice), `unsupported` (valid TOML
 * kata-ts has no use for: dates). The message starts with `line N:`; readers
 * that know the file name prefix it (runtime/config: `<file>:<line>: …`).
 */
export class TomlError extends KataError<'syntax' | 'duplicate' | 'unsupported'> {
  constructor(readonly line: number, message: string, kind: 'syntax' | 'duplicate' | 'unsupported' = 'syntax', options?: { cause?: unknown }) {
    super(kind, `line ${line}: ${message}`, options);
  }
}

export type TomlValue = string | number | boolean | TomlValue[] | TomlTable;
export interface TomlTable { [k: string]: TomlValue }

/** Where each key was defined, "a.b.c" -> line, for error messages. */
export type TomlLines = Map<string, number>;

/** Parses TOML text; every error is a TomlError with the line it was found on. */
export function parseToml(text: string): { value: TomlTable; lines: TomlLines } {
  let value: TomlTable;
  try {
    value = parse(text) as TomlTable;
  } catch (err) {
    if (err instanceof SmolTomlError) {
      const msg = (err.message.split('\n')[0] ?? '').replace(/^Invalid TOML document: /, '');
      const kind = /redefine|already defined|duplicate/i.test(msg) ? 'duplicate' : 'syntax';
      throw new TomlError(err.line || 1, msg, kind, { cause: err });
    }
    // Not expected from smol-toml; keep the contract (a line, a TomlError).
    throw new TomlError(1, (err as Error).message, 'syntax', { cause: err });
  }
  const lines = keyLines(text);
  rejectDates(value, '', lines);
  return { value, lines };
}

/** TOML text of a table, written by smol-toml. */
export function stringifyToml(table: TomlTable): string {
  return stringify(table);
}

function rejectDates(v: unknown, at: string, lines: TomlLines): void {
  if (v instanceof TomlDate) throw new TomlError(lines.get(at) ?? 1, `${at}: dates and times are not used by kata-ts`, 'unsupported');
  if (Array.isArray(v)) for (const x of v) rejectDates(x, at, lines);
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) rejectDates(x, at ? `${at}.${k}` : k, lines);
}

/**
 * The line of every table header and key of an accepted TOML document
 * ("table.key" → line; also each dotted prefix not defined elsewhere). Keys
 * inside inline tables are not listed (their table's key is).
 */
export function keyLines(s: string): TomlLines {
  const lines: TomlLines = new Map();
  let i = 0;
  let line = 1;
  let table: string[] = [];
  const set = (full: string[], at: number) => {
    for (let n = 1; n < full.length; n++) {
      const p = full.slice(0, n).join('.');
      if (!lines.has(p)) lines.set(p, at);
    }
    lines.set(full.join('.'), at);
  };
  const ws = () => { while (s[i] === ' ' || s[i] === '\t') i++; };
  const toEol = () => { while (i < s.length && s[i] !== '\n') i++; };
  /** Skips a string starting at s[i] (any of the four kinds), counting newlines; returns its raw body. */
  const str = (): string => {
    const q = s[i]!;
    const multi = s[i + 1] === q && s[i + 2] === q;
    const open = multi ? 3 : 1;
    const start = i + open;
    i = start;
    while (i < s.length) {
      if (s[i] === '\\' && q === '"') { i += 2; continue; }
      if (s[i] === '\n') line++;
      if (s[i] === q && (!multi || (s[i + 1] === q && s[i + 2] === q))) {
        // A multi-line string may end with up to two more quotes ("""a""""").
        let end = i;
        if (multi) { while (s[end + 3] === q) end++; }
        const body = s.slice(start, end);
        i = end + open;
        return body;
      }
      i++;
    }
    return s.slice(start);
  };
  const keyPath = (): string[] => {
    const parts: string[] = [];
    for (;;) {
      ws();
      if (s[i] === '"' || s[i] === "'") {
        const q = s[i];
        const raw = str();
        let k = raw;
        if (q === '"') { try { k = JSON.parse(`"${raw}"`) as string; } catch { /* an escape JSON lacks (\U…): raw text */ } }
        parts.push(k);
      } else {
        const m = /^[A-Za-z0-9_-]+/.exec(s.slice(i, i + 256));
        parts.push(m ? m[0] : '');
        i += m ? m[0].length : 0;
      }
      ws();
      if (s[i] !== '.') return parts;
      i++;
    }
  };
  const value = () => {
    let depth = 0;
    while (i < s.length) {
      const c = s[i]!;
      if (c === '"' || c === "'") { str(); continue; }
      if (c === '#') { toEol(); continue; }
      if (c === '[' || c === '{') depth++;
      else if (c === ']' || c === '}') depth--;
      else if (c === '\n') {
        line++;
        i++;
        if (depth <= 0) return;
        continue;
      }
      i++;
    }
  };
  while (i < s.length) {
    ws();
    const c = s[i];
    if (c === '\n') { line++; i++; continue; }
    if (c === '\r') { i++; continue; }
    if (c === '#') { toEol(); continue; }
    if (c === '[') {
      const arr = s[i + 1] === '[';
      i += arr ? 2 : 1;
      const p = keyPath();
      table = p;
      set(p, line);
      i += arr ? 2 : 1;
      toEol();
      continue;
    }
    const at = line;
    const p = keyPath();
    set([...table, ...p], at);
    ws();
    if (s[i] === '=') i++;
    value();
  }
  return lines;
}
