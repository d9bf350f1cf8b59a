/**
 * The zero page (struct boot_params, Documentation/arch/x86/zero-page.rst)
 * and the e820 map. Offsets are the documented ones; the setup header
 * (boot.rst "The Real-Mode Kernel Header") starts at 0x1f1 and, for a
 * bzImage, is copied from the image before we fill in the loader fields.
 */
import { CMDLINE_ADDR, EBDA_START, FOUR_GIB, HIGH_MEMORY, MMIO_HOLE_START } from '../layout';

export const BP = {
  EXT_RAMDISK_IMAGE: 0x0c0, EXT_RAMDISK_SIZE: 0x0c4, EXT_CMD_LINE_PTR: 0x0c8,
  E820_ENTRIES: 0x1e8, SETUP_SECTS: 0x1f1, VID_MODE: 0x1fa, BOOT_FLAG: 0x1fe, HEADER: 0x202, VERSION: 0x206,
  TYPE_OF_LOADER: 0x210, LOADFLAGS: 0x211, CODE32_START: 0x214, RAMDISK_IMAGE: 0x218, RAMDISK_SIZE: 0x21c,
  HEAP_END_PTR: 0x224, CMD_LINE_PTR: 0x228, INITRD_ADDR_MAX: 0x22c, KERNEL_ALIGNMENT: 0x230,
  RELOCATABLE: 0x234, XLOADFLAGS: 0x236, CMDLINE_SIZE: 0x238, PREF_ADDRESS: 0x258, INIT_SIZE: 0x260,
  E820_TABLE: 0x2d0,
} as const;
export const ZERO_PAGE_SIZE = 4096;
export const E820_RAM = 1, E820_RESERVED = 2;
export const E820_MAX = 128;
export const HDRS_MAGIC = 0x5372_6448; // "HdrS"
export const LOADED_HIGH = 0x01, CAN_USE_HEAP = 0x80;
export const XLF_KERNEL_64 = 0x01;

export interface E820Entry { addr: bigint; size: bigint; type: number }

/** e820 for our layout: base memory below the EBDA, then RAM from 1 MiB (split at the MMIO hole). */
export function e820For(ramBytes: number): E820Entry[] {
  const out: E820Entry[] = [
    { addr: 0n, size: BigInt(EBDA_START), type: E820_RAM },
    { addr: BigInt(EBDA_START), size: BigInt(0x100000 - EBDA_START), type: E820_RESERVED },
  ];
  const low = Math.min(ramBytes, MMIO_HOLE_START);
  out.push({ addr: BigInt(HIGH_MEMORY), size: BigInt(low - HIGH_MEMORY), type: E820_RAM });
  if (ramBytes > MMIO_HOLE_START) out.push({ addr: BigInt(FOUR_GIB), size: BigInt(ramBytes - MMIO_HOLE_START), type: E820_RAM });
  return out;
}

export interface ZeroPageInput {
  /** Setup header bytes from a bzImage (offset 0x1f1 onwards), or undefined for ELF. */
  setupHeader?: Uint8Array;
  cmdlineSize: number;
  initrd?: { addr: number; size: number };
  e820: E820Entry[];
}

/** Builds the 4 KiB zero page. */
export function buildZeroPage(z: ZeroPageInput): Buffer {
  const b = Buffer.alloc(ZERO_PAGE_SIZE);
  if (z.setupHeader) Buffer.from(z.setupHeader).copy(b, BP.SETUP_SECTS);
  else {
    b.writeUInt16LE(0xaa55, BP.BOOT_FLAG);
    b.writeUInt32LE(HDRS_MAGIC, BP.HEADER);
    b.writeUInt16LE(0x020f, BP.VERSION);
    b.writeUInt32LE(0x7fff_ffff, BP.INITRD_ADDR_MAX);
  }
  b.writeUInt16LE(0xffff, BP.VID_MODE); // "normal" video mode
  b[BP.TYPE_OF_LOADER] = 0xff; // undefined boot loader id
  b[BP.LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP;
  b.writeUInt16LE(0xfe00, BP.HEAP_END_PTR);
  b.writeUInt32LE(CMDLINE_ADDR, BP.CMD_LINE_PTR);
  b.writeUInt32LE(0, BP.EXT_CMD_LINE_PTR);
  b.writeUInt32LE(z.cmdlineSize, BP.CMDLINE_SIZE);
  if (z.initrd) {
    b.writeUInt32LE(z.initrd.addr >>> 0, BP.RAMDISK_IMAGE);
    b.writeUInt32LE(z.initrd.size >>> 0, BP.RAMDISK_SIZE);
  }
  const n = Math.min(z.e820.length, E820_MAX);
  b[BP.E820_ENTRIES] = n;
  for (let i = 0; i < n; i++) {
    const o = BP.E820_TABLE + i * 20;
    b.writeBigUInt64LE(z.e820[i].addr, o);
    b.writeBigUInt64LE(z.e820[i].size, o + 8);
    b.writeUInt32LE(z.e820[i].type, o + 16);
  }
  return b;
}
