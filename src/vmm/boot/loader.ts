/**
 * Kernel loading (Documentation/arch/x86/boot.rst):
 *  - ELF vmlinux (and our test guests): PT_LOAD segments at p_paddr, entry
 *    e_entry in 64-bit mode — the "64-bit boot protocol" with %rsi = zero
 *    page, as Firecracker boots vmlinux. A Xen PVH note
 *    (XEN_ELFNOTE_PHYS32_ENTRY, type 18) is reported when present; the
 *    32-bit PVH entry is not used, since the 64-bit one needs no hvm_start_info.
 *  - bzImage: setup header checked ("HdrS", protocol ≥ 2.12 with
 *    XLF_KERNEL_64), protected-mode part loaded at 1 MiB, entry at +0x200
 *    (startup_64), the header copied into the zero page.
 *  - initrd: page aligned, as high as initrd_addr_max and RAM allow.
 * Every length and address from the image is checked against guest RAM.
 */
import { VmmError } from '../errors';
import { HIGH_MEMORY, MMIO_HOLE_START } from '../layout';
import { BP, HDRS_MAGIC, XLF_KERNEL_64 } from './params';

export interface LoadedKernel {
  format: 'elf' | 'bzimage';
  entry: bigint;
  /** First byte past the loaded image (guest-physical). */
  end: number;
  /** bzImage: setup header bytes for the zero page. */
  setupHeader?: Uint8Array;
  initrdAddrMax: number;
  /** PVH 32-bit entry point if the ELF has the note. */
  pvhEntry?: number;
}

/** Where bytes go: a writer into guest RAM that checks the range. */
export type GuestWriter = (gpa: number, data: Uint8Array) => void;

const PT_LOAD = 1, PT_NOTE = 4;
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

export function isElf(img: Uint8Array): boolean {
  return img.length >= 64 && img[0] === 0x7f && img[1] === 0x45 && img[2] === 0x4c && img[3] === 0x46;
}

export function loadElf(img: Buffer, write: GuestWriter, ramBytes: number): LoadedKernel {
  if (img[4] !== 2 || img[5] !== 1) throw new VmmError('boot', 'kernel ELF is not 64-bit little-endian');
  if (img.readUInt16LE(18) !== 62) throw new VmmError('boot', 'kernel ELF is not x86-64');
  const entry = img.readBigUInt64LE(24);
  const phoff = Number(img.readBigUInt64LE(32));
  const phentsize = img.readUInt16LE(54);
  const phnum = img.readUInt16LE(56);
  if (phentsize < 56 || phoff + phnum * phentsize > img.length) throw new VmmError('boot', 'kernel ELF program headers are truncated');
  let end = 0, loads = 0;
  let pvhEntry: number | undefined;
  const lowTop = Math.min(ramBytes, MMIO_HOLE_START);
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    const type = img.readUInt32LE(p);
    const offset = Number(img.readBigUInt64LE(p + 8));
    const paddr = Number(img.readBigUInt64LE(p + 24));
    const filesz = Number(img.readBigUInt64LE(p + 32));
    const memsz = Number(img.readBigUInt64LE(p + 40));
    if (type === PT_NOTE) pvhEntry ??= findPvhNote(img, offset, filesz);
    if (type !== PT_LOAD) continue;
    if (offset + filesz > img.length || filesz > memsz) throw new VmmError('boot', `ELF segment ${i} lies outside the file`);
    if (paddr < HIGH_MEMORY || paddr + memsz > lowTop) {
      throw new VmmError('boot', `ELF segment ${i} at 0x${paddr.toString(16)}+0x${memsz.toString(16)} is outside guest RAM [1 MiB, 0x${lowTop.toString(16)})`);
    }
    write(paddr, img.subarray(offset, offset + filesz));
    if (memsz > filesz) write(paddr + filesz, new Uint8Array(memsz - filesz)); // .bss
    end = Math.max(end, paddr + memsz);
    loads++;
  }
  if (loads === 0) throw new VmmError('boot', 'kernel ELF has no PT_LOAD segment');
  return { format: 'elf', entry, end, initrdAddrMax: 0x7fff_ffff, pvhEntry };
}

function findPvhNote(img: Buffer, off: number, size: number): number | undefined {
  let p = off;
  while (p + 12 <= off + size && p + 12 <= img.length) {
    const namesz = img.readUInt32LE(p), descsz = img.readUInt32LE(p + 4), type = img.readUInt32LE(p + 8);
    const name = img.subarray(p + 12, p + 12 + namesz).toString('latin1').replace(/\0+$/, '');
    const desc = p + 12 + ((namesz + 3) & ~3);
    if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY && descsz >= 4 && desc + 4 <= img.length) return img.readUInt32LE(desc);
    p = desc + ((descsz + 3) & ~3);
  }
  return undefined;
}

export function loadBzImage(img: Buffer, write: GuestWriter, ramBytes: number): LoadedKernel {
  if (img.length < 0x300 || img.readUInt32LE(BP.HEADER) !== HDRS_MAGIC) throw new VmmError('boot', 'not a bzImage: no "HdrS" setup header');
  const version = img.readUInt16LE(BP.VERSION);
  if (version < 0x020c) throw new VmmError('boot', `boot protocol 0x${version.toString(16)} is older than 2.12 (no 64-bit entry)`);
  if ((img.readUInt16LE(BP.XLOADFLAGS) & XLF_KERNEL_64) === 0) throw new VmmError('boot', 'bzImage has no 64-bit entry point (XLF_KERNEL_64 clear)');
  if ((img[BP.LOADFLAGS] & 1) === 0) throw new VmmError('boot', 'bzImage is not loadable high (zImage)');
  const setupSects = img[BP.SETUP_SECTS] || 4;
  const pmOff = (setupSects + 1) * 512;
  if (pmOff >= img.length) throw new VmmError('boot', 'bzImage is truncated before its protected-mode code');
  const pm = img.subarray(pmOff);
  const initSize = img.readUInt32LE(BP.INIT_SIZE);
  const lowTop = Math.min(ramBytes, MMIO_HOLE_START);
  if (HIGH_MEMORY + Math.max(pm.length, initSize) > lowTop) throw new VmmError('boot', `kernel needs ${Math.max(pm.length, initSize)} bytes above 1 MiB; guest RAM is too small`);
  write(HIGH_MEMORY, pm);
  // The setup header runs from 0x1f1 to 0x202 + the byte at 0x201 (its length).
  const hdrEnd = Math.min(0x202 + img[0x201], img.length, 0x290);
  return {
    format: 'bzimage', entry: BigInt(HIGH_MEMORY + 0x200), end: HIGH_MEMORY + Math.max(pm.length, initSize),
    setupHeader: new Uint8Array(img.subarray(BP.SETUP_SECTS, hdrEnd)), initrdAddrMax: img.readUInt32LE(BP.INITRD_ADDR_MAX),
  };
}

export function loadKernel(img: Buffer, write: GuestWriter, ramBytes: number): LoadedKernel {
  if (isElf(img)) return loadElf(img, write, ramBytes);
  return loadBzImage(img, write, ramBytes);
}

/** Places the initrd page-aligned as high as allowed, above the kernel. */
export function placeInitrd(size: number, k: LoadedKernel, ramBytes: number): number {
  const top = Math.min(ramBytes, MMIO_HOLE_START, k.initrdAddrMax + 1);
  const addr = Math.floor((top - size) / 4096) * 4096;
  if (addr < k.end) throw new VmmError('boot', `initrd of ${size} bytes does not fit between the kernel (ends 0x${k.end.toString(16)}) and 0x${top.toString(16)}`);
  return addr;
}
