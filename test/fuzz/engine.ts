/**
 * The fuzzing engine shared by every target (test/fuzz/targets): a seeded
 * PRNG, a structure-aware byte mutator (bit flips, interesting values written
 * over length fields, arithmetic on 8/16/32-bit fields both endians,
 * truncation, range deletion/duplication/insertion, splices of two corpus
 * entries, dictionary tokens), the outcome classifier (what is a failure for
 * a target) and the kept corpus on disk.
 *
 * Guidance is by outcome, not by V8 coverage: an input is kept when it
 * produces an outcome signature not seen before (a new error class/kind and
 * normalised message, or a new shape of success a target reports, e.g. how
 * many chains a ring gave in log2 buckets). That is cheap enough for 10^6
 * cases per target on this machine; V8 block coverage per case would cost
 * roughly 10x. coverage.ts measures what the kept corpus reaches instead.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

// ───────────────────────────── PRNG ─────────────────────────────

/** xorshift128+: fast, seedable, reproducible across runs. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number) {
    // splitmix32 to fill the state
    let s = seed >>> 0;
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next(); this.b = next(); this.c = next(); this.d = next() | 1;
  }
  /** uint32 (xoshiro128**). */
  u32(): number {
    const r = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a; this.d ^= this.b; this.b ^= this.c; this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return r;
  }
  /** Integer in [0, n). */
  below(n: number): number {
    return n <= 1 ? 0 : this.u32() % n;
  }
  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }
  pick<T>(xs: ReadonlyArray<T>): T {
    return xs[this.below(xs.length)]!;
  }
}
function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

// ─────────────────────────── mutation ───────────────────────────

const INTERESTING_8 = [0, 1, 0x7f, 0x80, 0xff, 0x10, 0x20, 0x40, 0xfe, 2, 3, 4, 8];
const INTERESTING_16 = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x3fff, 0x4000, 0x7fff, 0x8000, 0x8001, 0xfffe, 0xffff, 16, 44, 4096];
const INTERESTING_32 = [
  0, 1, 0x7f, 0x80, 0xff, 0x100, 0x1000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff,
  0x400000, 0x100000, 0x8000, 16, 40, 44, 4096, 65536, 4 << 20,
];

export interface MutatorOptions {
  /** Largest input the target accepts from the mutator. */
  maxLen: number;
  /** Target tokens (magic numbers, keywords) inserted or written over. */
  dictionary?: ReadonlyArray<Uint8Array>;
}

/**
 * One havoc round: 1–8 stacked mutations of `input` (never changed in
 * place). `other` is another corpus entry for splices.
 */
export function mutate(rng: Rng, input: Uint8Array, other: Uint8Array | undefined, o: MutatorOptions): Buffer {
  let b: Buffer = Buffer.from(input);
  const rounds = 1 + rng.below(rng.chance(0.5) ? 2 : 8);
  for (let r = 0; r < rounds; r++) b = mutateOnce(rng, b, other, o);
  if (b.length > o.maxLen) b = b.subarray(0, o.maxLen);
  return b;
}

function mutateOnce(rng: Rng, b: Buffer, other: Uint8Array | undefined, o: MutatorOptions): Buffer {
  const n = b.length;
  const dict = o.dictionary ?? [];
  const op = rng.below(16);
  if (n === 0 && op < 12) return Buffer.from([rng.below(256)]);
  switch (op) {
    case 0: { // flip 1-4 bits
      const k = 1 + rng.below(4);
      for (let i = 0; i < k; i++) { const p = rng.below(n); b[p] ^= 1 << rng.below(8); }
      return b;
    }
    case 1: b[rng.below(n)] = rng.below(256); return b;
    case 2: b[rng.below(n)] = rng.pick(INTERESTING_8); return b;
    case 3: case 4: { // interesting 16/32-bit value over a (length) field
      const wide = op === 4 && n >= 4;
      const w = wide ? 4 : 2;
      if (n < w) return b;
      const p = rng.below(n - w + 1);
      let v = wide ? rng.pick(INTERESTING_32) : rng.pick(INTERESTING_16);
      // Sometimes the input's own length, or near it: the classic length lie.
      if (rng.chance(0.25)) v = (n - p + rng.below(5) - 2) >>> 0;
      const be = rng.chance(0.3);
      if (wide) { if (be) b.writeUInt32BE(v >>> 0, p); else b.writeUInt32LE(v >>> 0, p); }
      else { if (be) b.writeUInt16BE(v & 0xffff, p); else b.writeUInt16LE(v & 0xffff, p); }
      return b;
    }
    case 5: { // arithmetic on an 8/16/32-bit field
      const w = rng.pick([1, 2, 4]);
      if (n < w) return b;
      const p = rng.below(n - w + 1);
      const d = (1 + rng.below(35)) * (rng.chance(0.5) ? 1 : -1);
      const be = rng.chance(0.3);
      if (w === 1) b[p] = (b[p]! + d) & 0xff;
      else if (w === 2) { const v = be ? b.readUInt16BE(p) : b.readUInt16LE(p); if (be) b.writeUInt16BE((v + d) & 0xffff, p); else b.writeUInt16LE((v + d) & 0xffff, p); }
      else { const v = be ? b.readUInt32BE(p) : b.readUInt32LE(p); if (be) b.writeUInt32BE((v + d) >>> 0, p); else b.writeUInt32LE((v + d) >>> 0, p); }
      return b;
    }
    case 6: // truncate
      return b.subarray(0, rng.below(n + 1));
    case 7: { // delete a range
      const p = rng.below(n);
      const len = 1 + rng.below(Math.min(n - p, rng.chance(0.8) ? 16 : n));
      return Buffer.concat([b.subarray(0, p), b.subarray(p + len)]);
    }
    case 8: { // duplicate a range
      const p = rng.below(n);
      const len = 1 + rng.below(Math.min(n - p, 64));
      if (n + len > o.maxLen) return b;
      const at = rng.below(n + 1);
      return Buffer.concat([b.subarray(0, at), b.subarray(p, p + len), b.subarray(at)]);
    }
    case 9: { // insert random or repeated bytes
      const len = 1 + rng.below(rng.chance(0.8) ? 8 : 128);
      if (n + len > o.maxLen) return b;
      const at = rng.below(n + 1);
      const ins = Buffer.alloc(len, rng.chance(0.5) ? rng.below(256) : 0);
      if (rng.chance(0.5)) for (let i = 0; i < len; i++) ins[i] = rng.below(256);
      return Buffer.concat([b.subarray(0, at), ins, b.subarray(at)]);
    }
    case 10: { // copy a range over another place
      const p = rng.below(n), q = rng.below(n);
      const len = 1 + rng.below(Math.min(n - Math.max(p, q), 32));
      b.copy(b, q, p, p + len);
      return b;
    }
    case 11: { // random bytes over a short range
      const p = rng.below(n);
      const len = 1 + rng.below(Math.min(n - p, 8));
      for (let i = 0; i < len; i++) b[p + i] = rng.below(256);
      return b;
    }
    case 12: case 13: { // dictionary token: overwrite or insert
      if (dict.length === 0) return mutateOnce(rng, b, other, o);
      const t = rng.pick(dict);
      if (op === 12 && n >= t.length) {
        Buffer.from(t).copy(b, rng.below(n - t.length + 1));
        return b;
      }
      if (n + t.length > o.maxLen) return b;
      const at = rng.below(n + 1);
      return Buffer.concat([b.subarray(0, at), Buffer.from(t), b.subarray(at)]);
    }
    default: { // splice with another corpus entry
      if (!other || other.length === 0) return mutateOnce(rng, b, undefined, o);
      const cut = rng.below(n + 1);
      const from = rng.below(other.length);
      const out = Buffer.concat([b.subarray(0, cut), Buffer.from(other.subarray(from))]);
      return out.length > o.maxLen ? out.subarray(0, o.maxLen) : out;
    }
  }
}

// ─────────────────────────── targets ───────────────────────────

/**
 * A fuzz target: one parser of untrusted bytes and its oracle.
 *
 * run(input) feeds the bytes through the parser (and whatever state machine
 * consumes them) and checks the target's invariants. It returns an outcome
 * label (what kind of success) or throws. A thrown error is either the
 * module's own documented refusal — `expected(err)` says so — or a failure.
 * A failure is also: a WebAssembly trap, any other exception, an invariant
 * violation (FuzzInvariantError), a case slower than the time budget, a
 * worker killed by its memory limit or a hung case (runner.ts).
 */
export interface Target {
  name: string;
  /** What is fed in and what the oracle checks, one line for the report. */
  describe: string;
  /** Valid inputs made by our own encoders/drivers (deterministic). */
  seeds(): Buffer[];
  dictionary?: Uint8Array[];
  maxLen: number;
  /** Per-target structure-aware mutation; falls back to mutate(). */
  mutate?(rng: Rng, input: Buffer, other: Buffer | undefined): Buffer;
  run(input: Buffer): string | void | Promise<string | void>;
  /** True when err is the module's own documented refusal of bad input. */
  expected(err: unknown): boolean;
  /** Release resources (temp files) at the end of a run. */
  close?(): void;
}

/** An oracle found the parser's result wrong or its effects out of bounds. */
export class FuzzInvariantError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FuzzInvariantError';
  }
}

export function invariant(cond: unknown, message: string | (() => string)): asserts cond {
  if (!cond) throw new FuzzInvariantError(typeof message === 'string' ? message : message());
}

export type Verdict =
  | { ok: true; signature: string }
  | { ok: false; kind: FailureKind; signature: string; message: string; stack?: string };
export type FailureKind = 'exception' | 'wasm-trap' | 'invariant' | 'slow' | 'hang' | 'oom' | 'crash';

/** Normalised message: numbers and quoted text folded so signatures stay few. */
export function normalise(msg: string): string {
  // Quoted and bracketed parts (names, characters, paths from the input)
  // and numbers go; the words of the message stay.
  return msg.replace(/"[^"\n]*"|'[^'\n]*'|\[[^\]\n]*\]|`[^`\n]*`/g, 'S').replace(/0x[0-9a-f]+/gi, 'N').replace(/\d+/g, 'N')
    .replace(/[^A-Za-z_ N:.-]/g, '').split(/\s+/).filter((w) => w.length > 0)
    .map((w) => (w === 'N' || w === 'S' || (/^[A-Za-z]+[:.]?$/.test(w) && !/^[SN][^a-z]|[a-z][SN]|S[a-z]|^[A-F]{4,}$/.test(w)) ? w : 'S')).slice(0, 10).join(' ');
}

/** Classifies an exception thrown by target.run. */
export function classify(target: Target, err: unknown): Verdict {
  const e = err as Error;
  const name = e?.constructor?.name ?? typeof err;
  const kind = (e as { kind?: unknown })?.kind;
  const msg = e instanceof Error ? e.message : String(err);
  if (err instanceof WebAssembly.RuntimeError) {
    return { ok: false, kind: 'wasm-trap', signature: `trap:${normalise(msg)}`, message: msg, stack: e.stack };
  }
  if (err instanceof FuzzInvariantError) {
    return { ok: false, kind: 'invariant', signature: `invariant:${normalise(msg)}`, message: msg, stack: e.stack };
  }
  if (target.expected(err)) {
    return { ok: true, signature: `reject:${name}:${String(kind ?? '')}:${normalise(msg)}` };
  }
  return { ok: false, kind: 'exception', signature: `exception:${name}:${normalise(msg)}`, message: `${name}: ${msg}`, stack: e?.stack };
}

/** log2 bucket, for success labels. */
export function bucket(n: number): number {
  return n <= 0 ? 0 : 1 + Math.floor(Math.log2(n));
}

// ─────────────────────────── corpus ───────────────────────────

/** Where the kept corpus lives: <repo>/test/fuzz/corpus (source tree, not dist). */
export function corpusRoot(): string {
  let d = __dirname;
  while (!fs.existsSync(path.join(d, 'package.json')) && path.dirname(d) !== d) d = path.dirname(d);
  return path.join(d, 'test', 'fuzz', 'corpus');
}

export const CORPUS_MAX_FILES = 200;
export const CORPUS_MAX_BYTES = 2 << 20;

export function corpusDir(target: string): string {
  return path.join(corpusRoot(), target);
}

export function readCorpus(target: string): Array<{ name: string; data: Buffer }> {
  const dir = corpusDir(target);
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).sort().filter((f) => !f.startsWith('.') && f !== 'README').map((f) => ({ name: f, data: fs.readFileSync(path.join(dir, f)) }));
}

export function corpusName(data: Uint8Array, label: string): string {
  const h = crypto.createHash('sha1').update(data).digest('hex').slice(0, 16);
  return `${label}-${h}`;
}

/**
 * Writes kept inputs, within the caps (≤ CORPUS_MAX_FILES files and
 * ≤ CORPUS_MAX_BYTES per target): failures first, then the smallest inputs
 * for each new signature.
 */
export function writeCorpus(target: string, entries: Array<{ data: Buffer; label: string }>): number {
  const dir = corpusDir(target);
  fs.mkdirSync(dir, { recursive: true });
  const existing = readCorpus(target);
  let files = existing.length;
  let bytes = existing.reduce((s, e) => s + e.data.length, 0);
  const have = new Set(existing.map((e) => e.name.replace(/^[^-]+-/, '')));
  let written = 0;
  for (const e of entries) {
    const name = corpusName(e.data, e.label);
    const hash = name.replace(/^[^-]+-/, '');
    if (have.has(hash)) continue;
    if (files + 1 > CORPUS_MAX_FILES || bytes + e.data.length > CORPUS_MAX_BYTES) break;
    fs.writeFileSync(path.join(dir, name), e.data);
    have.add(hash);
    files++;
    bytes += e.data.length;
    written++;
  }
  return written;
}
