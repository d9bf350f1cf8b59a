/**
 * Passthrough filesystem over a host directory — the backend of our
 * virtio-fs device, in the manner of virtiofsd's passthrough_ll: guest
 * ownership, modes, timestamps, hard links and sparse files land on the host
 * files as they are.
 *
 * Confinement (the guest must never reach outside the shared directory):
 * - every name from the guest is one component (no '/', not '.' or '..',
 *   ≤ NAME_MAX) and is resolved with openat(parent_fd, name, O_PATH|O_NOFOLLOW)
 *   against an fd the server holds — a symlink is never followed on the host,
 *   whatever it points at, and `..` is never walked;
 * - an inode is operated on through its O_PATH fd (AT_EMPTY_PATH) or through
 *   /proc/self/fd/N, a magic link that lands on exactly that inode (used for
 *   reopening, chmod, utimes, xattrs — syscalls that have no AT_EMPTY_PATH);
 * - reopening is only done for regular files and directories: opening a
 *   host FIFO or device node on behalf of the guest could block the server or
 *   touch host hardware, and the guest kernel never needs it (special files
 *   on FUSE are served by the guest's own drivers);
 * - swapping a directory for a symlink between two requests changes nothing:
 *   the server keeps using the fd of the directory it looked up.
 *
 * Permission checks are the guest kernel's (virtio-fs mounts use
 * default_permissions); the server runs as host root and creates inodes with
 * fsuid/fsgid = the caller's, so ownership and setgid-directory inheritance
 * follow the kernel's rules.
 */
import * as fs from 'node:fs';
import { NativeAddon, native as loadNative } from '../../common/native';
import {
  AT_EMPTY_PATH, AT_FDCWD, AT_REMOVEDIR, AT_SYMLINK_FOLLOW, AT_SYMLINK_NOFOLLOW, check, E, errno, FsError,
  NAME_MAX, O_ACCMODE, O_CREAT, O_DIRECT, O_DIRECTORY, O_EXCL, O_NOCTTY, O_NOFOLLOW, O_PATH, O_WRONLY,
  RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, UTIME_NOW, UTIME_OMIT,
  XATTR_SIZE_MAX,
} from './constants';
import { Handle, HandleTable, Inode, InodeTable } from './inodes';
import { newStat, Stat, ST_DEV, ST_GID, ST_INO, ST_MODE, ST_UID } from './wire';

export interface Caller { uid: number; gid: number }

export interface PassthroughOptions {
  /** Addon substitute for tests. */
  native?: NativeAddon;
  /** Create as the caller's fsuid/fsgid (default: when running as root). */
  switchCredentials?: boolean;
}

export interface SetattrArgs {
  valid: number;
  fh?: bigint;
  size: bigint;
  atime: bigint; atimensec: number;
  mtime: bigint; mtimensec: number;
  mode: number;
  uid: number; gid: number;
}
export const SETATTR_MODE = 1, SETATTR_UID = 2, SETATTR_GID = 4, SETATTR_SIZE = 8, SETATTR_ATIME = 16,
  SETATTR_MTIME = 32, SETATTR_ATIME_NOW = 128, SETATTR_MTIME_NOW = 256;

export interface Entry {
  inode: Inode;
  st: Stat;
  /**
   * A directory on another host filesystem than the one it was looked up
   * in (a bind mount below the shared directory, as each container's rootfs
   * in the sandbox share): announced to the guest as a submount
   * (FUSE_ATTR_SUBMOUNT), so it gets its own st_dev there too and inode
   * numbers of two host filesystems never meet under one guest st_dev.
   */
  crossesMount?: boolean;
}

/** The umask of this process, read without changing it (process.umask() is deprecated). */
function processUmask(): number {
  try {
    const m = /^Umask:\s*([0-7]+)/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    if (m) return parseInt(m[1], 8);
  } catch { /* fall through */ }
  return 0o022;
}

const DOT = 0x2e, SLASH = 0x2f;

/** A guest name must be exactly one path component. */
export function checkName(name: Buffer): void {
  if (name.length === 0 || name.length > NAME_MAX) {
    throw errno(name.length === 0 ? E.EINVAL : E.ENAMETOOLONG, 'bad name length');
  }
  if (name.includes(SLASH) || name.includes(0)) throw errno(E.EINVAL, 'name with / or NUL');
  if (name[0] === DOT && (name.length === 1 || (name.length === 2 && name[1] === DOT))) {
    throw errno(E.EINVAL, 'name . or ..');
  }
}

export class PassthroughFs {
  readonly inodes: InodeTable;
  readonly handles: HandleTable;
  readonly root: Inode;
  private readonly n: NativeAddon;
  /** O_PATH fd of /proc/self/fd: the base for magic-link reopens. */
  private readonly procFd: number;
  private readonly umask: number;
  private readonly switchCreds: boolean;
  private closed = false;

  constructor(readonly rootPath: string, opts: PassthroughOptions = {}) {
    this.n = opts.native ?? loadNative();
    this.switchCreds = opts.switchCredentials ?? process.getuid?.() === 0;
    this.umask = processUmask();
    const closeFd = (fd: number): void => { this.n.fsClose(fd); };
    this.inodes = new InodeTable(closeFd);
    this.handles = new HandleTable(closeFd);
    const proc = this.n.fsOpenat(AT_FDCWD, Buffer.from('/proc/self/fd'), O_PATH | O_DIRECTORY, 0, -1, -1);
    if (proc < 0) throw new FsError('config', -proc, `open /proc/self/fd: errno ${-proc}`);
    this.procFd = proc;
    // The share root itself is the one path the server ever resolves (host
    // configuration, not guest input).
    const rfd = this.n.fsOpenat(AT_FDCWD, Buffer.from(rootPath), O_PATH | O_DIRECTORY, 0, -1, -1);
    if (rfd < 0) {
      this.n.fsClose(proc);
      throw new FsError('config', -rfd, `shared directory ${rootPath}: errno ${-rfd}`);
    }
    const st = this.statFd(rfd);
    this.root = this.inodes.addRoot(rfd, keyOf(st), Number(st[ST_MODE]) & S_IFMT);
  }

  private get creds(): boolean { return this.switchCreds; }

  /** fstat of an O_PATH fd (does not follow a symlink the fd refers to). */
  statFd(fd: number): Stat {
    const st = newStat();
    check(this.n.fsFstatat(fd, null, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, st), 'fstatat');
    return st;
  }

  private procName(ino: Inode): Buffer { return Buffer.from(String(ino.fd)); }
  private procPath(ino: Inode): string { return `/proc/self/fd/${ino.fd}`; }

  /** Opens inode for I/O through its magic link; regular files and directories only. */
  private reopen(ino: Inode, flags: number): number {
    if (ino.fmt !== S_IFREG && ino.fmt !== S_IFDIR) throw errno(ino.fmt === S_IFLNK ? E.ELOOP : E.EACCES, 'reopen special file');
    // O_NOFOLLOW would refuse the magic link itself; O_CREAT/O_EXCL/O_NOCTTY
    // make no sense on an existing inode; O_DIRECT is dropped as virtiofsd
    // does by default (host alignment rules differ from the guest's).
    const f = flags & ~(O_NOFOLLOW | O_CREAT | O_EXCL | O_NOCTTY | O_DIRECT | O_PATH);
    return check(this.n.fsOpenat(this.procFd, this.procName(ino), f, 0, -1, -1), 'reopen');
  }

  lookup(parentId: bigint | number, name: Buffer): Entry {
    const parent = this.inodes.get(parentId);
    checkName(name);
    if (parent.fmt !== S_IFDIR) throw errno(E.ENOTDIR, 'lookup in non-directory');
    return this.lookupIn(parent, name);
  }

  private lookupIn(parent: Inode, name: Buffer): Entry {
    const fd = check(this.n.fsOpenat(parent.fd, name, O_PATH | O_NOFOLLOW, 0, -1, -1), 'openat');
    let st: Stat;
    try {
      st = this.statFd(fd);
    } catch (err) {
      this.n.fsClose(fd);
      throw err;
    }
    const fmt = Number(st[ST_MODE]) & S_IFMT;
    const inode = this.inodes.lookedUp(fd, keyOf(st), fmt);
    return fmt === S_IFDIR && devOfKey(parent.key) !== st[ST_DEV] ? { inode, st, crossesMount: true } : { inode, st };
  }

  forget(nodeid: bigint, nlookup: bigint): void {
    this.inodes.forget(nodeid, nlookup);
  }

  getattr(nodeid: bigint): Stat {
    return this.statFd(this.inodes.get(nodeid).fd);
  }

  setattr(nodeid: bigint, a: SetattrArgs): Stat {
    const ino = this.inodes.get(nodeid);
    const h = a.fh !== undefined ? this.handles.get(a.fh, false) : undefined;
    if (h && h.inode !== ino) throw errno(E.EBADF, 'fh of another inode');
    if (a.valid & (SETATTR_UID | SETATTR_GID)) {
      const uid = a.valid & SETATTR_UID ? a.uid : -1;
      const gid = a.valid & SETATTR_GID ? a.gid : -1;
      check(this.n.fsFchownat(ino.fd, null, uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW), 'fchownat');
    }
    if (a.valid & SETATTR_MODE) {
      if (ino.fmt === S_IFLNK) throw errno(E.ENOTSUP, 'chmod of a symlink');
      check(this.n.fsFchmodat(this.procFd, this.procName(ino), a.mode & 0o7777), 'fchmodat');
    }
    if (a.valid & SETATTR_SIZE) {
      if (ino.fmt === S_IFDIR) throw errno(E.EISDIR, 'truncate directory');
      if (ino.fmt !== S_IFREG) throw errno(E.EINVAL, 'truncate special file');
      const size = safeNumber(a.size);
      if (h) {
        check(this.n.fsFtruncate(h.fd, size), 'ftruncate');
      } else {
        const fd = this.reopen(ino, O_WRONLY);
        try { check(this.n.fsFtruncate(fd, size), 'ftruncate'); } finally { this.n.fsClose(fd); }
      }
    }
    if (a.valid & (SETATTR_ATIME | SETATTR_MTIME | SETATTR_ATIME_NOW | SETATTR_MTIME_NOW)) {
      const aN = a.valid & SETATTR_ATIME_NOW ? UTIME_NOW : a.valid & SETATTR_ATIME ? a.atimensec : UTIME_OMIT;
      const mN = a.valid & SETATTR_MTIME_NOW ? UTIME_NOW : a.valid & SETATTR_MTIME ? a.mtimensec : UTIME_OMIT;
      if ((aN !== UTIME_NOW && aN !== UTIME_OMIT && aN >= 1e9) || (mN !== UTIME_NOW && mN !== UTIME_OMIT && mN >= 1e9)) {
        throw errno(E.EINVAL, 'nanoseconds out of range');
      }
      // The magic link lands on the inode itself — for a symlink too (the
      // link's own times change; its target is never touched).
      check(this.n.fsUtimensat(this.procFd, this.procName(ino), signedNumber(a.atime), aN, signedNumber(a.mtime), mN, 0), 'utimensat');
    }
    return this.statFd(ino.fd);
  }

  readlink(nodeid: bigint): Buffer {
    const ino = this.inodes.get(nodeid);
    if (ino.fmt !== S_IFLNK) throw errno(E.EINVAL, 'readlink of non-symlink');
    const r = this.n.fsReadlinkat(ino.fd, null);
    if (typeof r === 'number') throw errno(-r, 'readlinkat');
    return r;
  }

  private parentDir(parentId: bigint, name: Buffer): Inode {
    const parent = this.inodes.get(parentId);
    checkName(name);
    if (parent.fmt !== S_IFDIR) throw errno(E.ENOTDIR, 'parent is not a directory');
    return parent;
  }

  /**
   * Adds back permission bits our own umask took from a guest-requested mode
   * (the guest kernel already applied the guest's umask: FUSE_DONT_MASK is
   * not negotiated). Returns the entry with fresh attributes.
   */
  private fixMode(e: Entry, requested: number): Entry {
    const lost = requested & 0o777 & this.umask;
    if (lost === 0 || e.inode.fmt === S_IFLNK) return e;
    const have = Number(e.st[ST_MODE]) & 0o7777;
    if ((have & lost) === lost) return e;
    check(this.n.fsFchmodat(this.procFd, this.procName(e.inode), have | lost), 'fchmodat');
    return { inode: e.inode, st: this.statFd(e.inode.fd) };
  }

  private uid(c: Caller): number { return this.creds ? c.uid : -1; }
  private gid(c: Caller): number { return this.creds ? c.gid : -1; }

  mkdir(parentId: bigint, name: Buffer, mode: number, c: Caller): Entry {
    const parent = this.parentDir(parentId, name);
    check(this.n.fsMkdirat(parent.fd, name, mode & 0o7777, this.uid(c), this.gid(c)), 'mkdirat');
    return this.fixMode(this.lookupIn(parent, name), mode);
  }

  mknod(parentId: bigint, name: Buffer, mode: number, rdev: number, c: Caller): Entry {
    const parent = this.parentDir(parentId, name);
    check(this.n.fsMknodat(parent.fd, name, mode, rdev, this.uid(c), this.gid(c)), 'mknodat');
    return this.fixMode(this.lookupIn(parent, name), mode);
  }

  symlink(parentId: bigint, name: Buffer, target: Buffer, c: Caller): Entry {
    const parent = this.parentDir(parentId, name);
    // The target is stored, never resolved by the host: the guest resolves it
    // in its own namespace (absolute targets mean the guest's root).
    if (target.length === 0 || target.includes(0)) throw errno(E.EINVAL, 'symlink target');
    check(this.n.fsSymlinkat(target, parent.fd, name, this.uid(c), this.gid(c)), 'symlinkat');
    return this.lookupIn(parent, name);
  }

  unlink(parentId: bigint, name: Buffer): void {
    const parent = this.parentDir(parentId, name);
    check(this.n.fsUnlinkat(parent.fd, name, 0), 'unlinkat');
  }

  rmdir(parentId: bigint, name: Buffer): void {
    const parent = this.parentDir(parentId, name);
    check(this.n.fsUnlinkat(parent.fd, name, AT_REMOVEDIR), 'unlinkat');
  }

  rename(parentId: bigint, name: Buffer, newParentId: bigint, newName: Buffer, flags: number): void {
    if ((flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) !== 0) throw errno(E.EINVAL, 'rename flags');
    const parent = this.parentDir(parentId, name);
    const newParent = this.parentDir(newParentId, newName);
    check(this.n.fsRenameat2(parent.fd, name, newParent.fd, newName, flags), 'renameat2');
  }

  link(nodeid: bigint, newParentId: bigint, newName: Buffer): Entry {
    const ino = this.inodes.get(nodeid);
    const parent = this.parentDir(newParentId, newName);
    if (ino.fmt === S_IFDIR) throw errno(E.EPERM, 'hard link to a directory');
    // linkat(fd, "", AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; without it the
    // magic link with AT_SYMLINK_FOLLOW links the same inode.
    let r = this.n.fsLinkat(ino.fd, null, parent.fd, newName, AT_EMPTY_PATH);
    if (r === -E.ENOENT || r === -E.EPERM) {
      r = this.n.fsLinkat(this.procFd, this.procName(ino), parent.fd, newName, AT_SYMLINK_FOLLOW);
    }
    check(r, 'linkat');
    return this.lookupIn(parent, newName);
  }

  open(nodeid: bigint, flags: number): Handle {
    const ino = this.inodes.get(nodeid);
    if (ino.fmt === S_IFDIR && (flags & O_ACCMODE) !== 0) throw errno(E.EISDIR, 'open directory for writing');
    const fd = this.reopen(ino, flags);
    return this.handles.add(fd, ino, false);
  }

  /**
   * CREATE: an exclusive create first, so an existing name is never opened
   * blindly (it could be a FIFO that blocks or a symlink); if the name exists
   * and the guest did not ask for O_EXCL, it is looked up and opened like
   * OPEN, which refuses anything but regular files and directories.
   */
  create(parentId: bigint, name: Buffer, mode: number, flags: number, c: Caller): { entry: Entry; handle: Handle } {
    const parent = this.parentDir(parentId, name);
    const openFlags = flags & ~(O_NOFOLLOW | O_CREAT | O_EXCL | O_NOCTTY | O_DIRECT | O_PATH | O_DIRECTORY);
    const fd = this.n.fsOpenat(parent.fd, name, openFlags | O_CREAT | O_EXCL | O_NOFOLLOW, mode & 0o7777, this.uid(c), this.gid(c));
    if (fd === -E.EEXIST && (flags & O_EXCL) === 0) {
      const entry = this.lookupIn(parent, name);
      try {
        if (entry.inode.fmt !== S_IFREG) throw errno(entry.inode.fmt === S_IFDIR ? E.EISDIR : E.EEXIST, 'create over non-file');
        return { entry, handle: this.handles.add(this.reopen(entry.inode, openFlags), entry.inode, false) };
      } catch (err) {
        this.inodes.forget(BigInt(entry.inode.id), 1n);
        throw err;
      }
    }
    check(fd, 'openat(O_CREAT)');
    try {
      const entry = this.fixMode(this.lookupIn(parent, name), mode);
      return { entry, handle: this.handles.add(fd, entry.inode, false) };
    } catch (err) {
      this.n.fsClose(fd);
      throw err;
    }
  }

  /** Reads into `into` (slices of guest memory) at `offset`; returns bytes read. */
  async read(fh: bigint, offset: bigint, into: Buffer[]): Promise<number> {
    const h = this.handles.use(this.handles.get(fh, false));
    try {
      if (into.length === 0) return 0;
      return await readv(h.fd, into, safeNumber(offset));
    } finally {
      this.handles.done(h);
    }
  }

  async write(fh: bigint, offset: bigint, data: Buffer[]): Promise<number> {
    const h = this.handles.use(this.handles.get(fh, false));
    try {
      if (data.length === 0) return 0;
      return await writev(h.fd, data, safeNumber(offset));
    } finally {
      this.handles.done(h);
    }
  }

  statfs(nodeid: bigint): BigUint64Array {
    const out = new BigUint64Array(8);
    check(this.n.fsFstatfs(this.inodes.get(nodeid).fd, out), 'fstatfs');
    return out;
  }

  release(fh: bigint): void { this.handles.release(fh, false); }

  /** FLUSH: nothing is buffered here; valid handle check only. */
  flush(fh: bigint): void { this.handles.get(fh, false); }

  fsync(fh: bigint, datasync: boolean, dir: boolean): void {
    check(this.n.fsFsync(this.handles.get(fh, dir).fd, datasync), 'fsync');
  }

  opendir(nodeid: bigint): Handle {
    const ino = this.inodes.get(nodeid);
    if (ino.fmt !== S_IFDIR) throw errno(E.ENOTDIR, 'opendir of non-directory');
    return this.handles.add(this.reopen(ino, O_DIRECTORY), ino, true);
  }

  releasedir(fh: bigint): void { this.handles.release(fh, true); }

  /** getdents64 of an open directory from cookie `offset` into out; returns bytes. */
  getdents(h: Handle, offset: bigint, out: Buffer): number {
    return check(this.n.fsGetdents(h.fd, offset, out), 'getdents64');
  }

  /** Like LOOKUP of a name in an open directory, for READDIRPLUS; undefined if it vanished. */
  lookupForReaddir(dir: Inode, name: Buffer): Entry | undefined {
    try {
      return this.lookupIn(dir, name);
    } catch {
      return undefined;
    }
  }

  /** ACCESS (F_OK/R_OK/W_OK/X_OK = 0/4/2/1) by the caller's ids against the inode's mode. */
  access(nodeid: bigint, mask: number, c: Caller): void {
    const st = this.getattr(nodeid);
    if ((mask & 7) === 0) return;
    const mode = Number(st[ST_MODE]);
    if (c.uid === 0) {
      // Root may read and write anything; execute needs some x bit (or a directory).
      if (mask & 1 && (mode & S_IFMT) !== S_IFDIR && (mode & 0o111) === 0) throw errno(E.EACCES, 'access');
      return;
    }
    let bits: number;
    if (BigInt(c.uid) === st[ST_UID]) bits = (mode >> 6) & 7;
    else if (BigInt(c.gid) === st[ST_GID]) bits = (mode >> 3) & 7;
    else bits = mode & 7;
    if ((mask & 7 & ~bits) !== 0) throw errno(E.EACCES, 'access');
  }

  fallocate(fh: bigint, mode: number, offset: bigint, length: bigint): void {
    const h = this.handles.get(fh, false);
    check(this.n.fsFallocate(h.fd, mode, safeNumber(offset), safeNumber(length)), 'fallocate');
  }

  lseek(fh: bigint, offset: bigint, whence: number): number {
    const h = this.handles.get(fh, false);
    return check(this.n.fsLseek(h.fd, signedNumber(offset), whence), 'lseek');
  }

  getxattr(nodeid: bigint, name: Buffer, size: number): number | Buffer {
    const ino = this.inodes.get(nodeid);
    if (size === 0) return check(this.n.fsGetxattr(this.procPath(ino), name, null, true), 'getxattr');
    const out = Buffer.alloc(Math.min(size, XATTR_SIZE_MAX));
    const r = check(this.n.fsGetxattr(this.procPath(ino), name, out, true), 'getxattr');
    return out.subarray(0, r);
  }

  setxattr(nodeid: bigint, name: Buffer, value: Buffer, flags: number): void {
    const ino = this.inodes.get(nodeid);
    check(this.n.fsSetxattr(this.procPath(ino), name, value, flags, true), 'setxattr');
  }

  listxattr(nodeid: bigint, size: number): number | Buffer {
    const ino = this.inodes.get(nodeid);
    if (size === 0) return check(this.n.fsListxattr(this.procPath(ino), null, true), 'listxattr');
    const out = Buffer.alloc(Math.min(size, XATTR_SIZE_MAX));
    const r = check(this.n.fsListxattr(this.procPath(ino), out, true), 'listxattr');
    return out.subarray(0, r);
  }

  removexattr(nodeid: bigint, name: Buffer): void {
    const ino = this.inodes.get(nodeid);
    check(this.n.fsRemovexattr(this.procPath(ino), name, true), 'removexattr');
  }

  /**
   * The host unmounted the filesystem on device `dev` from below the shared
   * directory (a container's rootfs leaving the sandbox share): the server
   * lets go of every inode it holds there, so the unmounted tree is freed
   * now, not when the guest's dentry cache happens to forget it. The caller
   * makes sure nothing else still served lives on `dev`. Open file handles
   * keep their own fds until the guest releases them.
   */
  forgetDevice(dev: bigint): number {
    return this.inodes.dropDevice(dev);
  }

  /** FUSE_DESTROY: the guest unmounted; forget everything but the root. */
  destroy(): void {
    this.handles.clear();
    this.inodes.clear(true);
  }

  /** Host shutdown: closes every fd the server holds. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handles.clear();
    this.inodes.clear(false);
    this.n.fsClose(this.procFd);
  }
}

/** An inode's identity on the host: (st_dev, st_ino) — two filesystems below the share may hold the same st_ino. */
function keyOf(st: Stat): string {
  return `${st[ST_DEV]}:${st[ST_INO]}`;
}

function devOfKey(key: string): bigint {
  return BigInt(key.slice(0, key.indexOf(':')));
}

/** A guest u64 offset/size as a Number; beyond 2^53 is EINVAL (no host file is that big). */
function safeNumber(v: bigint): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw errno(E.EINVAL, 'offset too large');
  return Number(v);
}

/** A guest u64 holding a signed value (times, lseek offsets) as a Number. */
function signedNumber(v: bigint): number {
  const s = BigInt.asIntN(64, v);
  if (s > BigInt(Number.MAX_SAFE_INTEGER) || s < BigInt(Number.MIN_SAFE_INTEGER)) throw errno(E.EINVAL, 'value out of range');
  return Number(s);
}

function readv(fd: number, bufs: Buffer[], pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.readv(fd, bufs, pos, (err, n) => (err ? reject(errno(-(err.errno ?? -E.EIO), 'readv')) : resolve(n)));
  });
}

function writev(fd: number, bufs: Buffer[], pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.writev(fd, bufs, pos, (err, n) => (err ? reject(errno(-(err.errno ?? -E.EIO), 'writev')) : resolve(n)));
  });
}
