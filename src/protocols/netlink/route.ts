/**
 * rtnetlink (linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h,
 * linux/neighbour.h): links, addresses, routes and neighbours as plain
 * objects, read with dumps and changed with NEW/DEL/SET requests. The host
 * reads a pod netns with it; the agent configures the guest with it.
 */
import * as net from 'node:net';
import { NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NetlinkError, attr, attrMap, parseAttrs, read, type NetlinkMessage } from './message';
import type { NetlinkSocket } from './socket';

export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;
export const RTM_NEWNEIGH = 28;
export const RTM_GETNEIGH = 30;

const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_INET6 = 10;

const IFLA_ADDRESS = 1;
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_LINK = 5;
const IFLA_MASTER = 10;
const IFLA_LINKINFO = 18;
const IFLA_INFO_KIND = 1;
const IFLA_NET_NS_FD = 28;

const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFA_FLAGS = 8;
const IFA_F_PERMANENT = 0x80;

const RTA_DST = 1;
const RTA_OIF = 4;
const RTA_GATEWAY = 5;
const RTA_PRIORITY = 6;
const RTA_PREFSRC = 7;
const RTA_TABLE = 15;
export const RT_TABLE_MAIN = 254;
export const RTPROT_BOOT = 3;
export const RTPROT_KERNEL = 2;
export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_LINK = 253;
export const RT_SCOPE_HOST = 254;
export const RTN_UNICAST = 1;

const NDA_DST = 1;
const NDA_LLADDR = 2;
export const NUD_PERMANENT = 0x80;
export const NUD_NOARP = 0x40;

export const IFF_UP = 0x1;
export const IFF_LOOPBACK = 0x8;
export const ARPHRD_ETHER = 1;

export interface Link {
  index: number;
  name: string;
  /** "aa:bb:cc:dd:ee:ff" ('' when the link has none). */
  mac: string;
  mtu: number;
  flags: number;
  /** ARPHRD_* hardware type. */
  hwType: number;
  /** IFLA_INFO_KIND ("veth", "tun", "bridge", …), '' for plain devices. */
  kind: string;
  /** Index of the peer/lower link (veth peer in another netns reports it too), 0 if none. */
  link: number;
  master: number;
}

export interface Address {
  index: number;
  family: number;
  address: string;
  prefixLen: number;
  scope: number;
  flags: number;
}

export interface Route {
  family: number;
  /** "" for the default route. */
  dst: string;
  dstLen: number;
  gateway: string;
  /** Output interface index (0 when none). */
  oif: number;
  prefsrc: string;
  scope: number;
  protocol: number;
  table: number;
  type: number;
  priority: number;
}

export interface Neighbour {
  index: number;
  family: number;
  ip: string;
  mac: string;
  state: number;
  flags: number;
}

export function macToString(b: Buffer | undefined): string {
  if (!b || b.length === 0) return '';
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

export function macFromString(s: string): Buffer {
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(s)) throw new NetlinkError('invalid', `"${s}" is not a MAC address`);
  return Buffer.from(s.split(':').map((x) => parseInt(x, 16)));
}

export function ipToString(family: number, b: Buffer | undefined): string {
  if (!b) return '';
  if (family === AF_INET && b.length === 4) return [...b].join('.');
  if (family === AF_INET6 && b.length === 16) {
    const parts: string[] = [];
    for (let i = 0; i < 16; i += 2) parts.push(b.readUInt16BE(i).toString(16));
    // Canonical form through a round trip (zero compression as inet_ntop).
    return compressV6(parts);
  }
  throw new NetlinkError('malformed', `address of ${b.length} bytes for family ${family}`);
}

function compressV6(parts: string[]): string {
  let best = -1, bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (parts[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && parts[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) { best = i; bestLen = j - i; }
    i = j;
  }
  if (best < 0) return parts.join(':');
  return `${parts.slice(0, best).join(':')}::${parts.slice(best + bestLen).join(':')}`;
}

export function ipFamily(ip: string): number {
  const v = net.isIP(ip);
  if (v === 4) return AF_INET;
  if (v === 6) return AF_INET6;
  throw new NetlinkError('invalid', `"${ip}" is not an IP address`);
}

export function ipToBytes(ip: string): Buffer {
  const v = net.isIP(ip);
  if (v === 4) return Buffer.from(ip.split('.').map(Number));
  if (v === 6) {
    const [head, tail] = ip.includes('::') ? ip.split('::') : [ip, undefined];
    const h = head ? head.split(':') : [];
    const t = tail !== undefined && tail ? tail.split(':') : [];
    // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two groups.
    const expand = (g: string[]) => g.flatMap((x) => (x.includes('.') ? ((b) => [((b[0] << 8) | b[1]).toString(16), ((b[2] << 8) | b[3]).toString(16)])(x.split('.').map(Number)) : [x]));
    const hh = expand(h), tt = expand(t);
    const groups = tail !== undefined ? [...hh, ...Array(8 - hh.length - tt.length).fill('0'), ...tt] : hh;
    const b = Buffer.alloc(16);
    groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
    return b;
  }
  throw new NetlinkError('invalid', `"${ip}" is not an IP address`);
}

function ifinfomsg(index: number, flags = 0, change = 0, family = AF_UNSPEC): Buffer {
  const b = Buffer.alloc(16);
  b[0] = family;
  b.writeInt32LE(index, 4);
  b.writeUInt32LE(flags >>> 0, 8);
  b.writeUInt32LE(change >>> 0, 12);
  return b;
}

function parseLink(m: NetlinkMessage): Link {
  if (m.payload.length < 16) throw new NetlinkError('malformed', 'short ifinfomsg');
  const a = attrMap(parseAttrs(m.payload, 16));
  const info = a.get(IFLA_LINKINFO);
  const kind = info ? read.str(attrMap(parseAttrs(info)).get(IFLA_INFO_KIND)) : '';
  return {
    index: m.payload.readInt32LE(4), hwType: m.payload.readUInt16LE(2), flags: m.payload.readUInt32LE(8),
    name: read.str(a.get(IFLA_IFNAME)), mac: macToString(a.get(IFLA_ADDRESS)), mtu: read.u32(a.get(IFLA_MTU)) ?? 0,
    kind, link: read.u32(a.get(IFLA_LINK)) ?? 0, master: read.u32(a.get(IFLA_MASTER)) ?? 0,
  };
}

export function listLinks(s: NetlinkSocket): Link[] {
  return s.dump('list links', RTM_GETLINK, ifinfomsg(0)).filter((m) => m.type === RTM_NEWLINK).map(parseLink);
}

export function findLink(s: NetlinkSocket, pred: (l: Link) => boolean): Link | undefined {
  return listLinks(s).find(pred);
}

/** Changes a link's name, MAC, MTU and/or up/down state (RTM_NEWLINK on an existing index). */
/** `netnsFd`: moves the link into the network namespace that fd (an open netns file) names; `name` then applies there. */
export function setLink(s: NetlinkSocket, index: number, change: { name?: string; mac?: string; mtu?: number; up?: boolean; netnsFd?: number }): void {
  const attrs: Buffer[] = [];
  if (change.netnsFd !== undefined) attrs.push(attr.u32(IFLA_NET_NS_FD, change.netnsFd));
  if (change.name !== undefined) attrs.push(attr.str(IFLA_IFNAME, change.name));
  if (change.mac !== undefined) attrs.push(attr.raw(IFLA_ADDRESS, macFromString(change.mac)));
  if (change.mtu !== undefined) attrs.push(attr.u32(IFLA_MTU, change.mtu));
  const hdr = change.up === undefined ? ifinfomsg(index) : ifinfomsg(index, change.up ? IFF_UP : 0, IFF_UP);
  s.request(`set link ${index} ${JSON.stringify(change)}`, RTM_NEWLINK, 0, hdr, attrs);
}

function ifaddrmsg(family: number, prefixLen: number, index: number, scope = RT_SCOPE_UNIVERSE, flags = 0): Buffer {
  const b = Buffer.alloc(8);
  b[0] = family;
  b[1] = prefixLen;
  b[2] = flags & 0xff;
  b[3] = scope;
  b.writeUInt32LE(index, 4);
  return b;
}

export function listAddresses(s: NetlinkSocket): Address[] {
  return s.dump('list addresses', RTM_GETADDR, ifaddrmsg(AF_UNSPEC, 0, 0)).filter((m) => m.type === RTM_NEWADDR).map((m) => {
    if (m.payload.length < 8) throw new NetlinkError('malformed', 'short ifaddrmsg');
    const family = m.payload[0];
    const a = attrMap(parseAttrs(m.payload, 8));
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS otherwise.
    return {
      family, prefixLen: m.payload[1], scope: m.payload[3], index: m.payload.readUInt32LE(4),
      flags: read.u32(a.get(IFA_FLAGS)) ?? m.payload[2], address: ipToString(family, a.get(IFA_LOCAL) ?? a.get(IFA_ADDRESS)),
    };
  });
}

export function addAddress(s: NetlinkSocket, index: number, address: string, prefixLen: number): void {
  const family = ipFamily(address);
  const bytes = ipToBytes(address);
  s.request(`add address ${address}/${prefixLen} to link ${index}`, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE,
    ifaddrmsg(family, prefixLen, index, RT_SCOPE_UNIVERSE, IFA_F_PERMANENT), [attr.raw(IFA_LOCAL, bytes), attr.raw(IFA_ADDRESS, bytes)]);
}

export function deleteAddress(s: NetlinkSocket, index: number, address: string, prefixLen: number): void {
  const family = ipFamily(address);
  s.request(`delete address ${address}/${prefixLen} from link ${index}`, RTM_DELADDR, 0, ifaddrmsg(family, prefixLen, index), [attr.raw(IFA_LOCAL, ipToBytes(address))]);
}

function rtmsg(r: Pick<Route, 'family' | 'dstLen' | 'table' | 'protocol' | 'scope' | 'type'>): Buffer {
  const b = Buffer.alloc(12);
  b[0] = r.family;
  b[1] = r.dstLen;
  b[4] = r.table < 256 ? r.table : 252; // RT_TABLE_COMPAT; RTA_TABLE carries the real one
  b[5] = r.protocol;
  b[6] = r.scope;
  b[7] = r.type;
  return b;
}

/** Routes of the main table (what a pod's network is made of), both families. */
export function listRoutes(s: NetlinkSocket, table = RT_TABLE_MAIN): Route[] {
  return s.dump('list routes', RTM_GETROUTE, rtmsg({ family: AF_UNSPEC, dstLen: 0, table: 0, protocol: 0, scope: 0, type: 0 }))
    .filter((m) => m.type === RTM_NEWROUTE)
    .map((m) => {
      if (m.payload.length < 12) throw new NetlinkError('malformed', 'short rtmsg');
      const family = m.payload[0];
      const a = attrMap(parseAttrs(m.payload, 12));
      return {
        family, dstLen: m.payload[1], table: read.u32(a.get(RTA_TABLE)) ?? m.payload[4], protocol: m.payload[5], scope: m.payload[6], type: m.payload[7],
        dst: ipToString(family, a.get(RTA_DST)), gateway: ipToString(family, a.get(RTA_GATEWAY)), oif: read.u32(a.get(RTA_OIF)) ?? 0,
        prefsrc: ipToString(family, a.get(RTA_PREFSRC)), priority: read.u32(a.get(RTA_PRIORITY)) ?? 0,
      };
    })
    .filter((r) => r.table === table);
}

export interface RouteSpec {
  /** "" or "default" for the default route; else an address with dstLen. */
  dst: string;
  dstLen: number;
  gateway?: string;
  oif?: number;
  prefsrc?: string;
  scope?: number;
  family?: number;
  priority?: number;
}

export function addRoute(s: NetlinkSocket, r: RouteSpec): void {
  const family = r.family ?? ipFamily(r.gateway || r.dst || r.prefsrc || '0.0.0.0');
  const isDefault = !r.dst || r.dst === 'default';
  const attrs: Buffer[] = [attr.u32(RTA_TABLE, RT_TABLE_MAIN)];
  if (!isDefault) attrs.push(attr.raw(RTA_DST, ipToBytes(r.dst)));
  if (r.gateway) attrs.push(attr.raw(RTA_GATEWAY, ipToBytes(r.gateway)));
  if (r.oif) attrs.push(attr.u32(RTA_OIF, r.oif));
  if (r.prefsrc) attrs.push(attr.raw(RTA_PREFSRC, ipToBytes(r.prefsrc)));
  if (r.priority) attrs.push(attr.u32(RTA_PRIORITY, r.priority));
  const scope = r.scope ?? (r.gateway ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK);
  // EXCL, not REPLACE: a route the kernel made for an address must stay the
  // kernel's (EEXIST tells the caller it is already there).
  s.request(`add route ${isDefault ? 'default' : `${r.dst}/${r.dstLen}`}${r.gateway ? ` via ${r.gateway}` : ''}`, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL,
    rtmsg({ family, dstLen: isDefault ? 0 : r.dstLen, table: RT_TABLE_MAIN, protocol: RTPROT_BOOT, scope, type: RTN_UNICAST }), attrs);
}

export function deleteRoute(s: NetlinkSocket, r: Route): void {
  const attrs: Buffer[] = [attr.u32(RTA_TABLE, r.table)];
  if (r.dst) attrs.push(attr.raw(RTA_DST, ipToBytes(r.dst)));
  if (r.gateway) attrs.push(attr.raw(RTA_GATEWAY, ipToBytes(r.gateway)));
  if (r.oif) attrs.push(attr.u32(RTA_OIF, r.oif));
  if (r.priority) attrs.push(attr.u32(RTA_PRIORITY, r.priority));
  s.request(`delete route ${r.dst || 'default'}/${r.dstLen}`, RTM_DELROUTE, 0, rtmsg(r), attrs);
}

function ndmsg(family: number, index: number, state = 0, flags = 0): Buffer {
  const b = Buffer.alloc(12);
  b[0] = family;
  b.writeInt32LE(index, 4);
  b.writeUInt16LE(state, 8);
  b[10] = flags;
  return b;
}

export function listNeighbours(s: NetlinkSocket): Neighbour[] {
  return s.dump('list neighbours', RTM_GETNEIGH, ndmsg(AF_UNSPEC, 0)).filter((m) => m.type === RTM_NEWNEIGH).map((m) => {
    if (m.payload.length < 12) throw new NetlinkError('malformed', 'short ndmsg');
    const family = m.payload[0];
    const a = attrMap(parseAttrs(m.payload, 12));
    return {
      family, index: m.payload.readInt32LE(4), state: m.payload.readUInt16LE(8), flags: m.payload[10],
      ip: family === AF_INET || family === AF_INET6 ? ipToString(family, a.get(NDA_DST)) : '', mac: macToString(a.get(NDA_LLADDR)),
    };
  });
}

export function addNeighbour(s: NetlinkSocket, index: number, ip: string, mac: string, state = NUD_PERMANENT, flags = 0): void {
  s.request(`add neighbour ${ip} lladdr ${mac}`, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, ndmsg(ipFamily(ip), index, state, flags),
    [attr.raw(NDA_DST, ipToBytes(ip)), attr.raw(NDA_LLADDR, macFromString(mac))]);
}

/** Deletes a link (used for test fixtures; taps go when their fd closes). */
export function deleteLink(s: NetlinkSocket, index: number): void {
  s.request(`delete link ${index}`, RTM_DELLINK, 0, ifinfomsg(index));
}

