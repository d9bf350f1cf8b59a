/**
 * The agent finds devices by PCI path (src/agent/pci-device.ts) in a fake
 * sysfs: a root-bus slot, a slot behind a bridge (Kata's "02/00"), a disk
 * that appears while the agent waits (hotplug), a device that never appears
 * or never gets its block device (one timeout error naming the path), and
 * malformed paths. The blk storage driver takes a PCI path as its source.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parsePciPath, sysfsDeviceAt, waitForPciBlockDevice, waitForPciDevice, waitForPciFsDevice, PciDeviceError } from '../../../src/agent/pci-device';

describe('unit: agent finds devices by PCI path', () => {
  let sys: string;
  beforeEach(() => { sys = fs.mkdtempSync(path.join(os.tmpdir(), 'pcisys-')); });
  afterEach(() => fs.rmSync(sys, { recursive: true, force: true }));

  /** A virtio-blk PCI device at bus:slot whose block device is `name` (none: not probed yet). */
  function blkAt(bus: string, slot: number, name?: string): string {
    const dev = path.join(sys, `${bus}:${slot.toString(16).padStart(2, '0')}.0`);
    fs.mkdirSync(path.join(dev, 'virtio3', ...(name ? ['block', name] : [])), { recursive: true });
    return dev;
  }

  it('parses Kata PCI paths and refuses anything else', () => {
    expect(parsePciPath('0a')).to.deep.equal([10]);
    expect(parsePciPath('02/00')).to.deep.equal([2, 0]);
    for (const bad of ['', 'a', '0A', '0a/', '/0a', '20', '0a/3f', '../x', 'c0123456789abcdef012']) {
      expect(() => parsePciPath(bad), bad).to.throw(PciDeviceError);
    }
  });

  it('resolves a root-bus slot and a slot behind a bridge', async () => {
    blkAt('0000:00', 0x0a, 'vdb');
    const bridge = path.join(sys, '0000:00:02.0');
    fs.mkdirSync(path.join(bridge, 'pci_bus', '0000:01'), { recursive: true });
    blkAt('0000:01', 0, 'vdc');
    expect(await sysfsDeviceAt('0a', sys)).to.equal(path.join(sys, '0000:00:0a.0'));
    expect(await sysfsDeviceAt('0b', sys)).to.equal(undefined);
    expect(await waitForPciBlockDevice('0a', 1000, sys)).to.equal('/dev/vdb');
    expect(await waitForPciBlockDevice('02/00', 1000, sys)).to.equal('/dev/vdc');
  });

  it('waits for a hotplugged disk to appear and its driver to probe it', async () => {
    setTimeout(() => blkAt('0000:00', 0x0c), 100);
    setTimeout(() => blkAt('0000:00', 0x0c, 'vdd'), 250);
    const t0 = Date.now();
    expect(await waitForPciBlockDevice('0c', 5000, sys)).to.equal('/dev/vdd');
    expect(Date.now() - t0).to.be.within(200, 4000);
  });

  it('a device that never appears, or never gets a block device, is one timeout error naming the path', async () => {
    let err: unknown;
    try { await waitForPciBlockDevice('0d', 300, sys); } catch (e) { err = e; }
    expect(err).to.be.instanceOf(PciDeviceError);
    expect((err as PciDeviceError).kind).to.equal('timeout');
    expect((err as Error).message).to.match(/no block device appeared at PCI path 0d within 300 ms \(no PCI device there\)/);
    blkAt('0000:00', 0x0e);
    err = undefined;
    try { await waitForPciBlockDevice('0e', 200, sys); } catch (e) { err = e; }
    expect((err as Error).message).to.match(/0000:00:0e\.0\) without a virtio block device/);
    err = undefined;
    try { await waitForPciDevice('0e', 200, sys); } catch (e) { err = e; }
    expect((err as Error).message).to.match(/PCI path 0e .*the device is there, unbound/);
    fs.mkdirSync(path.join(sys, '0000:00:0e.0', 'driver'));
    expect(await waitForPciDevice('0e', 200, sys)).to.equal(path.join(sys, '0000:00:0e.0'));
  });

  it('a slot bound to another virtio driver is refused at once (blk and fs), naming the path', async () => {
    const v = path.join(blkAt('0000:00', 0x10), 'virtio3');
    fs.symlinkSync('../../../../bus/virtio/drivers/virtio_net', path.join(v, 'driver'));
    for (const wait of [() => waitForPciBlockDevice('10', 5000, sys), () => waitForPciFsDevice('10', 5000, sys)]) {
      const t0 = Date.now();
      let err: unknown;
      try { await wait(); } catch (e) { err = e; }
      expect((err as PciDeviceError).kind).to.equal('driver');
      expect((err as Error).message).to.match(/PCI path 10 \(0000:00:10\.0\) is bound to the virtio_net driver/);
      expect(Date.now() - t0).to.be.below(1000);
    }
  });
});
