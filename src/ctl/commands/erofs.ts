/**
 * `kata-ctl erofs inspect|ls|cat|extract IMAGE [PATH] [DIR]` — what
 * dump.erofs and `fsck.erofs --extract` give, over src/hot/erofs:
 *   inspect IMAGE [PATH]   superblock summary (dump.erofs -s), or one inode
 *   ls IMAGE [PATH]        long listing of a directory (or one entry)
 *   cat IMAGE PATH         file contents to stdout
 *   extract IMAGE [PATH] DIR   full extraction preserving modes, owners,
 *                          times, xattrs, symlinks, hard links and device nodes
 * inspect and ls take --json: the superblock, an inode, or one entry per
 * directory member as objects (times as ISO-8601 with nanoseconds).
 * Multi-device images (chunk-based files whose chunk indexes name a blob
 * device, mkfs.erofs --blobdev, our converted images) take --device PATH
 * per extra device, in device-table order, like the kernel's -o device=.
 * Owners, device nodes and trusted.* / security.* xattrs need root, as for
 * fsck.erofs. Node has no setxattr, so xattrs go through the native addon's
 * lsetxattr (src/common/native); a namespace the destination refuses is one
 * warning, not an error.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import type { CtlCommand } from '../command';
import { printJson } from '../common';
import { native, NativeAddon, NativeError } from '../../common/native';
import { ErofsImage, ErofsStat } from '../../hot/erofs';

interface ErofsArgs {
  action: string;
  json?: boolean;
  image: string;
  path?: string;
  dir?: string;
  device?: string[];
}

const TYPE_CHAR: Record<ErofsStat['type'], string> = {
  file: '-', dir: 'd', symlink: 'l', chardev: 'c', blockdev: 'b', fifo: 'p', socket: 's',
};

export function modeString(st: ErofsStat): string {
  const m = st.mode;
  const rwx = (bits: number, special: boolean, ch: string): string =>
    (bits & 4 ? 'r' : '-') + (bits & 2 ? 'w' : '-') + (special ? (bits & 1 ? ch : ch.toUpperCase()) : bits & 1 ? 'x' : '-');
  return TYPE_CHAR[st.type] + rwx(m >> 6, !!(m & 0o4000), 's') + rwx(m >> 3, !!(m & 0o2000), 's') + rwx(m, !!(m & 0o1000), 't');
}

function isoTime(sec: number, nsec: number): string {
  return new Date(sec * 1000 + Math.floor(nsec / 1e6)).toISOString();
}

export function inspectText(img: ErofsImage): string {
  const sb = img.sb;
  const rows: Array<[string, string]> = [
    ['Filesystem magic number', '0xE0F5E1E2'],
    ['Filesystem blocks', String(sb.blocks)],
    ['Filesystem block size', String(sb.blockSize)],
    ['Filesystem inode metadata start block', String(sb.metaBlkaddr)],
    ['Filesystem shared xattr metadata start block', String(sb.xattrBlkaddr)],
    ['Filesystem root nid', String(sb.rootNid)],
    ['Filesystem inode count', String(sb.inos)],
    ['Filesystem created', isoTime(sb.buildTime, sb.buildTimeNsec)],
    ['Filesystem features', sb.features.join(' ') || '(none)'],
    ['Filesystem checksum', `0x${sb.checksum.toString(16).padStart(8, '0')}`],
    ['Filesystem UUID', sb.uuid],
    ['Filesystem volume name', sb.volumeName || '(none)'],
  ];
  if (sb.extraDevices) rows.push(['Filesystem extra devices', String(sb.extraDevices)]);
  sb.devices.forEach((d, i) => {
    const size = d.blocks ? `${d.blocks} blocks` : 'size not declared';
    rows.push([`Filesystem device ${i + 1}`, `${d.tag || '(no tag)'}, ${size}${d.mappedBlkaddr ? `, mapped at block ${d.mappedBlkaddr}` : ''}`]);
  });
  return rows.map(([k, v]) => `${(k + ':').padEnd(46)}${v}`).join('\n') + '\n';
}

function inodeText(img: ErofsImage, p: string): string {
  const st = img.lstat(p);
  const lines = [
    `Path: ${p}`,
    `NID: ${st.nid}`,
    `Type: ${st.type}  Mode: ${modeString(st)} (0${(st.mode & 0o7777).toString(8)})`,
    `Size: ${st.size}  Links: ${st.nlink}  Uid: ${st.uid}  Gid: ${st.gid}`,
    `Layout: ${st.layout}  Inode: ${st.inodeVersion}  Xattr size: ${st.xattrIsize}`,
    `Modify: ${isoTime(st.mtime, st.mtimeNsec)}`,
  ];
  if (st.type === 'chardev' || st.type === 'blockdev') lines.push(`Device: ${st.rdevMajor},${st.rdevMinor}`);
  if (st.type === 'symlink') lines.push(`Target: ${img.readlink(p)}`);
  if (st.layout === 'chunk-based' && st.size > 0) {
    const first = img.chunkLocation(st.nid, 0);
    lines.push(`Chunks: ${Math.ceil(st.size / first.chunkSize)} of ${first.chunkSize} bytes, first on device ${first.device} at block ${first.blockAddr ?? '(hole)'}`);
  }
  for (const x of img.listxattr(p)) lines.push(`Xattr: ${x}`);
  return lines.join('\n') + '\n';
}

/** The superblock as `erofs inspect --json` prints it. */
export function inspectJson(img: ErofsImage): Record<string, unknown> {
  const sb = img.sb;
  return {
    magic: '0xE0F5E1E2', blocks: sb.blocks, blockSize: sb.blockSize, metaBlkaddr: sb.metaBlkaddr, xattrBlkaddr: sb.xattrBlkaddr,
    rootNid: sb.rootNid, inodes: sb.inos, created: isoTime(sb.buildTime, sb.buildTimeNsec), features: sb.features,
    checksum: `0x${sb.checksum.toString(16).padStart(8, '0')}`, uuid: sb.uuid, volumeName: sb.volumeName, extraDevices: sb.extraDevices,
    devices: sb.devices,
  };
}

/** One inode as `erofs inspect IMAGE PATH --json` / `erofs ls --json` print it. */
export function inodeJson(img: ErofsImage, st: ErofsStat, name: string, withXattrs = false, p?: string): Record<string, unknown> {
  const out: Record<string, unknown> = {
    name, nid: st.nid, type: st.type, mode: modeString(st), perm: `0${(st.mode & 0o7777).toString(8)}`, size: st.size, nlink: st.nlink, uid: st.uid, gid: st.gid,
    mtime: isoTime(st.mtime, st.mtimeNsec), layout: st.layout, inodeVersion: st.inodeVersion, xattrSize: st.xattrIsize,
  };
  if (st.type === 'chardev' || st.type === 'blockdev') out.device = { major: st.rdevMajor, minor: st.rdevMinor };
  if (st.type === 'symlink') out.target = img.readlinkNid(st.nid).toString('utf8');
  if (withXattrs && p !== undefined) out.xattrs = img.listxattr(p);
  return out;
}

function lsLine(img: ErofsImage, st: ErofsStat, name: string): string {
  const size = st.type === 'chardev' || st.type === 'blockdev' ? `${st.rdevMajor}, ${st.rdevMinor}` : String(st.size);
  const tail = st.type === 'symlink' ? ` -> ${img.readlinkNid(st.nid).toString('utf8')}` : '';
  return `${modeString(st)} ${String(st.nlink).padStart(3)} ${String(st.uid).padStart(5)} ${String(st.gid).padStart(5)} ${size.padStart(10)} ${isoTime(st.mtime, st.mtimeNsec)} ${name}${tail}`;
}

export interface ExtractStats {
  files: number; dirs: number; symlinks: number; hardlinks: number; specials: number; bytes: number;
  /** xattrs restored, and those the destination refused (see ExtractOptions.warn). */
  xattrs: number; xattrsSkipped: number;
}

export interface ExtractOptions {
  /** One line per refused xattr namespace (default: stderr). */
  warn?: (line: string) => void;
  /** The addon providing lsetxattr (default: src/common/native). */
  addon?: () => Pick<NativeAddon, 'fsSetxattr'>;
}

const ERRNO_NAME = new Map(Object.entries(os.constants.errno).map(([k, v]) => [v, k]));
/** errnos meaning "this filesystem / this caller cannot have that namespace". */
const XATTR_REFUSED = new Set([os.constants.errno.EPERM, os.constants.errno.EACCES, os.constants.errno.ENOTSUP, os.constants.errno.EOPNOTSUPP]);

/**
 * Extracts the subtree at `from` into `dest` (created if missing), like
 * `fsck.erofs --extract`: contents, modes, owners (when root), mtimes,
 * xattrs, symlinks, hard links (by nid) and device/fifo/socket nodes.
 *
 * Per inode the order is: chown (which clears setuid bits and
 * security.capability), lsetxattr (never following a symlink; before chmod,
 * so a mode without write permission cannot stop a non-root user.*), chmod,
 * then times (setting xattrs only touches ctime). A namespace the
 * destination refuses (EPERM/EACCES/ENOTSUP, e.g. trusted.* when not root,
 * user.* on a symlink or device, or no xattr support at all) is reported
 * once through `warn` and counted in xattrsSkipped; other errors throw.
 */
export function extractImage(img: ErofsImage, from: string, dest: string, opts: ExtractOptions = {}): ExtractStats {
  const stats: ExtractStats = { files: 0, dirs: 0, symlinks: 0, hardlinks: 0, specials: 0, bytes: 0, xattrs: 0, xattrsSkipped: 0 };
  const warn = opts.warn ?? ((line: string) => process.stderr.write(line + '\n'));
  const seen = new Map<number, string>();
  const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const chunk = 1 << 20;
  let addon: Pick<NativeAddon, 'fsSetxattr'> | null | undefined;
  const refused = new Set<string>();
  const setXattrs = (p: string, st: ErofsStat): void => {
    if (st.xattrIsize === 0) return;
    const list = img.xattrsNid(st.nid);
    if (list.length === 0) return;
    if (addon === undefined) {
      try {
        addon = (opts.addon ?? native)();
      } catch (err) {
        if (!(err instanceof NativeError)) throw err;
        addon = null;
        warn(`kata-ctl erofs extract: warning: xattrs are not restored: ${err.message}`);
      }
    }
    if (addon === null) {
      stats.xattrsSkipped += list.length;
      return;
    }
    for (const x of list) {
      const rc = addon.fsSetxattr(p, Buffer.from(x.name, 'utf8'), x.value, 0, false);
      if (rc >= 0) {
        stats.xattrs++;
        continue;
      }
      const code = ERRNO_NAME.get(-rc) ?? `errno ${-rc}`;
      if (!XATTR_REFUSED.has(-rc)) throw new Error(`kata-ctl erofs extract: lsetxattr ${p} ${x.name}: ${code}`);
      stats.xattrsSkipped++;
      const dot = x.name.indexOf('.');
      const ns = dot < 0 ? x.name : `${x.name.slice(0, dot)}.*`;
      if (refused.has(ns)) continue;
      refused.add(ns);
      warn(`kata-ctl erofs extract: warning: ${dest} refused ${ns} xattrs (${code}, first on ${p}); such xattrs are skipped`);
    }
  };
  const setMeta = (p: string, st: ErofsStat, link: boolean): void => {
    const t = st.mtime + st.mtimeNsec / 1e9;
    if (asRoot) (link ? fs.lchownSync : fs.chownSync)(p, st.uid, st.gid);
    setXattrs(p, st);
    if (!link) fs.chmodSync(p, st.mode & 0o7777);
    fs.lutimesSync(p, t, t);
  };
  const dirsToFinish: Array<[string, ErofsStat]> = [];
  const walk = (nid: number, out: string): void => {
    const st = img.inode(nid);
    switch (st.type) {
      case 'dir': {
        fs.mkdirSync(out, { recursive: true, mode: 0o700 });
        stats.dirs++;
        for (const e of img.readdirNid(nid)) {
          if (e.name === '.' || e.name === '..') continue;
          walk(e.nid, path.join(out, e.name));
        }
        dirsToFinish.push([out, st]);
        return;
      }
      case 'file': {
        const prev = st.nlink > 1 ? seen.get(nid) : undefined;
        if (prev) {
          fs.linkSync(prev, out);
          stats.hardlinks++;
          return;
        }
        const fd = fs.openSync(out, 'w', 0o600);
        try {
          for (let off = 0; off < st.size; off += chunk) {
            const buf = img.readNid(nid, off, Math.min(chunk, st.size - off));
            fs.writeSync(fd, buf, 0, buf.length, off);
          }
          if (st.size > 0) fs.ftruncateSync(fd, st.size);
        } finally {
          fs.closeSync(fd);
        }
        stats.files++;
        stats.bytes += st.size;
        if (st.nlink > 1) seen.set(nid, out);
        setMeta(out, st, false);
        return;
      }
      case 'symlink':
        fs.symlinkSync(img.readlinkNid(nid), out);
        stats.symlinks++;
        setMeta(out, st, true);
        return;
      default: {
        const prev = st.nlink > 1 ? seen.get(nid) : undefined;
        if (prev) {
          fs.linkSync(prev, out);
          stats.hardlinks++;
          return;
        }
        makeNode(out, st);
        stats.specials++;
        if (st.nlink > 1) seen.set(nid, out);
        setMeta(out, st, false);
      }
    }
  };
  walk(img.resolve(from, true), dest);
  // Directory times last, deepest first, so children do not bump them.
  for (const [p, st] of dirsToFinish) setMeta(p, st, false);
  return stats;
}

/** Device, fifo and socket nodes: Node has no mknod(2), so use mknod(1) / python. */
function makeNode(p: string, st: ErofsStat): void {
  const perm = (st.mode & 0o7777).toString(8);
  if (st.type === 'fifo') {
    execFileSync('mknod', ['-m', perm, p, 'p']);
  } else if (st.type === 'chardev' || st.type === 'blockdev') {
    execFileSync('mknod', ['-m', perm, p, st.type === 'chardev' ? 'c' : 'b', String(st.rdevMajor), String(st.rdevMinor)]);
  } else {
    execFileSync('python3', ['-c', 'import os,stat,sys; os.mknod(sys.argv[1], stat.S_IFSOCK | int(sys.argv[2], 8))', p, perm]);
  }
}

export const erofsCommand: CtlCommand<ErofsArgs> = {
  command: 'erofs <action> <image> [path] [dir]',
  describe: 'inspect, list, read or extract an EROFS image (inspect|ls|cat|extract)',
  builder: (y) =>
    y
      .positional('action', { type: 'string', choices: ['inspect', 'ls', 'cat', 'extract'], demandOption: true })
      .positional('image', { type: 'string', demandOption: true, describe: 'EROFS image file' })
      .positional('path', { type: 'string', describe: 'path inside the image (extract: DIR when alone)' })
      .positional('dir', { type: 'string', describe: 'extract: destination directory' })
      .option('json', { type: 'boolean', default: false, describe: 'inspect, ls: machine-readable output' })
      .option('device', { type: 'string', array: true, describe: 'blob device file of a multi-device image, one per extra device in device-table order (as mount -o device=)' }) as never,
  handler: async (argv) => {
    const img = ErofsImage.open(argv.image, { devices: argv.device ?? [] });
    try {
      switch (argv.action) {
        case 'inspect':
          if (argv.json) printJson({ schemaVersion: 1, ...(argv.path ? inodeJson(img, img.lstat(argv.path), argv.path, true, argv.path) : inspectJson(img)) });
          else process.stdout.write(argv.path ? inodeText(img, argv.path) : inspectText(img));
          return 0;
        case 'ls': {
          const p = argv.path ?? '/';
          const st = img.lstat(p);
          if (argv.json) {
            printJson({ schemaVersion: 1, path: p, entries: st.type !== 'dir' ? [inodeJson(img, st, p)] : img.readdir(p).map((e) => inodeJson(img, img.inode(e.nid), e.name)) });
            return 0;
          }
          if (st.type !== 'dir') {
            process.stdout.write(lsLine(img, st, p) + '\n');
            return 0;
          }
          const lines = img.readdir(p).map((e) => lsLine(img, img.inode(e.nid), e.name));
          process.stdout.write(lines.join('\n') + (lines.length ? '\n' : ''));
          return 0;
        }
        case 'cat': {
          if (!argv.path) {
            process.stderr.write('kata-ctl erofs cat: PATH is required\n');
            return 2;
          }
          const nid = img.resolve(argv.path, true);
          const st = img.inode(nid);
          // Through process.stdout with its callback, not fs.writeSync(1):
          // a non-blocking stdout pipe (spawn with stdio 'pipe') gives EAGAIN.
          for (let off = 0; off < st.size; off += 1 << 20) {
            const buf = img.readNid(nid, off, Math.min(1 << 20, st.size - off));
            await new Promise<void>((resolve, reject) => process.stdout.write(buf, (err) => (err ? reject(err) : resolve())));
          }
          return 0;
        }
        case 'extract': {
          const from = argv.dir ? argv.path ?? '/' : '/';
          const dest = argv.dir ?? argv.path;
          if (!dest) {
            process.stderr.write('kata-ctl erofs extract: DIR is required\n');
            return 2;
          }
          const s = extractImage(img, from, dest);
          const skipped = s.xattrsSkipped ? ` (${s.xattrsSkipped} not restored)` : '';
          process.stderr.write(`extracted ${s.files} files (${s.bytes} bytes), ${s.dirs} dirs, ${s.symlinks} symlinks, ${s.hardlinks} hard links, ${s.specials} special files, ${s.xattrs} xattrs${skipped}\n`);
          return 0;
        }
        default:
          return 2;
      }
    } finally {
      img.close();
    }
  },
};
