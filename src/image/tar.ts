/**
 * A strict, in-memory tar reader for OCI layers and image archives.
 *
 * Understands ustar/POSIX headers, GNU base-256 numbers and long names
 * ('L'/'K'), and PAX extended headers ('x' per entry, 'g' global) including
 * SCHILY.xattr.* xattrs — what `docker save`, skopeo, umoci and Go's
 * archive/tar write. Every header is checksummed and every size is checked
 * against what is left of the buffer, so a truncated or hostile archive is
 * one TarError, never a crash or an out-of-range read. Entry data are
 * subarrays of the input (no copies).
 */
import { KataError } from '../common/errors';

export type TarErrorKind = 'truncated' | 'checksum' | 'number' | 'pax' | 'type';
export class TarError extends KataError<TarErrorKind> {}

export type TarType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarEntry {
  path: string;
  type: TarType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  mtimeNsec: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  xattrs: Map<string, Buffer>;
  data: Buffer;
}

const BLOCK = 512;

function parseNumber(h: Buffer, off: number, len: number, what: string, at: number): number {
  const f = h.subarray(off, off + len);
  if (f[0] & 0x80) {
    // GNU base-256: big-endian two's complement with the top bit as marker.
    if (f[0] & 0x40) throw new TarError('number', `tar header at ${at}: negative ${what}`);
    let v = BigInt(f[0] & 0x3f);
    for (let i = 1; i < len; i++) v = (v << 8n) | BigInt(f[i]);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new TarError('number', `tar header at ${at}: ${what} too large`);
    return Number(v);
  }
  const s = f.toString('latin1').replace(/\0.*$/s, '').trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new TarError('number', `tar header at ${at}: ${what} "${s}" is not octal`);
  const v = Number.parseInt(s, 8);
  if (!Number.isSafeInteger(v)) throw new TarError('number', `tar header at ${at}: ${what} too large`);
  return v;
}

function cstr(h: Buffer, off: number, len: number): string {
  const f = h.subarray(off, off + len);
  const z = f.indexOf(0);
  return f.subarray(0, z < 0 ? len : z).toString('utf8');
}

function checksumOk(h: Buffer, at: number): boolean {
  const want = parseNumber(h, 148, 8, 'checksum', at);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i];
  return sum === want;
}

function parsePax(data: Buffer, at: number): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let o = 0;
  while (o < data.length) {
    const sp = data.indexOf(0x20, o);
    if (sp < 0 || sp - o > 20) throw new TarError('pax', `PAX header at ${at}: record at ${o} has no length`);
    const lenStr = data.toString('latin1', o, sp);
    if (!/^[0-9]+$/.test(lenStr)) throw new TarError('pax', `PAX header at ${at}: bad record length "${lenStr}"`);
    const len = Number(lenStr);
    const end = o + len;
    if (len <= sp - o + 1 || end > data.length || data[end - 1] !== 0x0a) throw new TarError('pax', `PAX header at ${at}: record at ${o} overruns its header or lacks a newline`);
    const rec = data.subarray(sp + 1, end - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw new TarError('pax', `PAX header at ${at}: record without key=value`);
    out.set(rec.toString('utf8', 0, eq), rec.subarray(eq + 1));
    o = end;
  }
  return out;
}

function paxNumber(v: Buffer, key: string, at: number): number {
  const s = v.toString('latin1');
  if (!/^[0-9]+$/.test(s) || !Number.isSafeInteger(Number(s))) throw new TarError('pax', `PAX header at ${at}: ${key}="${s}" is not a non-negative integer`);
  return Number(s);
}

function paxTime(v: Buffer, at: number): [number, number] {
  const s = v.toString('latin1');
  const m = /^(-?[0-9]+)(?:\.([0-9]+))?$/.exec(s);
  if (!m) throw new TarError('pax', `PAX header at ${at}: mtime="${s}" is not a decimal time`);
  const sec = Number(m[1]);
  if (!Number.isSafeInteger(sec)) throw new TarError('pax', `PAX header at ${at}: mtime out of range`);
  const ns = m[2] ? Number((m[2] + '000000000').slice(0, 9)) : 0;
  return [sec, ns];
}

const TYPES: Record<string, TarType> = { '0': 'file', '\0': 'file', '7': 'file', '1': 'hardlink', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', '6': 'fifo' };

/** Parses a whole (uncompressed) tar archive. */
export function parseTar(buf: Buffer, what = 'tar'): TarEntry[] {
  const entries: TarEntry[] = [];
  let global = new Map<string, Buffer>();
  let pax: Map<string, Buffer> | null = null;
  let longName: string | null = null;
  let longLink: string | null = null;
  let o = 0;
  for (;;) {
    if (o + BLOCK > buf.length) {
      // Archives end with two zero blocks; some writers stop after one or none.
      if (o === buf.length && pax === null && longName === null && longLink === null) return entries;
      throw new TarError('truncated', `${what}: truncated at byte ${o} (no complete header)`);
    }
    const h = buf.subarray(o, o + BLOCK);
    if (h.every((b) => b === 0)) {
      if (pax !== null || longName !== null || longLink !== null) throw new TarError('truncated', `${what}: archive ends after an extended header at ${o}`);
      return entries;
    }
    if (!checksumOk(h, o)) throw new TarError('checksum', `${what}: bad header checksum at byte ${o}`);
    const typeflag = String.fromCharCode(h[156]);
    const size = parseNumber(h, 124, 12, 'size', o);
    const dataStart = o + BLOCK;
    const padded = Math.ceil(size / BLOCK) * BLOCK;
    if (dataStart + padded > buf.length) throw new TarError('truncated', `${what}: truncated: entry at ${o} declares ${size} bytes (padded ${padded}), only ${buf.length - dataStart} left`);
    const data = buf.subarray(dataStart, dataStart + size);
    const next = dataStart + padded;
    if (typeflag === 'x' || typeflag === 'g') {
      const recs = parsePax(data, o);
      if (typeflag === 'g') global = new Map([...global, ...recs]);
      else pax = recs;
      o = next;
      continue;
    }
    if (typeflag === 'L' || typeflag === 'K') {
      const s = cstr(data, 0, data.length);
      if (typeflag === 'L') longName = s; else longLink = s;
      o = next;
      continue;
    }
    const type = TYPES[typeflag];
    if (!type) throw new TarError('type', `${what}: entry at ${o} has unsupported type '${typeflag.replace(/[^ -~]/g, '?')}'`);
    const ext = new Map([...global, ...(pax ?? [])]);
    const magic = h.toString('latin1', 257, 263);
    let name = cstr(h, 0, 100);
    if (magic.startsWith('ustar')) {
      const prefix = cstr(h, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    if (longName !== null) name = longName;
    let linkname = longLink ?? cstr(h, 157, 100);
    const e: TarEntry = {
      path: name, type,
      mode: parseNumber(h, 100, 8, 'mode', o) & 0o7777,
      uid: parseNumber(h, 108, 8, 'uid', o),
      gid: parseNumber(h, 116, 8, 'gid', o),
      size,
      mtime: parseNumber(h, 136, 12, 'mtime', o),
      mtimeNsec: 0,
      linkname,
      devmajor: type === 'char' || type === 'block' ? parseNumber(h, 329, 8, 'devmajor', o) : 0,
      devminor: type === 'char' || type === 'block' ? parseNumber(h, 337, 8, 'devminor', o) : 0,
      xattrs: new Map(),
      data,
    };
    for (const [k, v] of ext) {
      if (k === 'path') e.path = v.toString('utf8');
      else if (k === 'linkpath') e.linkname = linkname = v.toString('utf8');
      else if (k === 'uid') e.uid = paxNumber(v, k, o);
      else if (k === 'gid') e.gid = paxNumber(v, k, o);
      else if (k === 'mtime') [e.mtime, e.mtimeNsec] = paxTime(v, o);
      else if (k === 'size') {
        const s = paxNumber(v, k, o);
        if (dataStart + Math.ceil(s / BLOCK) * BLOCK > buf.length) throw new TarError('truncated', `${what}: entry at ${o} declares ${s} bytes (PAX), only ${buf.length - dataStart} left`);
        e.size = s;
        e.data = buf.subarray(dataStart, dataStart + s);
      } else if (k.startsWith('SCHILY.xattr.')) e.xattrs.set(k.slice('SCHILY.xattr.'.length), Buffer.from(v));
    }
    if (e.size !== size) o = dataStart + Math.ceil(e.size / BLOCK) * BLOCK;
    else o = next;
    if (type !== 'file') { e.data = buf.subarray(0, 0); e.size = 0; }
    entries.push(e);
    pax = null; longName = null; longLink = null;
  }
}
