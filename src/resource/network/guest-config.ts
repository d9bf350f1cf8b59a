/**
 * From the pod netns as the host read it (pod-network.ts) to the agent's
 * network API (Kata's UpdateInterface / UpdateRoutes / AddARPNeighbors):
 * each guest NIC, found by the MAC it was given, takes the CNI interface's
 * name, MTU and addresses; then the routes and static neighbours follow.
 * Pure translation plus the three calls, so the mapping is unit-testable.
 */
import type * as api from '../../protocols/agent-api';
import { apiAddress, apiFamily, apiRoute } from '../../protocols/netlink/agent-shapes';
import type { PodNetworkSnapshot } from './pod-network';

export interface GuestNetworkPlan {
  interfaces: api.Interface[];
  routes: api.Route[];
  neighbours: api.ARPNeighbor[];
}

/**
 * `pciPathOf` answers where the device manager put each endpoint's NIC (by
 * device id): sent as device_path, the agent waits for the NIC there before
 * finding it by MAC (virtio-mmio NICs have none).
 */
export function guestNetworkPlan(snap: PodNetworkSnapshot, pciPathOf: (deviceId: string) => string | undefined = () => undefined): GuestNetworkPlan {
  const nameOf = new Map(snap.endpoints.map((e) => [e.link.index, e.link.name]));
  return {
    interfaces: snap.endpoints.map((e) => ({
      device: '', name: e.link.name, mtu: e.link.mtu, hw_addr: e.link.mac, device_path: pciPathOf(e.id) ?? '', type: e.link.kind, raw_flags: 0,
      ip_addresses: e.addresses.map(apiAddress),
    })),
    routes: snap.routes.map((r) => apiRoute(r, nameOf)),
    neighbours: snap.neighbours.map((n) => ({
      to_ip_address: { family: apiFamily(n.family), address: n.ip, mask: '' }, device: nameOf.get(n.index) ?? '', lladdr: n.mac, state: n.state, flags: n.flags,
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
