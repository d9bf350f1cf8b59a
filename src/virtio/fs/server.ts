/**
 * The FUSE server: one request (a chain's readable buffers) in, one reply
 * (written into its writable buffers) out. Decodes each opcode's arguments
 * (include/uapi/linux/fuse.h, protocol 7.31–7.38), calls the passthrough
 * filesystem and encodes the answer. Transport-free: the virtio-fs device
 * (device.ts) feeds it chains, tests feed it byte arrays.
 *
 * Errors: an FsError('errno') becomes `-errno` in fuse_out_header.error; a
 * malformed request is answered EINVAL (or EIO when even the header is
 * unusable); any other exception is a bug and is answered EIO and logged —
 * the server never throws at its caller. Opcodes outside the supported set
 * get ENOSYS, which the guest kernel remembers and stops sending.
 */
import { logger } from '../../common/log';
import {
  COMPAT_22_INIT_OUT_SIZE, E, FsError, FUSE_ASYNC_DIO, FUSE_ASYNC_READ, FUSE_ATOMIC_O_TRUNC,
  FUSE_AUTO_INVAL_DATA, FUSE_BIG_WRITES, FUSE_CACHE_SYMLINKS, FUSE_DO_READDIRPLUS, FUSE_FSYNC_FDATASYNC,
  FUSE_GETATTR_FH, FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, FUSE_MAX_PAGES, FUSE_MIN_MINOR_VERSION,
  FUSE_PARALLEL_DIROPS, FUSE_READDIRPLUS_AUTO, FUSE_ATTR_SUBMOUNT, FUSE_SUBMOUNTS, FATTR_FH, GETXATTR_OUT_SIZE, INIT_OUT_SIZE, LSEEK_OUT_SIZE,
  Op, OP_NAMES, OPEN_OUT_SIZE, OUT_HEADER_SIZE, WRITE_IN_SIZE, WRITE_OUT_SIZE, XATTR_SIZE_MAX,
} from './constants';
import { Caller, PassthroughFs, SetattrArgs } from './passthrough';
import { readdir } from './readdir';
import {
  attrOut, cstring, entryOut, FuseRequest, need, newStat, parseRequest, slices, statfsOut, Timeouts, totalLength,
  writeOutHeader, writeReply,
} from './wire';

export interface FuseServerOptions {
  /** Seconds the guest may cache entries and attributes (virtiofsd cache=auto: 1). */
  cacheTimeoutSec?: number;
  /** Largest WRITE/READ payload offered at INIT (bytes; multiple of 4 KiB). */
  maxWrite?: number;
}

/** Result of one request: bytes written into the writable buffers (used length). */
export type Reply = number;

interface Counters { requests: number; errors: number; malformed: number; byOp: Map<number, number> }

const log = () => logger('virtio.fs');

export class FuseServer {
  private readonly t: Timeouts;
  private readonly maxWrite: number;
  private initialized = false;
  /** The guest took FUSE_SUBMOUNTS: mount crossings are flagged in LOOKUP/READDIRPLUS entries. */
  private submounts = false;
  readonly counters: Counters = { requests: 0, errors: 0, malformed: 0, byOp: new Map() };

  constructor(readonly fs: PassthroughFs, opts: FuseServerOptions = {}) {
    const c = opts.cacheTimeoutSec ?? 1;
    this.t = { entrySec: c, attrSec: c };
    this.maxWrite = opts.maxWrite ?? 1024 * 1024;
  }

  /**
   * Serves one request. Resolves to the used length (0 for requests without
   * a reply: FORGET, BATCH_FORGET, INTERRUPT). Never rejects.
   */
  async handle(readable: ReadonlyArray<Buffer>, writable: ReadonlyArray<Buffer>): Promise<Reply> {
    this.counters.requests++;
    let req: FuseRequest;
    try {
      req = parseRequest(readable, Op.WRITE, WRITE_IN_SIZE);
    } catch (err) {
      this.counters.malformed++;
      const unique = err instanceof FsError && isHeader(err.cause) ? err.cause.unique : 0n;
      const code = err instanceof FsError ? err.errno : E.EIO;
      log().warn('malformed FUSE request', { error: String(err) });
      return writeReply(writable, unique, -code, []);
    }
    this.counters.byOp.set(req.opcode, (this.counters.byOp.get(req.opcode) ?? 0) + 1);
    try {
      return await this.dispatch(req, writable);
    } catch (err) {
      this.counters.errors++;
      // fuse.rst: FORGET, BATCH_FORGET and INTERRUPT are never answered,
      // not even with an error (the guest posted no reply buffer for them).
      if (req.opcode === Op.FORGET || req.opcode === Op.BATCH_FORGET || req.opcode === Op.INTERRUPT) return 0;
      if (err instanceof FsError) {
        if (err.kind === 'malformed') this.counters.malformed++;
        return writeReply(writable, req.unique, -err.errno, []);
      }
      log().error('FUSE request failed', { op: OP_NAMES[req.opcode] ?? req.opcode, error: String(err) });
      return writeReply(writable, req.unique, -E.EIO, []);
    }
  }

  private ok(w: ReadonlyArray<Buffer>, req: FuseRequest, ...payload: Buffer[]): Reply {
    return writeReply(w, req.unique, 0, payload);
  }

  private caller(req: FuseRequest): Caller { return { uid: req.uid, gid: req.gid }; }

  private async dispatch(req: FuseRequest, w: ReadonlyArray<Buffer>): Promise<Reply> {
    const b = req.body;
    const fs = this.fs;
    if (!this.initialized && req.opcode !== Op.INIT) {
      // fuse.rst: nothing but INIT before INIT.
      throw new FsError('errno', E.EIO, 'request before INIT');
    }
    switch (req.opcode) {
      case Op.INIT: return this.init(req, w);
      case Op.DESTROY:
        fs.destroy();
        this.initialized = false;
        return this.ok(w, req);
      case Op.LOOKUP: {
        let e;
        try {
          e = fs.lookup(req.nodeid, cstring(b, 0, 'LOOKUP name').s);
        } catch (err) {
          // fuse.rst: nodeid 0 with a timeout is a cacheable negative entry,
          // sparing the guest a LOOKUP round trip per create of a new name.
          if (err instanceof FsError && err.kind === 'errno' && err.errno === E.ENOENT && this.t.entrySec > 0) {
            return this.ok(w, req, entryOut(0, newStat(), this.t));
          }
          throw err;
        }
        return this.ok(w, req, entryOut(e.inode.id, e.st, this.t, this.attrFlags(e)));
      }
      case Op.FORGET:
        fs.forget(req.nodeid, need(b, 8, 'fuse_forget_in').readBigUInt64LE(0));
        return 0;
      case Op.BATCH_FORGET: {
        need(b, 8, 'fuse_batch_forget_in');
        const count = b.readUInt32LE(0);
        // Each fuse_forget_one is 16 bytes; forget what is really there.
        const n = Math.min(count, Math.floor((b.length - 8) / 16));
        for (let i = 0; i < n; i++) fs.forget(b.readBigUInt64LE(8 + 16 * i), b.readBigUInt64LE(16 + 16 * i));
        return 0;
      }
      case Op.INTERRUPT:
        return 0; // Requests here are not interruptible; the reply to the original is the answer.
      case Op.GETATTR: {
        need(b, 16, 'fuse_getattr_in');
        // FUSE_GETATTR_FH names a handle of the same inode: attributes are the same.
        if (b.readUInt32LE(0) & FUSE_GETATTR_FH) fs.handles.get(b.readBigUInt64LE(8), false);
        return this.ok(w, req, attrOut(fs.getattr(req.nodeid), this.t));
      }
      case Op.SETATTR: return this.ok(w, req, attrOut(fs.setattr(req.nodeid, setattrArgs(b)), this.t));
      case Op.READLINK: return this.ok(w, req, fs.readlink(req.nodeid));
      case Op.SYMLINK: {
        const name = cstring(b, 0, 'SYMLINK name');
        const target = cstring(b, name.next, 'SYMLINK target');
        const e = fs.symlink(req.nodeid, name.s, target.s, this.caller(req));
        return this.ok(w, req, entryOut(e.inode.id, e.st, this.t));
      }
      case Op.MKNOD: {
        need(b, 16, 'fuse_mknod_in');
        const e = fs.mknod(req.nodeid, cstring(b, 16, 'MKNOD name').s, b.readUInt32LE(0), b.readUInt32LE(4), this.caller(req));
        return this.ok(w, req, entryOut(e.inode.id, e.st, this.t));
      }
      case Op.MKDIR: {
        need(b, 8, 'fuse_mkdir_in');
        const e = fs.mkdir(req.nodeid, cstring(b, 8, 'MKDIR name').s, b.readUInt32LE(0), this.caller(req));
        return this.ok(w, req, entryOut(e.inode.id, e.st, this.t));
      }
      case Op.UNLINK: fs.unlink(req.nodeid, cstring(b, 0, 'UNLINK name').s); return this.ok(w, req);
      case Op.RMDIR: fs.rmdir(req.nodeid, cstring(b, 0, 'RMDIR name').s); return this.ok(w, req);
      case Op.RENAME: case Op.RENAME2: {
        const fixed = req.opcode === Op.RENAME ? 8 : 16;
        need(b, fixed, 'fuse_rename_in');
        const flags = req.opcode === Op.RENAME ? 0 : b.readUInt32LE(8);
        const from = cstring(b, fixed, 'RENAME old name');
        const to = cstring(b, from.next, 'RENAME new name');
        fs.rename(req.nodeid, from.s, b.readBigUInt64LE(0), to.s, flags);
        return this.ok(w, req);
      }
      case Op.LINK: {
        need(b, 8, 'fuse_link_in');
        const e = fs.link(b.readBigUInt64LE(0), req.nodeid, cstring(b, 8, 'LINK name').s);
        return this.ok(w, req, entryOut(e.inode.id, e.st, this.t));
      }
      case Op.OPEN: case Op.OPENDIR: {
        need(b, 8, 'fuse_open_in');
        const h = req.opcode === Op.OPEN ? fs.open(req.nodeid, b.readUInt32LE(0)) : fs.opendir(req.nodeid);
        return this.ok(w, req, openOut(h.id));
      }
      case Op.CREATE: {
        need(b, 16, 'fuse_create_in');
        const { entry, handle } = fs.create(req.nodeid, cstring(b, 16, 'CREATE name').s, b.readUInt32LE(4), b.readUInt32LE(0), this.caller(req));
        return this.ok(w, req, entryOut(entry.inode.id, entry.st, this.t), openOut(handle.id));
      }
      case Op.READ: return this.read(req, w);
      case Op.WRITE: return this.write(req, w);
      case Op.STATFS: return this.ok(w, req, statfsOut(fs.statfs(req.nodeid)));
      case Op.RELEASE: fs.release(need(b, 24, 'fuse_release_in').readBigUInt64LE(0)); return this.ok(w, req);
      case Op.RELEASEDIR: fs.releasedir(need(b, 24, 'fuse_release_in').readBigUInt64LE(0)); return this.ok(w, req);
      case Op.FLUSH: fs.flush(need(b, 24, 'fuse_flush_in').readBigUInt64LE(0)); return this.ok(w, req);
      case Op.FSYNC: case Op.FSYNCDIR: {
        need(b, 16, 'fuse_fsync_in');
        fs.fsync(b.readBigUInt64LE(0), (b.readUInt32LE(8) & FUSE_FSYNC_FDATASYNC) !== 0, req.opcode === Op.FSYNCDIR);
        return this.ok(w, req);
      }
      case Op.READDIR: case Op.READDIRPLUS: {
        need(b, 40, 'fuse_read_in');
        const h = fs.handles.get(b.readBigUInt64LE(0), true);
        const size = Math.min(b.readUInt32LE(16), Math.max(0, totalLength(w) - OUT_HEADER_SIZE));
        return this.ok(w, req, readdir(fs, h, b.readBigUInt64LE(8), size, req.opcode === Op.READDIRPLUS, this.t, (e) => this.attrFlags(e)));
      }
      case Op.ACCESS: fs.access(req.nodeid, need(b, 8, 'fuse_access_in').readUInt32LE(0), this.caller(req)); return this.ok(w, req);
      case Op.FALLOCATE: {
        need(b, 32, 'fuse_fallocate_in');
        fs.fallocate(b.readBigUInt64LE(0), b.readUInt32LE(24), b.readBigUInt64LE(8), b.readBigUInt64LE(16));
        return this.ok(w, req);
      }
      case Op.LSEEK: {
        need(b, 24, 'fuse_lseek_in');
        const off = fs.lseek(b.readBigUInt64LE(0), b.readBigUInt64LE(8), b.readUInt32LE(16));
        const out = Buffer.alloc(LSEEK_OUT_SIZE);
        out.writeBigUInt64LE(BigInt(off), 0);
        return this.ok(w, req, out);
      }
      case Op.GETXATTR: case Op.LISTXATTR: {
        need(b, 8, 'fuse_getxattr_in');
        const size = b.readUInt32LE(0);
        const r = req.opcode === Op.GETXATTR
          ? fs.getxattr(req.nodeid, cstring(b, 8, 'GETXATTR name').s, size)
          : fs.listxattr(req.nodeid, size);
        if (typeof r === 'number') {
          const out = Buffer.alloc(GETXATTR_OUT_SIZE);
          out.writeUInt32LE(r, 0);
          return this.ok(w, req, out);
        }
        return this.ok(w, req, r);
      }
      case Op.SETXATTR: {
        // fuse_setxattr_in is 8 bytes (FUSE_COMPAT_SETXATTR_IN_SIZE) because
        // we do not negotiate FUSE_SETXATTR_EXT.
        need(b, 8, 'fuse_setxattr_in');
        const size = b.readUInt32LE(0);
        const name = cstring(b, 8, 'SETXATTR name');
        if (size > XATTR_SIZE_MAX || name.next + size > b.length) throw new FsError('malformed', E.EINVAL, 'SETXATTR value');
        fs.setxattr(req.nodeid, name.s, b.subarray(name.next, name.next + size), b.readUInt32LE(4));
        return this.ok(w, req);
      }
      case Op.REMOVEXATTR: fs.removexattr(req.nodeid, cstring(b, 0, 'REMOVEXATTR name').s); return this.ok(w, req);
      default:
        throw new FsError('errno', E.ENOSYS, `opcode ${req.opcode} not implemented`);
    }
  }

  /** fuse_attr.flags of an entry: FUSE_ATTR_SUBMOUNT for a mount crossing, when negotiated. */
  private attrFlags(e: { crossesMount?: boolean }): number {
    return this.submounts && e.crossesMount ? FUSE_ATTR_SUBMOUNT : 0;
  }

  private init(req: FuseRequest, w: ReadonlyArray<Buffer>): Reply {
    const b = need(req.body, 16, 'fuse_init_in');
    const major = b.readUInt32LE(0), minor = b.readUInt32LE(4), flags = b.readUInt32LE(12);
    const out = Buffer.alloc(INIT_OUT_SIZE);
    out.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
    if (major > FUSE_KERNEL_VERSION) {
      // fuse.rst: answer with our major only; the kernel retries with it.
      out.writeUInt32LE(FUSE_KERNEL_MINOR_VERSION, 4);
      return this.ok(w, req, out.subarray(0, 8));
    }
    if (major < FUSE_KERNEL_VERSION || minor < FUSE_MIN_MINOR_VERSION) {
      throw new FsError('errno', E.EPROTO, `FUSE ${major}.${minor} is older than 7.${FUSE_MIN_MINOR_VERSION}`);
    }
    const want = FUSE_ASYNC_READ | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_AUTO_INVAL_DATA |
      FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES |
      FUSE_CACHE_SYMLINKS | FUSE_SUBMOUNTS;
    // A second INIT is a new guest driver instance (reboot, re-probe): the
    // old one's nodeids and handles mean nothing any more.
    if (this.initialized) this.fs.destroy();
    const maxPages = Math.max(1, Math.floor(this.maxWrite / 4096));
    out.writeUInt32LE(Math.min(minor, FUSE_KERNEL_MINOR_VERSION), 4);
    out.writeUInt32LE(b.readUInt32LE(8), 8); // max_readahead: what the guest proposed
    out.writeUInt32LE((flags & want) >>> 0, 12);
    this.submounts = (flags & FUSE_SUBMOUNTS) !== 0;
    out.writeUInt16LE(64, 16); // max_background
    out.writeUInt16LE(48, 18); // congestion_threshold
    out.writeUInt32LE(maxPages * 4096, 20); // max_write
    out.writeUInt32LE(1, 24); // time_gran: host timestamps are ns
    out.writeUInt16LE(maxPages, 28);
    this.initialized = true;
    return this.ok(w, req, minor < 23 ? out.subarray(0, COMPAT_22_INIT_OUT_SIZE) : out);
  }

  private async read(req: FuseRequest, w: ReadonlyArray<Buffer>): Promise<Reply> {
    const b = need(req.body, 40, 'fuse_read_in');
    const room = totalLength(w) - OUT_HEADER_SIZE;
    if (room < 0) return 0;
    const size = Math.min(b.readUInt32LE(16), room);
    // Data goes straight from the file into guest memory after the header.
    const n = await this.fs.read(b.readBigUInt64LE(0), b.readBigUInt64LE(8), slices(w, OUT_HEADER_SIZE, size));
    const hdr = Buffer.alloc(OUT_HEADER_SIZE);
    writeOutHeader(hdr, OUT_HEADER_SIZE + n, 0, req.unique);
    let s = 0;
    for (const dst of slices(w, 0, OUT_HEADER_SIZE)) s += hdr.copy(dst, 0, s, s + dst.length);
    return OUT_HEADER_SIZE + n;
  }

  private async write(req: FuseRequest, w: ReadonlyArray<Buffer>): Promise<Reply> {
    const b = req.body;
    const size = b.readUInt32LE(16);
    if (size > totalLength(req.data)) throw new FsError('malformed', E.EINVAL, `WRITE of ${size} bytes carries ${totalLength(req.data)}`);
    const n = await this.fs.write(b.readBigUInt64LE(0), b.readBigUInt64LE(8), slices(req.data, 0, size));
    const out = Buffer.alloc(WRITE_OUT_SIZE);
    out.writeUInt32LE(n, 0);
    return this.ok(w, req, out);
  }
}

function isHeader(v: unknown): v is { unique: bigint } {
  return typeof v === 'object' && v !== null && typeof (v as { unique?: unknown }).unique === 'bigint';
}

function openOut(fh: number): Buffer {
  const out = Buffer.alloc(OPEN_OUT_SIZE);
  out.writeBigUInt64LE(BigInt(fh), 0);
  return out; // open_flags 0: page cache as the kernel decides (no DIRECT_IO, no KEEP_CACHE)
}

function setattrArgs(b: Buffer): SetattrArgs {
  need(b, 88, 'fuse_setattr_in');
  const valid = b.readUInt32LE(0);
  return {
    valid,
    fh: valid & FATTR_FH ? b.readBigUInt64LE(8) : undefined,
    size: b.readBigUInt64LE(16),
    atime: b.readBigUInt64LE(32),
    mtime: b.readBigUInt64LE(40),
    atimensec: b.readUInt32LE(56),
    mtimensec: b.readUInt32LE(60),
    mode: b.readUInt32LE(68),
    uid: b.readUInt32LE(76),
    gid: b.readUInt32LE(80),
  };
}

