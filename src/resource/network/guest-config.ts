/**
 * From the pod netns as the host read it (pod-network.ts) to the agent's
 * network API (Kata's UpdateInterface / UpdateRoutes / AddARPNeighbors):
 * each guest NIC, found by the MAC it was given, takes the CNI interface's
 * name, MTU and addresses; then the routes and static neighbours follow.
 * Pure translation plus the three calls, so the mapping is unit-testable.
 */
import type * as api from '../../protocols/agent-api';
import { AF_INET6 } from '../../protocols/netlink/route';
import type { PodNetworkSnapshot } from './pod-network';

export interface GuestNetworkPlan {
  interfaces: api.Interface[];
  routes: api.Route[];
  neighbours: api.ARPNeighbor[];
}

const fam = (f: number): api.IPFamily => (f === AF_INET6 ? 'v6' : 'v4');

export function guestNetworkPlan(snap: PodNetworkSnapshot): GuestNetworkPlan {
  const nameOf = new Map(snap.endpoints.map((e) => [e.link.index, e.link.name]));
  return {
    interfaces: snap.endpoints.map((e) => ({
      device: '', name: e.link.name, mtu: e.link.mtu, hw_addr: e.link.mac, device_path: '', type: e.link.kind, raw_flags: 0,
      ip_addresses: e.addresses.map((a) => ({ family: fam(a.family), address: a.address, mask: String(a.prefixLen) })),
    })),
    routes: snap.routes.map((r) => ({
      dest: r.dst ? `${r.dst}/${r.dstLen}` : '', gateway: r.gateway, device: nameOf.get(r.oif) ?? '', source: r.prefsrc,
      scope: r.scope, family: fam(r.family), flags: 0,
    })),
    neighbours: snap.neighbours.map((n) => ({
      to_ip_address: { family: fam(n.family), address: n.ip, mask: '' }, device: nameOf.get(n.index) ?? '', lladdr: n.mac, state: n.state, flags: n.flags,
    })),
  };
}

export interface NetworkAgent {
  updateInterface(i: api.Interface): Promise<api.Interface>;
  updateRoutes(r: api.Route[]): Promise<api.Routes>;
  addArpNeighbors(n: api.ARPNeighbor[]): Promise<api.Empty>;
}

/** Pushes the plan: interfaces first (routes name them), then routes, then neighbours. */
export async function configureGuestNetwork(agent: NetworkAgent, plan: GuestNetworkPlan): Promise<void> {
  for (const i of plan.interfaces) await agent.updateInterface(i);
  if (plan.routes.length) await agent.updateRoutes(plan.routes);
  if (plan.neighbours.length) await agent.addArpNeighbors(plan.neighbours);
}
