/**
 * NICs by PCI path, as Kata's agent waits for a hotplugged NIC
 * (wait_for_net_interface) before finding it by MAC: the host's plan
 * carries each endpoint's PCI path as device_path; the agent waits until
 * virtio_net has made the interface at that path (fake sysfs), refuses a
 * slot holding another device at once, and a NIC that never appears is one
 * not-found error naming the path, before any netlink call.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { waitForPciNetDevice, PciDeviceError } from '../../../src/agent/pci-device';
import { GuestNetwork } from '../../../src/agent/network';
import { AgentError } from '../../../src/agent/container';
import { guestNetworkPlan } from '../../../src/resource/network/guest-config';
import type { PodNetworkSnapshot } from '../../../src/resource/network/pod-network';

describe('agent: NICs found by PCI path', () => {
  let sys: string;
  beforeEach(() => { sys = fs.mkdtempSync(path.join(os.tmpdir(), 'nicsys-')); });
  afterEach(() => fs.rmSync(sys, { recursive: true, force: true }));

  function nicAt(slot: number, driver?: string, ifname?: string): void {
    const v = path.join(sys, `0000:00:${slot.toString(16).padStart(2, '0')}.0`, 'virtio2');
    fs.mkdirSync(ifname ? path.join(v, 'net', ifname) : v, { recursive: true });
    if (driver) fs.symlinkSync(`../../../../bus/virtio/drivers/${driver}`, path.join(v, 'driver'));
  }

  it('waits for a hotplugged NIC\'s interface at its PCI path', async () => {
    setTimeout(() => nicAt(0x0a), 60);
    setTimeout(() => { fs.symlinkSync('../../../../bus/virtio/drivers/virtio_net', path.join(sys, '0000:00:0a.0', 'virtio2', 'driver')); fs.mkdirSync(path.join(sys, '0000:00:0a.0', 'virtio2', 'net', 'eth1'), { recursive: true }); }, 150);
    expect(await waitForPciNetDevice('0a', 5000, sys)).to.equal('eth1');
  });

  it('another driver at the path fails at once; nothing there is a timeout naming the path', async () => {
    nicAt(0x0b, 'virtio_blk');
    const t0 = Date.now();
    const e = await waitForPciNetDevice('0b', 5000, sys).then(() => undefined, (x: Error) => x);
    expect((e as PciDeviceError).kind).to.equal('driver');
    expect(e!.message).to.match(/PCI path 0b \(0000:00:0b\.0\) is bound to the virtio_blk driver, not virtio_net/);
    expect(Date.now() - t0).to.be.below(1000);
    const t = await waitForPciNetDevice('0c', 150, sys).then(() => undefined, (x: Error) => x);
    expect(t!.message).to.match(/no network interface appeared at PCI path 0c within 150 ms \(no PCI device there\)/);
  });

  it('UpdateInterface with a device_path that never appears is one not-found error, before any netlink call', async () => {
    let opened = 0;
    const gn = new GuestNetwork(() => { opened++; throw new Error('netlink must not be opened'); });
    const e = await gn.updateInterfaceAt({ device: '', name: 'eth0', hw_addr: '02:00:00:00:00:01', mtu: 1500, device_path: '0d', type: '', raw_flags: 0, ip_addresses: [] }, 150, sys).then(() => undefined, (x: Error) => x);
    expect(e).to.be.instanceOf(AgentError);
    expect((e as AgentError).kind).to.equal('not-found');
    expect(e!.message).to.match(/interface 02:00:00:00:00:01: no network interface appeared at PCI path 0d within 150 ms/);
    const bad = await gn.updateInterfaceAt({ device: '', name: 'eth0', hw_addr: '02:00:00:00:00:01', mtu: 1500, device_path: '../x', type: '', raw_flags: 0, ip_addresses: [] }, 150, sys).then(() => undefined, (x: Error) => x);
    expect((bad as AgentError).kind).to.equal('invalid');
    expect(opened).to.equal(0);
  });

  it('the host plan sends each NIC\'s PCI path as device_path (none on virtio-mmio)', () => {
    const snap = {
      endpoints: [{ id: 'net0', link: { index: 2, name: 'eth0', mac: '02:00:00:00:00:01', mtu: 1500, kind: 'veth' }, addresses: [], tapName: 'tap0_kata' }],
      routes: [], neighbours: [],
    } as unknown as PodNetworkSnapshot;
    expect(guestNetworkPlan(snap, (id) => (id === 'net0' ? '09' : undefined)).interfaces[0].device_path).to.equal('09');
    expect(guestNetworkPlan(snap).interfaces[0].device_path).to.equal('');
  });
});
