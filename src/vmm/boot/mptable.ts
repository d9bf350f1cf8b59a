/**
 * Intel MultiProcessor Specification 1.4 tables (ch. 4): the floating
 * pointer ("_MP_") and the configuration table ("PCMP") with one processor
 * entry per vCPU, an ISA bus, the in-kernel IOAPIC, ISA IRQ i → IOAPIC pin
 * i, and LINT0 ExtINT / LINT1 NMI. Linux without ACPI finds CPUs and the
 * IOAPIC here (arch/x86/kernel/mpparse.c); Firecracker ships the same.
 */
import { IOAPIC_ADDR, LAPIC_ADDR } from '../layout';

const MPC_SPEC = 4;
const APIC_VERSION = 0x14, IOAPIC_VERSION = 0x11;
const CPU_ENABLED = 1, CPU_BSP = 2;
const IRQ_INT = 0, IRQ_NMI = 1, IRQ_EXTINT = 3;

function checksum(b: Buffer, start: number, len: number): number {
  let s = 0;
  for (let i = start; i < start + len; i++) s = (s + b[i]) & 0xff;
  return (0x100 - s) & 0xff;
}

/** MP tables for `cpus` vCPUs placed at guest-physical `addr`. */
export function buildMpTable(addr: number, cpus: number): Buffer {
  const ioapicId = cpus;
  const entries: Buffer[] = [];
  for (let i = 0; i < cpus; i++) {
    const e = Buffer.alloc(20);
    e[0] = 0; e[1] = i; e[2] = APIC_VERSION; e[3] = CPU_ENABLED | (i === 0 ? CPU_BSP : 0);
    e.writeUInt32LE(0x600, 4); // family 6 signature
    e.writeUInt32LE(0x201, 8); // FPU + APIC feature flags
    entries.push(e);
  }
  const bus = Buffer.alloc(8); bus[0] = 1; bus[1] = 0; bus.write('ISA   ', 2, 'latin1'); entries.push(bus);
  const io = Buffer.alloc(8); io[0] = 2; io[1] = ioapicId; io[2] = IOAPIC_VERSION; io[3] = 1; io.writeUInt32LE(IOAPIC_ADDR, 4); entries.push(io);
  for (let irq = 0; irq < 16; irq++) {
    const e = Buffer.alloc(8); e[0] = 3; e[1] = IRQ_INT; e.writeUInt16LE(0, 2); e[4] = 0; e[5] = irq; e[6] = ioapicId; e[7] = irq;
    entries.push(e);
  }
  for (const [type, lint] of [[IRQ_EXTINT, 0], [IRQ_NMI, 1]]) {
    const e = Buffer.alloc(8); e[0] = 4; e[1] = type; e.writeUInt16LE(0, 2); e[4] = 0; e[5] = 0; e[6] = 0xff; e[7] = lint;
    entries.push(e);
  }
  const body = Buffer.concat(entries);
  const out = Buffer.alloc(16 + 44 + body.length);
  // Floating pointer structure (16 bytes).
  out.write('_MP_', 0, 'latin1');
  out.writeUInt32LE(addr + 16, 4);
  out[8] = 1; out[9] = MPC_SPEC;
  out[10] = checksum(out, 0, 16);
  // Configuration table header (44 bytes).
  const h = 16;
  out.write('PCMP', h, 'latin1');
  out.writeUInt16LE(44 + body.length, h + 4);
  out[h + 6] = MPC_SPEC;
  out.write('KATA-TS ', h + 8, 'latin1');
  out.write('BUILTIN-VMM ', h + 16, 'latin1');
  out.writeUInt16LE(entries.length, h + 34);
  out.writeUInt32LE(LAPIC_ADDR, h + 36);
  body.copy(out, h + 44);
  out[h + 7] = checksum(out, h, 44 + body.length);
  return out;
}
