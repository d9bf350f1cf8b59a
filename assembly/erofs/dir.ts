/**
 * Directory blocks, following erofs_fill_dentries() / erofs_readdir() in
 * fs/erofs/dir.c and find_target_dirent() / erofs_find_target_block() in
 * fs/erofs/namei.c (Linux 6.1): a block is an array of 12-byte
 * erofs_dirent (nid, nameoff, file_type) then the names, sorted; the first
 * nameoff gives the entry count; the last name ends at a NUL or the block.
 *
 *   dirBlock(blk, len, out, outCap)   Parses one directory block of `len`
 *       bytes (the last block may be short). Writes up to outCap entries of
 *       DIRENT_SIZE bytes: f64 nid, u16 nameoff, u16 namelen, u8 file_type.
 *       Returns the entry count.
 *   dirLookup(blk, len, name, nameLen)   Binary search in one block:
 *       index ≥ 0 if found, LOOKUP_BEFORE / LOOKUP_AFTER if the name sorts
 *       before the first / after the last entry, LOOKUP_ABSENT otherwise.
 */
import { DIRENT_SIZE, E_BAD_DIRENT, E_RANGE, LOOKUP_ABSENT, LOOKUP_AFTER, LOOKUP_BEFORE } from './abi';
import { EROFS_FT_MAX, EROFS_NAME_LEN } from './format';

/** Entries in a block: the first entry's nameoff / 12 (the names follow the entries), or E_BAD_DIRENT. */
function entryCount(blk: usize, len: u32): i32 {
  if (len < 12) return E_BAD_DIRENT;
  const first = <u32>load<u16>(blk, 8);
  if (first < 12 || first % 12 != 0 || first > len) return E_BAD_DIRENT;
  return <i32>(first / 12);
}

/**
 * Length of entry i's name: up to the next entry's nameoff; the last name
 * ends at a NUL or the end of the block. E_BAD_DIRENT if they go backwards.
 */
function nameLength(blk: usize, len: u32, i: u32, count: u32): i32 {
  const de = blk + <usize>(i * 12);
  const nameoff = <u32>load<u16>(de, 8);
  if (i + 1 < count) {
    const next = <u32>load<u16>(de, 20);
    if (next < nameoff) return E_BAD_DIRENT;
    return <i32>(next - nameoff);
  }
  if (nameoff > len) return E_BAD_DIRENT;
  let namelen: u32 = 0;
  while (nameoff + namelen < len && load<u8>(blk + nameoff + namelen) != 0) namelen++;
  return <i32>namelen;
}

export function dirBlock(blk: usize, len: u32, out: usize, outCap: u32): i32 {
  const n = entryCount(blk, len);
  if (n < 0) return n;
  const count = <u32>n;
  const first = count * 12;
  if (count > outCap) return E_RANGE;
  for (let i: u32 = 0; i < count; i++) {
    const de = blk + <usize>(i * 12);
    const nameoff = <u32>load<u16>(de, 8);
    const nl = nameLength(blk, len, i, count);
    if (nl < 0) return nl;
    const namelen = <u32>nl;
    if (nameoff < first || namelen == 0 || namelen > EROFS_NAME_LEN || nameoff + namelen > len) return E_BAD_DIRENT;
    const ft = <u32>load<u8>(de, 10);
    if (ft >= EROFS_FT_MAX) return E_BAD_DIRENT;
    const o = out + <usize>(i * <u32>DIRENT_SIZE);
    store<f64>(o, <f64>load<u64>(de));
    store<u16>(o, <u16>nameoff, 8);
    store<u16>(o, <u16>namelen, 10);
    store<u8>(o, <u8>ft, 12);
  }
  return <i32>count;
}

function nameCmp(a: usize, alen: u32, b: usize, blen: u32): i32 {
  const n = alen < blen ? alen : blen;
  for (let i: u32 = 0; i < n; i++) {
    const x = <i32>load<u8>(a + i);
    const y = <i32>load<u8>(b + i);
    if (x != y) return x - y;
  }
  return <i32>alen - <i32>blen;
}

export function dirLookup(blk: usize, len: u32, name: usize, nameLen: u32): i32 {
  const count = entryCount(blk, len);
  if (count < 0) return count;
  const first = <u32>count * 12;
  let lo: i32 = 0;
  let hi: i32 = count - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const de = blk + <usize>(mid * 12);
    const nameoff = <u32>load<u16>(de, 8);
    const nl = nameLength(blk, len, <u32>mid, <u32>count);
    if (nl < 0) return nl;
    const namelen = <u32>nl;
    if (nameoff < first || nameoff + namelen > len || namelen > EROFS_NAME_LEN) return E_BAD_DIRENT;
    const c = nameCmp(name, nameLen, blk + nameoff, namelen);
    if (c == 0) return mid;
    if (c < 0) hi = mid - 1;
    else lo = mid + 1;
  }
  if (hi < 0) return LOOKUP_BEFORE;
  if (lo >= count) return LOOKUP_AFTER;
  return LOOKUP_ABSENT;
}
