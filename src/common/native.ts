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

  // --- native/src/mem.cc: guest memory (ARCHITECTURE.md decision 1) ---
  /** memfd of `size` bytes (close-on-exec). */
  memfdCreate(name: string, size: number): number;
  /**
   * Guest agent, VM template clones (native/src/guest_time_rng.cc):
   * clock_settime(CLOCK_REALTIME); RNDADDENTROPY crediting 8 bits a byte.
   * Optional: an addon built before they existed lacks them.
   */
  clockSetRealtime?(sec: number, nsec: number): number;
  addEntropy?(data: Buffer): number;
  /**
   * Guest agent, direct volumes (native/src/ext4_resize.cc): grow the ext4
   * filesystem mounted at `mountPoint` online to `blocks` filesystem blocks
   * (EXT4_IOC_RESIZE_FS). Optional: an addon built before it existed lacks it.
   */
  ext4ResizeFs?(mountPoint: string, blocks: number): number;
  /**
   * Guest agent, container storages (native/src/mount.cc): mount(2) and
   * umount2(2); 0 or -errno. null for an unused source, fstype or data.
   * Optional: an addon built before they existed lacks them (the agent then
   * runs busybox mount, src/agent/storage.ts).
   */
  mountFs?(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): number;
  umountFs?(target: string, flags: number): number;
  /**
   * Guest agent, container output (native/src/pipe_io.cc): F_SETPIPE_SZ
   * (the capacity now, or -errno); FIONREAD (bytes waiting, or -errno);
   * splice(2) from a pipe into a socket, non-blocking (bytes moved, 0 at the
   * input's end, -1 EAGAIN). Optional: an addon built before they existed lacks them.
   */
  setPipeSize?(fd: number, bytes: number): number;
  pipeAvailable?(fd: number): number;
  spliceFd?(fromFd: number, toFd: number, length: number): number;
  /**
   * All `length` bytes from a pipe into a non-blocking socket on a pool
   * thread (splice, poll for room, again); cb(err, moved) once done.
   * cancel[0] = 1 stops it within 50 ms. Keep both fds open until cb.
   */
  spliceAsync?(fromFd: number, toFd: number, length: number, cancel: Int32Array, cb: (err: Error | null, moved: number) => void): void;
  /**
   * As spliceAsync, with read(2)/write(2) through a buffer on the pool
   * thread: into a guest's AF_VSOCK socket that makes 64 KiB packets where
   * splice makes one per 4 KiB pipe page (native/src/pipe_io.cc).
   */
  copyAsync?(fromFd: number, toFd: number, length: number, cancel: Int32Array, cb: (err: Error | null, moved: number) => void): void;
  /**
   * AF_VSOCK socket buffer (SO_VM_SOCKETS_BUFFER_MAX_SIZE, then _SIZE):
   * the window it advertises and, in Linux, the cap on what it sends ahead
   * of the peer's credit (native/src/sock.cc). The size now, or -errno.
   * Optional: an addon built before it existed lacks it.
   */
  vsockSetBufferSize?(fd: number, bytes: number): number;
  /** mmap(MAP_FIXED|MAP_SHARED) fd@fileOffset over buffer[offset, offset+length); page aligned. */
  mapFileOver(buffer: ArrayBuffer, offset: number, length: number, fd: number, fileOffset: number, readonly?: boolean): void;
  /** Puts anonymous zero pages back over buffer[offset, offset+length). */
  unmapOver(buffer: ArrayBuffer, offset: number, length: number): void;
  /** Identity of an open file, to tell whether two fds are the same memfd. */
  fstatId(fd: number): { dev: number; ino: number; size: number };
  /** mincore(2): out[i] = 1 when page i of buffer[offset, offset+length) is resident; returns the count. */
  residentPages(buffer: ArrayBuffer, offset: number, length: number, out: Uint8Array): number;
  /** malloc_trim(0): free pages inside glibc's arenas go back to the kernel (1 if any did). Optional: an addon built before it existed lacks it. */
  mallocTrim?(): number;
  /**
   * madvise(2) over a page-aligned range of buffer (native/src/mem.cc): "dontneed",
   * "remove" (shared memfd: punches the pages out), "mergeable"/"unmergeable"
   * (KSM). The balloon (src/virtio/balloon/release.ts) and the builtin VMM's
   * KSM advice use it. Optional: an addon built before it existed lacks it.
   */
  madvise?(buffer: ArrayBuffer, offset: number, length: number, advice: 'dontneed' | 'remove' | 'mergeable' | 'unmergeable'): void;

  // --- native/src/sock.cc: eventfds, fd passing, vsock, readiness ---
  // Non-blocking throughout: -1 means EAGAIN ("try again when ready").
  eventfdCreate(initial?: number): number;
  /** Counter value, or -1 when not signalled. */
  eventfdRead(fd: number): number;
  eventfdWrite(fd: number, value?: number): void;
  /** bytes -1 = EAGAIN, 0 = EOF; fds received with SCM_RIGHTS (close-on-exec). */
  recvMsg(fd: number, buf: Buffer, offset: number, length: number): { bytes: number; fds: number[]; truncated?: boolean };
  /** Sends buf with optional SCM_RIGHTS fds; bytes sent or -1 (EAGAIN). */
  sendMsg(fd: number, buf: Buffer, fds?: number[]): number;
  readFd(fd: number, buf: Buffer, offset: number, length: number): number;
  writeFd(fd: number, buf: Buffer, offset: number, length: number): number;
  shutdownFd(fd: number, how: 0 | 1 | 2): void;
  acceptNb(listenFd: number): number;
  unixListenNb(path: string, backlog?: number): number;
  unixConnect(path: string): number;
  vsockListen(port: number, backlog?: number): number;
  vsockConnect(cid: number, port: number): number;
  /** Watch fd on the Node loop; cb(events: 1 readable | 2 writable | 4 hang-up/error). */
  pollStart(fd: number, events: number, cb: (events: number) => void, unref?: boolean): number;
  pollUpdate(id: number, events: number): void;
  pollStop(id: number): void;

  // --- native/src/netns.cc: fds made inside a network namespace ---
  /** Blocking AF_NETLINK socket (NETLINK_ROUTE = 0) in the netns at `netns` (null: ours), subscribed to `groups` (RTMGRP_* bits). */
  netlinkOpen(protocol: number, netns?: string | null, groups?: number): number;
  /** A tap interface created in the netns at `netns` (null: ours); lives while an fd is open. */
  tapCreate(netns: string | null, name: string, opts?: { vnetHdr?: boolean; nonBlocking?: boolean }): { fd: number; name: string };
  /** A listening TCP socket on 127.0.0.1:`port` (0: any) in the netns at `netns` (null: ours); non-blocking, close-on-exec. */
  tcpListenInNetns?(netns: string | null, port: number, backlog?: number): { fd: number; port: number };
  /** Where a nat-REDIRECTed TCP connection was going (SO_ORIGINAL_DST); null when it was not redirected. */
  tcpOriginalDst?(fd: number): { address: string; port: number } | null;
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
