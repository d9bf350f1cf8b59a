/** Every fuzz target, in the order a full run takes them. */
import type { Target } from '../engine';
import { virtqueuePacked, virtqueueSplit } from './virtqueue';
import { vhostUser, vsock } from './devices';
import { balloon } from './balloon';
import { fuse } from './fuse';
import { erofs } from './erofs';
import { layerTar } from './layer-tar';
import { selftest } from './selftest';
import { vmmSnapshot } from './vmm-snapshot';
import { lz4Target, netlink, oci, protobuf, toml, ttrpc } from './protocols';
import { agentTtrpcClient, agentTtrpcServer } from './agent-ttrpc';

/** Fastest first: a full run that must be stopped early loses the slow ones' tail only. */
export const TARGETS: Target[] = [toml, oci, protobuf, ttrpc, agentTtrpcServer, agentTtrpcClient, netlink, lz4Target, layerTar, vmmSnapshot, vhostUser, fuse, virtqueueSplit, virtqueuePacked, vsock, balloon, erofs];

export function targetByName(name: string): Target {
  const t = [...TARGETS, selftest].find((x) => x.name === name);
  if (!t) throw new Error(`unknown fuzz target "${name}"; targets: ${TARGETS.map((x) => x.name).join(', ')}`);
  return t;
}
