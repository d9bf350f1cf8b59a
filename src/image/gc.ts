/**
 * The read side of the converted-image store: what `kata-ctl image ls|rm|gc`
 * show and do (store.ts has the layout and the writer lock).
 *
 * Reference counts are derived, never stored: a blob is live while at least
 * one registered image's chunk table names it, so there is no counter to get
 * wrong after a crash. `rm` unlists an image atomically (rename of its
 * directory to images/.tmp-rm-*, then delete); `gc` deletes every blob —
 * complete, partial (`.partial` + `.present`) — that no image names, and
 * leftovers of conversions that died (images/.tmp-*, blobs/sha256/*.tmp*),
 * then rebuilds the dedup chunk index from the remaining tables. Both run
 * under the store's writer lock, so they never race a conversion: a
 * conversion holds the lock from its first blob to its registration, and
 * gc waits for it (or fails with 'locked' after the timeout).
 *
 * Running sandboxes hold use records (in-use.ts): rm refuses an image in use
 * (--force unlists it into images/.removed-<hex> instead of deleting it), and
 * gc keeps a .removed-* image and its blobs while a live record names it,
 * deletes it once none does, and deletes records of dead processes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError } from '../common/errors';
import { decodeChunkTable, type ChunkTable } from './chunk-table';
import { cleanStaleUses, describeUsers, imagesInUse, imageUsers, type UseRecord } from './in-use';
import {
  blobPartialPath, blobPath, blobPresencePath, blobsDir, chunkTablePath, imageDir, imageIdHex, imagesDir, listImages,
  rebuildChunkIndex, withStoreLock, type ImageRecord,
} from './store';

export class ImageGcError extends KataError<'not-found' | 'corrupt' | 'in-use'> {}

/** images/.removed-<hex>: an image `rm --force`d while in use, kept (unlisted) for its users until gc finds none. */
const REMOVED_PREFIX = '.removed-';

export type BlobState = 'local' | 'partial' | 'missing';

export interface ImageSummary {
  id: string;
  references: string[];
  created: string;
  chunkSize: number;
  chunks: number;
  /** Uncompressed size of the image's blob device (slots × chunk size). */
  deviceBytes: number;
  metaBytes: number;
  /** Stored bytes of the chunks this image uses (its share of blobs). */
  storedBytes: number;
  /** Stored bytes of those chunks present locally (complete or partial blobs). */
  localBytes: number;
  blobs: { digest: string; size: number; state: BlobState }[];
}

function tableOf(root: string, rec: ImageRecord): ChunkTable {
  return tableAt(chunkTablePath(root, imageIdHex(rec.id)), rec.id);
}

function tableAt(file: string, id: string): ChunkTable {
  try {
    return decodeChunkTable(fs.readFileSync(file));
  } catch (err) {
    throw new ImageGcError('corrupt', `image ${id}: chunk table unreadable: ${(err as Error).message}`, { cause: err });
  }
}

function blobState(root: string, hex: string): BlobState {
  if (fs.existsSync(blobPath(root, hex))) return 'local';
  return fs.existsSync(blobPartialPath(root, hex)) ? 'partial' : 'missing';
}

/** Present bytes of a partial blob, from its `.present` range log (lazy-source.ts). */
function partialPresent(root: string, hex: string, ranges: Array<[number, number]>): number {
  let log: Buffer;
  try { log = fs.readFileSync(blobPresencePath(root, hex)); } catch { return 0; }
  const have: Array<[number, number]> = [];
  for (let o = 0; o + 16 <= log.length; o += 16) {
    const a = Number(log.readBigUInt64LE(o));
    have.push([a, a + Number(log.readBigUInt64LE(o + 8))]);
  }
  return ranges.filter(([a, b]) => have.some(([x, y]) => x <= a && b <= y)).reduce((n, [a, b]) => n + b - a, 0);
}

export function summarize(root: string, rec: ImageRecord): ImageSummary {
  const t = tableOf(root, rec);
  const states = t.blobs.map((b) => blobState(root, b.digest));
  let storedBytes = 0, localBytes = 0;
  const perBlob = t.blobs.map(() => [] as Array<[number, number]>);
  for (const s of t.slots) {
    storedBytes += s.storedSize;
    if (states[s.blob] === 'local') localBytes += s.storedSize;
    else if (states[s.blob] === 'partial') perBlob[s.blob].push([s.offset, s.offset + s.storedSize]);
  }
  t.blobs.forEach((b, i) => { if (perBlob[i].length) localBytes += partialPresent(root, b.digest, perBlob[i]); });
  let metaBytes = 0;
  try { metaBytes = fs.statSync(path.join(imageDir(root, imageIdHex(rec.id)), 'meta.erofs')).size; } catch { /* listed anyway; rm/gc still work */ }
  return {
    id: rec.id, references: rec.references, created: rec.created, chunkSize: t.chunkSize, chunks: t.slots.length,
    deviceBytes: t.slots.length * t.chunkSize, metaBytes, storedBytes, localBytes,
    blobs: t.blobs.map((b, i) => ({ digest: `sha256:${b.digest}`, size: b.size, state: states[i] })),
  };
}

/** Every registered image, summarized. */
export function listStore(root: string): ImageSummary[] {
  return listImages(root).map((rec) => summarize(root, rec));
}

/** Finds an image by id (full or a unique hex prefix of ≥ 12) or by one of its references. */
export function resolveImage(root: string, ref: string): ImageRecord {
  const images = listImages(root);
  const bare = ref.startsWith('sha256:') ? ref.slice(7) : ref;
  const hits = images.filter((r) => r.id === `sha256:${bare}` || r.references.includes(ref) || (/^[0-9a-f]{12,63}$/.test(bare) && r.id.startsWith(`sha256:${bare}`)));
  if (hits.length === 1) return hits[0];
  if (hits.length > 1) throw new ImageGcError('not-found', `"${ref}" names ${hits.length} images; give the full id`);
  throw new ImageGcError('not-found', `no converted image "${ref}" in ${root}`);
}

export interface RemoveResult {
  id: string;
  /** Set when --force removed an image in use: it is unlisted, its data kept until these users end. */
  keptFor?: UseRecord[];
}

/**
 * Unlists and deletes one image (its blobs stay until gc). An image a live
 * sandbox uses (in-use.ts) is refused, naming the sandboxes; with force it
 * is unlisted but its directory is kept as images/.removed-<hex>, and gc
 * keeps it and its blobs until its last user ends.
 */
export async function removeImage(root: string, ref: string, opts: { force?: boolean } = {}): Promise<RemoveResult> {
  return withStoreLock(root, async () => {
    const rec = resolveImage(root, ref);
    const hex = imageIdHex(rec.id);
    // One rename unlists it; a crash after it leaves only a .tmp-* that gc removes.
    // Unlist first, then look for users: a starting container writes its
    // record first, then checks the image is listed (in-use.ts), so one of
    // the two always sees the other.
    const tmp = path.join(imagesDir(root), `.tmp-rm-${hex.slice(0, 12)}-${process.pid}`);
    fs.renameSync(imageDir(root, hex), tmp);
    const users = imageUsers(root, rec.id);
    if (users.length && !opts.force) {
      fs.renameSync(tmp, imageDir(root, hex));
      throw new ImageGcError('in-use', `image ${rec.id} is in use by ${describeUsers(users)}: stop it first, or rm --force to unlist it (its data stays until the last user ends)`);
    }
    if (users.length) {
      const kept = path.join(imagesDir(root), REMOVED_PREFIX + hex);
      fs.rmSync(kept, { recursive: true, force: true }); // an older forced copy of the same image: same content
      fs.renameSync(tmp, kept);
      return { id: rec.id, keptFor: users };
    }
    fs.rmSync(tmp, { recursive: true, force: true });
    return { id: rec.id };
  });
}

export interface GcItem { path: string; bytes: number; why: 'unreferenced blob' | 'unreferenced partial blob' | 'abandoned temp' | 'removed image, no users left' }
export interface GcReport {
  dryRun: boolean; images: number; liveBlobs: number; removed: GcItem[]; freedBytes: number; indexEntries: number;
  /** What gc kept only because running sandboxes use it: force-removed images and the blobs no listed image names. */
  keptForSandboxes: { images: number; blobs: number };
  /** Images (listed or force-removed) a live use record names. */
  imagesInUse: number;
  /** Use records of dead processes deleted (0 on a dry run). */
  staleUses: number;
}

function sizeOf(p: string): number {
  try {
    const st = fs.statSync(p);
    if (!st.isDirectory()) return st.blocks * 512;
    return fs.readdirSync(p).reduce((n, e) => n + sizeOf(path.join(p, e)), 0);
  } catch { return 0; }
}

/**
 * Deletes what no image references (see the header). dryRun: report only.
 * Bytes are what the files occupy on disk (a sparse partial blob counts only
 * what was fetched).
 */
export async function collectGarbage(root: string, opts: { dryRun?: boolean; lockTimeoutMs?: number } = {}): Promise<GcReport> {
  return withStoreLock(root, async () => {
    const images = listImages(root);
    // Every image's table must be readable: deleting on a partial view could drop live blobs.
    const live = new Set<string>();
    for (const rec of images) for (const b of tableOf(root, rec).blobs) live.add(b.digest);
    const removed: GcItem[] = [];
    // Images rm --force'd while in use: kept, with their blobs, while a live use record names them.
    const inUse = imagesInUse(root);
    const kept = { images: 0, blobs: 0 };
    let imgEntries: string[] = [];
    try { imgEntries = fs.readdirSync(imagesDir(root)); } catch { /* empty store */ }
    for (const e of imgEntries) {
      if (!e.startsWith(REMOVED_PREFIX)) continue;
      const hex = e.slice(REMOVED_PREFIX.length);
      const dir = path.join(imagesDir(root), e);
      if (!inUse.has(hex)) { removed.push({ path: dir, bytes: sizeOf(dir), why: 'removed image, no users left' }); continue; }
      kept.images++;
      for (const b of tableAt(path.join(dir, 'chunks.bin'), `sha256:${hex}`).blobs) {
        if (!live.has(b.digest)) { live.add(b.digest); kept.blobs++; }
      }
    }
    let entries: string[] = [];
    try { entries = fs.readdirSync(blobsDir(root)); } catch { /* empty store */ }
    for (const e of entries) {
      const m = /^([0-9a-f]{64})(\.partial|\.present)?$/.exec(e);
      const p = path.join(blobsDir(root), e);
      if (m) {
        if (!live.has(m[1])) removed.push({ path: p, bytes: sizeOf(p), why: m[2] ? 'unreferenced partial blob' : 'unreferenced blob' });
      } else if (e.includes('.tmp')) {
        removed.push({ path: p, bytes: sizeOf(p), why: 'abandoned temp' });
      }
    }
    for (const e of imgEntries) if (e.startsWith('.tmp-')) removed.push({ path: path.join(imagesDir(root), e), bytes: sizeOf(path.join(imagesDir(root), e)), why: 'abandoned temp' });
    if (!opts.dryRun) for (const r of removed) fs.rmSync(r.path, { recursive: true, force: true });
    const indexEntries = opts.dryRun ? 0 : rebuildChunkIndex(root);
    const staleUses = opts.dryRun ? 0 : cleanStaleUses(root);
    return { dryRun: !!opts.dryRun, images: images.length, liveBlobs: live.size, removed, freedBytes: removed.reduce((n, r) => n + r.bytes, 0), indexEntries, keptForSandboxes: kept, imagesInUse: inUse.size, staleUses };
  }, opts.lockTimeoutMs);
}
