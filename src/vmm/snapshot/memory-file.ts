/**
 * The snapshot's guest-memory file: the guest-RAM area of the HotMemory
 * (all RAM regions back to back, as the memfd holds them), written sparse —
 * only pages the guest touched and that are not all zeros take disk space
 * and page cache. A restore maps it MAP_PRIVATE (KvmVm.attachMemoryFile):
 * every clone reads the same page-cache pages and copies only what it writes.
 *
 * Which pages are "touched": for a cold-booted VM, the memfd's allocated
 * ranges (lseek SEEK_DATA/SEEK_HOLE), so holes are never read (reading a
 * shmem hole would allocate it). A restored VM has no memfd; its whole RAM
 * is scanned (holes of the mapped file read as zeros and are skipped).
 */
import * as fs from 'node:fs';
import { kvmNative } from '../kvm/native';
import { SnapshotError } from './format';

const PAGE = 4096;
const SEEK_DATA = 3, SEEK_HOLE = 4;
const ENXIO = 6;

/** [start, end) byte ranges of the memfd that hold data, or the whole range when no memfd. */
function dataRanges(memfd: number, bytes: number): Array<[number, number]> {
  if (memfd < 0) return [[0, bytes]];
  const n = kvmNative();
  const out: Array<[number, number]> = [];
  for (let off = 0; off < bytes;) {
    const d = n.fsLseek(memfd, off, SEEK_DATA);
    if (d === -ENXIO) break;
    if (d < 0) throw new SnapshotError('io', `lseek(SEEK_DATA) on guest RAM: errno ${-d}`);
    const h = n.fsLseek(memfd, d, SEEK_HOLE);
    if (h < 0) throw new SnapshotError('io', `lseek(SEEK_HOLE) on guest RAM: errno ${-h}`);
    out.push([d, Math.min(h, bytes)]);
    off = h;
  }
  return out;
}

export interface MemoryWriteResult { bytes: number; dataBytes: number; pages: number }

/**
 * Writes `ram` (a view of guest RAM; `memfd` backs it, or -1) to `file`
 * sparse. The file ends up exactly ram.length bytes long.
 */
export function writeMemoryFile(file: string, ram: Uint8Array, memfd: number): MemoryWriteResult {
  if (ram.byteOffset % 8 !== 0 || ram.length % PAGE !== 0) throw new SnapshotError('io', 'guest RAM view must be page sized and 8-byte aligned');
  const words = new BigUint64Array(ram.buffer, ram.byteOffset, ram.length / 8);
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
  let dataBytes = 0;
  try {
    fs.ftruncateSync(fd, ram.length);
    for (const [start, end] of dataRanges(memfd, ram.length)) {
      let runStart = -1;
      const flush = (upTo: number) => {
        if (runStart < 0) return;
        for (let o = runStart; o < upTo;) o += fs.writeSync(fd, ram, o, upTo - o, o);
        dataBytes += upTo - runStart;
        runStart = -1;
      };
      for (let p = start - (start % PAGE); p < end; p += PAGE) {
        let zero = true;
        for (let w = p / 8, e = w + PAGE / 8; w < e; w++) if (words[w] !== 0n) { zero = false; break; }
        if (zero) flush(p); else if (runStart < 0) runStart = p;
      }
      flush(Math.min(end + ((PAGE - (end % PAGE)) % PAGE), ram.length));
    }
  } finally {
    fs.closeSync(fd);
  }
  return { bytes: ram.length, dataBytes, pages: dataBytes / PAGE };
}

/** Opens a memory file for a restore after checking its size; the caller maps and closes it. */
export function openMemoryFile(file: string, expectBytes: number): number {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY);
  } catch (cause) {
    throw new SnapshotError('io', `cannot open the snapshot memory file ${file}: ${(cause as Error).message}`, { cause });
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new SnapshotError('mismatch', `${file} is not a regular file`);
    if (st.size !== expectBytes) throw new SnapshotError('mismatch', `snapshot memory file ${file} is ${st.size} bytes; the state file says ${expectBytes}`);
    return fd;
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}
