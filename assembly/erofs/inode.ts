/**
 * Inodes, following erofs_read_inode() and erofs_fill_inode() in
 * fs/erofs/inode.c (Linux 6.1): compact (32 B) and extended (64 B) on-disk
 * inodes, the xattr ibody size (erofs_xattr_ibody_size), rdev decoding,
 * and how many metadata bytes after iloc the inode's data layout needs
 * (inline tail, chunk index table — erofs_map_blocks() in data.c reads it
 * there —, or the compressed map header and lcluster indexes, zmap.ts).
 *
 *   inode(win, winLen, blkbits, ilocOff, rec)   I_* slots. I_META_NEED is
 *       how many window bytes from iloc the metadata spans; E_NEED_MORE
 *       when winLen is too short to tell (retry with I_META_NEED bytes).
 */
import {
  E_BAD_BLKSZ, E_BAD_MODE, E_CORRUPT, E_NEED_MORE, E_UNSUPPORTED,
  I_CHUNKBITS, I_CHUNK_UNIT, I_GID, I_INO, I_ISIZE, I_LAYOUT, I_META_NEED, I_MODE, I_MTIME, I_MTIME_NSEC, I_NLINK,
  I_RAW, I_RDEV_MAJOR, I_RDEV_MINOR, I_SIZE, I_UID, I_VERSION, I_XATTR_ISIZE, I_Z_ADVISE, I_Z_ALG, I_Z_LCLUSTERBITS,
} from './abi';
import {
  CHUNK_BASED, COMPRESSION, COMPRESSION_LEGACY, FLAT_INLINE, I_ALL,
  S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, put,
} from './format';
import { MapState, stateOf } from './state';
import { chunkGeometry } from './chunk';
import { zInit } from './zmap';

/** Reads the fixed inode header into the state (erofs_read_inode's first half). */
export function parseHeader(s: MapState, win: usize, winLen: u32, rec: usize): i32 {
  if (winLen < 32) {
    put(rec, I_META_NEED, 64);
    return E_NEED_MORE;
  }
  const ifmt = <u32>load<u16>(win);
  if ((ifmt & ~I_ALL) != 0) return E_UNSUPPORTED;
  const version = ifmt & 1;
  s.layout = (ifmt >> 1) & 7;
  if (s.layout > CHUNK_BASED) return E_UNSUPPORTED;
  const icount = <u32>load<u16>(win, 2);
  s.xattrIsize = icount == 0 ? 0 : 12 + 4 * (icount - 1);
  s.mode = <u32>load<u16>(win, 4);
  if (version == 1) {
    s.isize = 64;
    if (winLen < 64) {
      put(rec, I_META_NEED, 64);
      return E_NEED_MORE;
    }
    s.size = load<u64>(win, 8);
    s.raw = load<u32>(win, 16);
  } else {
    s.isize = 32;
    s.size = <u64>load<u32>(win, 8);
    s.raw = load<u32>(win, 16);
  }
  // Sizes beyond 2^52 cannot be real (and would not be exact as f64).
  if (s.size > 0x000fffffffffffff) return E_CORRUPT;
  const type = s.mode & S_IFMT;
  if (type != S_IFREG && type != S_IFDIR && type != S_IFLNK && type != S_IFCHR &&
      type != S_IFBLK && type != S_IFIFO && type != S_IFSOCK) return E_BAD_MODE;
  return 0;
}

export function inode(win: usize, winLen: u32, blkbits: u32, ilocOff: u32, rec: usize): i32 {
  if (blkbits < 9 || blkbits > 16) return E_BAD_BLKSZ;
  const s = stateOf(rec);
  let err = parseHeader(s, win, winLen, rec);
  if (err < 0) return err;
  const version = <u32>load<u16>(win) & 1;
  put(rec, I_VERSION, <f64>version);
  put(rec, I_LAYOUT, <f64>s.layout);
  put(rec, I_ISIZE, <f64>s.isize);
  put(rec, I_XATTR_ISIZE, <f64>s.xattrIsize);
  put(rec, I_MODE, <f64>s.mode);
  put(rec, I_SIZE, <f64>s.size);
  put(rec, I_RAW, <f64>s.raw);
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
  const type = s.mode & S_IFMT;
  const raw = s.raw;
  if (type == S_IFCHR || type == S_IFBLK) {
    // new_encode_dev: minor low byte | major << 8 | minor high bits << 12
    put(rec, I_RDEV_MAJOR, <f64>((raw & 0xfff00) >> 8));
    put(rec, I_RDEV_MINOR, <f64>((raw & 0xff) | ((raw >> 12) & 0xfff00)));
  } else {
    put(rec, I_RDEV_MAJOR, 0);
    put(rec, I_RDEV_MINOR, 0);
  }
  const blksz: u64 = 1 << blkbits;
  const ix: u64 = <u64>s.isize + <u64>s.xattrIsize;
  let need: u64 = ix;
  const hasData = type == S_IFREG || type == S_IFDIR || type == S_IFLNK;
  if (!hasData) {
    put(rec, I_META_NEED, <f64>need);
    return 0;
  }
  const layout = s.layout;
  if (layout == FLAT_INLINE) {
    const size = s.size;
    if (size > 0) {
      const nblocks = (size + blksz - 1) >> blkbits;
      const tail = size - ((nblocks - 1) << blkbits);
      if ((<u64>ilocOff + ix) % blksz + tail > blksz) return E_CORRUPT; // inline data crosses a block
      need = ix + tail;
    }
  } else if (layout == CHUNK_BASED) {
    const g = chunkGeometry(s, blkbits);
    if (g < 0) return <i32>g;
    put(rec, I_CHUNKBITS, <f64>(g & 0xff));
    put(rec, I_CHUNK_UNIT, <f64>(g >> 8));
    need = chunkTableEnd(s, ix, <u32>g);
  } else if (layout == COMPRESSION || layout == COMPRESSION_LEGACY) {
    err = zInit(s, win, winLen, blkbits, ilocOff, rec, false);
    if (err < 0) return err;
    put(rec, I_Z_ADVISE, <f64>s.advise);
    put(rec, I_Z_ALG, <f64>s.alg0);
    put(rec, I_Z_LCLUSTERBITS, <f64>s.lbits);
    need = s.metaEnd;
  }
  if (need > 0xffffffff) return E_CORRUPT;
  put(rec, I_META_NEED, <f64>need);
  return 0;
}

/** End of the chunk table: ALIGN(ix, unit) + unit * number of chunks (erofs_map_blocks). */
function chunkTableEnd(s: MapState, ix: u64, geometry: u32): u64 {
  const chunkbits = geometry & 0xff;
  const unit = <u64>(geometry >> 8);
  const nchunks = (s.size + (<u64>1 << chunkbits) - 1) >> chunkbits;
  return (ix + unit - 1) / unit * unit + unit * nchunks;
}
