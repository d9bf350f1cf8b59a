/**
 * The public shapes of the EROFS reader (src/hot/erofs.ts): superblock,
 * device table slots, chunk locations, inode stats, directory entries,
 * xattrs, options; and the image sources it reads from (a file, a Buffer,
 * or any ImageSource such as a lazily fetched blob).
 */
import * as fs from 'node:fs';

export const FEATURE_NAMES: Record<string, Array<[number, string]>> = {
  compat: [[0x1, 'sb_csum'], [0x2, 'mtime']],
  incompat: [[0x1, '0padding'], [0x2, 'big_pcluster'], [0x4, 'chunked_file'], [0x8, 'device_table'], [0x10, 'ztailpacking']],
};

export type ErofsFileType = 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket';
export type ErofsLayout = 'flat-plain' | 'compressed-legacy' | 'flat-inline' | 'compressed' | 'chunk-based';

export interface ErofsSuperblock {
  blockSize: number;
  blkbits: number;
  rootNid: number;
  inos: number;
  buildTime: number;
  buildTimeNsec: number;
  blocks: number;
  metaBlkaddr: number;
  xattrBlkaddr: number;
  featureCompat: number;
  featureIncompat: number;
  features: string[];
  uuid: string;
  volumeName: string;
  checksum: number;
  /** extra_devices as stored in the superblock. */
  extraDevices: number;
  comprAlgs: number;
  /** The device table (EROFS_FEATURE_INCOMPAT_DEVICE_TABLE): device k + 1 is devices[k]. */
  devices: ErofsDeviceSlot[];
}

/** One erofs_deviceslot: the blob device a chunk index's device_id k + 1 names. */
export interface ErofsDeviceSlot {
  /** mkfs.erofs writes the blob's path or digest here (empty with --blobdev in 1.5). */
  tag: string;
  /** Declared size in blocks; 0 = not declared (mkfs.erofs 1.5 --blobdev). */
  blocks: number;
  /** Flat addressing: primary-device block where this device is mapped (0 = none). */
  mappedBlkaddr: number;
}

/**
 * Where one chunk of a file lives: `chunkLocation(inode, fileOffset)`.
 * device 0 is the image itself, k ≥ 1 the k-th extra device (kernel:
 * `-o device=` in table order; kata-ctl: the k-th `--device`).
 */
export interface ErofsChunkLocation {
  /** Device index (0 = primary). */
  device: number;
  /** Block address on that device (units of the image block size); null for a hole. */
  blockAddr: number | null;
  /** Byte offset of the chunk's first byte on the device (blockAddr * blockSize). */
  byteAddr: number | null;
  /** The chunk's logical range in the file: [fileStart, fileStart + length). */
  fileStart: number;
  /** Bytes of file data in the chunk (the last chunk stops at the file size). */
  length: number;
  /** Chunk size of the inode (2^chunkbits). */
  chunkSize: number;
}

export interface ErofsStat {
  nid: number;
  ino: number;
  type: ErofsFileType;
  /** Full st_mode (type and permission bits). */
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  mtimeNsec: number;
  rdevMajor: number;
  rdevMinor: number;
  layout: ErofsLayout;
  inodeVersion: 'compact' | 'extended';
  xattrIsize: number;
}

export interface ErofsDirent {
  name: string;
  nameBytes: Buffer;
  nid: number;
  type: ErofsFileType | 'unknown';
}

export interface ErofsXattr { name: string; value: Buffer }

/** Where image bytes come from. */
export interface ImageSource {
  readonly size: number;
  /** Reads len bytes at pos into dst[off…]; returns bytes read (short at EOF). */
  read(dst: Uint8Array, off: number, len: number, pos: number): number;
  close(): void;
}

export class FileSource implements ImageSource {
  readonly size: number;
  constructor(private fd: number) {
    this.size = fs.fstatSync(fd).size;
  }
  read(dst: Uint8Array, off: number, len: number, pos: number): number {
    let done = 0;
    while (done < len) {
      const n = fs.readSync(this.fd, dst, off + done, len - done, pos + done);
      if (n === 0) break;
      done += n;
    }
    return done;
  }
  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

export class BufferSource implements ImageSource {
  constructor(private buf: Uint8Array) {}
  get size(): number { return this.buf.length; }
  read(dst: Uint8Array, off: number, len: number, pos: number): number {
    if (pos >= this.buf.length) return 0;
    const n = Math.min(len, this.buf.length - pos);
    dst.set(this.buf.subarray(pos, pos + n), off);
    return n;
  }
  close(): void { /* nothing */ }
}

export interface ErofsOptions {
  /** Largest inode metadata window (default 8 MiB). */
  metaMaxBytes?: number;
  /**
   * Largest decoded extent kept in memory (default 8 MiB: mkfs.erofs 1.5
   * extents stop at its 6000 KiB queue). Larger extents are decoded as a
   * prefix when the read ends within this size, else refused ('too-large').
   */
  extentMaxBytes?: number;
  /**
   * The extra devices (blobs) of a multi-device image, in device-table
   * order, as the kernel's `-o device=`: paths (opened here, closed by
   * close()) or sources. When given, their number must equal the image's
   * extra_devices. When absent, reading data that lives on an extra device
   * is a 'no-device' error; metadata still reads.
   */
  devices?: Array<string | ImageSource>;
}
