/**
 * EROFS on-disk format reader (linux fs/erofs/erofs_fs.h as of erofs-utils
 * 1.5 / Linux 6.1): superblock, compact and extended inodes, directory
 * blocks, inline and shared xattrs, block mapping for FLAT_PLAIN,
 * FLAT_INLINE, CHUNK_BASED and the two compressed layouts
 * (FLAT_COMPRESSION_LEGACY: 8-byte lcluster indexes; FLAT_COMPRESSION:
 * compacted 4B/2B packs), big pclusters, ztailpacking, and LZ4 cluster
 * decoding (LZ4_0PADDING aware).
 *
 * No I/O: the host reads image bytes into linear memory and hands this
 * module windows of them. Every read here is checked against the window it
 * was given; hostile images give error codes, never traps or stray reads.
 * No static data (so the module shares a Memory with others freely).
 *
 * Results go to a caller-owned record `rec` of 64 f64 slots (512 bytes);
 * integers are exact below 2^53. Offsets "relative" are from the inode's
 * first byte (iloc); every window given for an inode starts at iloc, and
 * `ilocOff` is iloc modulo the block size (for block-crossing checks).
 *
 * Exported ABI (return ≥ 0 success, < 0 an E_* code):
 *
 *   superblock(buf, len, rec)      buf = image bytes from offset 0, len ≥
 *       1024 + 128 (≥ block size when SB_CHKSUM is set). Fills S_* slots.
 *       Refuses bad magic, block size outside 2^9..2^16, incompatible
 *       features this reader does not know, bad crc32c.
 *   inode(win, winLen, blkbits, ilocOff, rec)   Fills I_* slots. I_META_NEED
 *       is how many window bytes from iloc the inode's metadata spans
 *       (inode, xattrs, inline tail / chunk table / compression indexes);
 *       E_NEED_MORE when winLen is too short to even tell (retry with
 *       I_META_NEED bytes).
 *   mapBlocks(win, winLen, blkbits, ilocOff, la, rec)   Maps logical byte
 *       la (< i_size) to the extent holding it: M_LA, M_LLEN, M_PA, M_PLEN,
 *       M_FLAGS (MAP_MAPPED | MAP_META (M_PA relative to iloc) |
 *       MAP_ENCODED), M_ALG (ALG_LZ4, ALG_LZMA, ALG_SHIFTED = stored),
 *       M_DEVICE. Compressed extents are returned whole (M_LA = extent
 *       start, M_LLEN = its full decoded length).
 *   decompressCluster(src, srcLen, dst, dstLen, alg, zeroPadding, partial)
 *       Decodes one pcluster into exactly dstLen bytes (partial ≠ 0: a
 *       prefix of the extent). Returns dstLen.
 *   dirBlock(blk, len, out, outCap)   Parses one directory block of `len`
 *       bytes (the last block may be short). Writes up to outCap entries of
 *       DIRENT_SIZE bytes: f64 nid, u16 nameoff, u16 namelen, u8 file_type.
 *       Returns the entry count.
 *   dirLookup(blk, len, name, nameLen)   Binary search in one block:
 *       index ≥ 0 if found, LOOKUP_BEFORE / LOOKUP_AFTER if the name sorts
 *       before the first / after the last entry, LOOKUP_ABSENT otherwise.
 *   xattrIbody(win, winLen, out, outCap, rec)   Lists the inode's xattrs:
 *       XATTR_SIZE-byte records (u8 kind 0 inline / 1 shared, u8
 *       name_index, u8 name_len, u8 pad, u32 value_size, u32 name offset
 *       (relative) or shared id, u32 value offset (relative)). Returns the
 *       count; X_SHARED_COUNT in rec.
 *   xattrEntry(p, len, rec)   One xattr entry at p: X_INDEX, X_NAME_LEN,
 *       X_VALUE_SIZE, X_ENTRY_SIZE; E_NEED_MORE with X_ENTRY_SIZE if len is
 *       short.
 *   crc32c(p, len, seed)   Castagnoli CRC without final inversion (as
 *       erofs_crc32c / the kernel's crc32c).
 */
import { decompress as lz4Decompress } from '../lz4/index';

/* ---- error codes ---- */
export const E_NEED_MORE: i32 = -1;
export const E_BAD_MAGIC: i32 = -2;
export const E_BAD_BLKSZ: i32 = -3;
export const E_UNSUPPORTED_FEATURE: i32 = -4;
export const E_BAD_CHECKSUM: i32 = -5;
export const E_UNSUPPORTED: i32 = -6;
export const E_CORRUPT: i32 = -7;
export const E_BAD_MODE: i32 = -8;
export const E_BAD_DIRENT: i32 = -9;
export const E_BAD_XATTR: i32 = -10;
export const E_BAD_INDEX: i32 = -11;
export const E_DECOMPRESS: i32 = -12;
export const E_RANGE: i32 = -13;

export const LOOKUP_BEFORE: i32 = -100;
export const LOOKUP_AFTER: i32 = -101;
export const LOOKUP_ABSENT: i32 = -102;

/* ---- record slots (f64 index) ---- */
export const S_BLKBITS: i32 = 0;
export const S_ROOT_NID: i32 = 1;
export const S_INOS: i32 = 2;
export const S_BUILD_TIME: i32 = 3;
export const S_BUILD_TIME_NSEC: i32 = 4;
export const S_BLOCKS: i32 = 5;
export const S_META_BLKADDR: i32 = 6;
export const S_XATTR_BLKADDR: i32 = 7;
export const S_FEATURE_COMPAT: i32 = 8;
export const S_FEATURE_INCOMPAT: i32 = 9;
export const S_COMPR_ALGS: i32 = 10;
export const S_EXTRA_DEVICES: i32 = 11;
export const S_DEVT_SLOTOFF: i32 = 12;
export const S_EXTSLOTS: i32 = 13;
export const S_CHECKSUM: i32 = 14;
export const S_UNKNOWN_INCOMPAT: i32 = 15;

export const I_VERSION: i32 = 0;
export const I_LAYOUT: i32 = 1;
export const I_ISIZE: i32 = 2;
export const I_XATTR_ISIZE: i32 = 3;
export const I_MODE: i32 = 4;
export const I_NLINK: i32 = 5;
export const I_SIZE: i32 = 6;
export const I_RAW: i32 = 7;
export const I_INO: i32 = 8;
export const I_UID: i32 = 9;
export const I_GID: i32 = 10;
export const I_MTIME: i32 = 11;
export const I_MTIME_NSEC: i32 = 12;
export const I_META_NEED: i32 = 13;
export const I_RDEV_MAJOR: i32 = 14;
export const I_RDEV_MINOR: i32 = 15;
export const I_Z_ADVISE: i32 = 16;
export const I_Z_ALG: i32 = 17;
export const I_Z_LCLUSTERBITS: i32 = 18;
export const I_CHUNKBITS: i32 = 19;

export const M_LA: i32 = 32;
export const M_LLEN: i32 = 33;
export const M_PA: i32 = 34;
export const M_PLEN: i32 = 35;
export const M_FLAGS: i32 = 36;
export const M_ALG: i32 = 37;
export const M_DEVICE: i32 = 38;

export const X_SHARED_COUNT: i32 = 48;
export const X_INDEX: i32 = 49;
export const X_NAME_LEN: i32 = 50;
export const X_VALUE_SIZE: i32 = 51;
export const X_ENTRY_SIZE: i32 = 52;

export const MAP_MAPPED: i32 = 1;
export const MAP_META: i32 = 2;
export const MAP_ENCODED: i32 = 4;
export const ALG_LZ4: i32 = 0;
export const ALG_LZMA: i32 = 1;
export const ALG_SHIFTED: i32 = 255;

export const DIRENT_SIZE: i32 = 16;
export const XATTR_SIZE: i32 = 16;

/* ---- on-disk constants (erofs_fs.h) ---- */
const EROFS_SUPER_MAGIC_V1: u32 = 0xe0f5e1e2;
const EROFS_SUPER_OFFSET: usize = 1024;
const COMPAT_SB_CHKSUM: u32 = 0x1;
const INCOMPAT_LZ4_0PADDING: u32 = 0x1;
const INCOMPAT_COMPR_CFGS: u32 = 0x2; // == BIG_PCLUSTER
const INCOMPAT_CHUNKED_FILE: u32 = 0x4;
const INCOMPAT_DEVICE_TABLE: u32 = 0x8;
const INCOMPAT_ZTAILPACKING: u32 = 0x10;
const ALL_INCOMPAT: u32 = INCOMPAT_LZ4_0PADDING | INCOMPAT_COMPR_CFGS | INCOMPAT_CHUNKED_FILE |
  INCOMPAT_DEVICE_TABLE | INCOMPAT_ZTAILPACKING;

const FLAT_PLAIN: u32 = 0;
const COMPRESSION_LEGACY: u32 = 1;
const FLAT_INLINE: u32 = 2;
const COMPRESSION: u32 = 3;
const CHUNK_BASED: u32 = 4;
const I_ALL: u32 = 0xf; // version bit + 3 data layout bits

const CHUNK_FORMAT_BLKBITS_MASK: u32 = 0x1f;
const CHUNK_FORMAT_INDEXES: u32 = 0x20;
const CHUNK_FORMAT_ALL: u32 = 0x3f;
const NULL_ADDR: u32 = 0xffffffff;

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

const Z_ADVISE_COMPACTED_2B: u32 = 0x1;
const Z_ADVISE_BIG_PCLUSTER_1: u32 = 0x2;
const Z_ADVISE_BIG_PCLUSTER_2: u32 = 0x4;
const Z_ADVISE_INLINE_PCLUSTER: u32 = 0x8;
const Z_COMPRESSION_MAX: u32 = 2;
const CL_PLAIN: u32 = 0;
const CL_HEAD: u32 = 1;
const CL_NONHEAD: u32 = 2;
const D0_CBLKCNT: u32 = 1 << 11;
const EROFS_NAME_LEN: u32 = 255;
const EROFS_FT_MAX: u32 = 8;

// @ts-ignore: decorator
@inline function put(rec: usize, slot: i32, v: f64): void {
  store<f64>(rec + (<usize>slot << 3), v);
}

// @ts-ignore: decorator
@inline function roundUp(x: u64, a: u64): u64 {
  return (x + a - 1) / a * a;
}

/* ---- crc32c (Castagnoli, reflected 0x82F63B78), bitwise: superblock only ---- */
export function crc32c(p: usize, len: u32, seed: u32): u32 {
  let crc = seed;
  for (let i: u32 = 0; i < len; i++) {
    crc ^= <u32>load<u8>(p + i);
    for (let k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82f63b78 & (0 - (crc & 1)));
  }
  return crc;
}

/* ---- superblock ---- */
export function superblock(buf: usize, len: u32, rec: usize): i32 {
  if (<usize>len < EROFS_SUPER_OFFSET + 128) return E_NEED_MORE;
  const sb = buf + EROFS_SUPER_OFFSET;
  if (load<u32>(sb) != EROFS_SUPER_MAGIC_V1) return E_BAD_MAGIC;
  const blkbits = <u32>load<u8>(sb, 12);
  if (blkbits < 9 || blkbits > 16) return E_BAD_BLKSZ;
  const blksz: u32 = 1 << blkbits;
  if (<usize>blksz < EROFS_SUPER_OFFSET + 128) return E_BAD_BLKSZ; // superblock lives in block 0
  const extslots = <u32>load<u8>(sb, 13);
  if (<usize>(128 + extslots * 16) + EROFS_SUPER_OFFSET > <usize>blksz) return E_CORRUPT;
  const compat = load<u32>(sb, 8);
  const incompat = load<u32>(sb, 80);
  put(rec, S_FEATURE_COMPAT, <f64>compat);
  put(rec, S_FEATURE_INCOMPAT, <f64>incompat);
  put(rec, S_UNKNOWN_INCOMPAT, <f64>(incompat & ~ALL_INCOMPAT));
  if ((incompat & ~ALL_INCOMPAT) != 0) return E_UNSUPPORTED_FEATURE;
  const stored = load<u32>(sb, 4);
  put(rec, S_CHECKSUM, <f64>stored);
  if ((compat & COMPAT_SB_CHKSUM) != 0) {
    // crc32c(~0) over [1024, blksz) with the checksum field taken as zero.
    if (len < blksz) return E_NEED_MORE;
    let crc = crc32c(sb, 4, 0xffffffff);
    for (let i = 0; i < 32; i++) crc = (crc >> 1) ^ (0x82f63b78 & (0 - (crc & 1))); // 4 zero bytes
    crc = crc32c(sb + 8, blksz - <u32>EROFS_SUPER_OFFSET - 8, crc);
    if (crc != stored) return E_BAD_CHECKSUM;
  }
  put(rec, S_BLKBITS, <f64>blkbits);
  put(rec, S_EXTSLOTS, <f64>extslots);
  put(rec, S_ROOT_NID, <f64>load<u16>(sb, 14));
  put(rec, S_INOS, <f64>load<u64>(sb, 16));
  put(rec, S_BUILD_TIME, <f64>load<u64>(sb, 24));
  put(rec, S_BUILD_TIME_NSEC, <f64>load<u32>(sb, 32));
  put(rec, S_BLOCKS, <f64>load<u32>(sb, 36));
  put(rec, S_META_BLKADDR, <f64>load<u32>(sb, 40));
  put(rec, S_XATTR_BLKADDR, <f64>load<u32>(sb, 44));
  put(rec, S_COMPR_ALGS, <f64>load<u16>(sb, 84));
  put(rec, S_EXTRA_DEVICES, <f64>load<u16>(sb, 86));
  put(rec, S_DEVT_SLOTOFF, <f64>load<u16>(sb, 88));
  return 0;
}

/* ---- inode ---- */

// Parsed inode header, kept in wasm globals between the helpers of one call.
let gLayout: u32 = 0;
let gIsize: u32 = 0;
let gXattrIsize: u32 = 0;
let gMode: u32 = 0;
let gSize: u64 = 0;
let gRaw: u32 = 0;

function parseHeader(win: usize, winLen: u32, rec: usize): i32 {
  if (winLen < 32) {
    put(rec, I_META_NEED, 64);
    return E_NEED_MORE;
  }
  const ifmt = <u32>load<u16>(win);
  if ((ifmt & ~I_ALL) != 0) return E_UNSUPPORTED;
  const version = ifmt & 1;
  gLayout = (ifmt >> 1) & 7;
  if (gLayout > CHUNK_BASED) return E_UNSUPPORTED;
  const icount = <u32>load<u16>(win, 2);
  gXattrIsize = icount == 0 ? 0 : 12 + 4 * (icount - 1);
  gMode = <u32>load<u16>(win, 4);
  if (version == 1) {
    gIsize = 64;
    if (winLen < 64) {
      put(rec, I_META_NEED, 64);
      return E_NEED_MORE;
    }
    gSize = load<u64>(win, 8);
    gRaw = load<u32>(win, 16);
  } else {
    gIsize = 32;
    gSize = <u64>load<u32>(win, 8);
    gRaw = load<u32>(win, 16);
  }
  // Sizes beyond 2^52 cannot be real (and would not be exact as f64).
  if (gSize > 0x000fffffffffffff) return E_CORRUPT;
  const type = gMode & S_IFMT;
  if (type != S_IFREG && type != S_IFDIR && type != S_IFLNK && type != S_IFCHR &&
      type != S_IFBLK && type != S_IFIFO && type != S_IFSOCK) return E_BAD_MODE;
  return 0;
}

export function inode(win: usize, winLen: u32, blkbits: u32, ilocOff: u32, rec: usize): i32 {
  if (blkbits < 9 || blkbits > 16) return E_BAD_BLKSZ;
  let err = parseHeader(win, winLen, rec);
  if (err < 0) return err;
  const version = <u32>load<u16>(win) & 1;
  put(rec, I_VERSION, <f64>version);
  put(rec, I_LAYOUT, <f64>gLayout);
  put(rec, I_ISIZE, <f64>gIsize);
  put(rec, I_XATTR_ISIZE, <f64>gXattrIsize);
  put(rec, I_MODE, <f64>gMode);
  put(rec, I_SIZE, <f64>gSize);
  put(rec, I_RAW, <f64>gRaw);
  put(rec, I_INO, <f64>load<u32>(win, 20));
  if (version == 1) {
    put(rec, I_NLINK, <f64>load<u32>(win, 44));
    put(rec, I_UID, <f64>load<u32>(win, 24));
    put(rec, I_GID, <f64>load<u32>(win, 28));
    put(rec, I_MTIME, <f64>load<u64>(win, 32));
    put(rec, I_MTIME_NSEC, <f64>load<u32>(win, 40));
  } else {
    put(rec, I_NLINK, <f64>load<u16>(win, 6));
    put(rec, I_UID, <f64>load<u16>(win, 24));
    put(rec, I_GID, <f64>load<u16>(win, 26));
    put(rec, I_MTIME, -1); // compact inodes take the superblock build time
    put(rec, I_MTIME_NSEC, -1);
  }
  const type = gMode & S_IFMT;
  if (type == S_IFCHR || type == S_IFBLK) {
    // new_encode_dev: minor low byte | major << 8 | minor high bits << 12
    put(rec, I_RDEV_MAJOR, <f64>((gRaw & 0xfff00) >> 8));
    put(rec, I_RDEV_MINOR, <f64>((gRaw & 0xff) | ((gRaw >> 12) & 0xfff00)));
  } else {
    put(rec, I_RDEV_MAJOR, 0);
    put(rec, I_RDEV_MINOR, 0);
  }
  const blksz: u64 = 1 << blkbits;
  const ix: u64 = <u64>gIsize + <u64>gXattrIsize;
  let need: u64 = ix;
  const hasData = type == S_IFREG || type == S_IFDIR || type == S_IFLNK;
  if (!hasData) {
    put(rec, I_META_NEED, <f64>need);
    return 0;
  }
  if (gLayout == FLAT_INLINE) {
    if (gSize > 0) {
      const nblocks = (gSize + blksz - 1) >> blkbits;
      const tail = gSize - ((nblocks - 1) << blkbits);
      if ((<u64>ilocOff + ix) % blksz + tail > blksz) return E_CORRUPT; // inline data crosses a block
      need = ix + tail;
    }
  } else if (gLayout == CHUNK_BASED) {
    const fmt = gRaw & 0xffff;
    if ((fmt & ~CHUNK_FORMAT_ALL) != 0) return E_UNSUPPORTED;
    const chunkbits = blkbits + (fmt & CHUNK_FORMAT_BLKBITS_MASK);
    if (chunkbits > 47) return E_CORRUPT;
    put(rec, I_CHUNKBITS, <f64>chunkbits);
    const unit: u64 = (fmt & CHUNK_FORMAT_INDEXES) != 0 ? 8 : 4;
    const nchunks = (gSize + (<u64>1 << chunkbits) - 1) >> chunkbits;
    need = roundUp(ix, unit) + unit * nchunks;
  } else if (gLayout == COMPRESSION || gLayout == COMPRESSION_LEGACY) {
    err = zInit(win, winLen, blkbits, ilocOff, rec, false);
    if (err < 0) return err;
    put(rec, I_Z_ADVISE, <f64>zAdvise);
    put(rec, I_Z_ALG, <f64>zAlg0);
    put(rec, I_Z_LCLUSTERBITS, <f64>zLbits);
    need = zMetaEnd;
  }
  if (need > 0xffffffff) return E_CORRUPT;
  put(rec, I_META_NEED, <f64>need);
  return 0;
}

/* ---- compressed layouts: logical cluster indexes ---- */

let zWin: usize = 0;
let zWinLen: u32 = 0;
let zBlkbits: u32 = 12;
let zAdvise: u32 = 0;
let zAlg0: u32 = 0;
let zLbits: u32 = 12;
let zIdataSize: u32 = 0;
let zIdataOff: u64 = 0;
let zTailHeadLcn: u64 = 0;
let zTotalIdx: u64 = 0;
let zEbase: u64 = 0; // compacted: first index byte; legacy: first 8-byte index
let zInit4B: u64 = 0;
let zCompacted2B: u64 = 0;
let zMetaEnd: u64 = 0;
// lcluster recorder
let mLcn: u64 = 0;
let mType: u32 = 0;
let mHeadType: u32 = 0;
let mClusterOfs: u32 = 0;
let mDelta0: u32 = 0;
let mDelta1: u32 = 0;
let mPblk: u64 = 0;
let mCompressedLcs: u32 = 0;
let mNextPackOff: u64 = 0;
// map result
let rLa: u64 = 0;
let rLlen: u64 = 0;
let rPa: u64 = 0;
let rPlen: u64 = 0;
let rMeta = false;

/**
 * Reads the map header and lays out the index area (where each lcluster's
 * index lives), then, for ztailpacking, finds the inline tail extent.
 * `full`: the window is known to hold all metadata (mapBlocks).
 */
function zInit(win: usize, winLen: u32, blkbits: u32, ilocOff: u32, rec: usize, full: bool): i32 {
  zWin = win;
  zWinLen = winLen;
  zBlkbits = blkbits;
  const ix: u64 = <u64>gIsize + <u64>gXattrIsize;
  const hpos = roundUp(ix, 8);
  // Images made before big pclusters/ztailpacking leave the legacy map
  // header unset: 4 KiB lclusters, LZ4, no advise bits.
  if (gLayout == COMPRESSION_LEGACY && (zSbIncompat & (INCOMPAT_COMPR_CFGS | INCOMPAT_ZTAILPACKING)) == 0) {
    zAdvise = 0;
    zAlg0 = 0;
    zLbits = blkbits;
    zIdataSize = 0;
  } else {
    if (hpos + 8 > <u64>winLen) {
      put(rec, I_META_NEED, <f64>(hpos + 8));
      return E_NEED_MORE;
    }
    zIdataSize = <u32>load<u16>(win + <usize>hpos, 2);
    zAdvise = <u32>load<u16>(win + <usize>hpos, 4);
    const alg = <u32>load<u8>(win + <usize>hpos, 6);
    zAlg0 = alg & 15;
    if (zAlg0 >= Z_COMPRESSION_MAX) return E_UNSUPPORTED;
    zLbits = blkbits + (<u32>load<u8>(win + <usize>hpos, 7) & 7);
  }
  if (gLayout == COMPRESSION &&
      ((zAdvise & Z_ADVISE_BIG_PCLUSTER_1) == 0) != ((zAdvise & Z_ADVISE_BIG_PCLUSTER_2) == 0)) return E_CORRUPT;
  zTotalIdx = (gSize + (<u64>1 << zLbits) - 1) >> zLbits;
  let indexEnd: u64;
  if (gLayout == COMPRESSION_LEGACY) {
    zEbase = hpos + 16;
    indexEnd = zEbase + 8 * zTotalIdx;
  } else {
    if (zLbits != 12) return E_UNSUPPORTED;
    zEbase = hpos + 8;
    zInit4B = (32 - zEbase % 32) / 4;
    if (zInit4B == 8) zInit4B = 0;
    if ((zAdvise & Z_ADVISE_COMPACTED_2B) != 0 && zInit4B < zTotalIdx) {
      zCompacted2B = (zTotalIdx - zInit4B) / 16 * 16;
    } else {
      zCompacted2B = 0;
    }
    if (zTotalIdx == 0) {
      indexEnd = zEbase;
    } else {
      // The pack holding the last lcluster ends the index area.
      const last = zTotalIdx - 1;
      let pos = zEbase;
      let packsize: u64 = 8;
      let lcn = last;
      if (lcn < zInit4B) {
        pos += lcn * 4;
      } else {
        pos += zInit4B * 4;
        lcn -= zInit4B;
        if (lcn < zCompacted2B) {
          pos += lcn * 2;
          packsize = 32;
        } else {
          pos += zCompacted2B * 2 + (lcn - zCompacted2B) * 4;
        }
      }
      indexEnd = pos / packsize * packsize + packsize;
    }
  }
  zMetaEnd = indexEnd;
  if (full && zMetaEnd + (((zAdvise & Z_ADVISE_INLINE_PCLUSTER) != 0) ? <u64>zIdataSize : 0) > <u64>winLen) {
    put(rec, I_META_NEED, <f64>(zMetaEnd + <u64>zIdataSize));
    return E_NEED_MORE;
  }
  if ((zAdvise & Z_ADVISE_INLINE_PCLUSTER) != 0) {
    if ((zSbIncompat & INCOMPAT_ZTAILPACKING) == 0) return E_CORRUPT;
    zIdataOff = indexEnd;
    zMetaEnd = indexEnd + <u64>zIdataSize;
    if (zIdataSize == 0 || (<u64>ilocOff + zIdataOff) % (<u64>1 << blkbits) + <u64>zIdataSize > (<u64>1 << blkbits)) return E_CORRUPT;
    if (full && gSize > 0) {
      // Which extent is the inline tail: the one holding the last byte.
      zTailHeadLcn = 0xffffffffffffffff;
      const err = zMapCore(gSize - 1, true);
      if (err < 0) return err;
      zTailHeadLcn = mLcn;
    }
  }
  return 0;
}

// Superblock incompat bits, set by the host before inode/mapBlocks calls.
let zSbIncompat: u32 = 0;
export function setFeatures(incompat: u32): void {
  zSbIncompat = incompat;
}

function loadLegacy(lcn: u64): i32 {
  const pos = zEbase + lcn * 8;
  if (pos + 8 > <u64>zWinLen) return E_BAD_INDEX;
  const di = zWin + <usize>pos;
  mNextPackOff = pos + 8;
  mLcn = lcn;
  const type = <u32>load<u16>(di) & 3;
  if (type == CL_NONHEAD) {
    mClusterOfs = 1 << zLbits;
    mDelta0 = <u32>load<u16>(di, 4);
    if ((mDelta0 & D0_CBLKCNT) != 0) {
      if ((zAdvise & Z_ADVISE_BIG_PCLUSTER_1) == 0) return E_BAD_INDEX;
      mCompressedLcs = mDelta0 & ~D0_CBLKCNT;
      mDelta0 = 1;
    }
    mDelta1 = <u32>load<u16>(di, 6);
  } else if (type == CL_PLAIN || type == CL_HEAD) {
    mClusterOfs = <u32>load<u16>(di, 2);
    mPblk = <u64>load<u32>(di, 4);
  } else {
    return E_UNSUPPORTED;
  }
  mType = type;
  return 0;
}

// @ts-ignore: decorator
@inline function decodeBits(inp: usize, bitpos: u32, lomask: u32, lobits: u32): u32 {
  // Returns lo | type << 16.
  const v = load<u32>(inp + (bitpos >> 3)) >> (bitpos & 7);
  return (v & lomask) | (((v >> lobits) & 3) << 16);
}

function laDistance(encodebits: u32, vcnt: u32, inp: usize, i: u32): u32 {
  const lomask: u32 = (1 << zLbits) - 1;
  let d1: u32 = 0;
  let lo: u32 = 0;
  do {
    const v = decodeBits(inp, encodebits * i, lomask, zLbits);
    lo = v & 0xffff;
    if ((v >> 16) != CL_NONHEAD) return d1;
    d1++;
  } while (++i < vcnt);
  // The last NONHEAD of a pack stores delta[1] instead of delta[0].
  if ((lo & D0_CBLKCNT) == 0) d1 += lo - 1;
  return d1;
}

function unpackCompacted(amortizedshift: u32, pos: u64, lookahead: bool): i32 {
  const lbits = zLbits;
  const lomask: u32 = (1 << lbits) - 1;
  let vcnt: u32;
  if (amortizedshift == 2) vcnt = 2;
  else if (amortizedshift == 1 && lbits == 12) vcnt = 16;
  else return E_UNSUPPORTED;
  const packsize: u64 = <u64>(vcnt << amortizedshift);
  const base = pos / packsize * packsize;
  if (base + packsize > <u64>zWinLen) return E_BAD_INDEX;
  mNextPackOff = base + packsize;
  const big = (zAdvise & Z_ADVISE_BIG_PCLUSTER_1) != 0;
  const encodebits: u32 = (<u32>packsize - 4) * 8 / vcnt;
  const inp = zWin + <usize>base;
  let i = <i32>((pos - base) >> amortizedshift);
  let v = decodeBits(inp, encodebits * <u32>i, lomask, lbits);
  let lo = v & 0xffff;
  let type = v >> 16;
  mType = type;
  if (type == CL_NONHEAD) {
    mClusterOfs = 1 << lbits;
    if (lookahead) mDelta1 = laDistance(encodebits, vcnt, inp, <u32>i);
    if ((lo & D0_CBLKCNT) != 0) {
      if (!big) return E_BAD_INDEX;
      mCompressedLcs = lo & ~D0_CBLKCNT;
      mDelta0 = 1;
      return 0;
    } else if (<u32>(i + 1) != vcnt) {
      mDelta0 = lo;
      return 0;
    }
    // Last entry of the pack: its lo is delta[1]; delta[0] comes from the
    // previous entry.
    v = decodeBits(inp, encodebits * <u32>(i - 1), lomask, lbits);
    lo = v & 0xffff;
    type = v >> 16;
    if (type != CL_NONHEAD) lo = 0;
    else if ((lo & D0_CBLKCNT) != 0) lo = 1;
    mDelta0 = lo + 1;
    return 0;
  }
  if (type == 3) return E_UNSUPPORTED;
  mClusterOfs = lo;
  mDelta0 = 0;
  // The pack stores one block address; a HEAD's block follows from how many
  // blocks the earlier heads of the pack use.
  let nblk: u64;
  if (!big) {
    nblk = 1;
    while (i > 0) {
      --i;
      v = decodeBits(inp, encodebits * <u32>i, lomask, lbits);
      lo = v & 0xffff;
      if ((v >> 16) == CL_NONHEAD) i -= <i32>lo;
      if (i >= 0) ++nblk;
    }
  } else {
    nblk = 0;
    while (i > 0) {
      --i;
      v = decodeBits(inp, encodebits * <u32>i, lomask, lbits);
      lo = v & 0xffff;
      if ((v >> 16) == CL_NONHEAD) {
        if ((lo & D0_CBLKCNT) != 0) {
          --i;
          nblk += <u64>(lo & ~D0_CBLKCNT);
          continue;
        }
        if (lo <= 1) return E_BAD_INDEX;
        i -= <i32>lo - 2;
        continue;
      }
      ++nblk;
    }
  }
  mPblk = <u64>load<u32>(inp + <usize>packsize - 4) + nblk;
  return 0;
}

function loadCluster(lcn: u64, lookahead: bool): i32 {
  if (lcn >= zTotalIdx) return E_BAD_INDEX;
  if (gLayout == COMPRESSION_LEGACY) return loadLegacy(lcn);
  mLcn = lcn;
  let pos = zEbase;
  let shift: u32 = 2;
  let l = lcn;
  if (l >= zInit4B) {
    pos += zInit4B * 4;
    l -= zInit4B;
    if (l < zCompacted2B) {
      shift = 1;
    } else {
      pos += zCompacted2B * 2;
      l -= zCompacted2B;
    }
  }
  pos += l << shift;
  return unpackCompacted(shift, pos, lookahead);
}

function lookback(distance: u32): i32 {
  // Walks back to the HEAD/PLAIN lcluster starting this extent; each step
  // goes strictly backwards, so this ends.
  let lcn = mLcn;
  let d = <u64>distance;
  while (true) {
    if (lcn < d) return E_BAD_INDEX;
    lcn -= d;
    const err = loadCluster(lcn, false);
    if (err < 0) return err;
    if (mType == CL_NONHEAD) {
      if (mDelta0 == 0) return E_BAD_INDEX;
      d = <u64>mDelta0;
      continue;
    }
    if (mType == CL_PLAIN || mType == CL_HEAD) {
      mHeadType = mType;
      rLa = (lcn << zLbits) | <u64>mClusterOfs;
      return 0;
    }
    return E_UNSUPPORTED;
  }
  return 0;
}

function compressedLen(): i32 {
  if (mHeadType == CL_PLAIN || (zAdvise & Z_ADVISE_BIG_PCLUSTER_1) == 0) {
    rPlen = <u64>1 << zLbits;
    return 0;
  }
  const lcn = mLcn + 1;
  if (mCompressedLcs == 0) {
    const err = loadCluster(lcn, false);
    if (err < 0) return err;
    if (mType == CL_PLAIN || mType == CL_HEAD) {
      mCompressedLcs = 1;
    } else if (mType == CL_NONHEAD) {
      if (mDelta0 != 1 || mCompressedLcs == 0) return E_BAD_INDEX;
    } else {
      return E_BAD_INDEX;
    }
  }
  rPlen = <u64>mCompressedLcs << zLbits;
  return 0;
}

function decompressedLen(): i32 {
  const lbits = zLbits;
  let lcn = mLcn;
  const headlcn = rLa >> lbits;
  do {
    if ((lcn << lbits) >= gSize) {
      rLlen = gSize - rLa;
      return 0;
    }
    const err = loadCluster(lcn, true);
    if (err < 0) return err;
    if (mType == CL_PLAIN || mType == CL_HEAD) {
      if (lcn != headlcn) break;
      mDelta1 = 1;
    } else if (mType != CL_NONHEAD) {
      return E_UNSUPPORTED;
    }
    lcn += <u64>mDelta1;
  } while (mDelta1 != 0);
  const end = (lcn << lbits) + <u64>mClusterOfs;
  if (end <= rLa) return E_BAD_INDEX;
  rLlen = end - rLa;
  return 0;
}

/** Maps byte `ofs` of the file to its whole extent (rLa, rLlen, rPa, rPlen). */
function zMapCore(ofs: u64, findTail: bool): i32 {
  const lbits = zLbits;
  const initial = ofs >> lbits;
  const endoff = <u32>(ofs & ((<u64>1 << lbits) - 1));
  mCompressedLcs = 0;
  mDelta0 = 0;
  mDelta1 = 0;
  let err = loadCluster(initial, false);
  if (err < 0) return err;
  if (mType == CL_PLAIN || mType == CL_HEAD) {
    if (endoff >= mClusterOfs) {
      mHeadType = mType;
      rLa = (mLcn << lbits) | <u64>mClusterOfs;
    } else {
      // This byte belongs to the extent started in an earlier lcluster.
      if (mLcn == 0) return E_BAD_INDEX;
      mDelta0 = 1;
      err = lookback(1);
      if (err < 0) return err;
    }
  } else if (mType == CL_NONHEAD) {
    err = lookback(mDelta0);
    if (err < 0) return err;
  } else {
    return E_UNSUPPORTED;
  }
  if (findTail) return 0;
  const headLcn = mLcn;
  const headPblk = mPblk;
  if ((zAdvise & Z_ADVISE_INLINE_PCLUSTER) != 0 && headLcn == zTailHeadLcn) {
    rMeta = true;
    rPa = zIdataOff;
    rPlen = <u64>zIdataSize;
  } else {
    rMeta = false;
    rPa = headPblk << zBlkbits;
    err = compressedLen();
    if (err < 0) return err;
  }
  // Scan forward from the head for the extent's decoded length.
  mLcn = headLcn;
  return decompressedLen();
}

/* ---- block mapping ---- */

export function mapBlocks(win: usize, winLen: u32, blkbits: u32, ilocOff: u32, la: f64, rec: usize): i32 {
  if (blkbits < 9 || blkbits > 16) return E_BAD_BLKSZ;
  let err = parseHeader(win, winLen, rec);
  if (err < 0) return err;
  if (!(la >= 0) || la >= <f64>gSize) return E_RANGE;
  const pos = <u64>la;
  const blksz: u64 = <u64>1 << blkbits;
  const ix: u64 = <u64>gIsize + <u64>gXattrIsize;
  put(rec, M_DEVICE, 0);
  if (gLayout == FLAT_PLAIN || gLayout == FLAT_INLINE) {
    const nblocks = (gSize + blksz - 1) >> blkbits;
    const lastblk = nblocks - (gLayout == FLAT_INLINE ? 1 : 0);
    put(rec, M_ALG, <f64>ALG_SHIFTED);
    if (pos < (lastblk << blkbits)) {
      put(rec, M_LA, la);
      put(rec, M_LLEN, <f64>((lastblk << blkbits) - pos));
      put(rec, M_PA, <f64>((<u64>gRaw << blkbits) + pos));
      put(rec, M_PLEN, <f64>((lastblk << blkbits) - pos));
      put(rec, M_FLAGS, <f64>MAP_MAPPED);
      return 0;
    }
    // Tail packed after the inode (FLAT_INLINE).
    const tail = gSize - (lastblk << blkbits);
    const at = ix + (pos & (blksz - 1));
    if ((<u64>ilocOff + ix) % blksz + tail > blksz) return E_CORRUPT;
    if (at + (gSize - pos) > <u64>winLen) return E_CORRUPT;
    put(rec, M_LA, la);
    put(rec, M_LLEN, <f64>(gSize - pos));
    put(rec, M_PA, <f64>at);
    put(rec, M_PLEN, <f64>(gSize - pos));
    put(rec, M_FLAGS, <f64>(MAP_MAPPED | MAP_META));
    return 0;
  }
  if (gLayout == CHUNK_BASED) {
    const fmt = gRaw & 0xffff;
    if ((fmt & ~CHUNK_FORMAT_ALL) != 0) return E_UNSUPPORTED;
    const chunkbits = blkbits + (fmt & CHUNK_FORMAT_BLKBITS_MASK);
    if (chunkbits > 47) return E_CORRUPT;
    const unit: u64 = (fmt & CHUNK_FORMAT_INDEXES) != 0 ? 8 : 4;
    const chunknr = pos >> chunkbits;
    const at = roundUp(ix, unit) + unit * chunknr;
    if (at + unit > <u64>winLen) return E_CORRUPT;
    const start = chunknr << chunkbits;
    const chunk = <u64>1 << chunkbits;
    const rest = roundUp(gSize - start, blksz);
    const plen = rest < chunk ? rest : chunk;
    put(rec, M_LA, <f64>start);
    put(rec, M_LLEN, <f64>plen);
    put(rec, M_PLEN, <f64>plen);
    put(rec, M_ALG, <f64>ALG_SHIFTED);
    const p = win + <usize>at;
    const blkaddr = unit == 8 ? load<u32>(p, 4) : load<u32>(p);
    if (blkaddr == NULL_ADDR) {
      put(rec, M_PA, 0);
      put(rec, M_FLAGS, 0); // hole
      return 0;
    }
    if (unit == 8) put(rec, M_DEVICE, <f64>load<u16>(p, 2));
    put(rec, M_PA, <f64>(<u64>blkaddr << blkbits));
    put(rec, M_FLAGS, <f64>MAP_MAPPED);
    return 0;
  }
  if (gLayout == COMPRESSION || gLayout == COMPRESSION_LEGACY) {
    err = zInit(win, winLen, blkbits, ilocOff, rec, true);
    if (err < 0) return err;
    err = zMapCore(pos, false);
    if (err < 0) return err;
    if (rLa > pos || rLa + rLlen <= pos || rLa + rLlen > gSize) return E_BAD_INDEX;
    if (rMeta && rPa + rPlen > <u64>winLen) return E_CORRUPT;
    put(rec, M_LA, <f64>rLa);
    put(rec, M_LLEN, <f64>rLlen);
    put(rec, M_PA, <f64>rPa);
    put(rec, M_PLEN, <f64>rPlen);
    put(rec, M_FLAGS, <f64>(MAP_MAPPED | MAP_ENCODED | (rMeta ? MAP_META : 0)));
    put(rec, M_ALG, <f64>(mHeadType == CL_PLAIN ? ALG_SHIFTED : zAlg0));
    return 0;
  }
  return E_UNSUPPORTED;
}

/* ---- cluster decoding ---- */

export function decompressCluster(src: usize, srcLen: u32, dst: usize, dstLen: u32, alg: i32, zeroPadding: u32, partial: u32): i32 {
  if (alg == ALG_SHIFTED) {
    // Stored (uncompressed) pcluster: the extent's bytes from its start.
    if (dstLen > srcLen) return E_CORRUPT;
    memory.copy(dst, src, dstLen);
    return <i32>dstLen;
  }
  if (alg != ALG_LZ4) return E_UNSUPPORTED;
  let margin: u32 = 0;
  if (zeroPadding != 0) {
    // LZ4_0PADDING: compressed bytes sit at the end of the pcluster.
    while (margin < srcLen && load<u8>(src + margin) == 0) margin++;
    if (margin >= srcLen) return E_DECOMPRESS;
  }
  const n = lz4Decompress(src + margin, srcLen - margin, dst, dstLen, partial != 0 || zeroPadding == 0 ? 1 : 0);
  if (n != <i32>dstLen) return E_DECOMPRESS;
  return n;
}

/* ---- directories ---- */

export function dirBlock(blk: usize, len: u32, out: usize, outCap: u32): i32 {
  if (len < 12) return E_BAD_DIRENT;
  const first = <u32>load<u16>(blk, 8);
  if (first < 12 || first % 12 != 0 || first > len) return E_BAD_DIRENT;
  const count = first / 12;
  if (count > outCap) return E_RANGE;
  for (let i: u32 = 0; i < count; i++) {
    const de = blk + <usize>(i * 12);
    const nameoff = <u32>load<u16>(de, 8);
    let namelen: u32;
    if (i + 1 < count) {
      const next = <u32>load<u16>(de, 20);
      if (next < nameoff) return E_BAD_DIRENT;
      namelen = next - nameoff;
    } else {
      if (nameoff > len) return E_BAD_DIRENT;
      namelen = 0;
      while (nameoff + namelen < len && load<u8>(blk + nameoff + namelen) != 0) namelen++;
    }
    if (nameoff < first || namelen == 0 || namelen > EROFS_NAME_LEN || nameoff + namelen > len) return E_BAD_DIRENT;
    const ft = <u32>load<u8>(de, 10);
    if (ft >= EROFS_FT_MAX) return E_BAD_DIRENT;
    const o = out + <usize>(i * <u32>DIRENT_SIZE);
    store<f64>(o, <f64>load<u64>(de));
    store<u16>(o, <u16>nameoff, 8);
    store<u16>(o, <u16>namelen, 10);
    store<u8>(o, <u8>ft, 12);
  }
  return <i32>count;
}

function nameCmp(a: usize, alen: u32, b: usize, blen: u32): i32 {
  const n = alen < blen ? alen : blen;
  for (let i: u32 = 0; i < n; i++) {
    const x = <i32>load<u8>(a + i);
    const y = <i32>load<u8>(b + i);
    if (x != y) return x - y;
  }
  return <i32>alen - <i32>blen;
}

export function dirLookup(blk: usize, len: u32, name: usize, nameLen: u32): i32 {
  if (len < 12) return E_BAD_DIRENT;
  const first = <u32>load<u16>(blk, 8);
  if (first < 12 || first % 12 != 0 || first > len) return E_BAD_DIRENT;
  const count = <i32>(first / 12);
  let lo: i32 = 0;
  let hi: i32 = count - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const de = blk + <usize>(mid * 12);
    const nameoff = <u32>load<u16>(de, 8);
    let namelen: u32;
    if (mid + 1 < count) {
      const next = <u32>load<u16>(de, 20);
      if (next < nameoff) return E_BAD_DIRENT;
      namelen = next - nameoff;
    } else {
      if (nameoff > len) return E_BAD_DIRENT;
      namelen = 0;
      while (nameoff + namelen < len && load<u8>(blk + nameoff + namelen) != 0) namelen++;
    }
    if (nameoff < first || nameoff + namelen > len || namelen > EROFS_NAME_LEN) return E_BAD_DIRENT;
    const c = nameCmp(name, nameLen, blk + nameoff, namelen);
    if (c == 0) return mid;
    if (c < 0) hi = mid - 1;
    else lo = mid + 1;
  }
  if (hi < 0) return LOOKUP_BEFORE;
  if (lo >= count) return LOOKUP_AFTER;
  return LOOKUP_ABSENT;
}

/* ---- xattrs ---- */

export function xattrEntry(p: usize, len: u32, rec: usize): i32 {
  if (len < 4) {
    put(rec, X_ENTRY_SIZE, 4);
    return E_NEED_MORE;
  }
  const nameLen = <u32>load<u8>(p);
  const index = <u32>load<u8>(p, 1);
  const valueSize = <u32>load<u16>(p, 2);
  const size: u32 = (<u32>4 + nameLen + valueSize + 3) & ~3;
  put(rec, X_INDEX, <f64>index);
  put(rec, X_NAME_LEN, <f64>nameLen);
  put(rec, X_VALUE_SIZE, <f64>valueSize);
  put(rec, X_ENTRY_SIZE, <f64>size);
  if (<u32>4 + nameLen + valueSize > len) return E_NEED_MORE;
  return 0;
}

export function xattrIbody(win: usize, winLen: u32, out: usize, outCap: u32, rec: usize): i32 {
  const err = parseHeader(win, winLen, rec);
  if (err < 0) return err;
  put(rec, X_SHARED_COUNT, 0);
  if (gXattrIsize == 0) return 0;
  const start = gIsize;
  const end = gIsize + gXattrIsize;
  if (end > winLen) return E_BAD_XATTR;
  const shared = <u32>load<u8>(win + start, 4);
  put(rec, X_SHARED_COUNT, <f64>shared);
  let pos = start + 12 + 4 * shared;
  if (pos > end) return E_BAD_XATTR;
  let n: u32 = 0;
  for (let i: u32 = 0; i < shared; i++) {
    if (n >= outCap) return E_RANGE;
    const o = out + <usize>(n * <u32>XATTR_SIZE);
    store<u8>(o, 1);
    store<u32>(o, load<u32>(win + start + 12 + 4 * i), 8);
    n++;
  }
  while (pos < end) {
    if (end - pos < 4) return E_BAD_XATTR;
    const e = win + pos;
    const nameLen = <u32>load<u8>(e);
    const valueSize = <u32>load<u16>(e, 2);
    const size: u32 = (<u32>4 + nameLen + valueSize + 3) & ~3;
    if (size > end - pos) return E_BAD_XATTR; // empty names are fine: ACL prefixes are whole names
    if (n >= outCap) return E_RANGE;
    const o = out + <usize>(n * <u32>XATTR_SIZE);
    store<u8>(o, 0);
    store<u8>(o, load<u8>(e, 1), 1);
    store<u8>(o, <u8>nameLen, 2);
    store<u32>(o, valueSize, 4);
    store<u32>(o, pos + 4, 8);
    store<u32>(o, pos + 4 + nameLen, 12);
    n++;
    pos += size;
  }
  return <i32>n;
}
