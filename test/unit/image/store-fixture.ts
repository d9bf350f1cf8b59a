/**
 * A synthetic converted-image store for the gc and in-use tests: random raw
 * 4 KiB chunks in blobs, images whose chunk tables name them.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { encodeChunkTable, type ChunkTable } from '../../../src/image/chunk-table';
import { IMAGE_RECORD_VERSION, blobPath, chunkTablePath, imageDir, imageJsonPath, metaPath, type ImageRecord } from '../../../src/image/store';

export const CS = 4096;
export const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

/** A blob of n random 4 KiB raw chunks; returns its digest and chunks. */
export function putBlob(root: string, n: number): { hex: string; chunks: Buffer[] } {
  const chunks = Array.from({ length: n }, () => crypto.randomBytes(CS));
  const blob = Buffer.concat(chunks);
  const hex = sha(blob);
  fs.writeFileSync(blobPath(root, hex), blob);
  return { hex, chunks };
}

/** Registers an image using every chunk of the given blobs. */
export function putImage(root: string, ref: string, blobs: { hex: string; chunks: Buffer[] }[]): string {
  const hex = sha(Buffer.from(ref));
  const table: ChunkTable = { chunkSize: CS, blobs: blobs.map((b) => ({ digest: b.hex, size: b.chunks.length * CS })), slots: [] };
  blobs.forEach((b, i) => b.chunks.forEach((c, j) => table.slots.push({ sha256: sha(c), blob: i, offset: j * CS, storedSize: CS, size: CS, flags: 0 })));
  fs.mkdirSync(imageDir(root, hex), { recursive: true });
  fs.writeFileSync(chunkTablePath(root, hex), encodeChunkTable(table));
  fs.writeFileSync(metaPath(root, hex), Buffer.alloc(8192));
  const rec: ImageRecord = {
    version: IMAGE_RECORD_VERSION, id: `sha256:${hex}`, references: [ref], created: new Date(0).toISOString(),
    config: { entrypoint: [], cmd: ['/bin/sh'], env: [], cwd: '/', user: '' }, layers: [], blobs: table.blobs, chunkSize: CS, metaSize: 8192,
    totals: { files: 0, dirs: 1, fileBytes: 0, chunks: table.slots.length, newChunks: 0, newBlobBytes: 0 },
  };
  fs.writeFileSync(imageJsonPath(root, hex), JSON.stringify(rec));
  return `sha256:${hex}`;
}

