/**
 * A pod network as CNI would leave it, for tests and benchmarks: two
 * network namespaces this process creates — the pod's, holding `eth0` (one
 * end of a veth) with an address, and a peer standing for the node, holding
 * the other end — and removes again. Uses iproute2 (`ip`) for the fixture
 * itself; the code under test uses netlink.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { ipToBytes } from '../../src/protocols/netlink/route';

export const ip = (...args: string[]): string => execFileSync('ip', args, { encoding: 'utf8' });

/** Why this host cannot run the tap/tc pod-network tests (undefined: it can): root, /dev/net/tun, iproute2, the addon. */
export function podNetworkPrerequisiteMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  if (!fs.existsSync('/dev/net/tun')) return '/dev/net/tun missing';
  try {
    execFileSync('ip', ['-V']);
    execFileSync('tc', ['-V']);
  } catch {
    return 'iproute2 (ip, tc) not installed';
  }
  try {
    require('../../src/common/native').native();
  } catch (err) {
    return (err as Error).message;
  }
  return undefined;
}

/** An ARP request from (mac, ipA) for ipB, behind the 10-byte virtio_net_hdr a vnet-hdr tap expects. */
export function arpRequest(mac: string, from: string, to: string): Buffer {
  const m = Buffer.from(mac.split(':').map((x) => parseInt(x, 16)));
  const eth = Buffer.concat([Buffer.alloc(6, 0xff), m, Buffer.from([0x08, 0x06])]);
  const arp = Buffer.concat([Buffer.from([0, 1, 8, 0, 6, 4, 0, 1]), m, ipToBytes(from), Buffer.alloc(6), ipToBytes(to)]);
  return Buffer.concat([Buffer.alloc(10), eth, arp, Buffer.alloc(18)]);
}

export interface PodNetnsOptions {
  /** Pod address with prefix, e.g. 10.97.0.2/24; the peer gets .1 of the same /24. */
  podCidr: string;
  mtu?: number;
  /** Add a default route via the peer. */
  defaultRoute?: boolean;
  /** Name prefix (kept short: netns names end up in paths). */
  prefix?: string;
}

export class PodNetns {
  readonly pod: string;
  readonly peer: string;
  readonly podAddr: string;
  readonly peerAddr: string;
  private made: string[] = [];

  constructor(private readonly o: PodNetnsOptions) {
    const tag = crypto.randomBytes(3).toString('hex');
    this.pod = `${o.prefix ?? 'kts'}-pod-${tag}`;
    this.peer = `${o.prefix ?? 'kts'}-peer-${tag}`;
    const [addr, len] = o.podCidr.split('/');
    this.podAddr = addr;
    this.peerAddr = `${addr.split('.').slice(0, 3).join('.')}.1`;
    if (!len) throw new Error(`podCidr ${o.podCidr} needs a prefix length`);
  }

  get podPath(): string {
    return `/var/run/netns/${this.pod}`;
  }

  create(): this {
    for (const n of [this.pod, this.peer]) {
      ip('netns', 'add', n);
      this.made.push(n);
    }
    const len = this.o.podCidr.split('/')[1];
    const mtu = String(this.o.mtu ?? 1500);
    ip('link', 'add', 'eth0', 'netns', this.pod, 'type', 'veth', 'peer', 'name', 'vnode', 'netns', this.peer);
    ip('-n', this.pod, 'link', 'set', 'eth0', 'mtu', mtu, 'up');
    ip('-n', this.pod, 'addr', 'add', this.o.podCidr, 'dev', 'eth0');
    if (this.o.defaultRoute) ip('-n', this.pod, 'route', 'add', 'default', 'via', this.peerAddr);
    ip('-n', this.peer, 'link', 'set', 'vnode', 'mtu', mtu, 'up');
    ip('-n', this.peer, 'addr', 'add', `${this.peerAddr}/${len}`, 'dev', 'vnode');
    ip('-n', this.peer, 'link', 'set', 'lo', 'up');
    return this;
  }

  /** The MAC of the pod's eth0 (what the guest NIC must get). */
  podMac(dev = 'eth0'): string {
    return ip('-n', this.pod, '-o', 'link', 'show', dev).match(/link\/ether ([0-9a-f:]+)/)![1];
  }

  /** Deleting the namespaces takes the veths (and anything left in them) along. */
  destroy(): void {
    for (const n of this.made.splice(0)) {
      try {
        execFileSync('ip', ['netns', 'del', n]);
      } catch { /* already gone */ }
    }
  }
}
