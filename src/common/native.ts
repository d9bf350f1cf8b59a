/**
 * The one typed facade over the N-API addon (native/, built by set-up as
 * native/build/Release/kata_native.node). Loaded lazily so code paths that
 * never need a syscall Node lacks also run where the addon is not built;
 * tests substitute it with setNativeForTests().
 */
import * as path from 'node:path';
import { KataError } from './errors';

export interface NativeAddon {
  /** Bound+listening AF_UNIX stream socket; returns the fd (close-on-exec). */
  unixListen(path: string): number;
  /** Accept one connection on a listener and receive one fd (SCM_RIGHTS). */
  recvFd(listenFd: number): Promise<number>;
  setWinsize(fd: number, rows: number, cols: number): void;
  getWinsize(fd: number): { rows: number; cols: number };
  closeFd(fd: number): void;

  // Filesystem *at syscalls for the virtio-fs passthrough server
  // (native/src/fs.cc). All synchronous; they return >= 0 or -errno. Names
  // are byte Buffers; null means "" (pair with AT_EMPTY_PATH). uid/gid -1 on
  // creating calls = keep the server's fsuid/fsgid.
  fsOpenat(dirfd: number, name: Buffer | null, flags: number, mode: number, uid: number, gid: number): number;
  /** out: dev ino mode nlink uid gid rdev size blksize blocks atime atime_ns mtime mtime_ns ctime ctime_ns */
  fsFstatat(dirfd: number, name: Buffer | null, flags: number, out: BigUint64Array): number;
  fsMkdirat(dirfd: number, name: Buffer, mode: number, uid: number, gid: number): number;
  fsMknodat(dirfd: number, name: Buffer, mode: number, rdev: number, uid: number, gid: number): number;
  fsSymlinkat(target: Buffer, dirfd: number, name: Buffer, uid: number, gid: number): number;
  fsUnlinkat(dirfd: number, name: Buffer, flags: number): number;
  fsRenameat2(olddirfd: number, oldname: Buffer, newdirfd: number, newname: Buffer, flags: number): number;
  fsLinkat(olddirfd: number, oldname: Buffer | null, newdirfd: number, newname: Buffer, flags: number): number;
  fsReadlinkat(dirfd: number, name: Buffer | null): Buffer | number;
  fsFchownat(dirfd: number, name: Buffer | null, uid: number, gid: number, flags: number): number;
  fsFchmodat(dirfd: number, name: Buffer, mode: number): number;
  /** Empty/null name: futimens(dirfd). nsec may be UTIME_NOW/UTIME_OMIT. */
  fsUtimensat(dirfd: number, name: Buffer | null, aSec: number, aNsec: number, mSec: number, mNsec: number, flags: number): number;
  fsFtruncate(fd: number, size: number): number;
  fsFallocate(fd: number, mode: number, offset: number, length: number): number;
  fsLseek(fd: number, offset: number, whence: number): number;
  fsFsync(fd: number, datasync: boolean): number;
  /** out: blocks bfree bavail files ffree bsize namelen frsize */
  fsFstatfs(fd: number, out: BigUint64Array): number;
  /** linux_dirent64 records read after seeking to `offset`; returns bytes. */
  fsGetdents(fd: number, offset: bigint, out: Buffer): number;
  fsGetxattr(path: string, name: Buffer, out: Buffer | null, follow: boolean): number;
  fsSetxattr(path: string, name: Buffer, value: Buffer, flags: number, follow: boolean): number;
  fsListxattr(path: string, out: Buffer | null, follow: boolean): number;
  fsRemovexattr(path: string, name: Buffer, follow: boolean): number;
  fsClose(fd: number): number;
}

export class NativeError extends KataError<'not-built'> {}

let addon: NativeAddon | undefined;

export function native(): NativeAddon {
  if (addon) return addon;
  const file = path.resolve(__dirname, '..', '..', '..', 'native', 'build', 'Release', 'kata_native.node');
  try {
    addon = require(file) as NativeAddon;
  } catch (err) {
    throw new NativeError('not-built', `native addon not available at ${file} (run scripts/setup.sh)`, { cause: err });
  }
  return addon;
}

export function setNativeForTests(a: NativeAddon | undefined): void {
  addon = a;
}
