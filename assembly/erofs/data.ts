/**
 * Block mapping: file offset → extent, following erofs_map_blocks() and
 * erofs_map_blocks_flatmode() in fs/erofs/data.c and z_erofs_map_blocks_iter()
 * in fs/erofs/zmap.c (Linux 6.1).
 *
 *   mapBlocks(win, winLen, blkbits, ilocOff, la, rec)   Maps logical byte
 *       la (< i_size) to the extent holding it: M_LA, M_LLEN, M_PA, M_PLEN,
 *       M_FLAGS (MAP_MAPPED | MAP_META (M_PA relative to iloc) |
 *       MAP_ENCODED), M_ALG (ALG_LZ4, ALG_LZMA, ALG_SHIFTED = stored),
 *       M_DEVICE (the raw chunk-index device id; mapDevice() in chunk.ts
 *       resolves it). Compressed extents are returned whole (M_LA = extent
 *       start, M_LLEN = its full decoded length).
 */
import {
  ALG_SHIFTED, E_BAD_BLKSZ, E_BAD_INDEX, E_CORRUPT, E_RANGE, E_UNSUPPORTED,
  M_ALG, M_DEVICE, M_FLAGS, M_LA, M_LLEN, M_PA, M_PLEN, MAP_ENCODED, MAP_MAPPED, MAP_META,
} from './abi';
import { CHUNK_BASED, CL_PLAIN, COMPRESSION, COMPRESSION_LEGACY, FLAT_INLINE, FLAT_PLAIN, put } from './format';
import { stateOf } from './state';
import { parseHeader } from './inode';
import { chunkMap } from './chunk';
import { zInit, zMapCore } from './zmap';

export function mapBlocks(win: usize, winLen: u32, blkbits: u32, ilocOff: u32, la: f64, rec: usize): i32 {
  if (blkbits < 9 || blkbits > 16) return E_BAD_BLKSZ;
  const s = stateOf(rec);
  let err = parseHeader(s, win, winLen, rec);
  if (err < 0) return err;
  const size = s.size;
  if (!(la >= 0) || la >= <f64>size) return E_RANGE;
  const pos = <u64>la;
  const blksz: u64 = <u64>1 << blkbits;
  const ix: u64 = <u64>s.isize + <u64>s.xattrIsize;
  const layout = s.layout;
  put(rec, M_DEVICE, 0);
  if (layout == FLAT_PLAIN || layout == FLAT_INLINE) {
    // erofs_map_blocks_flatmode()
    const nblocks = (size + blksz - 1) >> blkbits;
    const lastblk = nblocks - (layout == FLAT_INLINE ? 1 : 0);
    put(rec, M_ALG, <f64>ALG_SHIFTED);
    if (pos < (lastblk << blkbits)) {
      put(rec, M_LA, la);
      put(rec, M_LLEN, <f64>((lastblk << blkbits) - pos));
      put(rec, M_PA, <f64>((<u64>s.raw << blkbits) + pos));
      put(rec, M_PLEN, <f64>((lastblk << blkbits) - pos));
      put(rec, M_FLAGS, <f64>MAP_MAPPED);
      return 0;
    }
    // Tail packed after the inode (FLAT_INLINE).
    const tail = size - (lastblk << blkbits);
    const at = ix + (pos & (blksz - 1));
    if ((<u64>ilocOff + ix) % blksz + tail > blksz) return E_CORRUPT;
    if (at + (size - pos) > <u64>winLen) return E_CORRUPT;
    put(rec, M_LA, la);
    put(rec, M_LLEN, <f64>(size - pos));
    put(rec, M_PA, <f64>at);
    put(rec, M_PLEN, <f64>(size - pos));
    put(rec, M_FLAGS, <f64>(MAP_MAPPED | MAP_META));
    return 0;
  }
  if (layout == CHUNK_BASED) return chunkMap(s, win, winLen, blkbits, ix, pos, rec);
  if (layout == COMPRESSION || layout == COMPRESSION_LEGACY) {
    err = zInit(s, win, winLen, blkbits, ilocOff, rec, true);
    if (err < 0) return err;
    err = zMapCore(s, pos, false);
    if (err < 0) return err;
    if (s.la > pos || s.la + s.llen <= pos || s.la + s.llen > size) return E_BAD_INDEX;
    if (s.meta && s.pa + s.plen > <u64>winLen) return E_CORRUPT;
    put(rec, M_LA, <f64>s.la);
    put(rec, M_LLEN, <f64>s.llen);
    put(rec, M_PA, <f64>s.pa);
    put(rec, M_PLEN, <f64>s.plen);
    put(rec, M_FLAGS, <f64>(MAP_MAPPED | MAP_ENCODED | (s.meta ? MAP_META : 0)));
    put(rec, M_ALG, <f64>(s.headType == CL_PLAIN ? ALG_SHIFTED : s.alg0));
    return 0;
  }
  return E_UNSUPPORTED;
}
