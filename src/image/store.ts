/**
 * The converted-image store on the host: paths, the image record, atomic
 * registration, the cross-image chunk index, and the store lock.
 *
 *   <root>/blobs/sha256/<hex>            data blob (concatenated stored chunks)
 *   <root>/blobs/sha256/<hex>.partial    lazily fetched blob (sparse) ─┐ I2's
 *   <root>/blobs/sha256/<hex>.present    its present-ranges log        ─┘ lazy source
 *   <root>/images/<hex>/meta.erofs       EROFS metadata (chunk-based files → device 1)
 *   <root>/images/<hex>/chunks.bin       device-1 slot → blob table (chunk-table.ts)
 *   <root>/images/<hex>/image.json       ImageRecord
 *   <root>/images/.tmp-*                 an image being written (never listed)
 *   <root>/index/chunks.idx              chunk sha256 → stored location (dedup)
 *   <root>/lock                          writer lock (pid inside)
 *
 * An image becomes visible only by rename(2) of a complete, fsynced directory,
 * so a crash or an error mid-conversion never leaves a listed partial image.
 * Blobs are written the same way (temp file + rename). The chunk index is a
 * cache: it is appended after registration, entries naming a missing blob are
 * ignored, and rebuildChunkIndex() recreates it from every image's table.
 * Reference counts are derived (a blob is live while a chunk table names it).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError } from '../common/errors';
import { decodeChunkTable, type BlobRef } from './chunk-table';

export type StoreErrorKind = 'not-found' | 'corrupt' | 'locked' | 'bad-id' | 'io';
export class StoreError extends KataError<StoreErrorKind> {}

/** Default store root; config key `[image] store_dir`. */
export const DEFAULT_STORE_DIR = '/var/lib/kata-ts/images';
export const IMAGE_RECORD_VERSION = 1;

const HEX64 = /^[0-9a-f]{64}$/;

export function blobsDir(root: string): string { return path.join(root, 'blobs', 'sha256'); }
export function blobPath(root: string, hex: string): string { return path.join(blobsDir(root), checkHex(hex)); }
export function blobPartialPath(root: string, hex: string): string { return blobPath(root, hex) + '.partial'; }
export function blobPresencePath(root: string, hex: string): string { return blobPath(root, hex) + '.present'; }
export function imagesDir(root: string): string { return path.join(root, 'images'); }
export function imageDir(root: string, hex: string): string { return path.join(imagesDir(root), checkHex(hex)); }
export function metaPath(root: string, hex: string): string { return path.join(imageDir(root, hex), 'meta.erofs'); }
export function chunkTablePath(root: string, hex: string): string { return path.join(imageDir(root, hex), 'chunks.bin'); }
export function imageJsonPath(root: string, hex: string): string { return path.join(imageDir(root, hex), 'image.json'); }
export function chunkIndexPath(root: string): string { return path.join(root, 'index', 'chunks.idx'); }

function checkHex(hex: string): string {
  if (!HEX64.test(hex)) throw new StoreError('bad-id', `"${hex}" is not a sha256 hex digest`);
  return hex;
}

/** "sha256:<hex>" or "<hex>" → hex; anything else is a StoreError. */
export function imageIdHex(id: string): string {
  return checkHex(id.startsWith('sha256:') ? id.slice(7) : id);
}

/** What `kata-ts run --image` needs from the OCI image config. */
export interface ImageRunConfig {
  entrypoint: string[];
  cmd: string[];
  env: string[];
  cwd: string;
  user: string;
}

export interface ImageLayerRecord { digest: string; size: number; mediaType: string }

/** images/<hex>/image.json */
export interface ImageRecord {
  version: number;
  /** Manifest digest, "sha256:<hex>"; the image id. */
  id: string;
  /** Names it was converted from (SOURCE strings, name:tag references). */
  references: string[];
  created: string;
  config: ImageRunConfig;
  layers: ImageLayerRecord[];
  /** Same list (same order) as the chunk table's blob list. */
  blobs: BlobRef[];
  chunkSize: number;
  metaSize: number;
  totals: {
    files: number;
    dirs: number;
    /** Uncompressed bytes of regular-file data. */
    fileBytes: number;
    /** Distinct chunks in the image (device-1 slots). */
    chunks: number;
    /** Chunks this conversion stored (not already in the store). */
    newChunks: number;
    /** Bytes written to new blobs by this conversion. */
    newBlobBytes: number;
  };
}

export function ensureStore(root: string): void {
  for (const d of [blobsDir(root), imagesDir(root), path.dirname(chunkIndexPath(root))]) fs.mkdirSync(d, { recursive: true });
}

function fsyncPath(p: string): void {
  const fd = fs.openSync(p, 'r');
  try { fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
}

/** Writes a file and fsyncs it. */
export function writeFileSynced(p: string, data: Uint8Array | string): void {
  const fd = fs.openSync(p, 'w', 0o644);
  try {
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
  } finally { fs.closeSync(fd); }
}

/** A fresh temp directory for an image under construction (images/.tmp-*). */
export function beginImage(root: string): string {
  ensureStore(root);
  return fs.mkdtempSync(path.join(imagesDir(root), '.tmp-'));
}

/** Removes a temp image directory (or a temp blob file) on failure. */
export function abortImage(tmp: string): void {
  fs.rmSync(tmp, { recursive: true, force: true });
}

/**
 * Publishes a complete temp directory as images/<hex>: fsync its files and
 * itself, rename, fsync the parent. Returns false (and removes tmp) when the
 * image is already registered.
 */
export function commitImage(root: string, tmp: string, hex: string): boolean {
  const dst = imageDir(root, hex);
  if (fs.existsSync(dst)) { abortImage(tmp); return false; }
  for (const f of fs.readdirSync(tmp)) fsyncPath(path.join(tmp, f));
  fsyncPath(tmp);
  fs.renameSync(tmp, dst);
  fsyncPath(imagesDir(root));
  return true;
}

/** Moves a finished temp blob file to blobs/sha256/<hex> (kept if already there). */
export function commitBlob(root: string, tmpFile: string, hex: string): void {
  const dst = blobPath(root, hex);
  if (fs.existsSync(dst)) { fs.rmSync(tmpFile, { force: true }); return; }
  fsyncPath(tmpFile);
  fs.renameSync(tmpFile, dst);
  fsyncPath(blobsDir(root));
}

/** Reads images/<hex>/image.json. */
export function readImage(root: string, id: string): ImageRecord {
  const hex = imageIdHex(id);
  const p = imageJsonPath(root, hex);
  let text: string;
  try { text = fs.readFileSync(p, 'utf8'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new StoreError('not-found', `image sha256:${hex} is not in the store ${root}`);
    throw new StoreError('io', `cannot read ${p}: ${(e as Error).message}`, { cause: e });
  }
  let rec: ImageRecord;
  try { rec = JSON.parse(text) as ImageRecord; } catch (e) {
    throw new StoreError('corrupt', `${p}: not JSON (${(e as Error).message})`, { cause: e });
  }
  if (rec.version !== IMAGE_RECORD_VERSION || rec.id !== `sha256:${hex}`) throw new StoreError('corrupt', `${p}: version ${rec.version} / id ${rec.id} do not match sha256:${hex}`);
  return rec;
}

/** Every registered image (temp dirs never appear), sorted by id. */
export function listImages(root: string): ImageRecord[] {
  let names: string[];
  try { names = fs.readdirSync(imagesDir(root)); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  return names.filter((n) => HEX64.test(n)).sort().map((n) => readImage(root, n));
}

/* ---- chunk index: chunk sha256 → stored location, for dedup ---- */

export interface StoredChunk {
  blob: string;
  offset: number;
  storedSize: number;
  size: number;
  flags: number;
}

const INDEX_RECORD = 88;

function encodeIndex(entries: Iterable<[string, StoredChunk]>): Buffer {
  const list = [...entries];
  const buf = Buffer.alloc(list.length * INDEX_RECORD);
  list.forEach(([sha, c], i) => {
    const o = i * INDEX_RECORD;
    buf.write(sha, o, 'hex');
    buf.write(c.blob, o + 32, 'hex');
    buf.writeBigUInt64LE(BigInt(c.offset), o + 64);
    buf.writeUInt32LE(c.storedSize, o + 72);
    buf.writeUInt32LE(c.size, o + 76);
    buf.writeUInt32LE(c.flags, o + 80);
  });
  return buf;
}

/**
 * Loads the chunk index. Entries whose blob file is missing (gc'd, or the
 * index outlived a crash) are dropped; a torn final record is ignored.
 */
export function loadChunkIndex(root: string): Map<string, StoredChunk> {
  const map = new Map<string, StoredChunk>();
  let buf: Buffer;
  try { buf = fs.readFileSync(chunkIndexPath(root)); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return map;
    throw e;
  }
  const blobSizes = new Map<string, number>();
  const sizeOf = (hex: string): number => {
    let s = blobSizes.get(hex);
    if (s === undefined) {
      try { s = fs.statSync(path.join(blobsDir(root), hex)).size; } catch { s = -1; }
      blobSizes.set(hex, s);
    }
    return s;
  };
  for (let o = 0; o + INDEX_RECORD <= buf.length; o += INDEX_RECORD) {
    const c: StoredChunk = {
      blob: buf.toString('hex', o + 32, o + 64),
      offset: Number(buf.readBigUInt64LE(o + 64)),
      storedSize: buf.readUInt32LE(o + 72),
      size: buf.readUInt32LE(o + 76),
      flags: buf.readUInt32LE(o + 80),
    };
    if (c.offset + c.storedSize <= sizeOf(c.blob)) map.set(buf.toString('hex', o, o + 32), c);
  }
  return map;
}

/** Appends entries to the chunk index (after the image naming them is registered). */
export function appendChunkIndex(root: string, entries: Iterable<[string, StoredChunk]>): void {
  const buf = encodeIndex(entries);
  if (buf.length === 0) return;
  ensureStore(root);
  const fd = fs.openSync(chunkIndexPath(root), 'a', 0o644);
  try { fs.writeSync(fd, buf); fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
}

/** Recreates the chunk index from every registered image's chunk table (after gc). */
export function rebuildChunkIndex(root: string): number {
  const map = new Map<string, StoredChunk>();
  for (const rec of listImages(root)) {
    const hex = imageIdHex(rec.id);
    const t = decodeChunkTable(fs.readFileSync(chunkTablePath(root, hex)));
    for (const s of t.slots) {
      const b = t.blobs[s.blob];
      if (!fs.existsSync(blobPath(root, b.digest))) continue;
      map.set(s.sha256, { blob: b.digest, offset: s.offset, storedSize: s.storedSize, size: s.size, flags: s.flags });
    }
  }
  ensureStore(root);
  const tmp = chunkIndexPath(root) + `.tmp-${process.pid}`;
  writeFileSynced(tmp, encodeIndex(map));
  fs.renameSync(tmp, chunkIndexPath(root));
  return map.size;
}

/* ---- writer lock ---- */

function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

/**
 * Runs fn holding <root>/lock (O_EXCL file with the holder's pid). A lock
 * left by a dead process is taken over; a live holder is waited for up to
 * timeoutMs, then a StoreError('locked').
 */
export async function withStoreLock<T>(root: string, fn: () => Promise<T>, timeoutMs = 600_000): Promise<T> {
  ensureStore(root);
  const lock = path.join(root, 'lock');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // link(2) of a file already holding our pid: the lock never exists empty.
    const mine = `${lock}.${process.pid}`;
    fs.writeFileSync(mine, String(process.pid));
    try {
      fs.linkSync(mine, lock);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    } finally { fs.rmSync(mine, { force: true }); }
    {
      let holder: number;
      try { holder = Number.parseInt(fs.readFileSync(lock, 'utf8'), 10); } catch { continue; }
      if (!holder || !pidAlive(holder)) { fs.rmSync(lock, { force: true }); continue; }
      if (Date.now() > deadline) throw new StoreError('locked', `store ${root} is locked by pid ${holder}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  try { return await fn(); } finally { fs.rmSync(lock, { force: true }); }
}
