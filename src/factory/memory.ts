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
import { native } from '../common/native';

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;
const CHUNK = 4 << 20;

export interface CloneMemory {
  fd: number;
  /** What QEMU opens: /proc/<pid>/fd/<fd>. */
  path: string;
  /** Bytes copied (the template's data extents). */
  copied: number;
  ms: number;
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

/** Copies the data extents of `templateFile` (`bytes` long) into a new memfd. */
export function cloneMemory(templateFile: string, bytes: number): CloneMemory {
  const t0 = process.hrtime.bigint();
  const src = fs.openSync(templateFile, 'r');
  let fd = -1;
  try {
    const size = fs.fstatSync(src).size;
    if (size !== bytes) throw new Error(`${templateFile} holds ${size} bytes, the template's RAM is ${bytes}`);
    fd = native().memfdCreate('kata-ts-clone-ram', bytes);
    const buf = Buffer.allocUnsafe(CHUNK);
    let copied = 0;
    for (const [start, end] of dataExtents(src, size)) {
      for (let off = start; off < end;) {
        const n = fs.readSync(src, buf, 0, Math.min(CHUNK, end - off), off);
        if (n <= 0) throw new Error(`${templateFile} ended at ${off} (truncated while copying?)`);
        let w = 0;
        while (w < n) w += fs.writeSync(fd, buf, w, n - w, off + w);
        off += n;
        copied += n;
      }
    }
    return { fd, path: `/proc/${process.pid}/fd/${fd}`, copied, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
  } catch (err) {
    if (fd >= 0) fs.closeSync(fd);
    throw err;
  } finally {
    fs.closeSync(src);
  }
}
