/**
 * The DAX guest image: an uncompressed EROFS image behind a Linux NVDIMM
 * "pfn" info block, so the guest's pmem driver maps it with struct pages
 * (PFN_MAP) and EROFS can mount it with `-o dax` — as Kata's osbuilder does
 * with its nsdax header. A raw NFIT namespace without this block gets no
 * pages, and EROFS says "DAX unsupported by block device" (measured here).
 *
 * Layout (Linux drivers/nvdimm/pfn.h, nd_pfn_validate in pfn_devs.c, 6.1):
 *   [0, 4 KiB)          zero
 *   [4 KiB, 8 KiB)      struct nd_pfn_sb, signature "NVDIMM_PFN_INFO\0",
 *                       version 1.4, mode PFN_MODE_RAM (struct pages in
 *                       guest RAM: the device is read-only, nothing may be
 *                       written to it), dataoff = align = 2 MiB,
 *                       parent_uuid zero (a label-less io namespace's),
 *                       fletcher64 checksum over the block
 *   [2 MiB, end)        the EROFS image; the guest sees it as /dev/pmem0
 * The whole file is a 2 MiB multiple: QEMU maps it as the NVDIMM's backend,
 * and the kernel wants the namespace end aligned (memremap_compat_align).
 * It is padded further, with a hole, to a 128 MiB multiple (DAX_FILE_ALIGN):
 * QEMU puts a hotplugged DIMM right behind the NVDIMM in its device memory
 * area, and the x86_64 guest adds memory only in whole 128 MiB memory blocks
 * at 128 MiB-aligned addresses; behind a 120 MiB image, a 256 MiB DIMM was
 * never onlined (measured: MemTotal unchanged after 60 s).
 *
 * `node dist/src/hypervisor/dax-image.js <erofs image> <output>` writes it
 * (guest/image/build.sh).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { KataError } from '../common/errors';

export class DaxImageError extends KataError<'input' | 'io'> {}

export const DAX_ALIGN = 2 * 1024 * 1024;
/** Linux's memory block size on x86_64 (memory_block_size_bytes() below 64 GiB): the file's size is a multiple of it. */
export const DAX_FILE_ALIGN = 128 * 1024 * 1024;
const SB_OFFSET = 4096;
const SB_SIZE = 4096;
const PAGE = 4096;
const PFN_MODE_RAM = 1;

/** nd_fletcher64(le): 32-bit little-endian words, two running sums. */
export function fletcher64(b: Buffer): bigint {
  let lo = 0n;
  let hi = 0n;
  const M32 = 0xffffffffn;
  const M64 = (1n << 64n) - 1n;
  for (let i = 0; i + 4 <= b.length; i += 4) {
    lo = (lo + BigInt(b.readUInt32LE(i))) & M32;
    hi = (hi + lo) & M64;
  }
  return ((hi << 32n) | lo) & M64;
}

/** The 4 KiB pfn info block for a namespace of `totalBytes` whose data starts at DAX_ALIGN. */
export function pfnInfoBlock(totalBytes: number, uuid: Buffer = crypto.randomBytes(16)): Buffer {
  const sb = Buffer.alloc(SB_SIZE);
  sb.write('NVDIMM_PFN_INFO\0', 0, 'latin1');
  uuid.copy(sb, 16, 0, 16);
  // parent_uuid [32, 48) zero; flags [48] zero
  sb.writeUInt16LE(1, 52); // version_major
  sb.writeUInt16LE(4, 54); // version_minor: page_size/page_struct_size present
  sb.writeBigUInt64LE(BigInt(DAX_ALIGN), 56); // dataoff
  sb.writeBigUInt64LE(BigInt((totalBytes - DAX_ALIGN) / PAGE), 64); // npfns
  sb.writeUInt32LE(PFN_MODE_RAM, 72); // mode
  // start_pad [76], end_trunc [80] zero
  sb.writeUInt32LE(DAX_ALIGN, 84); // align
  sb.writeUInt32LE(PAGE, 88); // page_size
  sb.writeUInt16LE(64, 92); // page_struct_size (sizeof(struct page) on x86-64)
  sb.writeBigUInt64LE(fletcher64(sb), SB_SIZE - 8); // checksum field was zero while summing
  return sb;
}

/** Writes header + `erofs` to `out` (via a temporary file), padded (a hole) to DAX_FILE_ALIGN; returns its size. */
export function writeDaxImage(erofs: string, out: string): number {
  let st: fs.Stats;
  try {
    st = fs.statSync(erofs);
  } catch (err) {
    throw new DaxImageError('input', `cannot read ${erofs}: ${(err as Error).message}`, { cause: err });
  }
  const head = Buffer.alloc(2048);
  const fd = fs.openSync(erofs, 'r');
  try {
    fs.readSync(fd, head, 0, head.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  // EROFS superblock magic at 1024 (erofs_fs.h EROFS_SUPER_MAGIC_V1).
  if (head.readUInt32LE(1024) !== 0xe0f5e1e2) throw new DaxImageError('input', `${erofs} is not an EROFS image`);
  const total = Math.ceil((DAX_ALIGN + st.size) / DAX_FILE_ALIGN) * DAX_FILE_ALIGN;
  const tmp = `${out}.tmp.${process.pid}`;
  try {
    const h = Buffer.alloc(SB_OFFSET + SB_SIZE);
    pfnInfoBlock(total).copy(h, SB_OFFSET);
    fs.writeFileSync(tmp, h);
    fs.truncateSync(tmp, DAX_ALIGN);
    fs.appendFileSync(tmp, fs.readFileSync(erofs));
    fs.truncateSync(tmp, total);
    fs.renameSync(tmp, out);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw new DaxImageError('io', `cannot write ${out}: ${(err as Error).message}`, { cause: err });
  }
  return total;
}

if (require.main === module) {
  const [erofs, out] = process.argv.slice(2);
  if (!erofs || !out) {
    process.stderr.write('usage: node dax-image.js <erofs image> <output>\n');
    process.exit(2);
  }
  try {
    const n = writeDaxImage(erofs, out);
    process.stdout.write(`${out}: ${n} bytes (pfn info block + EROFS at ${DAX_ALIGN})\n`);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(1);
  }
}
