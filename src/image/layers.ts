/**
 * OCI layer semantics into an in-memory tree: what `umoci unpack` or
 * containerd's applier would leave on disk, without touching the disk.
 *
 * Follows the OCI image-spec layer rules: entries apply in archive order;
 * `.wh.NAME` removes NAME as it exists in the lower layers; `.wh..wh..opq`
 * empties its directory of everything from the lower layers (entries this
 * layer already added stay); an entry replacing a non-directory (or a
 * directory by a non-directory) removes the old one; a directory over a
 * directory only updates its metadata; hard links (also to a file of a lower
 * layer) share one inode. Paths are normalised ("./a//b/" → "a/b"); absolute
 * paths and ".." components are refused (a layer is relative to the root), as
 * is a hard link whose target does not exist.
 */
import * as path from 'node:path';
import { KataError } from '../common/errors';
import type { TarEntry } from './tar';

export type LayerErrorKind = 'path' | 'hardlink' | 'whiteout' | 'xattr';
export class LayerError extends KataError<LayerErrorKind> {}

export type NodeKind = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo';

export interface Inode {
  kind: NodeKind;
  /** Permission bits incl. setuid/setgid/sticky (no file-type bits). */
  perm: number;
  uid: number;
  gid: number;
  mtime: number;
  mtimeNsec: number;
  xattrs: Map<string, Buffer>;
  /**
   * Regular file content when held in memory: an inline file's bytes (the
   * converter copies them as the layer streams by), or a view into a whole
   * parsed tar (apply()). A chunked file's bytes are only in its slots.
   */
  data: Buffer;
  /** Regular file size in bytes. */
  size: number;
  /** Chunks of a chunk-based file, filled as its data streams by (the converter's Chunker ordinals; slotOfChunk() gives their slots). */
  slots: number[] | null;
  /** Symlink target. */
  target: string;
  major: number;
  minor: number;
  /** Index of the layer whose content this inode holds (blob assignment). */
  layer: number;
  /** Directory entries: name → entry. */
  children: Map<string, DirEntry> | null;
}

export interface DirEntry {
  inode: Inode;
  /** Layer that created this name (whiteouts only hide lower layers). */
  layer: number;
}

const EMPTY = Buffer.alloc(0);

function newInode(kind: NodeKind, layer: number): Inode {
  return { kind, perm: 0o755, uid: 0, gid: 0, mtime: 0, mtimeNsec: 0, xattrs: new Map(), data: EMPTY, size: 0, slots: null, target: '', major: 0, minor: 0, layer, children: kind === 'dir' ? new Map() : null };
}

/** The image's root filesystem, built layer by layer. */
export class LayerTree {
  readonly root: Inode = newInode('dir', -1);

  /** "./usr//bin/" → ["usr","bin"]; refuses absolute paths and "..". */
  static split(p: string, what: string): string[] {
    if (p.startsWith('/')) throw new LayerError('path', `${what}: absolute path "${p}" in a layer`);
    if (p.includes('\0')) throw new LayerError('path', `${what}: NUL in path`);
    const parts = p.split('/').filter((s) => s !== '' && s !== '.');
    if (parts.includes('..')) throw new LayerError('path', `${what}: path "${p}" escapes the root`);
    for (const s of parts) if (Buffer.byteLength(s) > 255) throw new LayerError('path', `${what}: name longer than 255 bytes in "${p.slice(0, 80)}…"`);
    return parts;
  }

  private lookup(parts: string[]): Inode | null {
    let n: Inode = this.root;
    for (const s of parts) {
      const e = n.children?.get(s);
      if (!e) return null;
      n = e.inode;
    }
    return n;
  }

  /** Parent directory of parts, created (0755 root) where missing, as unpackers do. */
  private parentDir(parts: string[], layer: number, what: string): Inode {
    let n = this.root;
    for (const s of parts.slice(0, -1)) {
      let e = n.children!.get(s);
      if (!e) {
        e = { inode: newInode('dir', layer), layer };
        n.children!.set(s, e);
      } else if (e.inode.kind !== 'dir') {
        throw new LayerError('path', `${what}: "${parts.join('/')}" lies under non-directory "${s}"`);
      }
      n = e.inode;
    }
    return n;
  }

  /** Applies one layer's entries (layer = its index, bottom first). */
  apply(entries: TarEntry[], layer: number, what: string): void {
    for (const e of entries) this.applyEntry(e, layer, `${what}: ${JSON.stringify(e.path.slice(0, 200))}`);
  }

  /**
   * Applies one entry (the streaming converter calls this per header);
   * returns the new inode of a regular file (its data is the caller's to
   * fill), else null.
   */
  applyEntry(e: TarEntry, layer: number, what: string): Inode | null {
    const parts = LayerTree.split(e.path, what);
    if (parts.length === 0) {
      if (e.type !== 'dir') throw new LayerError('path', `${what}: the root must be a directory`);
      setMeta(this.root, e);
      return null;
    }
    const base = parts[parts.length - 1];
    if (base.startsWith('.wh.')) {
      const dir = this.parentDir(parts, layer, what);
      if (base === '.wh..wh..opq') {
        for (const [name, ent] of dir.children!) if (ent.layer < layer) dir.children!.delete(name);
      } else {
        const victim = base.slice(4);
        if (victim === '' || victim === '.' || victim === '..') throw new LayerError('whiteout', `${what}: whiteout of "${victim}"`);
        const ent = dir.children!.get(victim);
        if (ent && ent.layer < layer) dir.children!.delete(victim);
      }
      return null;
    }
    const dir = this.parentDir(parts, layer, what);
    const old = dir.children!.get(base);
    if (e.type === 'dir' && old && old.inode.kind === 'dir') {
      setMeta(old.inode, e);
      return null;
    }
    let inode: Inode;
    if (e.type === 'hardlink') {
      const target = this.lookup(LayerTree.split(e.linkname, `${what} (link target)`));
      if (!target) throw new LayerError('hardlink', `${what}: hard link to "${e.linkname}", which does not exist`);
      if (target.kind === 'dir') throw new LayerError('hardlink', `${what}: hard link to directory "${e.linkname}"`);
      inode = target;
    } else {
      inode = newInode(e.type, layer);
      setMeta(inode, e);
      if (e.type === 'file') { inode.data = e.data; inode.size = e.size; }
      else if (e.type === 'symlink') {
        if (e.linkname === '') throw new LayerError('path', `${what}: symlink with an empty target`);
        inode.target = e.linkname;
        inode.perm = 0o777;
      } else if (e.type === 'char' || e.type === 'block') {
        inode.major = e.devmajor;
        inode.minor = e.devminor;
      }
    }
    dir.children!.set(base, { inode, layer });
    return e.type === 'file' ? inode : null;
  }

  /** Number of names pointing at each non-directory inode (hard links). */
  linkCounts(): Map<Inode, number> {
    const m = new Map<Inode, number>();
    const walk = (d: Inode): void => {
      for (const { inode } of d.children!.values()) {
        if (inode.kind === 'dir') walk(inode);
        else m.set(inode, (m.get(inode) ?? 0) + 1);
      }
    };
    walk(this.root);
    return m;
  }
}

const XATTR_PREFIXES = ['user.', 'trusted.', 'security.', 'system.posix_acl_access', 'system.posix_acl_default'];

function setMeta(n: Inode, e: TarEntry): void {
  n.perm = e.mode & 0o7777;
  n.uid = e.uid;
  n.gid = e.gid;
  n.mtime = e.mtime;
  n.mtimeNsec = e.mtimeNsec;
  for (const k of e.xattrs.keys()) {
    if (!XATTR_PREFIXES.some((p) => k.startsWith(p)) || k.length > 255) {
      throw new LayerError('xattr', `${path.posix.normalize(e.path)}: xattr "${k.slice(0, 64)}" has a namespace EROFS cannot store`);
    }
  }
  n.xattrs = new Map(e.xattrs);
}
