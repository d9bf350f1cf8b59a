/**
 * Materializes a converted image's virtual uncompressed blob device (EROFS
 * device 1) as a plain file from the store, independently of the runtime's
 * blob device: slot k's chunk (LZ4-decoded with our WASM decoder when
 * flagged, sha256-checked) at byte k * chunkSize, short chunks zero-padded.
 * Then attaches it and the metadata image to loop devices so the host
 * kernel's EROFS can mount them (`mount -t erofs -o device=LOOP meta`).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { CHUNK_FLAG_LZ4, decodeChunkTable } from '../../src/image/chunk-table';
import { blobPath, chunkTablePath, imageIdHex, metaPath } from '../../src/image/store';
import { Lz4 } from '../../src/hot/lz4';

/** Writes device 1 of image `id` to `out`; returns its size. */
export function materializeDevice(store: string, id: string, out: string): number {
  const hex = imageIdHex(id);
  const t = decodeChunkTable(fs.readFileSync(chunkTablePath(store, hex)));
  const lz4 = new Lz4({ maxBlockBytes: t.chunkSize });
  const fds = new Map<number, number>();
  const fd = fs.openSync(out, 'w');
  try {
    fs.ftruncateSync(fd, t.slots.length * t.chunkSize);
    t.slots.forEach((s, k) => {
      let bfd = fds.get(s.blob);
      if (bfd === undefined) { bfd = fs.openSync(blobPath(store, t.blobs[s.blob].digest), 'r'); fds.set(s.blob, bfd); }
      const stored = Buffer.alloc(s.storedSize);
      if (fs.readSync(bfd, stored, 0, s.storedSize, s.offset) !== s.storedSize) throw new Error(`slot ${k}: short read from its blob`);
      const data = s.flags & CHUNK_FLAG_LZ4 ? lz4.decompressBlock(stored, s.size) : stored;
      if (data.length !== s.size || crypto.createHash('sha256').update(data).digest('hex') !== s.sha256) throw new Error(`slot ${k}: chunk does not match its sha256`);
      fs.writeSync(fd, data, 0, data.length, k * t.chunkSize);
    });
  } finally {
    fs.closeSync(fd);
    for (const b of fds.values()) fs.closeSync(b);
  }
  return t.slots.length * t.chunkSize;
}

export interface MountedImage { mnt: string; loops: string[]; cleanup: () => void }

function losetup(file: string): string {
  return execFileSync('losetup', ['--find', '--show', '--read-only', file], { encoding: 'utf8' }).trim();
}

/** Mounts image `id` read-only at a new dir under `work` (device 1 materialized there). */
export function mountImage(store: string, id: string, work: string): MountedImage {
  const hex = imageIdHex(id);
  const dev = path.join(work, `${hex.slice(0, 12)}.dev`);
  const size = materializeDevice(store, id, dev);
  const loops: string[] = [];
  const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
  let mounted = false;
  const cleanup = (): void => {
    if (mounted) { execFileSync('umount', [mnt]); mounted = false; }
    while (loops.length) execFileSync('losetup', ['-d', loops.pop()!]);
    fs.rmSync(mnt, { recursive: true, force: true });
    fs.rmSync(dev, { force: true });
  };
  try {
    // A zero-slot device (no chunk-based files) still needs a block device behind it.
    if (size === 0) fs.truncateSync(dev, 4096);
    loops.push(losetup(dev));
    loops.push(losetup(metaPath(store, hex)));
    execFileSync('mount', ['-t', 'erofs', '-o', `ro,device=${loops[0]}`, loops[1], mnt], { stdio: 'pipe' });
    mounted = true;
  } catch (e) { cleanup(); throw e; }
  return { mnt, loops, cleanup };
}
