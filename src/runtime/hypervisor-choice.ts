/**
 * The runtime's one door to the hypervisors, for the shim and the `kata-ts
 * run` CLI: they reach a hypervisor only through here (issue 14 "the shim
 * reaches the hypervisor only through the runtime"; test/unit/hypervisor/
 * layering.test.ts fails if src/shim or src/cli imports src/hypervisor,
 * types included). It owns two decisions made before a Sandbox exists:
 *
 *   - which hypervisor, from the runtime's Config and what the host can
 *     really do (decision 3; src/hypervisor/index.ts measures and builds);
 *   - which VFIO devices are cold-plugged at boot: with `[hypervisor.qemu]
 *     cold_plug_vfio` set (Kata's key), the sandbox's first container's
 *     `linux.devices` entries `/dev/vfio/<group>` go on QEMU's command line
 *     (Sandbox bootVfio) instead of being hotplugged when the container is
 *     created; the container then takes a reference to them. Hotplug
 *     (`hot_plug_vfio`) is the default, as in Kata.
 *
 * The Hypervisor type is re-exported so callers that pass one around (the
 * shim's injectable `hypervisor` option for tests) need not import it.
 */
import { selectHypervisor } from '../hypervisor';
import type { HypervisorChoice } from '../hypervisor/capabilities';
import type { Hypervisor, VfioDevice } from '../hypervisor/hypervisor';
import { planBootVfio, type VfioGroupSources } from '../resource/devices/container-devices';
import type { Config } from './config';

export type { Hypervisor, VfioDevice };

/** What `kata-ts run --hypervisor` asks for; absent: `[runtime] hypervisor`. */
export type HypervisorRequest = 'auto' | 'qemu' | 'builtin';

/**
 * Picks and builds the hypervisor for one sandbox from the runtime Config
 * (the pod's, after annotations): an unusable choice (e.g. the builtin VMM
 * on a host whose KVM only emulates) is one error naming why.
 */
export async function createSandboxHypervisor(cfg: Config, requested?: HypervisorRequest): Promise<{ hv: Hypervisor; choice: HypervisorChoice }> {
  const { hv, choice } = await selectHypervisor(cfg, requested);
  return { hv, choice };
}

/**
 * The VFIO devices to cold-plug for a sandbox whose first container has
 * `spec`: none unless `[hypervisor.qemu] cold_plug_vfio` is set (not
 * "no-port"). Either way each `/dev/vfio/<group>` entry's group is checked
 * on the host first (src/resource/devices/container-devices.ts): a group
 * that does not exist or is not viable is one DeviceError here, before any
 * VM boots for a container that could not be created (hotplug would refuse
 * it the same way, after the boot).
 */
export function sandboxBootVfio(cfg: Config, spec: { linux?: { devices?: unknown[]; resources?: Record<string, unknown> } }, sources?: VfioGroupSources, sys?: string): VfioDevice[] | undefined {
  const devices = planBootVfio(spec, sources, sys);
  if (cfg['hypervisor.qemu'].cold_plug_vfio === 'no-port') return undefined;
  return devices.length ? devices : undefined;
}
