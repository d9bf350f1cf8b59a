/**
 * Compressed layouts: the logical-cluster (lcluster) index walk that maps a
 * file offset to its compressed extent, following fs/erofs/zmap.c (Linux
 * 6.1):
 *   zInit             z_erofs_fill_inode_lazy() (map header, index area,
 *                     ztailpacking's inline extent)
 *   loadLegacy        legacy_load_cluster_from_disk() (8-byte indexes)
 *   unpackCompacted   unpack_compacted_index() (4B/2B packs), laDistance
 *                     its get_compacted_la_distance()
 *   loadCluster       z_erofs_load_cluster_from_disk() /
 *                     compacted_load_cluster_from_disk()
 *   lookback          z_erofs_extent_lookback()
 *   compressedLen     z_erofs_get_extent_compressedlen()
 *   decompressedLen   z_erofs_get_extent_decompressedlen()
 *   zMapCore          z_erofs_do_map_blocks()
 * All state is in the caller's MapState (state.ts): window, header fields
 * (the kernel's erofs_inode z_* fields), the lcluster recorder
 * (z_erofs_maprecorder) and the result (erofs_map_blocks). Every index read
 * is checked against the window; each lookback step goes strictly
 * backwards, so a hostile index ends in an error, never a loop.
 */
import { E_BAD_INDEX, E_CORRUPT, E_NEED_MORE, E_UNSUPPORTED, I_META_NEED } from './abi';
import {
  CL_HEAD, CL_NONHEAD, CL_PLAIN, COMPRESSION, COMPRESSION_LEGACY, D0_CBLKCNT, INCOMPAT_COMPR_CFGS, INCOMPAT_ZTAILPACKING,
  Z_ADVISE_BIG_PCLUSTER_1, Z_ADVISE_BIG_PCLUSTER_2, Z_ADVISE_COMPACTED_2B, Z_ADVISE_INLINE_PCLUSTER, Z_COMPRESSION_MAX,
  put, roundUp,
} from './format';
import { MapState } from './state';

/**
 * Reads the map header and lays out the index area (where each lcluster's
 * index lives), then, for ztailpacking, finds the inline tail extent.
 * `full`: the window is known to hold all metadata (mapBlocks).
 */
export function zInit(s: MapState, win: usize, winLen: u32, blkbits: u32, ilocOff: u32, rec: usize, full: bool): i32 {
  s.win = win;
  s.winLen = winLen;
  s.blkbits = blkbits;
  const ix: u64 = <u64>s.isize + <u64>s.xattrIsize;
  const hpos = roundUp(ix, 8);
  // Images made before big pclusters/ztailpacking leave the legacy map
  // header unset: 4 KiB lclusters, LZ4, no advise bits.
  if (s.layout == COMPRESSION_LEGACY && (s.sbIncompat & (INCOMPAT_COMPR_CFGS | INCOMPAT_ZTAILPACKING)) == 0) {
    s.advise = 0;
    s.alg0 = 0;
    s.lbits = blkbits;
    s.idataSize = 0;
  } else {
    if (hpos + 8 > <u64>winLen) {
      put(rec, I_META_NEED, <f64>(hpos + 8));
      return E_NEED_MORE;
    }
    s.idataSize = <u32>load<u16>(win + <usize>hpos, 2);
    s.advise = <u32>load<u16>(win + <usize>hpos, 4);
    const alg = <u32>load<u8>(win + <usize>hpos, 6);
    s.alg0 = alg & 15;
    if (s.alg0 >= Z_COMPRESSION_MAX) return E_UNSUPPORTED;
    s.lbits = blkbits + (<u32>load<u8>(win + <usize>hpos, 7) & 7);
  }
  const advise = s.advise;
  if (s.layout == COMPRESSION &&
      ((advise & Z_ADVISE_BIG_PCLUSTER_1) == 0) != ((advise & Z_ADVISE_BIG_PCLUSTER_2) == 0)) return E_CORRUPT;
  s.totalIdx = (s.size + (<u64>1 << s.lbits) - 1) >> s.lbits;
  let indexEnd: u64;
  if (s.layout == COMPRESSION_LEGACY) {
    s.ebase = hpos + 16;
    indexEnd = s.ebase + 8 * s.totalIdx;
  } else {
    if (s.lbits != 12) return E_UNSUPPORTED;
    s.ebase = hpos + 8;
    let init4B = (32 - s.ebase % 32) / 4;
    if (init4B == 8) init4B = 0;
    s.init4B = init4B;
    if ((advise & Z_ADVISE_COMPACTED_2B) != 0 && init4B < s.totalIdx) {
      s.compacted2B = (s.totalIdx - init4B) / 16 * 16;
    } else {
      s.compacted2B = 0;
    }
    if (s.totalIdx == 0) {
      indexEnd = s.ebase;
    } else {
      // The pack holding the last lcluster ends the index area.
      let pos = s.ebase;
      let packsize: u64 = 8;
      let lcn = s.totalIdx - 1;
      if (lcn < init4B) {
        pos += lcn * 4;
      } else {
        pos += init4B * 4;
        lcn -= init4B;
        if (lcn < s.compacted2B) {
          pos += lcn * 2;
          packsize = 32;
        } else {
          pos += s.compacted2B * 2 + (lcn - s.compacted2B) * 4;
        }
      }
      indexEnd = pos / packsize * packsize + packsize;
    }
  }
  s.metaEnd = indexEnd;
  const inline = (advise & Z_ADVISE_INLINE_PCLUSTER) != 0;
  if (full && s.metaEnd + (inline ? <u64>s.idataSize : 0) > <u64>winLen) {
    put(rec, I_META_NEED, <f64>(s.metaEnd + <u64>s.idataSize));
    return E_NEED_MORE;
  }
  if (inline) {
    if ((s.sbIncompat & INCOMPAT_ZTAILPACKING) == 0) return E_CORRUPT;
    s.idataOff = indexEnd;
    s.metaEnd = indexEnd + <u64>s.idataSize;
    if (s.idataSize == 0 || (<u64>ilocOff + s.idataOff) % (<u64>1 << blkbits) + <u64>s.idataSize > (<u64>1 << blkbits)) return E_CORRUPT;
    if (full && s.size > 0) {
      // Which extent is the inline tail: the one holding the last byte.
      s.tailHeadLcn = 0xffffffffffffffff;
      const err = zMapCore(s, s.size - 1, true);
      if (err < 0) return err;
      s.tailHeadLcn = s.lcn;
    }
  }
  return 0;
}

function loadLegacy(s: MapState, lcn: u64): i32 {
  const pos = s.ebase + lcn * 8;
  if (pos + 8 > <u64>s.winLen) return E_BAD_INDEX;
  const di = s.win + <usize>pos;
  s.nextPackOff = pos + 8;
  s.lcn = lcn;
  const type = <u32>load<u16>(di) & 3;
  if (type == CL_NONHEAD) {
    s.clusterOfs = 1 << s.lbits;
    let d0 = <u32>load<u16>(di, 4);
    if ((d0 & D0_CBLKCNT) != 0) {
      if ((s.advise & Z_ADVISE_BIG_PCLUSTER_1) == 0) return E_BAD_INDEX;
      s.compressedLcs = d0 & ~D0_CBLKCNT;
      d0 = 1;
    }
    s.delta0 = d0;
    s.delta1 = <u32>load<u16>(di, 6);
  } else if (type == CL_PLAIN || type == CL_HEAD) {
    s.clusterOfs = <u32>load<u16>(di, 2);
    s.pblk = <u64>load<u32>(di, 4);
  } else {
    return E_UNSUPPORTED;
  }
  s.type = type;
  return 0;
}

// @ts-ignore: decorator
@inline function decodeBits(inp: usize, bitpos: u32, lomask: u32, lobits: u32): u32 {
  // Returns lo | type << 16.
  const v = load<u32>(inp + (bitpos >> 3)) >> (bitpos & 7);
  return (v & lomask) | (((v >> lobits) & 3) << 16);
}

function laDistance(lbits: u32, encodebits: u32, vcnt: u32, inp: usize, i: u32): u32 {
  const lomask: u32 = (1 << lbits) - 1;
  let d1: u32 = 0;
  let lo: u32 = 0;
  do {
    const v = decodeBits(inp, encodebits * i, lomask, lbits);
    lo = v & 0xffff;
    if ((v >> 16) != CL_NONHEAD) return d1;
    d1++;
  } while (++i < vcnt);
  // The last NONHEAD of a pack stores delta[1] instead of delta[0].
  if ((lo & D0_CBLKCNT) == 0) d1 += lo - 1;
  return d1;
}

function unpackCompacted(s: MapState, amortizedshift: u32, pos: u64, lookahead: bool): i32 {
  const lbits = s.lbits;
  const lomask: u32 = (1 << lbits) - 1;
  let vcnt: u32;
  if (amortizedshift == 2) vcnt = 2;
  else if (amortizedshift == 1 && lbits == 12) vcnt = 16;
  else return E_UNSUPPORTED;
  const packsize: u64 = <u64>(vcnt << amortizedshift);
  const base = pos / packsize * packsize;
  if (base + packsize > <u64>s.winLen) return E_BAD_INDEX;
  s.nextPackOff = base + packsize;
  const big = (s.advise & Z_ADVISE_BIG_PCLUSTER_1) != 0;
  const encodebits: u32 = (<u32>packsize - 4) * 8 / vcnt;
  const inp = s.win + <usize>base;
  let i = <i32>((pos - base) >> amortizedshift);
  let v = decodeBits(inp, encodebits * <u32>i, lomask, lbits);
  let lo = v & 0xffff;
  let type = v >> 16;
  s.type = type;
  if (type == CL_NONHEAD) {
    s.clusterOfs = 1 << lbits;
    if (lookahead) s.delta1 = laDistance(lbits, encodebits, vcnt, inp, <u32>i);
    if ((lo & D0_CBLKCNT) != 0) {
      if (!big) return E_BAD_INDEX;
      s.compressedLcs = lo & ~D0_CBLKCNT;
      s.delta0 = 1;
      return 0;
    } else if (<u32>(i + 1) != vcnt) {
      s.delta0 = lo;
      return 0;
    }
    // Last entry of the pack: its lo is delta[1]; delta[0] comes from the
    // previous entry.
    v = decodeBits(inp, encodebits * <u32>(i - 1), lomask, lbits);
    lo = v & 0xffff;
    type = v >> 16;
    if (type != CL_NONHEAD) lo = 0;
    else if ((lo & D0_CBLKCNT) != 0) lo = 1;
    s.delta0 = lo + 1;
    return 0;
  }
  if (type == 3) return E_UNSUPPORTED;
  s.clusterOfs = lo;
  s.delta0 = 0;
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
  s.pblk = <u64>load<u32>(inp + <usize>packsize - 4) + nblk;
  return 0;
}

function loadCluster(s: MapState, lcn: u64, lookahead: bool): i32 {
  if (lcn >= s.totalIdx) return E_BAD_INDEX;
  if (s.layout == COMPRESSION_LEGACY) return loadLegacy(s, lcn);
  s.lcn = lcn;
  let pos = s.ebase;
  let shift: u32 = 2;
  let l = lcn;
  const init4B = s.init4B;
  if (l >= init4B) {
    pos += init4B * 4;
    l -= init4B;
    const compacted2B = s.compacted2B;
    if (l < compacted2B) {
      shift = 1;
    } else {
      pos += compacted2B * 2;
      l -= compacted2B;
    }
  }
  pos += l << shift;
  return unpackCompacted(s, shift, pos, lookahead);
}

function lookback(s: MapState, distance: u32): i32 {
  // Walks back to the HEAD/PLAIN lcluster starting this extent; each step
  // goes strictly backwards, so this ends.
  let lcn = s.lcn;
  let d = <u64>distance;
  while (true) {
    if (lcn < d) return E_BAD_INDEX;
    lcn -= d;
    const err = loadCluster(s, lcn, false);
    if (err < 0) return err;
    if (s.type == CL_NONHEAD) {
      if (s.delta0 == 0) return E_BAD_INDEX;
      d = <u64>s.delta0;
      continue;
    }
    if (s.type == CL_PLAIN || s.type == CL_HEAD) {
      s.headType = s.type;
      s.la = (lcn << s.lbits) | <u64>s.clusterOfs;
      return 0;
    }
    return E_UNSUPPORTED;
  }
  return 0;
}

function compressedLen(s: MapState): i32 {
  if (s.headType == CL_PLAIN || (s.advise & Z_ADVISE_BIG_PCLUSTER_1) == 0) {
    s.plen = <u64>1 << s.lbits;
    return 0;
  }
  const lcn = s.lcn + 1;
  if (s.compressedLcs == 0) {
    const err = loadCluster(s, lcn, false);
    if (err < 0) return err;
    if (s.type == CL_PLAIN || s.type == CL_HEAD) {
      s.compressedLcs = 1;
    } else if (s.type == CL_NONHEAD) {
      if (s.delta0 != 1 || s.compressedLcs == 0) return E_BAD_INDEX;
    } else {
      return E_BAD_INDEX;
    }
  }
  s.plen = <u64>s.compressedLcs << s.lbits;
  return 0;
}

function decompressedLen(s: MapState): i32 {
  const lbits = s.lbits;
  const size = s.size;
  let lcn = s.lcn;
  const headlcn = s.la >> lbits;
  do {
    if ((lcn << lbits) >= size) {
      s.llen = size - s.la;
      return 0;
    }
    const err = loadCluster(s, lcn, true);
    if (err < 0) return err;
    if (s.type == CL_PLAIN || s.type == CL_HEAD) {
      if (lcn != headlcn) break;
      s.delta1 = 1;
    } else if (s.type != CL_NONHEAD) {
      return E_UNSUPPORTED;
    }
    lcn += <u64>s.delta1;
  } while (s.delta1 != 0);
  const end = (lcn << lbits) + <u64>s.clusterOfs;
  if (end <= s.la) return E_BAD_INDEX;
  s.llen = end - s.la;
  return 0;
}

/** Maps byte `ofs` of the file to its whole extent (s.la, s.llen, s.pa, s.plen). */
export function zMapCore(s: MapState, ofs: u64, findTail: bool): i32 {
  const lbits = s.lbits;
  const initial = ofs >> lbits;
  const endoff = <u32>(ofs & ((<u64>1 << lbits) - 1));
  s.compressedLcs = 0;
  s.delta0 = 0;
  s.delta1 = 0;
  let err = loadCluster(s, initial, false);
  if (err < 0) return err;
  if (s.type == CL_PLAIN || s.type == CL_HEAD) {
    if (endoff >= s.clusterOfs) {
      s.headType = s.type;
      s.la = (s.lcn << lbits) | <u64>s.clusterOfs;
    } else {
      // This byte belongs to the extent started in an earlier lcluster.
      if (s.lcn == 0) return E_BAD_INDEX;
      s.delta0 = 1;
      err = lookback(s, 1);
      if (err < 0) return err;
    }
  } else if (s.type == CL_NONHEAD) {
    err = lookback(s, s.delta0);
    if (err < 0) return err;
  } else {
    return E_UNSUPPORTED;
  }
  if (findTail) return 0;
  const headLcn = s.lcn;
  const headPblk = s.pblk;
  if ((s.advise & Z_ADVISE_INLINE_PCLUSTER) != 0 && headLcn == s.tailHeadLcn) {
    s.meta = true;
    s.pa = s.idataOff;
    s.plen = <u64>s.idataSize;
  } else {
    s.meta = false;
    s.pa = headPblk << s.blkbits;
    err = compressedLen(s);
    if (err < 0) return err;
  }
  // Scan forward from the head for the extent's decoded length.
  s.lcn = headLcn;
  return decompressedLen(s);
}
