/**
 * The guest side of pod networking (Kata agent's UpdateInterface,
 * UpdateRoutes, ListInterfaces, ListRoutes, AddARPNeighbors): the host
 * hands each virtio-net device the MAC of the pod interface it mirrors, and
 * then tells us that interface's name, MTU, addresses, the pod's routes and
 * static neighbours. We apply them with rtnetlink (src/protocols/netlink)
 * in the guest's one network namespace, which every container shares (the
 * agent drops the spec's network namespace: the VM is the pod's netns).
 * Also: `lo` up in every sandbox, and the guest resolv.conf from the
 * sandbox's DNS lines.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type * as api from '../protocols/agent-api';
import { NetlinkError } from '../protocols/netlink/message';
import {
  AF_INET, AF_INET6, IFF_LOOPBACK, addAddress, addNeighbour, addRoute, deleteAddress, deleteRoute, ipFamily, listAddresses, listLinks, listRoutes,
  RTPROT_KERNEL, setLink, type Link,
} from '../protocols/netlink/route';
import { NetlinkSocket } from '../protocols/netlink/socket';
import { apiAddress, apiRoute } from '../protocols/netlink/agent-shapes';
import { AgentError } from './container';
import { PciDeviceError, waitForPciNetDevice } from './pci-device';

/** The guest's /etc/resolv.conf is a link to this file (guest/image/build.sh): the root filesystem is read-only. */
export const GUEST_RESOLV_CONF = '/run/kata-ts/resolv.conf';


function invalid(err: unknown): AgentError {
  if (err instanceof NetlinkError && err.kind === 'invalid') return new AgentError('invalid', err.message, { cause: err });
  if (err instanceof AgentError) return err;
  return new AgentError('internal', (err as Error).message, { cause: err });
}

export class GuestNetwork {
  constructor(private readonly open: () => NetlinkSocket = () => NetlinkSocket.open(null)) {}

  private with<T>(fn: (s: NetlinkSocket) => T): T {
    const s = this.open();
    try {
      return fn(s);
    } catch (err) {
      throw invalid(err);
    } finally {
      s.close();
    }
  }

  /** Loopback up: every sandbox has it, networked or not. */
  loopbackUp(): void {
    this.with((s) => {
      for (const l of listLinks(s)) if (l.flags & IFF_LOOPBACK) setLink(s, l.index, { up: true });
    });
  }

  async writeResolvConf(dns: string[], file = GUEST_RESOLV_CONF): Promise<void> {
    for (const line of dns) if (/[\n\r\0]/.test(line)) throw new AgentError('invalid', `DNS line ${JSON.stringify(line)} has a control character`);
    // Kata passes whole lines ("nameserver 10.0.0.10"); a bare address is a nameserver.
    const lines = dns.map((l) => (/^\s*[0-9a-fA-F.:]+\s*$/.test(l) ? `nameserver ${l.trim()}` : l));
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(file, lines.length ? `${lines.join('\n')}\n` : '');
  }

  /**
   * UpdateInterface as the service calls it: when the host names the NIC's
   * PCI path (device_path; Kata's agent does the same for hotplugged NICs),
   * first wait until the guest has its interface there — a NIC hotplugged a
   * moment ago, or into a template clone, may not be probed yet — then
   * updateInterface() on the interface found there (so a NIC plugged
   * before its pod existed, with a MAC of its own, takes the pod's MAC;
   * the VM cache's pre-plugged NIC). Without one (virtio-mmio) straight to it.
   */
  async updateInterfaceAt(req: api.Interface | null, timeoutMs = 10000, sysDevices = '/sys/bus/pci/devices'): Promise<api.Interface> {
    let at: string | undefined;
    if (req?.device_path) {
      at = await waitForPciNetDevice(req.device_path, timeoutMs, sysDevices).catch((err: unknown) => {
        if (err instanceof PciDeviceError) throw new AgentError(err.kind === 'invalid' ? 'invalid' : 'not-found', `interface ${req.hw_addr || req.device}: ${err.message}`, { cause: err });
        throw err;
      });
    }
    return this.updateInterface(req, at);
  }

  /**
   * Finds the interface by device name, else by the name `at` (found by PCI
   * path), else by MAC; gives it the MAC asked for and renames it (down
   * while doing so, as the kernel requires; the IPv6 link-local address
   * then follows the new MAC), sets MTU, replaces its addresses and brings
   * it up. Answers with the interface as it now is.
   */
  updateInterface(req: api.Interface | null, at?: string): api.Interface {
    if (!req) throw new AgentError('invalid', 'UpdateInterface needs an interface');
    if (!req.device && !req.hw_addr) throw new AgentError('invalid', 'UpdateInterface needs a device name or a hw_addr to find the interface by');
    for (const a of req.ip_addresses ?? []) {
      const len = Number(a.mask);
      const max = a.family === 'v6' ? 128 : 32;
      if (!Number.isInteger(len) || len < 0 || len > max || String(a.mask).trim() === '') throw new AgentError('invalid', `bad prefix length "${a.mask}" for ${a.address}`);
      if (ipFamily(a.address) !== (a.family === 'v6' ? AF_INET6 : AF_INET)) throw new AgentError('invalid', `${a.address} is not an ${a.family} address`);
    }
    if (req.name && !/^[A-Za-z0-9_.:-]{1,15}$/.test(req.name)) throw new AgentError('invalid', `bad interface name "${req.name}"`);
    return this.with((s) => {
      const links = listLinks(s);
      const mac = req.hw_addr.toLowerCase();
      const byPci = !req.device && at ? links.find((l) => l.name === at) : undefined;
      const link = byPci ?? links.find((l) => (req.device && l.name === req.device) || (!req.device && mac && l.mac === mac));
      if (!link) throw new AgentError('not-found', `no guest interface ${req.device ? `named ${req.device}` : `with MAC ${req.hw_addr}`} (have: ${links.map((l) => `${l.name} ${l.mac}`).join(', ')})`);
      const rename = !!req.name && req.name !== link.name;
      if (rename && links.some((l) => l.name === req.name)) throw new AgentError('already-exists', `another guest interface is already named ${req.name}`);
      const newMac = mac && mac !== link.mac ? mac : undefined;
      if (rename || newMac) setLink(s, link.index, { up: false });
      if (newMac) setLink(s, link.index, { mac: newMac });
      if (rename) setLink(s, link.index, { name: req.name });
      if (req.mtu) setLink(s, link.index, { mtu: Number(req.mtu) });
      // Replace: what the host says is the whole set.
      for (const a of listAddresses(s)) if (a.index === link.index && !(a.family === AF_INET6 && a.address.startsWith('fe80:'))) deleteAddress(s, a.index, a.address, a.prefixLen);
      for (const a of req.ip_addresses ?? []) addAddress(s, link.index, a.address, Number(a.mask));
      setLink(s, link.index, { up: true });
      return this.describe(s, link.index);
    });
  }

  private describe(s: NetlinkSocket, index: number): api.Interface {
    const l = listLinks(s).find((x) => x.index === index);
    if (!l) throw new AgentError('not-found', `interface ${index} vanished`);
    return toApiInterface(l, listAddresses(s).filter((a) => a.index === index));
  }

  listInterfaces(): api.Interfaces {
    return this.with((s) => {
      const addrs = listAddresses(s);
      return { interfaces: listLinks(s).map((l) => toApiInterface(l, addrs.filter((a) => a.index === l.index))) };
    });
  }

  listRoutes(): api.Routes {
    return this.with((s) => {
      const names = new Map(listLinks(s).map((l) => [l.index, l.name]));
      return {
        routes: listRoutes(s).filter((r) => r.type === 1).map((r) => apiRoute(r, names)),
      };
    });
  }

  /**
   * Replaces the guest's routes (Kata's UpdateRoutes): the ones the kernel
   * made for addresses stay; every other route goes; the given ones are
   * added, routes without a gateway first (a gateway must be reachable
   * before a route through it is accepted).
   */
  updateRoutes(req: api.Routes | null): api.Routes {
    const routes = req?.routes ?? [];
    const parsed = routes.map((r) => {
      let dst = '', dstLen = 0;
      if (r.dest && r.dest !== 'default') {
        const [ip, len] = r.dest.split('/');
        dst = ip;
        dstLen = len === undefined ? (ipFamily(ip) === AF_INET6 ? 128 : 32) : Number(len);
        if (!Number.isInteger(dstLen) || dstLen < 0 || dstLen > (ipFamily(ip) === AF_INET6 ? 128 : 32)) throw new AgentError('invalid', `bad route destination "${r.dest}"`);
      }
      if (r.gateway) ipFamily(r.gateway);
      return { r, dst, dstLen };
    });
    return this.with((s) => {
      const links = listLinks(s);
      const byName = new Map(links.map((l) => [l.name, l.index]));
      for (const old of listRoutes(s)) if (old.protocol !== RTPROT_KERNEL && old.type === 1) deleteRoute(s, old);
      const ordered = [...parsed].sort((a, b) => Number(!!a.r.gateway) - Number(!!b.r.gateway));
      for (const { r, dst, dstLen } of ordered) {
        const oif = r.device ? byName.get(r.device) : undefined;
        if (r.device && oif === undefined) throw new AgentError('not-found', `route ${r.dest || 'default'}: no guest interface ${r.device}`);
        try {
          addRoute(s, { dst, dstLen, gateway: r.gateway || undefined, oif, prefsrc: r.source || undefined, scope: r.scope || undefined,
            family: r.family === 'v6' ? AF_INET6 : r.gateway || dst ? undefined : AF_INET });
        } catch (err) {
          // The kernel already made this one (a connected route for an address).
          if (err instanceof NetlinkError && err.errno === 17 /* EEXIST */) continue;
          throw err;
        }
      }
      return { routes };
    });
  }

  addArpNeighbors(req: api.AddARPNeighborsRequest['neighbors']): void {
    const ns = req?.neighbors ?? [];
    this.with((s) => {
      const byName = new Map(listLinks(s).map((l) => [l.name, l.index]));
      for (const n of ns) {
        const ip = n.to_ip_address?.address ?? '';
        const index = byName.get(n.device);
        if (index === undefined) throw new AgentError('not-found', `ARP neighbour ${ip}: no guest interface ${n.device}`);
        addNeighbour(s, index, ip, n.lladdr, n.state || undefined, n.flags || 0);
      }
    });
  }
}

function toApiInterface(l: Link, addrs: { family: number; address: string; prefixLen: number }[]): api.Interface {
  return {
    device: l.name, name: l.name, mtu: l.mtu, hw_addr: l.mac, device_path: '', type: l.kind, raw_flags: l.flags,
    ip_addresses: addrs.map(apiAddress),
  };
}
