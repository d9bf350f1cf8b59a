/**
 * Pod networking against the real kernel, in network namespaces this test
 * creates (and deletes): the host side mirrors a CNI-like veth to a tap with
 * tc and frames really cross both ways; the guest side (the agent's
 * GuestNetwork, pointed at a scratch netns instead of the VM's) names,
 * addresses and routes an interface found by MAC; bad input fails clearly
 * and leaves nothing behind.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { expect } from 'chai';
import { NetworkError, PodNetwork, podInterfaces } from '../../../src/resource/network/pod-network';
import { guestNetworkPlan } from '../../../src/resource/network/guest-config';
import { GuestNetwork } from '../../../src/agent/network';
import { NetlinkSocket } from '../../../src/protocols/netlink/socket';
import { skipOrFail } from '../../helpers/skip';
import { PodNetns, arpRequest, ip, podNetworkPrerequisiteMissing as why } from '../../helpers/netns';

const tc = (...args: string[]) => execFileSync('tc', args, { encoding: 'utf8' });

describe('pod network (tc mirroring in a real netns)', function () {
  this.timeout(30000);
  const net = new PodNetns({ podCidr: '10.99.0.2/24', mtu: 1400, defaultRoute: true });
  const { pod, peer } = net;
  const tag = crypto.randomBytes(3).toString('hex');
  const guest = `kts-guest-${tag}`;
  const made: string[] = [];

  before(function () {
    const w = why();
    if (w) skipOrFail(this, w);
    // pod: a CNI-like veth with address, MTU, default route and a static neighbour
    net.create();
    ip('netns', 'add', guest);
    made.push(guest);
    ip('-n', pod, 'neigh', 'add', '10.99.0.50', 'lladdr', '02:aa:bb:cc:dd:ee', 'dev', 'eth0', 'nud', 'permanent');
  });

  after(() => {
    net.destroy();
    for (const n of made) execFileSync('ip', ['netns', 'del', n]);
  });

  it('mirrors the veth to a tap both ways, copying its MTU, and reads addresses, routes and static neighbours', () => {
    const pn = PodNetwork.attach(`/var/run/netns/${pod}`);
    try {
      const links = ip('-n', pod, '-o', 'link');
      expect(links).to.match(/tap0_kata: .* mtu 1400 /);
      expect(tc('-n', pod, 'filter', 'show', 'dev', 'eth0', 'ingress')).to.match(/mirred \(Egress Redirect to device tap0_kata\)/);
      expect(tc('-n', pod, 'filter', 'show', 'dev', 'tap0_kata', 'ingress')).to.match(/mirred \(Egress Redirect to device eth0\)/);
      const plan = guestNetworkPlan(pn.snapshot());
      const mac = net.podMac();
      expect(plan.interfaces).to.have.length(1);
      expect(plan.interfaces[0]).to.include({ name: 'eth0', mtu: 1400, hw_addr: mac, type: 'veth' });
      expect(plan.interfaces[0].ip_addresses).to.deep.equal([{ family: 'v4', address: '10.99.0.2', mask: '24' }]);
      expect(plan.routes).to.deep.include({ dest: '', gateway: '10.99.0.1', device: 'eth0', source: '', scope: 0, family: 'v4', flags: 0 });
      expect(plan.routes.some((r) => r.dest === '10.99.0.0/24' && r.source === '10.99.0.2')).to.equal(true);
      expect(plan.neighbours.map((n) => [n.to_ip_address?.address, n.lladdr, n.device])).to.deep.equal([['10.99.0.50', '02:aa:bb:cc:dd:ee', 'eth0']]);
      expect(pn.tapFds()).to.deep.equal([{ id: 'net0', fd: pn.snapshot().endpoints[0].tapFd, mac, mtu: 1400 }]);

      // tap → veth: what "the guest" writes leaves by eth0; the peer learns the pod's MAC from our ARP request…
      const fd = pn.tapFds()[0].fd;
      fs.writeSync(fd, arpRequest(mac, '10.99.0.2', '10.99.0.1'));
      // …veth → tap: and its ARP reply comes back to the tap.
      const buf = Buffer.alloc(2048);
      const deadline = Date.now() + 5000;
      let reply: Buffer | undefined;
      while (!reply && Date.now() < deadline) {
        try {
          const n = fs.readSync(fd, buf, 0, buf.length, null);
          const frame = buf.subarray(10, n);
          if (frame.readUInt16BE(12) === 0x0806 && frame.readUInt16BE(20) === 2) reply = Buffer.from(frame);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
          execFileSync('sleep', ['0.05']);
        }
      }
      expect(reply, 'an ARP reply from the peer reached the tap').to.not.equal(undefined);
      expect(reply!.subarray(0, 6).toString('hex')).to.equal(mac.replace(/:/g, ''));
      expect(ip('-n', peer, 'neigh', 'show', '10.99.0.2')).to.contain(mac);
    } finally {
      pn.teardown();
    }
    expect(tc('-n', pod, 'qdisc', 'show', 'dev', 'eth0')).to.not.contain('ingress');
    expect(ip('-n', pod, '-o', 'link')).to.not.contain('tap0_kata');
  });

  it('rescan mirrors an interface added later and forgets one that went, refreshing addresses', () => {
    const pn = PodNetwork.attach(`/var/run/netns/${pod}`);
    try {
      expect(pn.rescan()).to.deep.equal({ added: [], removed: [] });
      ip('link', 'add', 'net1', 'netns', pod, 'type', 'veth', 'peer', 'name', 'vpeer1', 'netns', peer);
      ip('-n', pod, 'link', 'set', 'net1', 'up');
      ip('-n', pod, 'addr', 'add', '10.98.7.2/24', 'dev', 'net1');
      const { added, removed } = pn.rescan();
      expect(removed).to.deep.equal([]);
      expect(added.map((e) => [e.id, e.link.name, e.tapName])).to.deep.equal([['net1', 'net1', 'tap1_kata']]);
      expect(tc('-n', pod, 'filter', 'show', 'dev', 'net1', 'ingress')).to.match(/Egress Redirect to device tap1_kata/);
      expect(pn.snapshot().endpoints.find((e) => e.link.name === 'net1')!.addresses.map((a) => a.address)).to.deep.equal(['10.98.7.2']);
      ip('-n', pod, 'addr', 'add', '10.98.8.2/24', 'dev', 'net1');
      expect(pn.rescan().added).to.deep.equal([]);
      expect(pn.snapshot().endpoints.find((e) => e.link.name === 'net1')!.addresses.map((a) => a.address)).to.include('10.98.8.2');
      pn.closeTap(added[0]);
      ip('-n', pod, 'link', 'del', 'net1');
      const gone = pn.rescan();
      expect(gone.removed.map((e) => e.link.name)).to.deep.equal(['net1']);
      expect(pn.snapshot().endpoints.map((e) => e.link.name)).to.deep.equal(['eth0']);
    } finally {
      pn.teardown();
    }
    expect(ip('-n', pod, '-o', 'link')).to.not.contain('_kata');
  });

  it('refuses a missing netns, a file that is not a netns, and an interface it cannot mirror, leaving nothing set up', () => {
    expect(() => PodNetwork.attach('/var/run/netns/kts-does-not-exist')).to.throw(NetworkError, /does not exist/);
    const notNs = path.join(os.tmpdir(), `kts-not-netns-${tag}`);
    fs.writeFileSync(notNs, '');
    try {
      expect(() => PodNetwork.attach(notNs)).to.throw(NetworkError, /not a usable network namespace/);
    } finally {
      fs.rmSync(notNs);
    }
    ip('-n', pod, 'link', 'add', 'br9', 'type', 'bridge');
    ip('-n', pod, 'link', 'set', 'br9', 'up');
    try {
      expect(() => PodNetwork.attach(`/var/run/netns/${pod}`)).to.throw(NetworkError, /br9 \(bridge\) cannot be mirrored/);
      expect(ip('-n', pod, '-o', 'link')).to.not.contain('tap0_kata');
      expect(tc('-n', pod, 'qdisc', 'show', 'dev', 'eth0')).to.not.contain('ingress');
    } finally {
      ip('-n', pod, 'link', 'del', 'br9');
    }
    // down links, loopback and our own taps are not the pod's
    expect(podInterfaces([
      { index: 1, name: 'lo', mac: '', mtu: 65536, flags: 0x9, hwType: 772, kind: '', link: 0, master: 0 },
      { index: 2, name: 'sit0', mac: '', mtu: 1480, flags: 0, hwType: 776, kind: 'sit', link: 0, master: 0 },
      { index: 3, name: 'tap0_kata', mac: '02:00:00:00:00:01', mtu: 1500, flags: 1, hwType: 1, kind: 'tun', link: 0, master: 0 },
    ])).to.deep.equal([]);
  });

  it('guest side: finds the NIC by MAC, renames it, sets MTU, addresses, routes and neighbours, and lists them', () => {
    ip('link', 'add', 'ens4', 'netns', guest, 'address', '02:11:22:33:44:55', 'type', 'veth', 'peer', 'name', 'gpeer', 'netns', peer);
    const gn = new GuestNetwork(() => NetlinkSocket.open(`/var/run/netns/${guest}`));
    gn.loopbackUp();
    expect(ip('-n', guest, '-o', 'link', 'show', 'lo')).to.match(/<LOOPBACK,UP/);
    const res = gn.updateInterface({
      device: '', name: 'eth0', hw_addr: '02:11:22:33:44:55', mtu: 1380, device_path: '', type: '', raw_flags: 0,
      ip_addresses: [{ family: 'v4', address: '10.98.0.5', mask: '24' }, { family: 'v6', address: 'fd00:98::5', mask: '64' }],
    });
    expect(res).to.include({ name: 'eth0', mtu: 1380, hw_addr: '02:11:22:33:44:55' });
    expect(res.ip_addresses).to.deep.include({ family: 'v4', address: '10.98.0.5', mask: '24' });
    expect(ip('-n', guest, '-o', 'addr', 'show', 'eth0')).to.contain('inet 10.98.0.5/24').and.contain('inet6 fd00:98::5/64');
    gn.updateRoutes({ routes: [
      { dest: '', gateway: '10.98.0.1', device: 'eth0', source: '', scope: 0, family: 'v4', flags: 0 },
      { dest: '10.98.0.0/24', gateway: '', device: 'eth0', source: '10.98.0.5', scope: 253, family: 'v4', flags: 0 },
      { dest: '172.30.0.0/16', gateway: '10.98.0.1', device: 'eth0', source: '', scope: 0, family: 'v4', flags: 0 },
    ] });
    const routes = ip('-n', guest, 'route');
    expect(routes).to.contain('default via 10.98.0.1 dev eth0').and.contain('172.30.0.0/16 via 10.98.0.1 dev eth0');
    expect(gn.listRoutes().routes.map((r) => `${r.dest}>${r.gateway}`)).to.include.members(['>10.98.0.1', '172.30.0.0/16>10.98.0.1']);
    // Replace semantics: a second UpdateRoutes drops what the first added.
    gn.updateRoutes({ routes: [{ dest: '', gateway: '10.98.0.254', device: 'eth0', source: '', scope: 0, family: 'v4', flags: 0 }] });
    expect(ip('-n', guest, 'route')).to.contain('default via 10.98.0.254').and.not.contain('172.30.0.0/16');
    gn.addArpNeighbors({ neighbors: [{ to_ip_address: { family: 'v4', address: '10.98.0.77', mask: '' }, device: 'eth0', lladdr: '02:de:ad:be:ef:01', state: 0x80, flags: 0 }] });
    expect(ip('-n', guest, 'neigh', 'show', '10.98.0.77')).to.contain('02:de:ad:be:ef:01').and.contain('PERMANENT');
    expect(gn.listInterfaces().interfaces.find((i) => i.name === 'eth0')?.ip_addresses.length).to.be.greaterThan(1);
  });

  it('guest side: bad requests are refused with a clear error and change nothing', () => {
    const gn = new GuestNetwork(() => NetlinkSocket.open(`/var/run/netns/${guest}`));
    const before = ip('-n', guest, '-o', 'addr');
    const base = { device: '', name: 'eth1', mtu: 0, device_path: '', type: '', raw_flags: 0 };
    expect(() => gn.updateInterface({ ...base, hw_addr: '02:99:99:99:99:99', ip_addresses: [] })).to.throw(/no guest interface with MAC 02:99/);
    expect(() => gn.updateInterface({ ...base, hw_addr: '02:11:22:33:44:55', ip_addresses: [{ family: 'v4', address: '10.0.0.1', mask: '33' }] })).to.throw(/bad prefix length "33"/);
    expect(() => gn.updateInterface({ ...base, hw_addr: '02:11:22:33:44:55', ip_addresses: [{ family: 'v4', address: 'fd00::1', mask: '24' }] })).to.throw(/not an v4 address/);
    expect(() => gn.updateInterface({ ...base, name: 'a/b', hw_addr: '02:11:22:33:44:55', ip_addresses: [] })).to.throw(/bad interface name/);
    expect(() => gn.updateInterface(null)).to.throw(/needs an interface/);
    expect(() => gn.updateRoutes({ routes: [{ dest: '10.0.0.0/40', gateway: '', device: 'eth0', source: '', scope: 0, family: 'v4', flags: 0 }] })).to.throw(/bad route destination/);
    expect(() => gn.updateRoutes({ routes: [{ dest: '', gateway: '10.98.0.1', device: 'nope0', source: '', scope: 0, family: 'v4', flags: 0 }] })).to.throw(/no guest interface nope0/);
    expect(ip('-n', guest, '-o', 'addr')).to.equal(before);
  });

  it('writes the guest resolv.conf from DNS lines and refuses control characters', async () => {
    const gn = new GuestNetwork(() => NetlinkSocket.open(`/var/run/netns/${guest}`));
    const f = path.join(os.tmpdir(), `kts-resolv-${tag}`, 'resolv.conf');
    await gn.writeResolvConf(['10.96.0.10', 'search default.svc.cluster.local', 'options ndots:5'], f);
    expect(fs.readFileSync(f, 'utf8')).to.equal('nameserver 10.96.0.10\nsearch default.svc.cluster.local\noptions ndots:5\n');
    let err: unknown;
    await gn.writeResolvConf(['nameserver 1.1.1.1\nnameserver 6.6.6.6'], f).catch((e) => (err = e));
    expect(String(err)).to.match(/control character/);
    fs.rmSync(path.dirname(f), { recursive: true });
  });
});
