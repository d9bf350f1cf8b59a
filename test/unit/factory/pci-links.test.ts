/**
 * The template's PCI layout (qemu-template.ts): with the link warmers, every
 * interrupt link of the pc machine has a device in the template, and the
 * clone's vsock slot is free in the template and on an enabled link, so no
 * device hotplugged into a clone makes the guest enable a link.
 */
import { expect } from 'chai';
import { CLONE_VSOCK_SLOT, LINK_WARMER_SLOTS, templateArgs } from '../../../src/factory/qemu-template';
import { FIRST_DYNAMIC_SLOT } from '../../../src/hypervisor/pci-slots';

/** pc (PIIX) routing: slot s raises INTA on link (s - 1) mod 4 (LNKA..LNKD). */
const link = (slot: number) => 'ABCD'[(slot - 1) & 3];

function templateSlots(): number[] {
  const m = { kernel: '/k', image: '/i', kernelCmdline: 'x', vcpus: 1, memoryMiB: 512, machine: 'pc', machineAccelerators: '', accel: 'tcg' as const };
  const args = templateArgs(m, '/t/memory', '/t/console.log');
  const slots: number[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] !== '-device') continue;
    const a = /addr=0x([0-9a-f]+)/.exec(args[i + 1]!);
    if (a) slots.push(parseInt(a[1]!, 16));
  }
  return slots;
}

describe('unit: factory PCI links (template layout)', () => {
  it('the template has a device on every interrupt link', () => {
    const slots = templateSlots();
    for (const s of LINK_WARMER_SLOTS) expect(slots).to.include(s);
    expect([...new Set(slots.map(link))].sort().join('')).to.equal('ABCD');
  });

  it("the clone's vsock slot is free in the template, below the dynamic slots, on an enabled link", () => {
    const slots = templateSlots();
    expect(slots).to.not.include(CLONE_VSOCK_SLOT);
    expect(CLONE_VSOCK_SLOT).to.be.below(FIRST_DYNAMIC_SLOT);
    expect(slots.map(link)).to.include(link(CLONE_VSOCK_SLOT));
  });
});
