/**
 * mount(8)'s option words (`ro`, `nosuid`, `bind`, `size=64k`, …) turned
 * into what mount(2) takes: MS_* flags, the filesystem's data string, and
 * the propagation change a second call makes. The agent mounts storages
 * with the syscall itself (native/src/mount.cc; storage.ts says why), so it
 * parses the words as util-linux and busybox mount do: known flag words set
 * or clear flags, everything else goes to the filesystem as data.
 * Constants from <linux/mount.h> (include/uapi/linux/mount.h).
 */

export const MS_RDONLY = 1;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_NOEXEC = 8;
export const MS_SYNCHRONOUS = 16;
export const MS_REMOUNT = 32;
export const MS_MANDLOCK = 64;
export const MS_DIRSYNC = 128;
export const MS_NOATIME = 1024;
export const MS_NODIRATIME = 2048;
export const MS_BIND = 4096;
export const MS_REC = 16384;
export const MS_SILENT = 32768;
export const MS_UNBINDABLE = 1 << 17;
export const MS_PRIVATE = 1 << 18;
export const MS_SLAVE = 1 << 19;
export const MS_SHARED = 1 << 20;
export const MS_RELATIME = 1 << 21;
export const MS_STRICTATIME = 1 << 24;
export const MS_LAZYTIME = 1 << 25;
/** umount2(2): detach now, clean up once unused (`umount -l`). */
export const MNT_DETACH = 2;

/** word → [flags it sets, flags it clears] */
const FLAG_WORDS: Record<string, [number, number]> = {
  defaults: [0, 0],
  ro: [MS_RDONLY, 0], rw: [0, MS_RDONLY],
  nosuid: [MS_NOSUID, 0], suid: [0, MS_NOSUID],
  nodev: [MS_NODEV, 0], dev: [0, MS_NODEV],
  noexec: [MS_NOEXEC, 0], exec: [0, MS_NOEXEC],
  sync: [MS_SYNCHRONOUS, 0], async: [0, MS_SYNCHRONOUS],
  dirsync: [MS_DIRSYNC, 0],
  remount: [MS_REMOUNT, 0],
  mand: [MS_MANDLOCK, 0], nomand: [0, MS_MANDLOCK],
  noatime: [MS_NOATIME, 0], atime: [0, MS_NOATIME],
  nodiratime: [MS_NODIRATIME, 0], diratime: [0, MS_NODIRATIME],
  relatime: [MS_RELATIME, 0], norelatime: [0, MS_RELATIME],
  strictatime: [MS_STRICTATIME, 0], nostrictatime: [0, MS_STRICTATIME],
  lazytime: [MS_LAZYTIME, 0], nolazytime: [0, MS_LAZYTIME],
  silent: [MS_SILENT, 0], loud: [0, MS_SILENT],
  bind: [MS_BIND, 0], rbind: [MS_BIND | MS_REC, 0],
};

const PROPAGATION_WORDS: Record<string, number> = {
  private: MS_PRIVATE, rprivate: MS_PRIVATE | MS_REC,
  shared: MS_SHARED, rshared: MS_SHARED | MS_REC,
  slave: MS_SLAVE, rslave: MS_SLAVE | MS_REC,
  unbindable: MS_UNBINDABLE, runbindable: MS_UNBINDABLE | MS_REC,
};

export interface MountCall {
  /** mount(2)'s flags for the mount itself. */
  flags: number;
  /** The filesystem's own options, comma-joined; '' for none. */
  data: string;
  /** A bind mount asked read-only (or nosuid, …): the kernel ignores those flags on the bind itself, so a remount follows with them. */
  bindRemountFlags: number;
  /** A propagation change (MS_PRIVATE, …, with MS_REC for r*) made by a call of its own after the mount; 0 for none. */
  propagation: number;
}

/** The mount(2) calls that `mount -o <options.join(',')>` makes. */
export function parseMountOptions(options: readonly string[]): MountCall {
  let flags = 0;
  let propagation = 0;
  const data: string[] = [];
  for (const raw of options.flatMap((o) => o.split(','))) {
    const w = raw.trim();
    if (!w) continue;
    const f = FLAG_WORDS[w];
    if (f) {
      flags = (flags | f[0]) & ~f[1];
      continue;
    }
    const p = PROPAGATION_WORDS[w];
    if (p !== undefined) {
      propagation = p;
      continue;
    }
    data.push(w);
  }
  // As util-linux: MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC and the atime
  // flags on a new bind mount take effect only through a remount of it.
  const perMount = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME | MS_STRICTATIME;
  const bindRemountFlags = (flags & MS_BIND) && !(flags & MS_REMOUNT) && (flags & perMount) ? (flags & perMount) : 0;
  return { flags, data: data.join(','), bindRemountFlags, propagation };
}
