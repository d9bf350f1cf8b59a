/**
 * The map-walk state: what one call of inode()/mapBlocks()/xattrIbody()
 * parses from the inode header and what the compressed-map walk (zmap.ts)
 * carries between its helpers, as the kernel keeps it in struct
 * erofs_inode (vi->datalayout, z_advise, z_algorithmtype,
 * z_logical_clusterbits, z_idata_size, z_idataoff, z_tailextent_headlcn),
 * struct z_erofs_maprecorder (lcn, type, clusterofs, delta[2], pblk,
 * compressedblks, nextpackoff, headtype) and struct erofs_map_blocks (m_la,
 * m_llen, m_pa, m_plen, EROFS_MAP_META).
 *
 * It lives in the caller's record at rec + REC_STATE_OFF (unmanaged: no
 * allocation, no GC), so the module has no mutable globals and each image
 * (each record) has its own walk. Only sbIncompat outlives a call: the host
 * sets it once per image with setFeatures(rec, incompat).
 */
import { REC_STATE_OFF } from './abi';

// @ts-ignore: decorator
@unmanaged
export class MapState {
  /* superblock (setFeatures) */
  sbIncompat: u32;
  /* inode header (inode.ts parseHeader) */
  layout: u32;
  isize: u32;
  xattrIsize: u32;
  mode: u32;
  raw: u32;
  size: u64;
  /* compressed map header and index area (zmap.ts zInit) */
  win: usize;
  winLen: u32;
  blkbits: u32;
  advise: u32;
  alg0: u32;
  lbits: u32;
  idataSize: u32;
  idataOff: u64;
  tailHeadLcn: u64;
  totalIdx: u64;
  ebase: u64; // compacted: first index byte; legacy: first 8-byte index
  init4B: u64;
  compacted2B: u64;
  metaEnd: u64;
  /* lcluster recorder */
  lcn: u64;
  pblk: u64;
  nextPackOff: u64;
  type: u32;
  headType: u32;
  clusterOfs: u32;
  delta0: u32;
  delta1: u32;
  compressedLcs: u32;
  /* map result */
  la: u64;
  llen: u64;
  pa: u64;
  plen: u64;
  meta: bool;
}

// @ts-ignore: decorator
@inline export function stateOf(rec: usize): MapState {
  return changetype<MapState>(rec + <usize>REC_STATE_OFF);
}

/** Bytes of rec the module uses: the host refuses a module whose state outgrew REC_BYTES. */
export function recBytesUsed(): i32 {
  return REC_STATE_OFF + <i32>offsetof<MapState>();
}

export function setFeatures(rec: usize, incompat: u32): void {
  stateOf(rec).sbIncompat = incompat;
}
