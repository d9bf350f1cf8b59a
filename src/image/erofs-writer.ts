/**
 * EROFS metadata-image writer (our own; no mkfs.erofs), the on-disk format of
 * Linux 6.1's fs/erofs/erofs_fs.h, as Nydus RAFS v6 uses it:
 *
 *   block 0   superblock at 1024 (EROFS_SUPER_MAGIC_V1), then the device
 *             table at 1152 (devt_slotoff 9): one extra device, the image's
 *             virtual uncompressed blob device (DEVICE 1)
 *   block 1…  inodes (meta_blkaddr 0, nid = byte offset / 32), root first;
 *             each inode followed by its inline xattrs and its inline tail
 *             (directory entries, symlink target, small-file data) or its
 *             chunk index array; a record of ≤ 4 KiB never crosses a block
 *   then      the full 4 KiB blocks of directories (and data too large to be
 *             inline)
 *
 * Regular files above `inlineMax` bytes are EROFS_INODE_CHUNK_BASED with
 * chunk indexes {advise 0, device_id 1, blkaddr slot*chunkSize/4096}; smaller
 * files live in the metadata image (FLAT_INLINE), which keeps tiny files from
 * taking a whole device slot each. Inodes are compact (32 B) when uid/gid/
 * nlink fit 16 bits and the mtime equals the superblock's build time (the
 * most common mtime in the tree), extended (64 B) otherwise. Xattrs are
 * stored inline per inode (no shared xattr area). Output is a pure function
 * of the tree and options: same image in, same bytes out.
 */
import { KataError } from '../common/errors';
import type { Inode } from './layers';

export class ErofsWriteError extends KataError<'limit' | 'xattr'> {}

const BLK = 4096;
const SB_OFFSET = 1024;
const DEVT_OFFSET = 1152;
const EROFS_MAGIC = 0xe0f5e1e2;
const INCOMPAT_CHUNKED_FILE = 0x4;
const INCOMPAT_DEVICE_TABLE = 0x8;
const LAYOUT_FLAT_PLAIN = 0;
const LAYOUT_FLAT_INLINE = 2;
const LAYOUT_CHUNK_BASED = 4;
const CHUNK_FORMAT_INDEXES = 0x20;
const FT: Record<Inode['kind'], number> = { file: 1, dir: 2, char: 3, block: 4, fifo: 5, symlink: 7 };
const S_IF: Record<Inode['kind'], number> = { file: 0o100000, dir: 0o040000, char: 0o020000, block: 0o060000, fifo: 0o010000, symlink: 0o120000 };

export interface ErofsWriteOptions {
  chunkSize: number;
  /** Device-1 slot of each chunk of a chunk-based file. */
  fileSlots: (inode: Inode) => number[];
  /** Regular files of at most this many bytes are inline in the metadata. */
  inlineMax: number;
  /** Device 1's size in 4 KiB blocks and its tag (≤ 64 ASCII bytes). */
  deviceBlocks: number;
  deviceTag: string;
  /** 16 bytes of volume UUID. */
  uuid: Buffer;
}

export interface ErofsWriteResult {
  image: Buffer;
  inodes: number;
  files: number;
  dirs: number;
}

/** Files of this size or less go inline (FLAT_INLINE) unless told otherwise. */
export const DEFAULT_INLINE_MAX = 2048;

/** Whether a regular file is stored in the metadata image rather than chunks. */
export function fileIsInline(n: Inode, inlineMax: number): boolean {
  return n.kind === 'file' && n.size <= inlineMax;
}

interface Plan {
  n: Inode;
  ino: number;
  nlink: number;
  compact: boolean;
  xattrs: Buffer;
  /** Data bytes (dir blocks, symlink target, inline file) or chunk indexes. */
  payload: Buffer;
  layout: number;
  /** Bytes of payload kept inline after the inode. */
  tail: number;
  nid: number;
  blkaddr: number;
  /** Directory: sorted [name, child inode] incl. "." and "..". */
  dirents?: [Buffer, Inode][];
}

const XATTR_INDEX: [string, number, boolean][] = [
  ['user.', 1, false], ['system.posix_acl_access', 2, true], ['system.posix_acl_default', 3, true], ['trusted.', 4, false], ['security.', 6, false],
];

function encodeXattrs(x: Map<string, Buffer>): Buffer {
  if (x.size === 0) return Buffer.alloc(0);
  const ents: [number, Buffer, Buffer][] = [];
  for (const [k, v] of x) {
    const m = XATTR_INDEX.find(([p, , exact]) => (exact ? k === p : k.startsWith(p)));
    if (!m) throw new ErofsWriteError('xattr', `xattr "${k}" has no EROFS name index`);
    if (v.length > 0xffff) throw new ErofsWriteError('xattr', `xattr "${k}" value of ${v.length} bytes exceeds 65535`);
    ents.push([m[1], Buffer.from(m[2] ? '' : k.slice(m[0].length)), v]);
  }
  ents.sort((a, b) => a[0] - b[0] || Buffer.compare(a[1], b[1]));
  const parts: Buffer[] = [Buffer.alloc(12)]; // erofs_xattr_ibody_header, no shared xattrs
  for (const [idx, name, val] of ents) {
    const len = 4 + name.length + val.length;
    const e = Buffer.alloc(Math.ceil(len / 4) * 4);
    e[0] = name.length; e[1] = idx; e.writeUInt16LE(val.length, 2);
    name.copy(e, 4); val.copy(e, 4 + name.length);
    parts.push(e);
  }
  const out = Buffer.concat(parts);
  if ((out.length - 12) / 4 + 1 > 0xffff) throw new ErofsWriteError('xattr', 'xattrs of one inode exceed EROFS\'s 256 KiB');
  return out;
}

/** Packs sorted dirents into 4 KiB blocks; returns block layouts [start,end) indexes. */
function packDirents(names: Buffer[]): { blocks: [number, number][]; size: number } {
  const blocks: [number, number][] = [];
  let start = 0; let used = 0; let size = 0;
  for (let i = 0; i < names.length; i++) {
    const need = 12 + names[i].length;
    if (used + need > BLK) { blocks.push([start, i]); size += BLK; start = i; used = 0; }
    used += need;
  }
  blocks.push([start, names.length]);
  size += used;
  return { blocks, size };
}

/** Writes the EROFS metadata image of the tree under `root`. */
export function writeErofs(root: Inode, links: Map<Inode, number>, opts: ErofsWriteOptions): ErofsWriteResult {
  const chunkBits = Math.log2(opts.chunkSize);
  // Collect inodes breadth-first, children in EROFS's (byte) name order.
  const plans = new Map<Inode, Plan>();
  const order: Plan[] = [];
  const parentOf = new Map<Inode, Inode>([[root, root]]);
  const mtimes = new Map<string, number>();
  const queue: Inode[] = [root];
  const queued = new Set<Inode>(queue);
  for (let qi = 0; qi < queue.length; qi++) {
    const n = queue[qi];
    const p: Plan = { n, ino: order.length + 1, nlink: 1, compact: false, xattrs: encodeXattrs(n.xattrs), payload: Buffer.alloc(0), layout: LAYOUT_FLAT_PLAIN, tail: 0, nid: 0, blkaddr: 0 };
    plans.set(n, p);
    order.push(p);
    const key = `${n.mtime}.${n.mtimeNsec}`;
    mtimes.set(key, (mtimes.get(key) ?? 0) + 1);
    if (n.kind === 'dir') {
      const kids = [...n.children!].map(([name, e]) => [Buffer.from(name), e.inode] as [Buffer, Inode]);
      kids.sort((a, b) => Buffer.compare(a[0], b[0]));
      let subdirs = 0;
      for (const [, c] of kids) {
        if (c.kind === 'dir') { subdirs++; parentOf.set(c, n); }
        if (!queued.has(c)) { queued.add(c); queue.push(c); }
      }
      p.nlink = 2 + subdirs;
      const all: [Buffer, Inode][] = [[Buffer.from('.'), n], [Buffer.from('..'), parentOf.get(n)!], ...kids];
      all.sort((a, b) => Buffer.compare(a[0], b[0]));
      p.dirents = all;
    } else {
      p.nlink = links.get(n) ?? 1;
    }
  }
  let best = '0.0'; let bestCount = -1;
  for (const [k, c] of [...mtimes].sort()) if (c > bestCount) { best = k; bestCount = c; }
  const [buildTime, buildNsec] = best.split('.').map(Number);

  // Payloads and inode sizes.
  let files = 0; let dirs = 0;
  for (const p of order) {
    const n = p.n;
    let data: Buffer | null = null;
    if (n.kind === 'dir') {
      dirs++;
      const { size } = packDirents(p.dirents!.map(([b]) => b));
      data = Buffer.alloc(size); // filled once nids are known
    } else if (n.kind === 'symlink') data = Buffer.from(n.target);
    else if (n.kind === 'file') {
      files++;
      if (fileIsInline(n, opts.inlineMax)) data = n.data;
      else {
        const slots = opts.fileSlots(n);
        if (slots.length !== Math.ceil(n.size / opts.chunkSize)) throw new ErofsWriteError('limit', `file of ${n.size} bytes given ${slots.length} chunk slots`);
        const idx = Buffer.alloc(8 * slots.length);
        slots.forEach((s, i) => {
          const blk = s * (opts.chunkSize / BLK);
          if (blk > 0xffffffff) throw new ErofsWriteError('limit', 'device 1 exceeds 2^32 blocks');
          idx.writeUInt16LE(0, 8 * i); idx.writeUInt16LE(1, 8 * i + 2); idx.writeUInt32LE(blk, 8 * i + 4);
        });
        p.payload = idx;
        p.layout = LAYOUT_CHUNK_BASED;
      }
    }
    const size = n.kind === 'file' ? n.size : data?.length ?? 0;
    p.compact = n.uid <= 0xffff && n.gid <= 0xffff && p.nlink <= 0xffff && size <= 0xffffffff && n.mtime === buildTime && n.mtimeNsec === buildNsec;
    if (data) {
      p.payload = data;
      const isize = (p.compact ? 32 : 64) + p.xattrs.length;
      const tail = data.length % BLK;
      if (tail > 0 && isize + tail <= BLK) { p.layout = LAYOUT_FLAT_INLINE; p.tail = tail; } else p.layout = LAYOUT_FLAT_PLAIN;
    }
  }

  // Place inode records from block 1 on, then full data blocks.
  let cur = BLK;
  for (const p of order) {
    cur = Math.ceil(cur / 32) * 32;
    const head = (p.compact ? 32 : 64) + p.xattrs.length;
    const recLen = p.layout === LAYOUT_CHUNK_BASED ? Math.ceil(head / 8) * 8 + p.payload.length : head + p.tail;
    if ((cur % BLK) + Math.min(recLen, BLK) > BLK) cur = Math.ceil(cur / BLK) * BLK;
    p.nid = cur / 32;
    cur += recLen;
  }
  if (plans.get(root)!.nid > 0xffff) throw new ErofsWriteError('limit', 'root nid exceeds 16 bits');
  let nextBlk = Math.ceil(cur / BLK);
  for (const p of order) {
    if (p.layout === LAYOUT_CHUNK_BASED || p.payload.length === 0) continue;
    const full = p.layout === LAYOUT_FLAT_INLINE ? Math.floor(p.payload.length / BLK) : Math.ceil(p.payload.length / BLK);
    if (full > 0) { p.blkaddr = nextBlk; nextBlk += full; }
  }
  const img = Buffer.alloc(nextBlk * BLK);

  // Directory contents, now that nids are known.
  for (const p of order) {
    if (!p.dirents) continue;
    const names = p.dirents.map(([b]) => b);
    const { blocks } = packDirents(names);
    const d = p.payload;
    blocks.forEach(([s, e], bi) => {
      const base = bi * BLK;
      let nameOff = 12 * (e - s);
      for (let i = s; i < e; i++) {
        const [name, child] = p.dirents![i];
        const o = base + 12 * (i - s);
        d.writeBigUInt64LE(BigInt(plans.get(child)!.nid), o);
        d.writeUInt16LE(nameOff, o + 8);
        d[o + 10] = FT[child.kind];
        name.copy(d, base + nameOff);
        nameOff += name.length;
      }
    });
  }

  // Inodes and their inline parts.
  for (const p of order) {
    const n = p.n;
    const o = p.nid * 32;
    const size = n.kind === 'file' ? n.size : p.payload.length;
    const mode = S_IF[n.kind] | (n.perm & 0o7777);
    let iu = 0;
    if (p.layout === LAYOUT_CHUNK_BASED) iu = (chunkBits - 12) | CHUNK_FORMAT_INDEXES;
    else if (n.kind === 'char' || n.kind === 'block') iu = ((n.minor & 0xff) | (n.major << 8) | ((n.minor & ~0xff) << 12)) >>> 0;
    else iu = p.blkaddr;
    const icount = p.xattrs.length ? (p.xattrs.length - 12) / 4 + 1 : 0;
    img.writeUInt16LE((p.compact ? 0 : 1) | (p.layout << 1), o);
    img.writeUInt16LE(icount, o + 2);
    img.writeUInt16LE(mode, o + 4);
    if (p.compact) {
      img.writeUInt16LE(p.nlink, o + 6);
      img.writeUInt32LE(size, o + 8);
      img.writeUInt32LE(iu, o + 16);
      img.writeUInt32LE(p.ino, o + 20);
      img.writeUInt16LE(n.uid, o + 24);
      img.writeUInt16LE(n.gid, o + 26);
    } else {
      img.writeBigUInt64LE(BigInt(size), o + 8);
      img.writeUInt32LE(iu, o + 16);
      img.writeUInt32LE(p.ino, o + 20);
      img.writeUInt32LE(n.uid, o + 24);
      img.writeUInt32LE(n.gid, o + 28);
      img.writeBigInt64LE(BigInt(n.mtime), o + 32);
      img.writeUInt32LE(n.mtimeNsec, o + 40);
      img.writeUInt32LE(p.nlink, o + 44);
    }
    const head = o + (p.compact ? 32 : 64);
    p.xattrs.copy(img, head);
    const after = head + p.xattrs.length;
    if (p.layout === LAYOUT_CHUNK_BASED) p.payload.copy(img, Math.ceil(after / 8) * 8);
    else {
      const full = p.payload.length - p.tail;
      if (full > 0) p.payload.copy(img, p.blkaddr * BLK, 0, full);
      if (p.tail > 0) p.payload.copy(img, after, full);
    }
  }

  // Superblock and device table.
  const sb = SB_OFFSET;
  img.writeUInt32LE(EROFS_MAGIC, sb);
  img[sb + 12] = 12; // blkszbits
  img.writeUInt16LE(plans.get(root)!.nid, sb + 14);
  img.writeBigUInt64LE(BigInt(order.length), sb + 16);
  img.writeBigUInt64LE(BigInt(buildTime), sb + 24);
  img.writeUInt32LE(buildNsec, sb + 32);
  img.writeUInt32LE(nextBlk, sb + 36);
  img.writeUInt32LE(0, sb + 40); // meta_blkaddr
  img.writeUInt32LE(0, sb + 44); // xattr_blkaddr: no shared xattrs
  opts.uuid.copy(img, sb + 48, 0, 16);
  img.writeUInt32LE(INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE, sb + 80);
  img.writeUInt16LE(1, sb + 86); // extra_devices
  img.writeUInt16LE(DEVT_OFFSET / 128, sb + 88);
  const tag = Buffer.from(opts.deviceTag, 'latin1');
  if (tag.length === 0 || tag.length > 64) throw new ErofsWriteError('limit', 'device tag must be 1..64 bytes');
  tag.copy(img, DEVT_OFFSET);
  if (opts.deviceBlocks > 0xffffffff) throw new ErofsWriteError('limit', 'device 1 exceeds 2^32 blocks');
  img.writeUInt32LE(opts.deviceBlocks, DEVT_OFFSET + 64);
  img.writeUInt32LE(0, DEVT_OFFSET + 68); // mapped_blkaddr: addressed by device id
  return { image: img, inodes: order.length, files, dirs };
}
