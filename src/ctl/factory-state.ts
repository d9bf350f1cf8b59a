/**
 * The VM factory as kata-ctl sees it: the template for the configuration
 * sandboxes start with (QEMU, or the builtin VMM's snapshots when
 * `[runtime] hypervisor = "builtin"`; the hypervisor the runtime would pick, its
 * accelerator, the sandbox kernel parameters with `[agent.kata]
 * policy_file`'s hash), and its state for `check` and `env`.
 */
import { selectHypervisor } from '../hypervisor';
import { QemuHypervisor } from '../hypervisor/qemu';
import { policyFromFile } from '../runtime/policy';
import { sandboxKernelParams } from '../runtime/sandbox';
import type { Config } from '../runtime/config';
import { qemuTarget, VmFactory } from '../factory/factory';
import type { BuiltinFactory } from '../factory/builtin-template';
import { TemplateError } from '../factory/qemu-template';
import type { TemplateState } from '../factory/template-store';
import { errorMessage } from '../common/errors';
import { cacheStatus } from '../factory/vm-cache-fill';

/** The factory for the configuration sandboxes start with. */
export async function factoryFor(cfg: Config): Promise<VmFactory | BuiltinFactory> {
  if (cfg.runtime.hypervisor === 'builtin') {
    // The builtin VMM's snapshots (src/factory/builtin-template.ts); refused where the builtin VMM is.
    const { hv } = await selectHypervisor(cfg, 'builtin');
    const { BuiltinFactory: Factory } = await import('../factory/builtin-template');
    const policyFile = cfg['agent.kata'].policy_file;
    const policy = policyFile ? policyFromFile(policyFile) : undefined;
    return new Factory({ config: cfg, kernelParams: sandboxKernelParams(cfg, policy), balloon: (hv as import('../hypervisor/builtin').BuiltinHypervisor).options.balloon === true });
  }
  const { hv } = await selectHypervisor(cfg, 'qemu');
  if (!(hv instanceof QemuHypervisor)) throw new TemplateError('config', 'VM templates are implemented for QEMU only');
  const policyFile = cfg['agent.kata'].policy_file;
  const policy = policyFile ? policyFromFile(policyFile) : undefined;
  return new VmFactory({ config: cfg, qemu: qemuTarget(hv), kernelParams: sandboxKernelParams(cfg, policy) });
}

export interface FactoryEnv {
  enabled: boolean;
  path: string;
  state: TemplateState | 'unavailable';
  key: string | null;
  reasons: string[];
  /** The pre-started VM cache: configured number, ready and starting entries. */
  vmCache: { number: number; ready: number; starting: number; dir: string };
}

function vmCacheEnv(cfg: Config): FactoryEnv['vmCache'] {
  try {
    const c = cacheStatus(cfg);
    return { number: c.number, ready: c.ready.length, starting: c.starting.length, dir: c.dir };
  } catch {
    return { number: cfg.factory.vm_cache_number, ready: 0, starting: 0, dir: '' };
  }
}

/** The template's state for check/env; never throws. */
export async function factoryEnv(cfg: Config): Promise<FactoryEnv> {
  const base = { enabled: cfg.factory.enable_template, path: cfg.factory.template_path, vmCache: vmCacheEnv(cfg) };
  try {
    const st = (await factoryFor(cfg)).status();
    return { ...base, state: st.state, key: st.manifest?.key ?? null, reasons: st.reasons };
  } catch (err) {
    return { ...base, state: 'unavailable', key: null, reasons: [errorMessage(err)] };
  }
}

/** One line: "valid template 1234… at /run/kata-ts/template" or what is wrong. */
export function factoryLine(f: FactoryEnv): string {
  const what = f.state === 'valid' ? `valid template ${f.key} at ${f.path}` : `template ${f.state} at ${f.path}${f.reasons.length ? ` (${f.reasons[0]})` : ''}`;
  const cache = f.vmCache.number > 0 ? `; VM cache ${f.vmCache.ready}/${f.vmCache.number} ready${f.vmCache.starting ? `, ${f.vmCache.starting} starting` : ''}` : '';
  return `${f.enabled ? 'enabled' : 'disabled'}; ${what}${cache}`;
}
