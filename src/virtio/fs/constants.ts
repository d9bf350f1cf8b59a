/**
 * virtio-fs constants and errors: the FUSE wire protocol numbers we speak
 * (include/uapi/linux/fuse.h, protocol 7.31–7.38) and the virtio-fs device
 * numbers (virtio 1.2 §5.11). Struct sizes are the byte sizes of the fuse.h
 * structs; field offsets live next to the code that reads them (wire.ts).
 */
import { constants as osConstants } from 'node:os';
import { KataError } from '../../common/errors';

/** FUSE major version; a guest asking for another major gets ours back (fuse.h). */
export const FUSE_KERNEL_VERSION = 7;
/** Highest minor whose wire layouts we implement. */
export const FUSE_KERNEL_MINOR_VERSION = 38;
/** Oldest minor we accept: 7.31 is what virtio-fs guests (Linux ≥ 5.4) speak at least. */
export const FUSE_MIN_MINOR_VERSION = 31;
export const FUSE_ROOT_ID = 1;

export const Op = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9,
  UNLINK: 10, RMDIR: 11, RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17,
  RELEASE: 18, FSYNC: 20, SETXATTR: 21, GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24,
  FLUSH: 25, INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, FSYNCDIR: 30, GETLK: 31,
  SETLK: 32, SETLKW: 33, ACCESS: 34, CREATE: 35, INTERRUPT: 36, BMAP: 37, DESTROY: 38,
  IOCTL: 39, POLL: 40, NOTIFY_REPLY: 41, BATCH_FORGET: 42, FALLOCATE: 43, READDIRPLUS: 44,
  RENAME2: 45, LSEEK: 46, COPY_FILE_RANGE: 47, SETUPMAPPING: 48, REMOVEMAPPING: 49,
  SYNCFS: 50, TMPFILE: 51,
} as const;
export type OpName = keyof typeof Op;
export const OP_NAMES: Record<number, OpName> = {};
for (const [k, v] of Object.entries(Op)) OP_NAMES[v] = k as OpName;

// fuse_init_in/out flags (fuse.h "INIT request/reply flags").
export const FUSE_ASYNC_READ = 1 << 0;
export const FUSE_ATOMIC_O_TRUNC = 1 << 3;
export const FUSE_BIG_WRITES = 1 << 5;
export const FUSE_DONT_MASK = 1 << 6;
export const FUSE_AUTO_INVAL_DATA = 1 << 12;
export const FUSE_DO_READDIRPLUS = 1 << 13;
export const FUSE_READDIRPLUS_AUTO = 1 << 14;
export const FUSE_ASYNC_DIO = 1 << 15;
export const FUSE_WRITEBACK_CACHE = 1 << 16;
export const FUSE_PARALLEL_DIROPS = 1 << 18;
export const FUSE_MAX_PAGES = 1 << 22;
export const FUSE_CACHE_SYMLINKS = 1 << 23;
/** Directories on another host filesystem are announced (FUSE_ATTR_SUBMOUNT) and the guest mounts them apart: their own st_dev. */
export const FUSE_SUBMOUNTS = 1 << 27;
export const FUSE_INIT_EXT = 1 << 30;
/** fuse_attr.flags: this directory is the root of another host filesystem (a submount in the guest). */
export const FUSE_ATTR_SUBMOUNT = 1 << 0;

// fuse_setattr_in.valid
export const FATTR_MODE = 1 << 0;
export const FATTR_UID = 1 << 1;
export const FATTR_GID = 1 << 2;
export const FATTR_SIZE = 1 << 3;
export const FATTR_ATIME = 1 << 4;
export const FATTR_MTIME = 1 << 5;
export const FATTR_FH = 1 << 6;
export const FATTR_ATIME_NOW = 1 << 7;
export const FATTR_MTIME_NOW = 1 << 8;
export const FATTR_LOCKOWNER = 1 << 9;
export const FATTR_CTIME = 1 << 10;
export const FATTR_KILL_SUIDGID = 1 << 11;

export const FUSE_GETATTR_FH = 1 << 0;
export const FUSE_FSYNC_FDATASYNC = 1 << 0;

// Struct sizes (bytes) at protocol 7.31+.
export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
export const ATTR_SIZE = 88;
export const ENTRY_OUT_SIZE = 128;
export const ATTR_OUT_SIZE = 104;
export const OPEN_OUT_SIZE = 16;
export const WRITE_OUT_SIZE = 8;
export const STATFS_OUT_SIZE = 80;
export const GETXATTR_OUT_SIZE = 8;
export const LSEEK_OUT_SIZE = 8;
export const INIT_OUT_SIZE = 64;
/** init_out for minor 5..22 (FUSE_COMPAT_22_INIT_OUT_SIZE). */
export const COMPAT_22_INIT_OUT_SIZE = 24;
export const DIRENT_HEADER_SIZE = 24;
export const READ_IN_SIZE = 40;
export const WRITE_IN_SIZE = 40;

/** Linux limits the guest kernel also enforces. */
export const NAME_MAX = 255;
export const PATH_MAX = 4096;
export const XATTR_SIZE_MAX = 65536;
export const XATTR_LIST_MAX = 65536;

// virtio-fs device (virtio 1.2 §5.11).
/** §5.11.4: tag[36] + le32 num_request_queues (+ le32 notify_buf_size only with F_NOTIFICATION). */
export const VIRTIO_FS_CONFIG_SIZE = 40;
export const VIRTIO_FS_TAG_LEN = 36;
/** §5.11.2: queue 0 is hiprio (FORGET/INTERRUPT), then the request queues. */
export const VIRTIO_FS_HIPRIO_QUEUE = 0;

// Host syscall numbers Node does not export.
export const O_PATH = 0o10000000;
export const O_NOFOLLOW = 0o400000;
export const O_DIRECTORY = 0o200000;
export const O_CLOEXEC = 0o2000000;
export const O_DIRECT = 0o40000;
export const O_NONBLOCK = 0o4000;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NOCTTY = 0o400;
export const O_TRUNC = 0o1000;
export const O_ACCMODE = 3;
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_REMOVEDIR = 0x200;
export const AT_SYMLINK_FOLLOW = 0x400;
export const AT_EMPTY_PATH = 0x1000;
export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;
export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;
export const RENAME_WHITEOUT = 4;
export const SEEK_SET = 0;
export const SEEK_CUR = 1;
export const SEEK_END = 2;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;
export const S_IFIFO = 0o010000;
export const S_IFSOCK = 0o140000;

/** errno values by name, from the host (Linux) — the guest is Linux too. */
export const E = osConstants.errno as Readonly<Record<string, number>> & {
  readonly EPERM: number; readonly ENOENT: number; readonly EIO: number; readonly EBADF: number;
  readonly EACCES: number; readonly EEXIST: number; readonly ENOTDIR: number; readonly EISDIR: number;
  readonly EINVAL: number; readonly ERANGE: number; readonly ENOSYS: number; readonly ELOOP: number;
  readonly ENAMETOOLONG: number; readonly EPROTO: number; readonly ENOTSUP: number; readonly EXDEV: number;
  readonly ENODATA: number; readonly E2BIG: number; readonly ENOMEM: number;
};

export type FsErrorKind = 'errno' | 'malformed' | 'config';

/**
 * One error class for the device folder. 'errno' carries a positive errno the
 * server returns to the guest as -errno; 'malformed' means the request bytes
 * are invalid (answered EINVAL/EIO); 'config' is a host-side set-up problem.
 */
export class FsError extends KataError<FsErrorKind> {
  constructor(kind: FsErrorKind, readonly errno: number, message: string, options?: { cause?: unknown }) {
    super(kind, message, options);
  }
}

/** Throws FsError('errno') for a native -errno result; returns r otherwise. */
export function check(r: number, what: string): number {
  if (r < 0) throw new FsError('errno', -r, `${what}: errno ${-r}`);
  return r;
}

export function errno(e: number, what: string): FsError {
  return new FsError('errno', e, `${what}: errno ${e}`);
}
