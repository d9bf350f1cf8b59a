/**
 * Superblock and device table, following erofs_read_superblock(),
 * erofs_superblock_csum_verify(), erofs_scan_devices() and
 * erofs_init_device() in fs/erofs/super.c (Linux 6.1).
 *
 *   superblock(buf, len, rec)   S_* slots; refuses bad magic, a block size
 *       outside 2^9..2^16, unknown incompatible features, a bad crc32c.
 *   deviceSlot(p, rec)   one 128-byte erofs_deviceslot at p: D_BLOCKS,
 *       D_MAPPED_BLKADDR, D_TAG_LEN.
 */
import {
  E_BAD_BLKSZ, E_BAD_CHECKSUM, E_BAD_MAGIC, E_CORRUPT, E_NEED_MORE, E_UNSUPPORTED_FEATURE,
  D_BLOCKS, D_MAPPED_BLKADDR, D_TAG_LEN,
  S_BLKBITS, S_BLOCKS, S_BUILD_TIME, S_BUILD_TIME_NSEC, S_CHECKSUM, S_COMPR_ALGS, S_DEVICES,
  S_DEVT_OFF, S_DEVT_SLOTOFF, S_EXTRA_DEVICES, S_EXTSLOTS, S_FEATURE_COMPAT, S_FEATURE_INCOMPAT, S_INOS,
  S_META_BLKADDR, S_ROOT_NID, S_UNKNOWN_INCOMPAT, S_XATTR_BLKADDR,
} from './abi';
import {
  ALL_INCOMPAT, COMPAT_SB_CHKSUM, EROFS_DEVT_SLOT_SIZE, EROFS_SUPER_MAGIC_V1, EROFS_SUPER_OFFSET,
  INCOMPAT_DEVICE_TABLE, put,
} from './format';
import { crc32c } from './crc32c';

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
  const extra = <u32>load<u16>(sb, 86);
  const slotoff = <u32>load<u16>(sb, 88);
  put(rec, S_EXTRA_DEVICES, <f64>extra);
  put(rec, S_DEVT_SLOTOFF, <f64>slotoff);
  // erofs_scan_devices(): without the feature bit the count is ignored.
  const devices: u32 = (incompat & INCOMPAT_DEVICE_TABLE) != 0 ? extra : 0;
  put(rec, S_DEVICES, <f64>devices);
  put(rec, S_DEVT_OFF, <f64>(<u64>slotoff * <u64>EROFS_DEVT_SLOT_SIZE));
  return 0;
}

/** One erofs_deviceslot: u8 tag[64], __le32 blocks, __le32 mapped_blkaddr. */
export function deviceSlot(p: usize, rec: usize): i32 {
  let tagLen: u32 = 0;
  while (tagLen < 64 && load<u8>(p + tagLen) != 0) tagLen++;
  put(rec, D_TAG_LEN, <f64>tagLen);
  put(rec, D_BLOCKS, <f64>load<u32>(p, 64));
  put(rec, D_MAPPED_BLKADDR, <f64>load<u32>(p, 68));
  return 0;
}
