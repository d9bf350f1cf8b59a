/**
 * The VM cache's pre-plugged NIC: while a cached VM waits, a tap in our own
 * (the host's) network namespace with a virtio-net device hotplugged on it,
 * so the guest probes the NIC while idle instead of on the pod's path
 * (README "VM templates", cache part). The agent is asked to wait for it
 * (UpdateInterface by PCI path) and to name it IDLE_GUEST_NAME, a name no
 * pod interface takes, so a pod that does not use it never clashes with it.
 *
 * At the claim, a pod with exactly one CNI interface takes it
 * (PodNetwork.attach with the HeldTap): the tap moves into the pod's
 * namespace as tap0_kata (a tap keeps its fd, so QEMU's attachment, across
 * a namespace move) and the agent gives the guest NIC the veth's MAC, name
 * and addresses. Any other pod leaves it unused; it goes with the VM.
 *
 * Nothing outlives the VM: the tap is not persistent, so it goes when the
 * last fd on it closes — QEMU's when the VM stops, ours by HeldTap.close
 * (the cached VM's stop, the sandbox's network teardown, or at once when a
 * pod does not take it).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { errorMessage } from '../common/errors';
import type { Logger } from '../common/log';
import { native } from '../common/native';
import type { QemuHypervisor } from '../hypervisor/qemu';
import type { HeldTap } from '../resource/network/pod-network';
import type { AgentClient } from '../runtime/agent-client';

/** The device id in QEMU: never one PodNetwork gives its own taps (net0, net1, …). */
export const PREPLUGGED_NIC_ID = 'netpre';
/** The guest's name for it until a pod takes it: not a name CNI gives. */
export const IDLE_GUEST_NAME = 'kts-idle0';
/** Its host MTU (QEMU's host_mtu, the guest's maximum): pods whose interface allows more get their own NIC. */
export const PREPLUGGED_MTU = 1500;

/** A host tap name of our own (15 bytes at most), unique per cached VM. */
export function heldTapName(): string {
  return `kvc${crypto.randomBytes(4).toString('hex')}`;
}

/** A random unicast, locally administered MAC. */
export function randomMac(): string {
  const b = crypto.randomBytes(6);
  b[0] = (b[0] & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** An idempotent close of `fd` (two owners may each be done with it; it is closed once). */
export function onceCloser(fd: number): () => void {
  let open = true;
  return () => {
    if (!open) return;
    open = false;
    try {
      fs.closeSync(fd);
    } catch { /* already gone */ }
  };
}

/**
 * Creates the tap, hotplugs its NIC and waits until the guest has it (named
 * IDLE_GUEST_NAME). Undefined, with one warning, when any step fails: the
 * cached VM is still worth having, its pod then gets a hotplugged NIC as
 * any clone does; what was done is undone.
 */
export async function preplugNic(hv: QemuHypervisor, agent: AgentClient, log: Logger): Promise<HeldTap | undefined> {
  const name = heldTapName();
  let close: (() => void) | undefined;
  let plugged = false;
  try {
    const tap = native().tapCreate(null, name, { vnetHdr: true, nonBlocking: true });
    close = onceCloser(tap.fd);
    const mac = randomMac();
    await hv.addNet({ id: PREPLUGGED_NIC_ID, fd: tap.fd, mac, mtu: PREPLUGGED_MTU });
    plugged = true;
    await agent.updateInterface({
      device: '', name: IDLE_GUEST_NAME, mtu: PREPLUGGED_MTU, hw_addr: mac, device_path: hv.pciPathOf('net', PREPLUGGED_NIC_ID) ?? '', type: '', raw_flags: 0, ip_addresses: [],
    });
    log.debug('NIC pre-plugged', { tap: name, mac });
    return { id: PREPLUGGED_NIC_ID, name, fd: tap.fd, mtu: PREPLUGGED_MTU, close };
  } catch (err) {
    log.warn('cannot pre-plug a NIC into the cached VM; its pod gets one at the claim', { err: errorMessage(err) });
    if (plugged) await hv.removeNet(PREPLUGGED_NIC_ID).catch(() => undefined);
    close?.();
    return undefined;
  }
}
