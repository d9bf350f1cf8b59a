/**
 * Picks and constructs the Hypervisor for a sandbox from the configuration
 * and the measured host capabilities (decision 3).
 */
import * as path from 'node:path';
import type { Config } from '../runtime/config';
import { KataError } from '../common/errors';
import { chooseHypervisor, probeKvm, type HypervisorChoice, type KvmProbe } from './capabilities';
import type { Hypervisor } from './hypervisor';
import { QemuHypervisor } from './qemu';

export class HypervisorSelectError extends KataError<'unavailable'> {}

/** Whether the builtin VMM exists in this build (it arrives with its own issue). */
export const BUILTIN_AVAILABLE = false;

export async function selectHypervisor(cfg: Config, requested?: 'auto' | 'qemu' | 'builtin'): Promise<{ hv: Hypervisor; choice: HypervisorChoice; probe: KvmProbe }> {
  const probe = await probeKvm(cfg['hypervisor.qemu'].path, path.join(cfg.runtime.run_dir));
  const req = requested ?? (cfg.runtime.hypervisor as 'auto' | 'qemu' | 'builtin');
  const choice = chooseHypervisor(req, cfg['hypervisor.qemu'].accel as 'auto' | 'kvm' | 'tcg', probe, BUILTIN_AVAILABLE);
  if (choice.hypervisor === 'builtin') {
    throw new HypervisorSelectError('unavailable', `the builtin hypervisor is not available in this build yet; use --hypervisor qemu (host check: ${probe.reason || 'n/a'})`);
  }
  const q = cfg['hypervisor.qemu'];
  return { hv: new QemuHypervisor({ binary: q.path, machine: q.machine_type as 'pc' | 'q35' | 'microvm', accel: choice.accel }), choice, probe };
}
