/**
 * The passthrough server's tables: FUSE nodeids → held host inodes, and open
 * file handles → host fds (FUSE "lookup count" and "fh" semantics,
 * include/uapi/linux/fuse.h and Documentation/filesystems/fuse.rst).
 *
 * Every inode the guest knows is pinned by an O_PATH|O_NOFOLLOW fd, so a
 * name can be renamed, unlinked or replaced by a symlink on the host without
 * the nodeid ever starting to mean another file: all later operations are
 * relative to that fd, never to a path. Inodes are keyed by (st_dev, st_ino)
 * so hard links and repeated lookups share one nodeid, as FUSE requires.
 *
 * Handles are reference counted while an async READ/WRITE uses their fd: a
 * hostile guest that RELEASEs a handle mid-read must not get the fd number
 * closed and reused by some unrelated host file under the read.
 */
import { E, errno, FUSE_ROOT_ID } from './constants';

export interface Inode {
  readonly id: number;
  /** O_PATH|O_NOFOLLOW fd pinning the host inode. */
  readonly fd: number;
  readonly key: string;
  /** st_mode & S_IFMT; the file type of an inode never changes. */
  readonly fmt: number;
  /** FUSE lookup count; the inode is dropped when FORGET brings it to 0. */
  nlookup: number;
}

export interface Handle {
  readonly id: number;
  readonly fd: number;
  readonly inode: Inode;
  readonly dir: boolean;
  /** In-flight async operations using fd. */
  busy: number;
  /** RELEASE seen: close fd when busy drops to 0. */
  released: boolean;
}

export class InodeTable {
  private readonly byId = new Map<number, Inode>();
  private readonly byKey = new Map<string, Inode>();
  private nextId = FUSE_ROOT_ID + 1;

  constructor(private readonly closeFd: (fd: number) => void) {}

  get size(): number { return this.byId.size; }

  addRoot(fd: number, key: string, fmt: number): Inode {
    // The root is never forgotten (the kernel does not send FORGET for it).
    const root: Inode = { id: FUSE_ROOT_ID, fd, key, fmt, nlookup: Infinity };
    this.byId.set(root.id, root);
    this.byKey.set(key, root);
    return root;
  }

  /** The inode for a guest-supplied nodeid; unknown ids are EBADF (as virtiofsd). */
  get(nodeid: bigint | number): Inode {
    const id = typeof nodeid === 'bigint' ? (nodeid <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(nodeid) : -1) : nodeid;
    const ino = this.byId.get(id);
    if (!ino) throw errno(E.EBADF, `unknown nodeid ${nodeid}`);
    return ino;
  }

  /**
   * Registers a freshly opened O_PATH fd as a lookup of (dev, ino): returns
   * the existing inode (closing fd) or a new one, with nlookup incremented.
   */
  lookedUp(fd: number, key: string, fmt: number): Inode {
    const have = this.byKey.get(key);
    if (have) {
      this.closeFd(fd);
      have.nlookup++;
      return have;
    }
    const ino: Inode = { id: this.nextId++, fd, key, fmt, nlookup: 1 };
    this.byId.set(ino.id, ino);
    this.byKey.set(key, ino);
    return ino;
  }

  /** FORGET: drops `n` lookups; unknown nodeids are ignored (FORGET has no reply). */
  forget(nodeid: bigint, n: bigint): void {
    if (nodeid > BigInt(Number.MAX_SAFE_INTEGER)) return;
    const ino = this.byId.get(Number(nodeid));
    if (!ino || ino.id === FUSE_ROOT_ID) return;
    const count = n > BigInt(ino.nlookup) ? ino.nlookup : Number(n);
    ino.nlookup -= count;
    if (ino.nlookup <= 0) this.drop(ino);
  }

  private drop(ino: Inode): void {
    this.byId.delete(ino.id);
    if (this.byKey.get(ino.key) === ino) this.byKey.delete(ino.key);
    this.closeFd(ino.fd);
  }

  /**
   * Drops every inode on host device `dev` but the root, whatever the
   * guest's lookup counts: the host took that filesystem out of the share
   * (a container's rootfs unbound at its removal). The guest may still name
   * those nodeids: they answer EBADF like any unknown one, a later FORGET of
   * them is ignored, and ids are never reused. Returns how many were dropped.
   */
  dropDevice(dev: bigint): number {
    const prefix = `${dev}:`;
    let n = 0;
    for (const ino of [...this.byId.values()]) {
      if (ino.id === FUSE_ROOT_ID || !ino.key.startsWith(prefix)) continue;
      this.drop(ino);
      n++;
    }
    return n;
  }

  /** Drops every inode but the root (FUSE_DESTROY) or all of them (close). */
  clear(keepRoot: boolean): void {
    for (const ino of [...this.byId.values()]) {
      if (keepRoot && ino.id === FUSE_ROOT_ID) continue;
      this.drop(ino);
    }
  }
}

export class HandleTable {
  private readonly byId = new Map<number, Handle>();
  private nextId = 1;

  constructor(private readonly closeFd: (fd: number) => void) {}

  get size(): number { return this.byId.size; }

  add(fd: number, inode: Inode, dir: boolean): Handle {
    const h: Handle = { id: this.nextId++, fd, inode, dir, busy: 0, released: false };
    this.byId.set(h.id, h);
    return h;
  }

  /** Looks a guest fh up; a file handle used as a dir handle (or vice versa) is EBADF. */
  get(fh: bigint, dir: boolean): Handle {
    const h = fh <= BigInt(Number.MAX_SAFE_INTEGER) ? this.byId.get(Number(fh)) : undefined;
    if (!h || h.released || h.dir !== dir) throw errno(E.EBADF, `unknown ${dir ? 'dir' : 'file'} handle ${fh}`);
    return h;
  }

  /** Marks fd in use by an async operation; pair with done(). */
  use(h: Handle): Handle {
    h.busy++;
    return h;
  }

  done(h: Handle): void {
    h.busy--;
    if (h.released && h.busy === 0) this.closeFd(h.fd);
  }

  release(fh: bigint, dir: boolean): void {
    const h = this.get(fh, dir);
    h.released = true;
    this.byId.delete(h.id);
    if (h.busy === 0) this.closeFd(h.fd);
  }

  clear(): void {
    for (const h of [...this.byId.values()]) {
      h.released = true;
      this.byId.delete(h.id);
      if (h.busy === 0) this.closeFd(h.fd);
    }
  }
}
