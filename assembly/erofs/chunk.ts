/**
 * Chunk-based regular files (EROFS_INODE_CHUNK_BASED) and multiple devices,
 * following erofs_map_blocks() and erofs_map_dev() in fs/erofs/data.c and
 * the chunkbits set up by erofs_read_inode() in fs/erofs/inode.c (Linux
 * 6.1).
 *
 * After the inode (and its xattrs), aligned to the entry size, sits one
 * entry per chunk of 2^chunkbits bytes: a 4-byte block address (block map,
 * always on the primary device), or with EROFS_CHUNK_FORMAT_INDEXES an
 * 8-byte struct erofs_inode_chunk_index { __le16 advise; __le16 device_id;
 * __le32 blkaddr; }. EROFS_NULL_ADDR is a hole.
 *
 *   mapDevice(devt, devices, blkbits, rec)   erofs_map_dev(): takes
 *       M_DEVICE / M_PA / M_PLEN from a mapBlocks() result and checks the
 *       device id against the device table (devt = the `devices` on-disk
 *       128-byte slots): id > devices is E_BAD_DEVICE. The kernel instead
 *       masks the id with roundup_pow_of_two(devices + 1) - 1
 *       (sbi->device_id_mask), so a corrupt id silently reads another
 *       device; we refuse it, so it is an error and never wrong bytes (ids
 *       mkfs.erofs writes are ≤ devices, where both agree). An extent past a device's
 *       declared blocks is E_OUTSIDE_DEVICE (blocks = 0, as mkfs.erofs 1.5
 *       --blobdev writes, means "size not declared": the host then bounds
 *       the read by the device file). Device 0 with flat addressing
 *       (mapped_blkaddr ≠ 0) is remapped onto that device. Writes the final
 *       M_DEVICE and M_PA.
 */
import { E_BAD_DEVICE, E_CORRUPT, E_OUTSIDE_DEVICE, E_UNSUPPORTED, M_ALG, M_DEVICE, M_FLAGS, M_LA, M_LLEN, M_PA, M_PLEN, ALG_SHIFTED, MAP_MAPPED } from './abi';
import { CHUNK_FORMAT_ALL, CHUNK_FORMAT_BLKBITS_MASK, CHUNK_FORMAT_INDEXES, EROFS_DEVT_SLOT_SIZE, NULL_ADDR, put, roundUp } from './format';
import { MapState } from './state';

/**
 * chunkbits | unit << 8 (unit 4 or 8 bytes) for the inode in `s`, or an
 * E_* code: an unknown format bit is EOPNOTSUPP in the kernel.
 */
export function chunkGeometry(s: MapState, blkbits: u32): i32 {
  const fmt = s.raw & 0xffff;
  if ((fmt & ~CHUNK_FORMAT_ALL) != 0) return E_UNSUPPORTED;
  const chunkbits = blkbits + (fmt & CHUNK_FORMAT_BLKBITS_MASK);
  if (chunkbits > 47) return E_CORRUPT;
  const unit: u32 = (fmt & CHUNK_FORMAT_INDEXES) != 0 ? 8 : 4;
  return <i32>(chunkbits | (unit << 8));
}

/** The chunk-based branch of erofs_map_blocks(): the chunk holding byte pos. */
export function chunkMap(s: MapState, win: usize, winLen: u32, blkbits: u32, ix: u64, pos: u64, rec: usize): i32 {
  const g = chunkGeometry(s, blkbits);
  if (g < 0) return g;
  const chunkbits = <u32>g & 0xff;
  const unit = <u64>(<u32>g >> 8);
  const blksz: u64 = <u64>1 << blkbits;
  const chunknr = pos >> chunkbits;
  const at = roundUp(ix, unit) + unit * chunknr;
  if (at + unit > <u64>winLen) return E_CORRUPT;
  const start = chunknr << chunkbits;
  const chunk = <u64>1 << chunkbits;
  const rest = roundUp(s.size - start, blksz);
  const plen = rest < chunk ? rest : chunk;
  put(rec, M_LA, <f64>start);
  put(rec, M_LLEN, <f64>plen);
  put(rec, M_PLEN, <f64>plen);
  put(rec, M_ALG, <f64>ALG_SHIFTED);
  const p = win + <usize>at;
  const blkaddr = unit == 8 ? load<u32>(p, 4) : load<u32>(p);
  if (blkaddr == NULL_ADDR) {
    put(rec, M_PA, 0);
    put(rec, M_FLAGS, 0); // hole
    return 0;
  }
  if (unit == 8) put(rec, M_DEVICE, <f64>load<u16>(p, 2));
  put(rec, M_PA, <f64>(<u64>blkaddr << blkbits));
  put(rec, M_FLAGS, <f64>MAP_MAPPED);
  return 0;
}

export function mapDevice(devt: usize, devices: u32, blkbits: u32, rec: usize): i32 {
  const id = <u32>load<f64>(rec + (<usize>M_DEVICE << 3));
  const pa = <u64>load<f64>(rec + (<usize>M_PA << 3));
  const plen = <u64>load<f64>(rec + (<usize>M_PLEN << 3));
  if (id != 0) {
    if (id > devices) return E_BAD_DEVICE; // idr_find() misses: -ENODEV
    const blocks = <u64>load<u32>(devt + <usize>((id - 1) * EROFS_DEVT_SLOT_SIZE), 64);
    if (blocks != 0 && pa + plen > (blocks << blkbits)) return E_OUTSIDE_DEVICE;
    put(rec, M_DEVICE, <f64>id);
    return 0;
  }
  put(rec, M_DEVICE, 0);
  // Flat addressing: a primary-device address inside a device's mapped range.
  for (let i: u32 = 0; i < devices; i++) {
    const slot = devt + <usize>(i * EROFS_DEVT_SLOT_SIZE);
    const mapped = <u64>load<u32>(slot, 68);
    if (mapped == 0) continue;
    const startoff = mapped << blkbits;
    const length = <u64>load<u32>(slot, 64) << blkbits;
    if (pa >= startoff && pa < startoff + length) {
      if (pa + plen > startoff + length) return E_OUTSIDE_DEVICE;
      put(rec, M_PA, <f64>(pa - startoff));
      put(rec, M_DEVICE, <f64>(i + 1));
      return 0;
    }
  }
  return 0;
}
