/**
 * The sandbox's door into the factory (QEMU, and the builtin VMM's
 * snapshots: startBuiltinClone): start its VM as a clone of the VM
 * template when `[factory] enable_template` is on and the template is valid
 * for this sandbox, else say why in exactly one warning line and let the
 * caller cold-boot. A clone that fails half way (a truncated state file, the
 * template removed under us, QEMU refusing the stream) has already been
 * stopped by QemuHypervisor.startClone: nothing of it is left when the
 * caller boots instead.
 *
 * After the agent answers, a clone must stop being its template's twin:
 * reseed the guest RNG with fresh host bytes (vmgenid already made the
 * kernel mix in a new generation id) and set the guest clock, which still
 * runs from the moment the template was saved (identity.ts in the agent).
 */
import * as crypto from 'node:crypto';
import { errorMessage } from '../common/errors';
import type { Logger } from '../common/log';
import type { Hypervisor, VmConfig, VmInfo } from '../hypervisor/hypervisor';
import { QemuHypervisor } from '../hypervisor/qemu';
import type { Config } from '../runtime/config';
import { qemuTarget, VmFactory } from './factory';

/** Bytes of host randomness a clone's guest gets (Kata's runtime sends 512 too). */
export const RESEED_BYTES = 512;

/** A VM started from the template, or undefined after one warning (the caller cold-boots). */
export async function startFromTemplate(hv: Hypervisor, cfg: Config, vm: VmConfig, kernelParams: string, log: Logger): Promise<{ info: VmInfo; cloneMs: number; copyMs: number } | undefined> {
  if (!cfg.factory.enable_template) return undefined;
  // Loaded only for the builtin VMM (its module loads the native addon).
  if (hv.name === 'builtin') return (await import('./builtin-template')).startBuiltinClone(hv as import('../hypervisor/builtin').BuiltinHypervisor, cfg, vm, kernelParams, log);
  if (!(hv instanceof QemuHypervisor)) {
    log.warn(`[factory] enable_template: VM templates are implemented for QEMU and the builtin VMM only, not the ${hv.name} hypervisor; cold boot`);
    return undefined;
  }
  const factory = new VmFactory({ config: cfg, kernelParams, vcpus: vm.vcpus, memoryMiB: vm.memoryMiB, qemu: qemuTarget(hv) });
  const t0 = Date.now();
  const prep = factory.prepareClone(vm.dir);
  if ('reason' in prep) {
    log.warn(`${prep.reason}; cold boot`);
    return undefined;
  }
  try {
    const info = await hv.startClone(vm, prep.clone);
    const copy = await prep.memory.done; // resolved: the restore waited for it
    return { info, cloneMs: Date.now() - t0, copyMs: Math.round(copy.ms) };
  } catch (err) {
    log.warn(`VM template clone failed (${errorMessage(err)}); cold boot`);
    return undefined;
  } finally {
    prep.release();
  }
}

/** What the runtime tells a clone's agent right after it answers. */
export interface CloneIdentityAgent {
  reseedRandomDev(data: Buffer): Promise<unknown>;
  setGuestDateTime(sec: number, usec: number): Promise<unknown>;
}

/**
 * Reseeds the clone's RNG and sets its clock (the hostname comes with
 * CreateSandbox). Both requests go out at once (ttrpc multiplexes them on
 * the one connection): they are independent, and under TCG each round trip
 * to the guest costs tens of ms. Either failing fails the clone's start.
 */
export async function makeCloneUnique(agent: CloneIdentityAgent): Promise<void> {
  const now = Date.now();
  await Promise.all([
    agent.reseedRandomDev(crypto.randomBytes(RESEED_BYTES)),
    agent.setGuestDateTime(Math.floor(now / 1000), (now % 1000) * 1000),
  ]);
}
