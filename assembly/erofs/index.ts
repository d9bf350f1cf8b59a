/**
 * EROFS on-disk format reader (linux fs/erofs/erofs_fs.h as of erofs-utils
 * 1.5 / Linux 6.1), the entry of build/wasm/erofs.wasm. The reader is split
 * by on-disk structure, each file naming the fs/erofs/*.c functions whose
 * behaviour it follows:
 *   abi.ts         return codes, record slots, flags: the ABI, written once
 *   format.ts      erofs_fs.h constants
 *   super.ts       superblock, crc32c check, device table slots (super.c)
 *   inode.ts       compact/extended inodes, metadata extent (inode.c)
 *   data.ts        block mapping for every layout (data.c, zmap.c)
 *   chunk.ts       chunk-based files: block maps, chunk indexes with
 *                  device ids, multi-device mapping (data.c)
 *   zmap.ts        compressed layouts' lcluster walk (zmap.c)
 *   decompress.ts  one pcluster: LZ4 / stored (decompressor.c)
 *   dir.ts         directory blocks and lookup (dir.c, namei.c)
 *   xattr.ts       inline and shared xattrs (xattr.c)
 *   state.ts       the map-walk state, kept in the caller's record
 *
 * No I/O: the host reads image bytes into linear memory and hands this
 * module windows of them. Every read here is checked against the window it
 * was given; hostile images give error codes, never traps or stray reads.
 * No static data and no mutable globals (so the module shares a Memory
 * with others freely, and each caller record is an independent reader).
 *
 * Results go to a caller-owned record `rec` of REC_BYTES (1024) bytes: 64
 * f64 slots, then the walk state. Offsets "relative" are from the inode's
 * first byte (iloc); every window given for an inode starts at iloc, and
 * `ilocOff` is iloc modulo the block size (for block-crossing checks).
 *
 * Exported ABI (return ≥ 0 success, < 0 an E_* code; each function is
 * documented in its file):
 *   setFeatures(rec, incompat)          state.ts (once per image)
 *   recBytesUsed()                      state.ts
 *   superblock(buf, len, rec)           super.ts
 *   deviceSlot(p, rec)                  super.ts
 *   inode(win, winLen, blkbits, ilocOff, rec)        inode.ts
 *   mapBlocks(win, winLen, blkbits, ilocOff, la, rec)   data.ts
 *   mapDevice(devt, devices, blkbits, rec)           chunk.ts
 *   decompressCluster(src, srcLen, dst, dstLen, alg, zeroPadding, partial)
 *                                       decompress.ts
 *   dirBlock(blk, len, out, outCap), dirLookup(blk, len, name, nameLen)
 *                                       dir.ts
 *   xattrIbody(win, winLen, out, outCap, rec), xattrEntry(p, len, rec)
 *                                       xattr.ts
 *   crc32c(p, len, seed)                crc32c.ts
 * and every constant of abi.ts as an exported global, which src/hot/erofs.ts
 * reads at load (the single source of the numbers).
 */
export * from './abi';
export { crc32c } from './crc32c';
export { superblock, deviceSlot } from './super';
export { setFeatures, recBytesUsed } from './state';
export { inode } from './inode';
export { mapBlocks } from './data';
export { mapDevice } from './chunk';
export { decompressCluster } from './decompress';
export { dirBlock, dirLookup } from './dir';
export { xattrIbody, xattrEntry } from './xattr';
