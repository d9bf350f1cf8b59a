/**
 * Decoding one physical cluster, following z_erofs_lz4_decompress() and
 * z_erofs_shifted_transform() in fs/erofs/decompressor.c (Linux 6.1):
 * LZ4_0PADDING puts the compressed bytes at the end of the pcluster, so
 * leading zeros are skipped and the stream must decode exactly.
 *
 *   decompressCluster(src, srcLen, dst, dstLen, alg, zeroPadding, partial)
 *       Decodes one pcluster into exactly dstLen bytes (partial ≠ 0: a
 *       prefix of the extent). Returns dstLen.
 */
import { ALG_LZ4, ALG_SHIFTED, E_CORRUPT, E_DECOMPRESS, E_UNSUPPORTED } from './abi';
import { decompress as lz4Decompress } from '../lz4/index';

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
