/**
 * The VM cache's pre-plugged NIC against the real kernel (README "VM
 * templates", cache part): a tap opened in our own namespace before the pod
 * existed (a HeldTap, as vm-cache-nic.ts makes it) is moved into a pod's
 * namespace as tap0_kata and mirrored with tc, and frames written on the
 * fd opened before the move cross both ways (the fd, so QEMU's attachment,
 * survives the move). A pod with no or several interfaces, or an MTU the
 * NIC cannot carry, leaves it alone. Nothing is left: no tap in either
 * namespace, no filter. The guest side: a NIC found by its PCI path takes
 * the MAC and name the host sends.
 */
import * as fs from 'node:fs';
import * as crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { expect } from 'chai';
import { PodNetwork, type HeldTap } from '../../../src/resource/network/pod-network';
import { guestNetworkPlan } from '../../../src/resource/network/guest-config';
import { GuestNetwork } from '../../../src/agent/network';
import { NetlinkSocket } from '../../../src/protocols/netlink/socket';
import { heldTapName, onceCloser, preplugNic, randomMac, IDLE_GUEST_NAME, PREPLUGGED_NIC_ID } from '../../../src/factory/vm-cache-nic';
import type { QemuHypervisor } from '../../../src/hypervisor/qemu';
import type { AgentClient } from '../../../src/runtime/agent-client';
import type { Logger } from '../../../src/common/log';
import { skipOrFail } from '../../helpers/skip';
import { PodNetns, arpRequest, ip, podNetworkPrerequisiteMissing as why } from '../../helpers/netns';

const tc = (...args: string[]) => execFileSync('tc', args, { encoding: 'utf8' });

/** A held tap as the VM cache makes one, counting its closes. */
function holdTap(mtu = 1500): HeldTap & { closes: number } {
  const name = heldTapName();
  const { native } = require('../../../src/common/native') as typeof import('../../../src/common/native');
  const tap = native().tapCreate(null, name, { vnetHdr: true, nonBlocking: true });
  const close = onceCloser(tap.fd);
  const h = { id: PREPLUGGED_NIC_ID, name, fd: tap.fd, mtu, closes: 0, close: () => { h.closes++; close(); } };
  return h;
}

const hostHas = (name: string) => ip('-o', 'link').split('\n').some((l) => l.includes(` ${name}:`) || l.includes(` ${name}@`));

describe('pod network: adopting the VM cache\'s pre-plugged tap', function () {
  this.timeout(30000);
  const net = new PodNetns({ podCidr: '10.93.0.2/24', defaultRoute: true, prefix: 'ktsh' });
  const tag = crypto.randomBytes(3).toString('hex');
  const guest = `ktsh-guest-${tag}`;
  let guestMade = false;

  before(function () {
    const w = why();
    if (w) skipOrFail(this, w);
    net.create();
    ip('netns', 'add', guest);
    guestMade = true;
  });

  after(() => {
    net.destroy();
    if (guestMade) execFileSync('ip', ['netns', 'del', guest]);
  });

  it('helpers: a tap name fits IFNAMSIZ, a random MAC is unicast and locally administered, a closer closes once', () => {
    expect(heldTapName()).to.match(/^kvc[0-9a-f]{8}$/);
    for (let i = 0; i < 20; i++) {
      const m = randomMac();
      expect(m).to.match(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
      expect(parseInt(m.slice(0, 2), 16) & 0x03).to.equal(0x02);
    }
    const fd = fs.openSync('/dev/null', 'r');
    const c = onceCloser(fd);
    c();
    expect(() => fs.fstatSync(fd)).to.throw(/EBADF/);
    c();
  });

  it('one pod interface: the held tap moves into the pod netns as tap0_kata, is mirrored, and frames cross on the fd opened before the move', () => {
    const held = holdTap();
    expect(hostHas(held.name), 'the held tap is in our namespace').to.equal(true);
    const pn = PodNetwork.attach(net.podPath, held);
    try {
      expect(pn.adopted).to.equal(PREPLUGGED_NIC_ID);
      expect(hostHas(held.name), 'moved out of our namespace').to.equal(false);
      expect(ip('-n', net.pod, '-o', 'link')).to.match(/tap0_kata: .* mtu 1500 /);
      expect(tc('-n', net.pod, 'filter', 'show', 'dev', 'eth0', 'ingress')).to.match(/Egress Redirect to device tap0_kata/);
      expect(tc('-n', net.pod, 'filter', 'show', 'dev', 'tap0_kata', 'ingress')).to.match(/Egress Redirect to device eth0/);
      const mac = net.podMac();
      expect(pn.tapFds()).to.deep.equal([{ id: PREPLUGGED_NIC_ID, fd: held.fd, mac, mtu: 1500 }]);
      const plan = guestNetworkPlan(pn.snapshot(), (id) => (id === PREPLUGGED_NIC_ID ? '02' : undefined));
      expect(plan.interfaces.map((i) => [i.name, i.hw_addr, i.device_path])).to.deep.equal([['eth0', mac, '02']]);
      fs.writeSync(held.fd, arpRequest(mac, '10.93.0.2', '10.93.0.1'));
      const buf = Buffer.alloc(2048);
      const deadline = Date.now() + 5000;
      let reply: Buffer | undefined;
      while (!reply && Date.now() < deadline) {
        try {
          const n = fs.readSync(held.fd, buf, 0, buf.length, null);
          const frame = buf.subarray(10, n);
          if (frame.readUInt16BE(12) === 0x0806 && frame.readUInt16BE(20) === 2) reply = Buffer.from(frame);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
          execFileSync('sleep', ['0.05']);
        }
      }
      expect(reply, 'the peer\'s ARP reply reached the moved tap').to.not.equal(undefined);
      // A second interface appearing later gets a tap of its own, net1/tap1_kata.
      ip('link', 'add', 'net1', 'netns', net.pod, 'type', 'veth', 'peer', 'name', 'vpeer1', 'netns', net.peer);
      ip('-n', net.pod, 'link', 'set', 'net1', 'up');
      const { added } = pn.rescan();
      expect(added.map((e) => [e.id, e.tapName])).to.deep.equal([['net1', 'tap1_kata']]);
    } finally {
      pn.teardown();
      try { ip('-n', net.pod, 'link', 'del', 'net1'); } catch { /* not made */ }
    }
    expect(held.closes, 'teardown closed the held fd').to.be.greaterThan(0);
    expect(tc('-n', net.pod, 'qdisc', 'show', 'dev', 'eth0')).to.not.contain('ingress');
    expect(ip('-n', net.pod, '-o', 'link'), 'the tap went with its last fd').to.not.contain('_kata');
  });

  it('no, several, or a too-large-MTU pod interface: the held tap is left where it is, untouched', () => {
    const held = holdTap();
    try {
      // Several: a second veth.
      ip('link', 'add', 'net2', 'netns', net.pod, 'type', 'veth', 'peer', 'name', 'vpeer2', 'netns', net.peer);
      ip('-n', net.pod, 'link', 'set', 'net2', 'up');
      const two = PodNetwork.attach(net.podPath, held);
      expect(two.adopted).to.equal(undefined);
      expect(two.tapFds().map((t) => t.id)).to.deep.equal(['net0', 'net1']);
      two.teardown();
      ip('-n', net.pod, 'link', 'del', 'net2');
      // MTU above what the held NIC carries.
      const small = { ...held, mtu: 1400 };
      const big = PodNetwork.attach(net.podPath, small);
      expect(big.adopted).to.equal(undefined);
      big.teardown();
      // None: a namespace with only loopback.
      const empty = PodNetwork.attach(`/var/run/netns/${guest}`, held);
      expect(empty.adopted).to.equal(undefined);
      empty.teardown();
      expect(held.closes).to.equal(0);
      expect(hostHas(held.name)).to.equal(true);
    } finally {
      held.close();
    }
    expect(hostHas(held.name), 'the held tap went with its fd').to.equal(false);
    expect(ip('-n', net.pod, '-o', 'link')).to.not.contain('_kata');
  });

  it('a held tap that is gone: one clear error, nothing left in the pod netns', () => {
    const held = holdTap();
    held.close();
    const gone = { ...held, fd: -1, close: () => undefined };
    expect(() => PodNetwork.attach(net.podPath, gone)).to.throw(/pre-plugged tap kvc[0-9a-f]{8} is gone/);
    expect(ip('-n', net.pod, '-o', 'link')).to.not.contain('_kata');
    expect(tc('-n', net.pod, 'qdisc', 'show', 'dev', 'eth0')).to.not.contain('ingress');
  });

  it('guest side: the NIC found by its PCI path (not by MAC) takes the MAC and the name sent', () => {
    ip('link', 'add', IDLE_GUEST_NAME, 'netns', guest, 'address', '02:00:00:aa:bb:01', 'type', 'veth', 'peer', 'name', 'gpeer9', 'netns', net.peer);
    ip('link', 'add', 'other0', 'netns', guest, 'address', '02:00:00:aa:bb:02', 'type', 'veth', 'peer', 'name', 'gpeer8', 'netns', net.peer);
    const gn = new GuestNetwork(() => NetlinkSocket.open(`/var/run/netns/${guest}`));
    const res = gn.updateInterface({
      device: '', name: 'eth0', hw_addr: '02:42:0A:5D:00:07', mtu: 1450, device_path: '02', type: '', raw_flags: 0, ip_addresses: [{ family: 'v4', address: '10.93.9.7', mask: '24' }],
    }, IDLE_GUEST_NAME);
    expect(res).to.include({ name: 'eth0', hw_addr: '02:42:0a:5d:00:07', mtu: 1450 });
    expect(ip('-n', guest, '-o', 'link', 'show', 'eth0')).to.contain('link/ether 02:42:0a:5d:00:07').and.match(/<[^>]*UP/);
    expect(ip('-n', guest, '-o', 'link', 'show', 'other0')).to.contain('02:00:00:aa:bb:02');
    expect(ip('-n', guest, '-o', 'addr', 'show', 'eth0')).to.contain('inet 10.93.9.7/24');
  });

  it('preplugNic: the NIC plugged and the guest asked to name it; a failing step undoes what was done and says why once', async () => {
    const kvcHere = () => ip('-o', 'link').split('\n').filter((l) => / kvc[0-9a-f]{8}[:@]/.test(l)).length;
    const before = kvcHere();
    const calls: string[] = [];
    const warnings: string[] = [];
    const log = { debug: () => log, warn: (m: string) => { warnings.push(m); return log; } } as unknown as Logger;
    const hv = (failAdd: boolean) => ({
      addNet: async (n: { id: string; mac: string; mtu: number }) => { calls.push(`add ${n.id} ${n.mtu}`); if (failAdd) throw new Error('no slot'); },
      removeNet: async (id: string) => { calls.push(`remove ${id}`); },
      pciPathOf: () => '05',
    }) as unknown as QemuHypervisor;
    const agent = (fail: boolean) => ({
      updateInterface: async (i: { name: string; device_path: string; hw_addr: string }) => { calls.push(`update ${i.name} ${i.device_path}`); if (fail) throw new Error('no NIC appeared'); return i; },
    }) as unknown as AgentClient;
    const ok = await preplugNic(hv(false), agent(false), log);
    expect(ok).to.include({ id: PREPLUGGED_NIC_ID, mtu: 1500 });
    expect(calls).to.deep.equal([`add ${PREPLUGGED_NIC_ID} 1500`, `update ${IDLE_GUEST_NAME} 05`]);
    expect(hostHas(ok!.name)).to.equal(true);
    ok!.close();
    expect(hostHas(ok!.name)).to.equal(false);
    calls.length = 0;
    expect(await preplugNic(hv(false), agent(true), log)).to.equal(undefined);
    expect(calls).to.deep.equal([`add ${PREPLUGGED_NIC_ID} 1500`, `update ${IDLE_GUEST_NAME} 05`, `remove ${PREPLUGGED_NIC_ID}`]);
    calls.length = 0;
    expect(await preplugNic(hv(true), agent(false), log)).to.equal(undefined);
    expect(calls).to.deep.equal([`add ${PREPLUGGED_NIC_ID} 1500`]);
    expect(warnings).to.have.length(2);
    expect(warnings[0]).to.match(/cannot pre-plug a NIC/);
    expect(kvcHere(), 'no held tap left').to.equal(before);
  });
});
