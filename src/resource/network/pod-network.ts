/**
 * Pod networking on the host, Kata's default "tcfilter" model (runtime-rs
 * `resource/network`): CNI has already set up the pod's network namespace
 * (a veth with the pod's addresses and routes). For every such interface we
 * create a tap in the same namespace and join the two with tc — an ingress
 * qdisc on each and a mirred redirect from one to the other — so frames for
 * the pod go to the VM and the VM's frames leave through the veth. The VM
 * gets one virtio-net device per tap with the veth's MAC (peers' ARP
 * entries stay right) and MTU; the agent then gives the guest interface the
 * veth's name, addresses, routes and static neighbours (guest-config.ts).
 *
 * The runtime never invents addresses (ARCHITECTURE decision 8): whatever
 * the namespace holds is what the guest gets. Nothing is left behind: the
 * taps are not persistent (they go when the last fd — QEMU's — closes) and
 * teardown removes the ingress qdiscs, which takes the filters with them.
 *
 * A pre-started VM (the VM cache) may bring a tap of its own whose NIC the
 * guest probed while it waited (HeldTap). When the pod has exactly one
 * interface, that tap is moved into the pod's namespace, renamed tap0_kata
 * and joined with tc like any other: a tap keeps its fd (QEMU's attachment)
 * across a namespace move, and the agent gives the guest NIC the veth's MAC.
 */
import * as fs from 'node:fs';
import { KataError, errorMessage } from '../../common/errors';
import { logger } from '../../common/log';
import { native } from '../../common/native';
import { NetlinkError } from '../../protocols/netlink/message';
import {
  AF_INET6, ARPHRD_ETHER, IFF_LOOPBACK, IFF_UP, NUD_PERMANENT, RT_SCOPE_LINK, listAddresses, listLinks, listNeighbours, listRoutes, setLink,
  type Address, type Link, type Neighbour, type Route,
} from '../../protocols/netlink/route';
import { NetlinkSocket } from '../../protocols/netlink/socket';
import { addIngressQdisc, addRedirectFilter, deleteIngressQdisc } from '../../protocols/netlink/tc';

export class NetworkError extends KataError<'invalid' | 'unsupported' | 'setup'> {}

/** Interface kinds whose frames tc can mirror to a tap (Ethernet devices). */
const MIRRORABLE_KINDS = new Set(['', 'veth', 'macvlan', 'ipvlan', 'vlan', 'dummy', 'macvtap']);
/** Our taps, as Kata names them; never mirrored themselves. */
const TAP_NAME = /^tap\d+_kata$/;

/** One pod interface mirrored to a tap the VM's virtio-net device uses. */
export interface Endpoint {
  /** Device id in the VM (net0, net1, … as the tap's number). */
  id: string;
  /** The CNI interface (veth) in the pod netns. */
  link: Link;
  addresses: Address[];
  tapName: string;
  tapIndex: number;
  /** Our fd on the tap, handed to the hypervisor; -1 once released. */
  tapFd: number;
  /** Closes tapFd when it is a HeldTap's (its owner's idempotent close). */
  release?: () => void;
}

/**
 * A tap opened before the pod existed, with a virtio-net device (`id`, host
 * MTU `mtu`) already on it in the VM: the VM cache's pre-plugged NIC
 * (src/factory/vm-cache-nic.ts). It sits in our own network namespace as
 * `name`; `fd` is our copy (QEMU holds its own), closed only by `close`
 * (idempotent), by whoever is done with it first.
 */
export interface HeldTap {
  id: string;
  name: string;
  fd: number;
  mtu: number;
  close(): void;
}

export interface PodNetworkSnapshot {
  endpoints: Endpoint[];
  /** Main-table unicast routes through a mirrored interface. */
  routes: Route[];
  /** Static (NUD_PERMANENT) neighbours on a mirrored interface. */
  neighbours: Neighbour[];
}

/** Which interfaces of a namespace are the pod's: up, not loopback, not our taps. Throws for ones we cannot mirror. */
export function podInterfaces(links: Link[]): Link[] {
  const out: Link[] = [];
  for (const l of links) {
    if (l.flags & IFF_LOOPBACK || !(l.flags & IFF_UP) || TAP_NAME.test(l.name)) continue;
    if (l.hwType !== ARPHRD_ETHER || !MIRRORABLE_KINDS.has(l.kind)) {
      throw new NetworkError('unsupported', `interface ${l.name} (${l.kind || `hardware type ${l.hwType}`}) cannot be mirrored into the VM: kata-ts mirrors Ethernet interfaces (${[...MIRRORABLE_KINDS].filter(Boolean).join(', ')})`);
    }
    out.push(l);
  }
  return out;
}

export class PodNetwork {
  private readonly log = logger('network');
  private endpoints: Endpoint[] = [];
  private routes: Route[] = [];
  private neighbours: Neighbour[] = [];
  private torn = false;
  /** The HeldTap's device id when the pod's interface was mirrored to it. */
  adopted: string | undefined;

  private constructor(readonly netns: string) {}

  /**
   * Mirrors every pod interface of the namespace at `netns` to a new tap.
   * On any failure what was done is undone and one NetworkError says why.
   * With `held`, a pod with exactly one interface (whose MTU the held NIC
   * allows) gets that tap instead of a new one; `adopted` then names it and
   * releaseTapFds/teardown close it (held.close). Otherwise it is untouched.
   */
  static attach(netns: string, held?: HeldTap): PodNetwork {
    if (!netns || !fs.existsSync(netns)) throw new NetworkError('invalid', `network namespace ${netns || '(empty path)'} does not exist`);
    const pn = new PodNetwork(netns);
    let s: NetlinkSocket;
    try {
      s = NetlinkSocket.open(netns);
    } catch (err) {
      throw new NetworkError('invalid', `${netns} is not a usable network namespace: ${errorMessage(err)}`, { cause: err });
    }
    try {
      pn.mirrorAll(s, held);
    } catch (err) {
      pn.undo(s);
      s.close();
      if (err instanceof NetworkError) throw err;
      throw new NetworkError('setup', `cannot mirror the pod network of ${netns}: ${errorMessage(err)}`, { cause: err });
    }
    s.close();
    return pn;
  }

  private mirrorAll(s: NetlinkSocket, held?: HeldTap): void {
    const pod = podInterfaces(listLinks(s));
    if (held && pod.length === 1 && pod[0].mtu <= held.mtu) this.adoptHeld(s, pod[0], held);
    else for (const link of pod) this.mirrorOne(s, link);
    this.refresh(s);
  }

  /** Moves the held tap from our namespace into the pod's as tap0_kata and joins it to `link`. */
  private adoptHeld(s: NetlinkSocket, link: Link, held: HeldTap): Endpoint {
    const tapName = 'tap0_kata';
    const ep: Endpoint = { id: held.id, link, tapName, tapFd: held.fd, tapIndex: 0, addresses: [], release: () => held.close() };
    this.endpoints.push(ep);
    this.adopted = held.id;
    const here = NetlinkSocket.open(null);
    let nsFd = -1;
    try {
      const tap = listLinks(here).find((l) => l.name === held.name);
      if (!tap) throw new NetworkError('setup', `the pre-plugged tap ${held.name} is gone`);
      nsFd = fs.openSync(this.netns, 'r');
      // Moved and renamed in one request (the name applies in the pod's namespace).
      setLink(here, tap.index, { netnsFd: nsFd, name: tapName });
    } finally {
      if (nsFd >= 0) fs.closeSync(nsFd);
      here.close();
    }
    ep.tapIndex = listLinks(s).find((l) => l.name === tapName)?.index ?? 0;
    if (!ep.tapIndex) throw new NetworkError('setup', `tap ${tapName} did not appear in ${this.netns}`);
    this.join(s, ep);
    return ep;
  }

  /** A tap for one pod interface, joined to it with tc both ways. */
  private mirrorOne(s: NetlinkSocket, link: Link): Endpoint {
    let n = 0;
    while (this.endpoints.some((e) => e.tapName === `tap${n}_kata`)) n++;
    // Non-blocking, as QEMU sets it anyway (it shares this open file description).
    const tap = native().tapCreate(this.netns, `tap${n}_kata`, { vnetHdr: true, nonBlocking: true });
    const tapLink = listLinks(s).find((l) => l.name === tap.name);
    const ep: Endpoint = { id: `net${n}`, link, tapName: tap.name, tapFd: tap.fd, tapIndex: tapLink?.index ?? 0, addresses: [] };
    this.endpoints.push(ep);
    if (!ep.tapIndex) throw new NetworkError('setup', `tap ${tap.name} did not appear in ${this.netns}`);
    this.join(s, ep);
    return ep;
  }

  /** The tap takes the interface's MTU, comes up, and tc mirrors each to the other. */
  private join(s: NetlinkSocket, ep: Endpoint): void {
    const { link } = ep;
    setLink(s, ep.tapIndex, { mtu: link.mtu, up: true });
    addIngressQdisc(s, link.index);
    addIngressQdisc(s, ep.tapIndex);
    addRedirectFilter(s, link.index, ep.tapIndex);
    addRedirectFilter(s, ep.tapIndex, link.index);
    this.log.info('interface mirrored', { netns: this.netns, iface: link.name, kind: link.kind, mac: link.mac, mtu: link.mtu, tap: ep.tapName, ...(this.adopted === ep.id ? { preplugged: ep.id } : {}) });
  }

  /** Re-reads addresses, routes and neighbours of the mirrored interfaces. */
  private refresh(s: NetlinkSocket): void {
    const addrs = listAddresses(s);
    const links = new Map(listLinks(s).map((l) => [l.index, l]));
    for (const e of this.endpoints) {
      e.link = links.get(e.link.index) ?? e.link;
      // The guest makes its own IPv6 link-local address from the same MAC.
      e.addresses = addrs.filter((a) => a.index === e.link.index && !(a.family === AF_INET6 && a.scope === RT_SCOPE_LINK));
    }
    const mirrored = new Set(this.endpoints.map((e) => e.link.index));
    this.routes = listRoutes(s).filter((r) => r.type === 1 && mirrored.has(r.oif));
    this.neighbours = listNeighbours(s).filter((n) => mirrored.has(n.index) && n.state & NUD_PERMANENT && n.ip && n.mac);
  }

  /**
   * After the namespace changed (netns-watch.ts): mirrors pod interfaces
   * that appeared, forgets those that went, refreshes what the guest should
   * have. The caller plugs/unplugs the VM's devices for `added`/`removed`.
   */
  rescan(): { added: Endpoint[]; removed: Endpoint[] } {
    if (this.torn) return { added: [], removed: [] };
    const s = NetlinkSocket.open(this.netns);
    try {
      const links = listLinks(s);
      const present = new Set(links.map((l) => l.index));
      const removed = this.endpoints.filter((e) => !present.has(e.link.index));
      for (const e of removed) {
        // The veth is gone (and its filter with it); our tap stays while QEMU holds it.
        if (present.has(e.tapIndex)) {
          try {
            deleteIngressQdisc(s, e.tapIndex);
          } catch { /* already gone */ }
        }
        this.closeTap(e);
      }
      this.endpoints = this.endpoints.filter((e) => present.has(e.link.index));
      const known = new Set(this.endpoints.map((e) => e.link.index));
      const added: Endpoint[] = [];
      for (const link of podInterfaces(links)) if (!known.has(link.index)) added.push(this.mirrorOne(s, link));
      this.refresh(s);
      return { added, removed };
    } finally {
      s.close();
    }
  }

  snapshot(): PodNetworkSnapshot {
    return { endpoints: [...this.endpoints], routes: [...this.routes], neighbours: [...this.neighbours] };
  }

  /** The tap fds, to pass to the hypervisor at VM start. */
  tapFds(): { id: string; fd: number; mac: string; mtu: number }[] {
    return this.endpoints.map((e) => PodNetwork.netDevice(e));
  }

  static netDevice(e: Endpoint): { id: string; fd: number; mac: string; mtu: number } {
    return { id: e.id, fd: e.tapFd, mac: e.link.mac, mtu: e.link.mtu };
  }

  /** Closes our copy of one tap fd (the hypervisor holds its own). */
  closeTap(e: Endpoint): void {
    if (e.tapFd < 0) return;
    try {
      if (e.release) e.release();
      else fs.closeSync(e.tapFd);
    } catch { /* already closed */ }
    e.tapFd = -1;
  }

  /** Closes our copies of the tap fds once the hypervisor holds its own (the taps then live as long as the VM). */
  releaseTapFds(): void {
    for (const e of this.endpoints) this.closeTap(e);
  }

  /** Removes the tc plumbing and our tap fds. Idempotent; a vanished netns is not an error. */
  teardown(): void {
    if (this.torn) return;
    this.torn = true;
    let s: NetlinkSocket | undefined;
    try {
      if (fs.existsSync(this.netns)) s = NetlinkSocket.open(this.netns);
    } catch (err) {
      this.log.warn('cannot open the pod netns for teardown', { netns: this.netns, err: errorMessage(err) });
    }
    if (s) this.undo(s);
    s?.close();
    this.releaseTapFds();
  }

  private undo(s: NetlinkSocket): void {
    const links = (() => {
      try {
        return listLinks(s);
      } catch {
        return [];
      }
    })();
    for (const e of this.endpoints) {
      for (const index of [e.link.index, e.tapIndex]) {
        if (!index || !links.some((l) => l.index === index)) continue;
        try {
          deleteIngressQdisc(s, index);
        } catch (err) {
          if (!(err instanceof NetlinkError && (err.errno === 2 || err.errno === 22 || err.errno === 19))) this.log.warn('cannot remove an ingress qdisc', { index, err: errorMessage(err) });
        }
      }
    }
    this.releaseTapFds();
  }
}
