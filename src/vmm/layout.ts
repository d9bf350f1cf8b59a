/**
 * The builtin VMM's guest-physical memory map (x86-64), in the spirit of
 * Firecracker's arch/x86_64/layout.rs:
 *
 *   0x0000_0500  GDT (boot), then IDT (empty)
 *   0x0000_7000  zero page (boot_params, Documentation/arch/x86/zero-page.rst)
 *   0x0000_8ff0  boot stack top
 *   0x0000_9000  PML4, 0xa000 PDPT, 0xb000.. 4 page directories (identity 4 GiB, 2 MiB pages)
 *   0x0002_0000  kernel command line (up to CMDLINE_MAX)
 *   0x0009_fc00  MP floating pointer + table (in the last KiB of base memory)
 *   0x000a_0000 … 0x0010_0000  legacy hole (VGA/BIOS), not RAM in e820
 *   0x0010_0000  kernel (bzImage protected-mode part; ELF at its p_paddr)
 *   …            RAM up to MMIO_HOLE_START, then again from 4 GiB
 *   0xc000_0000  32-bit MMIO hole: virtio-mmio windows at VIRTIO_MMIO_BASE
 *   0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC (in-kernel)
 *   0xfffb_c000  EPT identity map page, 0xfffb_d000 TSS (3 pages)
 */
export const GDT_ADDR = 0x500;
export const IDT_ADDR = 0x520;
export const ZERO_PAGE = 0x7000;
export const BOOT_STACK = 0x8ff0;
export const PML4_ADDR = 0x9000;
export const PDPT_ADDR = 0xa000;
export const PD_ADDR = 0xb000;
export const CMDLINE_ADDR = 0x20000;
export const CMDLINE_MAX = 4096;
export const MPTABLE_ADDR = 0x9fc00;
export const EBDA_START = 0x9fc00;
export const HIGH_MEMORY = 0x100000;
export const MMIO_HOLE_START = 0xc000_0000;
export const FOUR_GIB = 0x1_0000_0000;
export const VIRTIO_MMIO_BASE = 0xd000_0000;
/** Per-device window; the register block is 0x100 + config space. */
export const VIRTIO_MMIO_SIZE = 0x1000;
export const IOAPIC_ADDR = 0xfec0_0000;
export const LAPIC_ADDR = 0xfee0_0000;
export const IDENTITY_MAP_ADDR = 0xfffb_c000;
export const TSS_ADDR = 0xfffb_d000;

/** Legacy IRQs in use: COM1 4, i8042 1/12, RTC 8. virtio-mmio devices get these, in order. */
export const VIRTIO_IRQS = [5, 6, 7, 9, 10, 11, 14, 15];

/** RAM regions for `bytes` of guest memory: below the MMIO hole, then above 4 GiB. */
export function ramRegions(bytes: number): Array<{ gpa: bigint; size: number }> {
  if (bytes <= MMIO_HOLE_START) return [{ gpa: 0n, size: bytes }];
  return [{ gpa: 0n, size: MMIO_HOLE_START }, { gpa: BigInt(FOUR_GIB), size: bytes - MMIO_HOLE_START }];
}
