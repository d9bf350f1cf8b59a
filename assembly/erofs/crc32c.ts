/**
 * crc32c (Castagnoli, reflected 0x82F63B78) without final inversion, as the
 * kernel's crc32c() that erofs_superblock_csum_verify() (fs/erofs/super.c)
 * calls. Bitwise: it only ever covers one superblock block.
 */

export function crc32c(p: usize, len: u32, seed: u32): u32 {
  let crc = seed;
  for (let i: u32 = 0; i < len; i++) {
    crc ^= <u32>load<u8>(p + i);
    for (let k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82f63b78 & (0 - (crc & 1)));
  }
  return crc;
}
