/**
 * A clone's guest RAM: a fresh memfd filled from the template's memory file,
 * copying only the file's data extents (lseek SEEK_DATA / SEEK_HOLE): the
 * template touched ~75 MB of its 512 MiB, the rest is a hole that stays a
 * hole (reads as zero, costs nothing until the guest writes it).
 *
 * Why a copy and not the template file mapped private (copy-on-write, the
 * densest): our vhost-user devices (vsock agent channel, virtio-fs, blk)
 * map guest RAM from the fd QEMU hands them, and with a private mapping
 * they would map the template's file — not the clone's copy-on-write pages
 * — and read stale rings. A shared memfd is what both QEMU and the backends
 * see alike. bench/factory.ts measures both; README "VM templates".
 *
 * QEMU opens the memfd as /proc/<our pid>/fd/<n> (memory-backend-file): no
 * file on disk is left behind whatever happens to either process; the
 * caller closes its fd once QEMU has it.
 */
import * as fs from 'node:fs';
import { promisify } from 'node:util';
import { native } from '../common/native';

const read = promisify(fs.read);
const write = promisify(fs.write);

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;
const CHUNK = 4 << 20;

export interface CloneMemory {
  fd: number;
  /** What QEMU opens: /proc/<pid>/fd/<fd>. */
  path: string;
  /**
   * Settles when the copy is complete: bytes copied (the template's data
   * extents) and how long it took. The copy runs on libuv's thread pool
   * while QEMU starts; the guest must not be restored before this resolves.
   */
  done: Promise<{ copied: number; ms: number }>;
}

/** Data extents [start, end) of an open file, by SEEK_DATA/SEEK_HOLE. */
export function dataExtents(fd: number, size: number): [number, number][] {
  const out: [number, number][] = [];
  let pos = 0;
  while (pos < size) {
    const start = native().fsLseek(fd, pos, SEEK_DATA);
    if (start === -ENXIO) break; // no data after pos
    if (start < 0) throw new Error(`lseek(SEEK_DATA): errno ${-start}`);
    const end = native().fsLseek(fd, start, SEEK_HOLE);
    if (end < 0) throw new Error(`lseek(SEEK_HOLE): errno ${-end}`);
    out.push([start, Math.min(end, size)]);
    pos = end;
  }
  return out;
}

/**
 * Creates the clone's memfd and starts copying the data extents of
 * `templateFile` (`bytes` long) into it, two chunks at a time on the thread
 * pool. Throws at once (closing what it opened) when the file cannot be
 * read or has another size; a read or write error later rejects `done`.
 */
export function startCloneMemory(templateFile: string, bytes: number): CloneMemory {
  const t0 = process.hrtime.bigint();
  const src = fs.openSync(templateFile, 'r');
  let fd = -1;
  let chunks: [number, number][];
  try {
    const size = fs.fstatSync(src).size;
    if (size !== bytes) throw new Error(`${templateFile} holds ${size} bytes, the template's RAM is ${bytes}`);
    fd = native().memfdCreate('kata-ts-clone-ram', bytes);
    chunks = [];
    for (const [start, end] of dataExtents(src, size)) {
      for (let off = start; off < end; off += CHUNK) chunks.push([off, Math.min(CHUNK, end - off)]);
    }
  } catch (err) {
    if (fd >= 0) fs.closeSync(fd);
    fs.closeSync(src);
    throw err;
  }
  const dst = fd;
  let copied = 0;
  const worker = async (): Promise<void> => {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (let c = chunks.shift(); c; c = chunks.shift()) {
      const [off, len] = c;
      const n = (await read(src, buf, 0, len, off)).bytesRead;
      if (n !== len) throw new Error(`${templateFile} ended at ${off + n} (truncated while copying?)`);
      let w = 0;
      while (w < n) w += (await write(dst, buf, w, n - w, off + w)).bytesWritten;
      copied += n;
    }
  };
  const done = Promise.all([worker(), worker()])
    .then(() => ({ copied, ms: Number(process.hrtime.bigint() - t0) / 1e6 }))
    .finally(() => fs.closeSync(src));
  done.catch(() => undefined); // awaited by the restore; never an unhandled rejection
  return { fd, path: `/proc/${process.pid}/fd/${fd}`, done };
}
