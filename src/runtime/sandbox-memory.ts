/**
 * Glue between a sandbox's configuration and its SandboxMemory
 * (service.ts): which features the [memory] and [hypervisor.qemu] keys turn
 * on, and what the hypervisor can give (guest RAM mapping, QMP). Kept here
 * so src/runtime/sandbox.ts only calls one function.
 */
import type { Hypervisor } from '../hypervisor/hypervisor';
import type { QemuHypervisor } from '../hypervisor/qemu';
import type { BuiltinHypervisor } from '../hypervisor/builtin';
import { deviceBalloon } from '../resource/memory/balloon-control';
import type { Config } from './config';
import type { AgentClient } from './agent-client';
import { SandboxMemory } from '../resource/memory/service';
import { KsmThrottler } from '../resource/memory/throttler';

export async function startSandboxMemory(hv: Hypervisor, cfg: Config, id: string, dir: string, memoryMiB: number, agent?: AgentClient, vcpus = cfg['hypervisor.qemu'].default_vcpus): Promise<SandboxMemory | undefined> {
  const mem = cfg.memory;
  const q = cfg['hypervisor.qemu'];
  const companions: Array<{ stop(): void }> = [];
  if (mem.ksm_throttler) {
    // A sandbox starting is what the throttler speeds up for (throttler.ts).
    const t = new KsmThrottler(cfg.runtime.run_dir);
    if (t.start({ kick: true })) companions.push(t);
  }
  if (hv.name === 'builtin') return startBuiltinMemory(hv as BuiltinHypervisor, cfg, id, dir, memoryMiB, companions);
  const qemu = hv as QemuHypervisor;
  return SandboxMemory.start({
    id, dir, memoryMiB,
    source: qemu.guestMemory(),
    qmp: (cmd, args) => qemu.memoryQmp(cmd, args),
    balloon: cfg['hypervisor.qemu'].reclaim_guest_freed_memory,
    scanner: { enabled: mem.page_scanner, rateMiB: mem.scan_rate_mib, intervalSec: mem.scan_interval },
    companions,
    onlineCpus: agent ? (n) => agent.onlineCpuMem(n, { wait: true, cpuOnly: true }) : undefined,
    memoryHotplug: true, // containers' memory limits grow the VM (service.ts memoryHotplug)
    // The boot-time virtio-mem device when memory_hotplug = "virtio-mem" (grows and shrinks); else DIMMs.
    memoryResize: { virtioMem: qemu.virtioMemDevice() },
    keepCpus: qemu.settings.accel === 'tcg', // QEMU 7.2 under TCG crashed at a memory hotplug after a vCPU unplug (resize.ts)
    resize: q.default_maxmemory > memoryMiB || q.default_maxvcpus > vcpus
      ? { baseVcpus: vcpus, maxVcpus: Math.max(vcpus, q.default_maxvcpus), baseMiB: memoryMiB, maxMiB: Math.max(memoryMiB, q.default_maxmemory) }
      : undefined,
  });
}

/**
 * The builtin VMM owns its guest RAM in this process (the hot-path
 * WebAssembly.Memory): the page scanner reads it in place, and the balloon
 * is our own device (src/virtio/balloon). No QMP, so no resizing (virtio-mmio
 * has no hotplug).
 */
function startBuiltinMemory(b: BuiltinHypervisor, cfg: Config, id: string, dir: string, memoryMiB: number, companions: Array<{ stop(): void }>): Promise<SandboxMemory | undefined> {
  const m = b.vmm;
  if (!m) return Promise.resolve(undefined);
  const mem = cfg.memory;
  return SandboxMemory.start({
    id, dir, memoryMiB,
    source: { hot: m.hot, regions: () => m.hot.guestRegions },
    balloon: b.balloon !== undefined,
    balloonControl: b.balloon ? deviceBalloon(b.balloon, m.memoryBytes) : undefined,
    scanner: { enabled: mem.page_scanner, rateMiB: mem.scan_rate_mib, intervalSec: mem.scan_interval },
    companions,
  });
}
