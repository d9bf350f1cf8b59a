/**
 * Extended attributes, following init_inode_xattrs(), erofs_listxattr()
 * and the xattr_iter walk in fs/erofs/xattr.c (Linux 6.1): an inode's
 * xattr ibody is a 12-byte erofs_xattr_ibody_header (h_shared_count, then
 * that many 4-byte shared xattr ids) followed by inline erofs_xattr_entry
 * records (u8 e_name_len, u8 e_name_index, __le16 e_value_size, name,
 * value, padded to 4 bytes); shared entries live at xattr_blkaddr + id * 4.
 *
 *   xattrIbody(win, winLen, out, outCap, rec)   Lists the inode's xattrs:
 *       XATTR_SIZE-byte records (u8 kind 0 inline / 1 shared, u8
 *       name_index, u8 name_len, u8 pad, u32 value_size, u32 name offset
 *       (relative) or shared id, u32 value offset (relative)). Returns the
 *       count; X_SHARED_COUNT in rec.
 *   xattrEntry(p, len, rec)   One xattr entry at p: X_INDEX, X_NAME_LEN,
 *       X_VALUE_SIZE, X_ENTRY_SIZE; E_NEED_MORE with X_ENTRY_SIZE if len is
 *       short.
 */
import { E_BAD_XATTR, E_NEED_MORE, E_RANGE, XATTR_SIZE, X_ENTRY_SIZE, X_INDEX, X_NAME_LEN, X_SHARED_COUNT, X_VALUE_SIZE } from './abi';
import { put } from './format';
import { stateOf } from './state';
import { parseHeader } from './inode';

export function xattrEntry(p: usize, len: u32, rec: usize): i32 {
  if (len < 4) {
    put(rec, X_ENTRY_SIZE, 4);
    return E_NEED_MORE;
  }
  const nameLen = <u32>load<u8>(p);
  const index = <u32>load<u8>(p, 1);
  const valueSize = <u32>load<u16>(p, 2);
  const size: u32 = (<u32>4 + nameLen + valueSize + 3) & ~3;
  put(rec, X_INDEX, <f64>index);
  put(rec, X_NAME_LEN, <f64>nameLen);
  put(rec, X_VALUE_SIZE, <f64>valueSize);
  put(rec, X_ENTRY_SIZE, <f64>size);
  if (<u32>4 + nameLen + valueSize > len) return E_NEED_MORE;
  return 0;
}

export function xattrIbody(win: usize, winLen: u32, out: usize, outCap: u32, rec: usize): i32 {
  const st = stateOf(rec);
  const err = parseHeader(st, win, winLen, rec);
  if (err < 0) return err;
  put(rec, X_SHARED_COUNT, 0);
  if (st.xattrIsize == 0) return 0;
  const start = st.isize;
  const end = st.isize + st.xattrIsize;
  if (end > winLen) return E_BAD_XATTR;
  const shared = <u32>load<u8>(win + start, 4);
  put(rec, X_SHARED_COUNT, <f64>shared);
  let pos = start + 12 + 4 * shared;
  if (pos > end) return E_BAD_XATTR;
  let n: u32 = 0;
  for (let i: u32 = 0; i < shared; i++) {
    if (n >= outCap) return E_RANGE;
    const o = out + <usize>(n * <u32>XATTR_SIZE);
    store<u8>(o, 1);
    store<u32>(o, load<u32>(win + start + 12 + 4 * i), 8);
    n++;
  }
  while (pos < end) {
    if (end - pos < 4) return E_BAD_XATTR;
    const e = win + pos;
    const nameLen = <u32>load<u8>(e);
    const valueSize = <u32>load<u16>(e, 2);
    const size: u32 = (<u32>4 + nameLen + valueSize + 3) & ~3;
    if (size > end - pos) return E_BAD_XATTR; // empty names are fine: ACL prefixes are whole names
    if (n >= outCap) return E_RANGE;
    const o = out + <usize>(n * <u32>XATTR_SIZE);
    store<u8>(o, 0);
    store<u8>(o, load<u8>(e, 1), 1);
    store<u8>(o, <u8>nameLen, 2);
    store<u32>(o, valueSize, 4);
    store<u32>(o, pos + 4, 8);
    store<u32>(o, pos + 4 + nameLen, 12);
    n++;
    pos += size;
  }
  return <i32>n;
}
