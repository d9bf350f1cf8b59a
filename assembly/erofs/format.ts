/**
 * On-disk constants of EROFS (include/linux: fs/erofs/erofs_fs.h, Linux
 * 6.1 / erofs-utils 1.5) and the two helpers every part of the reader uses.
 * Private to assembly/erofs: the host sees only abi.ts. The two on-disk
 * numbers the host also needs are defined there and taken from it here.
 */
import { DEVT_SLOT_SIZE, INCOMPAT_LZ4_0PADDING as ABI_LZ4_0PADDING } from './abi';

export const EROFS_SUPER_MAGIC_V1: u32 = 0xe0f5e1e2;
export const EROFS_SUPER_OFFSET: usize = 1024;
export const COMPAT_SB_CHKSUM: u32 = 0x1;
export const INCOMPAT_LZ4_0PADDING: u32 = <u32>ABI_LZ4_0PADDING;
export const INCOMPAT_COMPR_CFGS: u32 = 0x2; // == BIG_PCLUSTER
export const INCOMPAT_CHUNKED_FILE: u32 = 0x4;
export const INCOMPAT_DEVICE_TABLE: u32 = 0x8;
export const INCOMPAT_ZTAILPACKING: u32 = 0x10;
export const ALL_INCOMPAT: u32 = INCOMPAT_LZ4_0PADDING | INCOMPAT_COMPR_CFGS | INCOMPAT_CHUNKED_FILE |
  INCOMPAT_DEVICE_TABLE | INCOMPAT_ZTAILPACKING;
export const EROFS_DEVT_SLOT_SIZE: u32 = <u32>DEVT_SLOT_SIZE;

/* i_format data layouts */
export const FLAT_PLAIN: u32 = 0;
export const COMPRESSION_LEGACY: u32 = 1;
export const FLAT_INLINE: u32 = 2;
export const COMPRESSION: u32 = 3;
export const CHUNK_BASED: u32 = 4;
export const I_ALL: u32 = 0xf; // version bit + 3 data layout bits

/* chunk-based files: i_u.c.format */
export const CHUNK_FORMAT_BLKBITS_MASK: u32 = 0x1f;
export const CHUNK_FORMAT_INDEXES: u32 = 0x20;
export const CHUNK_FORMAT_ALL: u32 = 0x3f;
export const NULL_ADDR: u32 = 0xffffffff;

export const S_IFMT: u32 = 0o170000;
export const S_IFSOCK: u32 = 0o140000;
export const S_IFLNK: u32 = 0o120000;
export const S_IFREG: u32 = 0o100000;
export const S_IFBLK: u32 = 0o060000;
export const S_IFDIR: u32 = 0o040000;
export const S_IFCHR: u32 = 0o020000;
export const S_IFIFO: u32 = 0o010000;

/* compressed layouts: z_erofs_map_header and lcluster indexes */
export const Z_ADVISE_COMPACTED_2B: u32 = 0x1;
export const Z_ADVISE_BIG_PCLUSTER_1: u32 = 0x2;
export const Z_ADVISE_BIG_PCLUSTER_2: u32 = 0x4;
export const Z_ADVISE_INLINE_PCLUSTER: u32 = 0x8;
export const Z_COMPRESSION_MAX: u32 = 2;
export const CL_PLAIN: u32 = 0;
export const CL_HEAD: u32 = 1;
export const CL_NONHEAD: u32 = 2;
export const D0_CBLKCNT: u32 = 1 << 11;

export const EROFS_NAME_LEN: u32 = 255;
export const EROFS_FT_MAX: u32 = 8;

// @ts-ignore: decorator
@inline export function put(rec: usize, slot: i32, v: f64): void {
  store<f64>(rec + (<usize>slot << 3), v);
}

// @ts-ignore: decorator
@inline export function roundUp(x: u64, a: u64): u64 {
  return (x + a - 1) / a * a;
}
