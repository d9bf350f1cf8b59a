/**
 * The ABI of build/wasm/erofs.wasm: return codes, result-record slots, map
 * flags and the sizes of the caller-owned records. This file is the ONE
 * place these numbers are written: every constant here is exported from the
 * module (assembly/erofs/index.ts re-exports them as WebAssembly globals)
 * and src/hot/erofs.ts reads them from the instance at load, refusing a
 * module that lacks one. Nothing on the TypeScript side repeats a number.
 *
 * The result record `rec` is REC_BYTES long: 64 f64 slots (integers exact
 * below 2^53), then the map-walk state (assembly/erofs/state.ts), which is
 * private to this module but owned by the caller so that the module keeps
 * no mutable globals and two images never share a walk.
 */

/* ---- return codes (≥ 0 success) ---- */
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
/** A chunk index names a device the superblock's device table does not have. */
export const E_BAD_DEVICE: i32 = -14;
/** A chunk (or block) address lies outside the device it is on. */
export const E_OUTSIDE_DEVICE: i32 = -15;

export const LOOKUP_BEFORE: i32 = -100;
export const LOOKUP_AFTER: i32 = -101;
export const LOOKUP_ABSENT: i32 = -102;

/* ---- record layout ---- */
export const REC_SLOTS: i32 = 64;
/** Byte offset of the map-walk state inside rec. */
export const REC_STATE_OFF: i32 = 512;
export const REC_BYTES: i32 = 1024;

/* ---- superblock slots ---- */
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
/** extra_devices as stored (meaningful only with the device table feature). */
export const S_EXTRA_DEVICES: i32 = 11;
export const S_DEVT_SLOTOFF: i32 = 12;
export const S_EXTSLOTS: i32 = 13;
export const S_CHECKSUM: i32 = 14;
export const S_UNKNOWN_INCOMPAT: i32 = 15;
/** Extra devices in use: extra_devices when DEVICE_TABLE is set, else 0 (erofs_scan_devices). */
export const S_DEVICES: i32 = 16;
/** Byte offset of the device table in the image (devt_slotoff * 128). */
export const S_DEVT_OFF: i32 = 17;

/* ---- inode slots ---- */
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
/** Chunk-based: 8 (chunk indexes with device ids) or 4 (block map). */
export const I_CHUNK_UNIT: i32 = 20;

/* ---- map slots ---- */
export const M_LA: i32 = 32;
export const M_LLEN: i32 = 33;
export const M_PA: i32 = 34;
export const M_PLEN: i32 = 35;
export const M_FLAGS: i32 = 36;
export const M_ALG: i32 = 37;
export const M_DEVICE: i32 = 38;

/* ---- device slot slots ---- */
export const D_BLOCKS: i32 = 40;
export const D_MAPPED_BLKADDR: i32 = 41;
/** Length of the NUL-terminated tag (bytes 0..63 of the slot). */
export const D_TAG_LEN: i32 = 42;

/* ---- xattr slots ---- */
export const X_SHARED_COUNT: i32 = 48;
export const X_INDEX: i32 = 49;
export const X_NAME_LEN: i32 = 50;
export const X_VALUE_SIZE: i32 = 51;
export const X_ENTRY_SIZE: i32 = 52;

/* ---- map flags and algorithms ---- */
export const MAP_MAPPED: i32 = 1;
export const MAP_META: i32 = 2;
export const MAP_ENCODED: i32 = 4;
export const ALG_LZ4: i32 = 0;
export const ALG_LZMA: i32 = 1;
export const ALG_SHIFTED: i32 = 255;

/* ---- output record sizes ---- */
export const DIRENT_SIZE: i32 = 16;
export const XATTR_SIZE: i32 = 16;
/** On-disk size of one device table slot (EROFS_DEVT_SLOT_SIZE). */
export const DEVT_SLOT_SIZE: i32 = 128;

/* ---- superblock feature bits the host also needs ---- */
export const INCOMPAT_LZ4_0PADDING: i32 = 0x1;
