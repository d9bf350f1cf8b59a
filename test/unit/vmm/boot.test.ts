/**
 * Boot structures without KVM: zero page offsets (zero-page.rst, boot.rst),
 * e820 for our layout, MP table checksums (MP spec 1.4 §4), the ELF and
 * bzImage loaders' checks, initrd placement, and the COM1/i8042/bus models.
 */
import { expect } from 'chai';
import { buildZeroPage, e820For, E820_RAM, E820_RESERVED } from '../../../src/vmm/boot/params';
import { buildMpTable } from '../../../src/vmm/boot/mptable';
import { loadBzImage, loadElf, placeInitrd } from '../../../src/vmm/boot/loader';
import { ramRegions, MMIO_HOLE_START } from '../../../src/vmm/layout';
import { Bus } from '../../../src/vmm/bus';
import { Serial } from '../../../src/vmm/devices/serial';
import { I8042 } from '../../../src/vmm/devices/i8042';
import { VmmError } from '../../../src/vmm/errors';

function sum(b: Buffer, s: number, n: number): number { let x = 0; for (let i = s; i < s + n; i++) x = (x + b[i]) & 0xff; return x; }

/** A minimal ELF64 with one PT_LOAD of `code` at `paddr`. */
function elf(paddr: number, code: Buffer, memsz = code.length): Buffer {
  const b = Buffer.alloc(0x1000 + code.length);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0);
  b.writeUInt16LE(2, 16); b.writeUInt16LE(62, 18); b.writeBigUInt64LE(BigInt(paddr), 24); b.writeBigUInt64LE(64n, 32);
  b.writeUInt16LE(56, 54); b.writeUInt16LE(1, 56);
  b.writeUInt32LE(1, 64); b.writeBigUInt64LE(0x1000n, 72); b.writeBigUInt64LE(BigInt(paddr), 80); b.writeBigUInt64LE(BigInt(paddr), 88);
  b.writeBigUInt64LE(BigInt(code.length), 96); b.writeBigUInt64LE(BigInt(memsz), 104);
  code.copy(b, 0x1000);
  return b;
}

describe('vmm boot structures', () => {
  it('zero page: header magic, loader fields, cmdline, initrd and e820 at the documented offsets', () => {
    const zp = buildZeroPage({ cmdlineSize: 11, initrd: { addr: 0x3000000, size: 1234 }, e820: e820For(256 << 20) });
    expect(zp.readUInt16LE(0x1fe)).to.equal(0xaa55);
    expect(zp.readUInt32LE(0x202)).to.equal(0x53726448);
    expect(zp[0x210]).to.equal(0xff);
    expect(zp[0x211] & 1).to.equal(1);
    expect(zp.readUInt32LE(0x228)).to.equal(0x20000);
    expect(zp.readUInt32LE(0x238)).to.equal(11);
    expect(zp.readUInt32LE(0x218)).to.equal(0x3000000);
    expect(zp.readUInt32LE(0x21c)).to.equal(1234);
    expect(zp[0x1e8]).to.equal(3);
    expect(zp.readBigUInt64LE(0x2d0 + 40)).to.equal(0x100000n);
    expect(zp.readBigUInt64LE(0x2d0 + 48)).to.equal(BigInt((256 << 20) - 0x100000));
    expect(zp.readUInt32LE(0x2d0 + 56)).to.equal(E820_RAM);
  });

  it('e820 and RAM regions split around the 32-bit MMIO hole', () => {
    const big = MMIO_HOLE_START + (256 << 20);
    expect(ramRegions(big)).to.deep.equal([{ gpa: 0n, size: MMIO_HOLE_START }, { gpa: 0x1_0000_0000n, size: 256 << 20 }]);
    const e = e820For(big);
    expect(e.map((x) => x.type)).to.deep.equal([E820_RAM, E820_RESERVED, E820_RAM, E820_RAM]);
    expect(e[3].addr).to.equal(0x1_0000_0000n);
  });

  it('MP table: floating pointer and config table checksum to zero, one processor entry per vCPU', () => {
    const t = buildMpTable(0x9fc00, 4);
    expect(t.toString('latin1', 0, 4)).to.equal('_MP_');
    expect(sum(t, 0, 16)).to.equal(0);
    expect(t.readUInt32LE(4)).to.equal(0x9fc00 + 16);
    expect(t.toString('latin1', 16, 20)).to.equal('PCMP');
    const len = t.readUInt16LE(20);
    expect(sum(t, 16, len)).to.equal(0);
    const cpus = [];
    for (let p = 16 + 44; p < 16 + len;) { const type = t[p]; if (type === 0) cpus.push(t[p + 1]); p += type === 0 ? 20 : 8; }
    expect(cpus).to.deep.equal([0, 1, 2, 3]);
  });

  it('ELF loader: loads PT_LOAD at p_paddr, zeroes .bss, refuses segments outside RAM and foreign ELFs', () => {
    const writes: Array<[number, number]> = [];
    const k = loadElf(elf(0x200000, Buffer.from([0x90, 0xf4]), 0x100), (gpa, d) => writes.push([gpa, d.length]), 64 << 20);
    expect(k.entry).to.equal(0x200000n);
    expect(writes).to.deep.equal([[0x200000, 2], [0x200002, 0xfe]]);
    expect(() => loadElf(elf(0x1000, Buffer.from([0x90])), () => {}, 64 << 20)).to.throw(VmmError, /outside guest RAM/);
    expect(() => loadElf(elf(0x200000, Buffer.alloc(16), 128 << 20), () => {}, 64 << 20)).to.throw(VmmError, /outside guest RAM/);
    const arm = elf(0x200000, Buffer.from([0])); arm.writeUInt16LE(183, 18);
    expect(() => loadElf(arm, () => {}, 64 << 20)).to.throw(VmmError, /not x86-64/);
  });

  it('bzImage loader: checks HdrS, protocol ≥ 2.12 and XLF_KERNEL_64; entry at 1 MiB + 0x200', () => {
    const img = Buffer.alloc(0x2000);
    img[0x1f1] = 1; img[0x201] = 0x66; img.writeUInt32LE(0x53726448, 0x202); img.writeUInt16LE(0x020f, 0x206);
    img[0x211] = 1; img.writeUInt16LE(1, 0x236); img.writeUInt32LE(0x7fffffff, 0x22c);
    const w: number[] = [];
    const k = loadBzImage(img, (gpa, d) => w.push(gpa, d.length), 64 << 20);
    expect(k.entry).to.equal(0x100200n);
    expect(w).to.deep.equal([0x100000, 0x2000 - 1024]);
    expect(k.setupHeader![0]).to.equal(1);
    img.writeUInt16LE(0, 0x236);
    expect(() => loadBzImage(img, () => {}, 64 << 20)).to.throw(VmmError, /XLF_KERNEL_64/);
    img.writeUInt16LE(0x0206, 0x206);
    expect(() => loadBzImage(img, () => {}, 64 << 20)).to.throw(VmmError, /older than 2.12/);
    expect(() => loadBzImage(Buffer.alloc(0x400), () => {}, 64 << 20)).to.throw(VmmError, /HdrS/);
  });

  it('initrd goes page aligned below RAM top and never over the kernel', () => {
    const k = { format: 'elf' as const, entry: 0n, end: 0x2000000, initrdAddrMax: 0x7fffffff };
    const a = placeInitrd(10000, k, 64 << 20);
    expect(a % 4096).to.equal(0);
    expect(a + 10000).to.be.at.most(64 << 20);
    expect(() => placeInitrd(40 << 20, k, 64 << 20)).to.throw(VmmError, /does not fit/);
  });

  it('bus: overlapping ranges refused, unclaimed reads are all-ones; COM1 and i8042 models', () => {
    const bus = new Bus('pio');
    const out: number[] = [];
    let irqs = 0, resets = 0;
    const s = new Serial((b) => out.push(...b), () => irqs++);
    bus.register(0x3f8, 8, s, 'com1');
    bus.register(0x60, 5, new I8042(() => resets++), 'i8042');
    expect(() => bus.register(0x3fc, 4, s, 'x')).to.throw(VmmError, /overlaps com1/);
    const d = new Uint8Array(1);
    bus.read(0x2f8, d); expect(d[0]).to.equal(0xff);
    bus.read(0x3fd, d); expect(d[0] & 0x60).to.equal(0x60); // THRE|TEMT
    bus.write(0x3f9, Uint8Array.of(2)); // IER THRI raises at once
    expect(irqs).to.equal(1);
    bus.write(0x3f8, Uint8Array.of(0x41));
    expect(out).to.deep.equal([0x41]);
    bus.read(0x3fa, d); expect(d[0] & 0x0f).to.equal(2); // IIR: THRE
    bus.read(0x3fa, d); expect(d[0] & 0x0f).to.equal(1); // cleared by reading
    bus.write(0x3ff, Uint8Array.of(0x5a)); bus.read(0x3ff, d); expect(d[0]).to.equal(0x5a); // scratch
    s.input(Buffer.from('x')); bus.read(0x3fd, d); expect(d[0] & 1).to.equal(1); bus.read(0x3f8, d); expect(d[0]).to.equal(0x78);
    bus.write(0x64, Uint8Array.of(0xfe));
    expect(resets).to.equal(1);
  });
});
