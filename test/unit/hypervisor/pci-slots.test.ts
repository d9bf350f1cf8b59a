/**
 * PciSlotAllocator: lowest-free-first allocation in 8..0x1f, slots given
 * back are handed out again, a full bus and bad reservations are one
 * PciSlotError each, and Kata's PCI path spelling of a root-bus slot.
 */
import { expect } from 'chai';
import { PciSlotAllocator, PciSlotError, pciPath, slotAddr, FIRST_DYNAMIC_SLOT, LAST_SLOT } from '../../../src/hypervisor/pci-slots';

describe('unit: PCI slot allocator', () => {
  it('hands out the lowest free slot and reuses released ones', () => {
    const a = new PciSlotAllocator();
    expect([a.take(), a.take(), a.take()]).to.deep.equal([8, 9, 10]);
    a.release(9);
    expect(a.take()).to.equal(9);
    expect(a.take()).to.equal(11);
    expect(a.inUse()).to.deep.equal([8, 9, 10, 11]);
    expect(a.free).to.equal(LAST_SLOT - FIRST_DYNAMIC_SLOT + 1 - 4);
  });

  it('a full bus is one clear error and leaves the allocation unchanged', () => {
    const a = new PciSlotAllocator(8, 10);
    a.take(); a.take(); a.take();
    let err: unknown;
    try { a.take(); } catch (e) { err = e; }
    expect(err).to.be.instanceOf(PciSlotError);
    expect((err as PciSlotError).kind).to.equal('full');
    expect((err as Error).message).to.match(/no free PCI slot.*3 of 3/);
    expect(a.inUse()).to.deep.equal([8, 9, 10]);
  });

  it('reserve refuses taken and out-of-range slots', () => {
    const a = new PciSlotAllocator();
    a.reserve(12);
    expect(() => a.reserve(12)).to.throw(PciSlotError, /already taken/);
    expect(() => a.reserve(3)).to.throw(PciSlotError, /outside/);
    expect(() => a.reserve(0x20)).to.throw(PciSlotError, /outside/);
    expect(() => new PciSlotAllocator(9, 8)).to.throw(PciSlotError, /bad PCI slot range/);
    expect(a.take()).to.equal(8);
    a.clear();
    expect(a.inUse()).to.deep.equal([]);
  });

  it('spells slots as Kata PCI paths and QMP addrs', () => {
    expect(pciPath(8)).to.equal('08');
    expect(pciPath(0x1f)).to.equal('1f');
    expect(slotAddr(10)).to.equal('0xa');
  });
});
