/**
 * rtnetlink objects (route.ts) in the agent API's shapes (Kata's IPAddress,
 * Route): the one translation both the host (what the pod netns holds,
 * src/resource/network/guest-config.ts) and the agent (what the guest
 * holds, src/agent/network.ts) speak.
 */
import type * as api from '../agent-api';
import { AF_INET6, type Address, type Route } from './route';

export function apiFamily(f: number): api.IPFamily {
  return f === AF_INET6 ? 'v6' : 'v4';
}

export function apiAddress(a: Pick<Address, 'family' | 'address' | 'prefixLen'>): api.IPAddress {
  return { family: apiFamily(a.family), address: a.address, mask: String(a.prefixLen) };
}

/** `nameOf` maps an output interface index to the name the guest knows it by. */
export function apiRoute(r: Route, nameOf: ReadonlyMap<number, string>): api.Route {
  return {
    dest: r.dst ? `${r.dst}/${r.dstLen}` : '', gateway: r.gateway, device: nameOf.get(r.oif) ?? '', source: r.prefsrc,
    scope: r.scope, family: apiFamily(r.family), flags: 0,
  };
}
