/**
 * Picks and constructs the Hypervisor for a sandbox from the configuration
 * and the measured host capabilities (decision 3).
 */
import * as path from 'node:path';
import type { HypervisorSettings, QemuSettings } from './settings';
import { KataError } from '../common/errors';
import { chooseHypervisor, probeKvm, type HypervisorChoice, type KvmProbe } from './capabilities';
import type { Hypervisor } from './hypervisor';
import { QemuHypervisor, type BlockDriver } from './qemu';
import type { VfioPortType } from './pci-slots';
import type { MemoryHotplugMode, QemuMemoryOptions } from './memory-plan';

export class HypervisorSelectError extends KataError<'unavailable'> {}

/** Whether the builtin VMM exists in this build (src/vmm). */
export const BUILTIN_AVAILABLE = true;

/** Environment override equal to `[hypervisor.builtin] allow_emulated_kvm = true`. */
export const ALLOW_EMULATED_ENV = 'KATA_TS_ALLOW_EMULATED_KVM';

/**
 * Why the builtin VMM must not run here, or undefined. Where KVM only
 * emulates standard guests (PVM hosts), a Linux boot crawls for minutes and
 * then dies on an instruction the emulator lacks: refuse at once with the
 * probe's evidence, unless the experiment is asked for explicitly.
 */
export function builtinRefusal(probe: KvmProbe, allowEmulated: boolean): string | undefined {
  if (!probe.devKvm) return `the builtin hypervisor needs /dev/kvm: ${probe.reason}`;
  if (probe.hardware || allowEmulated) return undefined;
  const evidence = [
    probe.loopMs >= 0 ? `a 2M-instruction loop took ${probe.loopMs} ms (~${(probe.instructionsPerSecond / 1e6).toFixed(1)} M instr/s; hardware needs ~1 ms)` : undefined,
    probe.pvm ? 'kvm_pvm is loaded' : undefined,
    `CPU flags: ${probe.cpuFlags.length ? probe.cpuFlags.join(',') : 'no vmx/svm'}`,
  ].filter(Boolean).join('; ');
  return `refusing --hypervisor builtin: KVM on this host runs standard guests only through its instruction emulator (${evidence}). ` +
    `A Linux guest would take minutes and may die on an instruction the emulator lacks. Use --hypervisor qemu (TCG), or set ` +
    `[hypervisor.builtin] allow_emulated_kvm = true (or ${ALLOW_EMULATED_ENV}=1) to run it anyway for experiments.`;
}

export async function selectHypervisor(cfg: HypervisorSettings, requested?: 'auto' | 'qemu' | 'builtin'): Promise<{ hv: Hypervisor; choice: HypervisorChoice; probe: KvmProbe }> {
  const probe = await probeKvm(cfg['hypervisor.qemu'].path, path.join(cfg.runtime.run_dir));
  const req = requested ?? (cfg.runtime.hypervisor as 'auto' | 'qemu' | 'builtin');
  const choice = chooseHypervisor(req, cfg['hypervisor.qemu'].accel as 'auto' | 'kvm' | 'tcg', probe, BUILTIN_AVAILABLE);
  if (choice.hypervisor === 'builtin') {
    const allow = cfg['hypervisor.builtin'].allow_emulated_kvm || process.env[ALLOW_EMULATED_ENV] === '1';
    const why = builtinRefusal(probe, allow);
    if (why) throw new HypervisorSelectError('unavailable', why);
    // Loaded only when chosen: the builtin VMM's modules are not on QEMU's start-up path.
    const { BuiltinHypervisor } = await import('./builtin');
    const b = cfg['hypervisor.builtin'];
    return { hv: new BuiltinHypervisor({ netTap: b.net_tap || undefined, balloon: b.reclaim_guest_freed_memory === true, ksm: cfg.memory?.ksm_throttler === true }), choice, probe };
  }
  const q = cfg['hypervisor.qemu'];
  const hv = new QemuHypervisor({
    binary: q.path, machine: q.machine_type as 'pc' | 'q35' | 'microvm', accel: choice.accel,
    blockDriver: q.block_device_driver as BlockDriver, rootBlockDriver: q.root_block_driver as BlockDriver,
    machineAccelerators: q.machine_accelerators || undefined,
    pcieRootPorts: q.pcie_root_port ?? 0, hotPlugVfio: (q.hot_plug_vfio ?? 'no-port') as VfioPortType, coldPlugVfio: (q.cold_plug_vfio ?? 'no-port') as VfioPortType,
    memory: qemuMemoryOptions(q),
  });
  return { hv, choice, probe };
}

/** The memory part of the QEMU hypervisor's options from [hypervisor.qemu] (also for tests and tools that build one by hand). */
export function qemuMemoryOptions(q: QemuSettings): QemuMemoryOptions {
  return {
    imageNvdimm: !q.disable_image_nvdimm, balloon: q.reclaim_guest_freed_memory,
    maxMemoryMiB: q.default_maxmemory > q.default_memory ? q.default_maxmemory : undefined,
    memorySlots: q.default_maxmemory > q.default_memory ? q.memory_slots : undefined,
    memoryHotplug: (q.memory_hotplug ?? 'virtio-mem') as MemoryHotplugMode,
    maxVcpus: q.default_maxvcpus > q.default_vcpus ? q.default_maxvcpus : undefined,
    tcgTranslationCacheMiB: q.tcg_translation_cache || undefined,
  };
}
