/**
 * A strict tar reader for OCI layers and image archives: incremental
 * (TarReader, fed slices of a layer as they are read, so a layer is never
 * held whole) and whole-buffer (parseTar, over TarReader).
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

/** Largest PAX / GNU long-name header accepted (they are held whole). */
export const MAX_EXTENDED_HEADER = 1 << 20;

/**
 * Where a TarReader delivers an archive: entry() for every header, in
 * order; then, for a regular file, its `size` bytes through data() in
 * order, in pieces (subarrays of the pushed slices, valid only during the
 * call). A file's entry carries an empty `data`.
 */
export interface TarSink {
  entry(e: TarEntry): void;
  data(piece: Buffer): void;
}

const padded = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;

/**
 * The incremental tar reader: push() slices of any size in order, then
 * end(). Holds at most one header or one extended header; file data
 * streams through to the sink. Truncation is found at end() (a stream
 * does not know its length), with the messages parseTar gives.
 */
export class TarReader {
  /** Archive offset of the first byte of the current push. */
  private base = 0;
  private state: 'header' | 'ext' | 'data' | 'skip' | 'end' = 'header';
  private readonly hdr = Buffer.alloc(BLOCK);
  private hdrFill = 0;
  /** Offset of the header being read / of the current entry's header. */
  private at = 0;
  /** Current entry: declared size, and bytes of its (padded) region still to come. */
  private size = 0;
  private regionLeft = 0;
  /** File data bytes still to deliver (the rest of regionLeft is padding). */
  private dataLeft = 0;
  private ext: Buffer | null = null;
  private extFill = 0;
  private extType = '';
  private global = new Map<string, Buffer>();
  private pax: Map<string, Buffer> | null = null;
  private longName: string | null = null;
  private longLink: string | null = null;

  constructor(private readonly what: string, private readonly sink: TarSink) {}

  push(buf: Buffer): void {
    let i = 0;
    while (i < buf.length && this.state !== 'end') {
      const rem = buf.length - i;
      if (this.state === 'header') {
        if (this.hdrFill === 0 && rem >= BLOCK) {
          this.at = this.base + i;
          i += BLOCK;
          this.header(buf.subarray(i - BLOCK, i));
        } else {
          if (this.hdrFill === 0) this.at = this.base + i;
          const n = Math.min(BLOCK - this.hdrFill, rem);
          buf.copy(this.hdr, this.hdrFill, i, i + n);
          this.hdrFill += n;
          i += n;
          if (this.hdrFill === BLOCK) { this.hdrFill = 0; this.header(this.hdr); }
        }
      } else if (this.state === 'ext') {
        const n = Math.min(this.ext!.length - this.extFill, rem);
        buf.copy(this.ext!, this.extFill, i, i + n);
        this.extFill += n;
        this.regionLeft -= n;
        i += n;
        if (this.extFill === this.ext!.length) this.extended();
      } else if (this.state === 'data') {
        const n = Math.min(this.dataLeft, rem);
        const piece = buf.subarray(i, i + n);
        this.dataLeft -= n;
        this.regionLeft -= n;
        i += n;
        if (this.dataLeft === 0) this.state = this.regionLeft > 0 ? 'skip' : 'header';
        this.sink.data(piece);
      } else {
        const n = Math.min(this.regionLeft, rem);
        this.regionLeft -= n;
        i += n;
        if (this.regionLeft === 0) this.state = 'header';
      }
    }
    this.base += buf.length;
  }

  /** The archive ends here: anything cut short is a TarError. */
  end(): void {
    if (this.state === 'end') return;
    if (this.state === 'header') {
      // Archives end with two zero blocks; some writers stop after one or none.
      if (this.hdrFill === 0 && this.pax === null && this.longName === null && this.longLink === null) return;
      throw new TarError('truncated', `${this.what}: truncated at byte ${this.hdrFill > 0 ? this.at : this.base} (no complete header)`);
    }
    const dataStart = this.at + BLOCK;
    throw new TarError('truncated', `${this.what}: truncated: entry at ${this.at} declares ${this.size} bytes (padded ${padded(this.size)}), only ${this.base - dataStart} left`);
  }

  private header(h: Buffer): void {
    const o = this.at;
    const what = this.what;
    if (h.every((b) => b === 0)) {
      if (this.pax !== null || this.longName !== null || this.longLink !== null) throw new TarError('truncated', `${what}: archive ends after an extended header at ${o}`);
      this.state = 'end';
      return;
    }
    if (!checksumOk(h, o)) throw new TarError('checksum', `${what}: bad header checksum at byte ${o}`);
    const typeflag = String.fromCharCode(h[156]);
    const size = parseNumber(h, 124, 12, 'size', o);
    this.size = size;
    if (typeflag === 'x' || typeflag === 'g' || typeflag === 'L' || typeflag === 'K') {
      if (size > MAX_EXTENDED_HEADER) throw new TarError('pax', `${what}: extended header at ${o} declares ${size} bytes (at most ${MAX_EXTENDED_HEADER})`);
      this.extType = typeflag;
      this.ext = Buffer.alloc(size);
      this.extFill = 0;
      this.regionLeft = padded(size);
      if (size === 0) this.extended(); else this.state = 'ext';
      return;
    }
    const type = TYPES[typeflag];
    if (!type) throw new TarError('type', `${what}: entry at ${o} has unsupported type '${typeflag.replace(/[^ -~]/g, '?')}'`);
    const ext = new Map([...this.global, ...(this.pax ?? [])]);
    const magic = h.toString('latin1', 257, 263);
    let name = cstr(h, 0, 100);
    if (magic.startsWith('ustar')) {
      const prefix = cstr(h, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    if (this.longName !== null) name = this.longName;
    const e: TarEntry = {
      path: name, type,
      mode: parseNumber(h, 100, 8, 'mode', o) & 0o7777,
      uid: parseNumber(h, 108, 8, 'uid', o),
      gid: parseNumber(h, 116, 8, 'gid', o),
      size,
      mtime: parseNumber(h, 136, 12, 'mtime', o),
      mtimeNsec: 0,
      linkname: this.longLink ?? cstr(h, 157, 100),
      devmajor: type === 'char' || type === 'block' ? parseNumber(h, 329, 8, 'devmajor', o) : 0,
      devminor: type === 'char' || type === 'block' ? parseNumber(h, 337, 8, 'devminor', o) : 0,
      xattrs: new Map(),
      data: EMPTY,
    };
    for (const [k, v] of ext) {
      if (k === 'path') e.path = v.toString('utf8');
      else if (k === 'linkpath') e.linkname = v.toString('utf8');
      else if (k === 'uid') e.uid = paxNumber(v, k, o);
      else if (k === 'gid') e.gid = paxNumber(v, k, o);
      else if (k === 'mtime') [e.mtime, e.mtimeNsec] = paxTime(v, o);
      else if (k === 'size') e.size = this.size = paxNumber(v, k, o);
      else if (k.startsWith('SCHILY.xattr.')) e.xattrs.set(k.slice('SCHILY.xattr.'.length), Buffer.from(v));
    }
    this.pax = null; this.longName = null; this.longLink = null;
    // The entry's region is its (PAX) size, padded; only a file's bytes are data.
    this.regionLeft = padded(e.size);
    this.dataLeft = type === 'file' ? e.size : 0;
    if (type !== 'file') e.size = 0;
    this.state = this.dataLeft > 0 ? 'data' : this.regionLeft > 0 ? 'skip' : 'header';
    this.sink.entry(e);
  }

  /** A complete PAX or GNU long-name header. */
  private extended(): void {
    const data = this.ext!;
    this.ext = null;
    if (this.extType === 'x' || this.extType === 'g') {
      const recs = parsePax(data, this.at);
      if (this.extType === 'g') this.global = new Map([...this.global, ...recs]);
      else this.pax = recs;
    } else {
      const s = cstr(data, 0, data.length);
      if (this.extType === 'L') this.longName = s; else this.longLink = s;
    }
    this.state = this.regionLeft > 0 ? 'skip' : 'header';
  }
}

const EMPTY = Buffer.alloc(0);

/**
 * Parses a whole (uncompressed) tar archive held in memory; entry data are
 * subarrays of `buf`.
 */
export function parseTar(buf: Buffer, what = 'tar'): TarEntry[] {
  const entries: TarEntry[] = [];
  const r = new TarReader(what, {
    entry: (e) => { e.data = buf.subarray(0, 0); entries.push(e); },
    // One push: a file's data arrives as one piece.
    data: (piece) => { entries[entries.length - 1].data = piece; },
  });
  r.push(buf);
  r.end();
  return entries;
}
