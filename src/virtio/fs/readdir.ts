/**
 * READDIR / READDIRPLUS encoding: host getdents64 records (linux_dirent64)
 * turned into fuse_dirent / fuse_direntplus (include/uapi/linux/fuse.h),
 * each padded to 8 bytes, never more than the guest's size.
 *
 * Offsets are the host's d_off cookies: the entry's `off` is where the next
 * READDIR resumes, and every call seeks the directory fd to the offset the
 * guest sends, so concurrent readers of one handle cannot disturb each other
 * (the seek and getdents64 run in one synchronous native call).
 *
 * READDIRPLUS counts as a LOOKUP for each entry it returns with a nodeid, so
 * the lookup is done only once the entry is known to fit; "." and ".." are
 * sent with nodeid 0 (the kernel then creates no dentry for them), as
 * virtiofsd does. An entry that is another host filesystem's root carries
 * the attribute flags the server gives it (FUSE_ATTR_SUBMOUNT), as in LOOKUP.
 */
import { DIRENT_HEADER_SIZE, ENTRY_OUT_SIZE } from './constants';
import { Handle } from './inodes';
import { Entry, PassthroughFs } from './passthrough';
import { newStat, ST_INO, ST_MODE, Timeouts, writeEntryOut } from './wire';

function pad8(n: number): number { return (n + 7) & ~7; }

function isDots(name: Buffer): boolean {
  return name[0] === 0x2e && (name.length === 1 || (name.length === 2 && name[1] === 0x2e));
}

export function readdir(fs: PassthroughFs, h: Handle, offset: bigint, size: number, plus: boolean, t: Timeouts, attrFlags: (e: Entry) => number = () => 0): Buffer {
  const out = Buffer.alloc(size);
  if (size === 0) return out;
  // linux_dirent64 records are about the size of fuse_dirents, so reading
  // `size` bytes (at least a page, so one long name always fits) is enough.
  const raw = Buffer.alloc(Math.max(size, 4096));
  const n = fs.getdents(h, offset, raw);
  let pos = 0;
  for (let p = 0; p + 19 <= n;) {
    const dIno = raw.readBigUInt64LE(p);
    const dOff = raw.readBigUInt64LE(p + 8);
    const reclen = raw.readUInt16LE(p + 16);
    const dType = raw[p + 18];
    if (reclen < 20 || p + reclen > n) break; // the kernel never does this; stop rather than misparse
    let end = raw.indexOf(0, p + 19);
    if (end < 0 || end > p + reclen) end = p + reclen;
    const name = raw.subarray(p + 19, end);
    p += reclen;
    const rec = pad8(DIRENT_HEADER_SIZE + name.length) + (plus ? ENTRY_OUT_SIZE : 0);
    if (pos + rec > size) break;
    let d = pos;
    if (plus) {
      const e = isDots(name) ? undefined : fs.lookupForReaddir(h.inode, name);
      if (e) {
        writeEntryOut(out, pos, e.inode.id, e.st, t, attrFlags(e));
      } else {
        const st = newStat();
        st[ST_INO] = dIno;
        st[ST_MODE] = BigInt(dType << 12);
        writeEntryOut(out, pos, 0, st, { entrySec: 0, attrSec: 0 });
      }
      d += ENTRY_OUT_SIZE;
    }
    out.writeBigUInt64LE(dIno, d);
    out.writeBigUInt64LE(dOff, d + 8);
    out.writeUInt32LE(name.length, d + 16);
    out.writeUInt32LE(dType, d + 20); // DT_* == (S_IFMT bits) >> 12, what FUSE expects
    name.copy(out, d + DIRENT_HEADER_SIZE);
    pos += rec;
  }
  return out.subarray(0, pos);
}
