/**
 * A cached VM itself: a clone of the VM template started the way
 * Sandbox.start would start it (same hypervisor settings, kernel parameters,
 * sizing), resumed, its agent dialled and answering Check — everything of a
 * sandbox's start that does not depend on the pod. What depends on the pod
 * comes at claim time through Sandbox.start's `prestarted` hook: the boot
 * devices (hotplugged by attach(), as a clone's startClone would), the
 * RNG reseed and clock (makeCloneUnique: time has passed since), the
 * hostname (CreateSandbox).
 *
 * The pod's sandbox share (one virtio-fs device per pod, volumes.ts) is
 * attached while the VM waits: the cache prepares its own share directory
 * (`<vmDir>/shared`, with its mounts/ peer) and hotplugs the device, the
 * guest probes it then; the claimed sandbox takes that SandboxVolumes
 * (PrestartedVm.share) and binds its containers' roots there, so no hotplug
 * is left at claim time. The agent mounts the share when a container's
 * storage asks for it, as for any sandbox. A NIC is pre-plugged the same way
 * (vm-cache-nic.ts; PrestartedVm.nic): a pod with one CNI interface takes it.
 *
 * Every cached VM is its own clone (own vsock CID, own memfd copy of the
 * template's RAM, vmgenid): no two pods share RNG state.
 *
 * While it waits, the memory services a sandbox runs (balloon with free page
 * reporting, the owner's malloc trim; sandbox-memory.ts) run for it too, so
 * an idle cached VM costs what an idle sandbox does; they stop at the claim
 * and the sandbox starts its own.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { errorMessage, KataError } from '../common/errors';
import type { Logger } from '../common/log';
import type { VmConfig } from '../hypervisor/hypervisor';
import { QemuHypervisor } from '../hypervisor/qemu';
import { dialAgent } from '../protocols/agent-dialer';
import { AgentClient } from '../runtime/agent-client';
import { warmCachedVmContainerPath } from './vm-cache-warm';
import { guestAssets, vmSizing, type Config } from '../runtime/config';
import { createSandboxHypervisor, type Hypervisor } from '../runtime/hypervisor-choice';
import { policyFromFile } from '../runtime/policy';
import { sandboxKernelParams, type PrestartedVm } from '../runtime/sandbox';
import { SandboxVolumes, removeTreeSafely, sandboxShareDevice } from '../runtime/volumes';
import { startSandboxMemory } from '../runtime/sandbox-memory';
import type { SandboxMemory } from '../resource/memory/service';
import type { HeldTap } from '../resource/network/pod-network';
import { startFromTemplate } from './sandbox-clone';
import { preplugNic } from './vm-cache-nic';
import { MANIFEST } from './template-store';

export class VmCacheError extends KataError<'config' | 'start'> {}

/** The template a clone came from: its key and creation time (a rebuilt template has another). */
export function templateIdentity(cfg: Config): { key: string; createdAt: string } | undefined {
  try {
    const m = JSON.parse(fs.readFileSync(path.join(cfg.factory.template_path, MANIFEST), 'utf8')) as { key?: unknown; createdAt?: unknown };
    return typeof m.key === 'string' && typeof m.createdAt === 'string' ? { key: m.key, createdAt: m.createdAt } : undefined;
  } catch {
    return undefined;
  }
}

export class CachedVm {
  private memory: SandboxMemory | undefined;

  private constructor(
    readonly hv: Hypervisor,
    readonly vmDir: string,
    readonly kernelParams: string,
    readonly template: { key: string; createdAt: string },
    private readonly pre: PrestartedVm,
  ) {}

  /**
   * Starts a clone in `vmDir` (created; removed again on failure). Throws
   * VmCacheError when the configuration cannot be cached or the clone fails
   * (a cached VM never cold-boots: that is no faster than the shim's own).
   */
  static async start(cfg: Config, vmDir: string, log: Logger): Promise<CachedVm> {
    if (!cfg.factory.enable_template) throw new VmCacheError('config', '[factory] vm_cache_number needs enable_template = true');
    const { hv } = await createSandboxHypervisor(cfg);
    if (!(hv instanceof QemuHypervisor)) throw new VmCacheError('config', `the VM cache holds clones of the QEMU template; the configured hypervisor is ${hv.name}`);
    const template = templateIdentity(cfg);
    if (!template) throw new VmCacheError('start', `no VM template at ${cfg.factory.template_path} (run kata-ctl factory init)`);
    const policyFile = cfg['agent.kata'].policy_file;
    const policy = policyFile ? policyFromFile(policyFile) : undefined;
    const kernelParams = sandboxKernelParams(cfg, policy);
    const size = vmSizing(cfg, 'qemu');
    const assets = guestAssets(cfg, 'qemu');
    fs.mkdirSync(vmDir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(path.join(vmDir, 'owner.pid'), String(process.pid));
    const vm: VmConfig = {
      id: path.basename(vmDir), dir: vmDir, kernel: assets.kernel, image: assets.image, vcpus: size.vcpus, memoryMiB: size.memoryMiB,
      kernelParams, disks: [], shares: [], debug: cfg['agent.kata'].enable_debug || cfg.runtime.enable_debug,
    };
    let started = false;
    let share: SandboxVolumes | undefined;
    let nic: HeldTap | undefined;
    try {
      // startFromTemplate says why in one warning when it cannot clone: here that is an error.
      let why = '';
      const capture = Object.assign(Object.create(log) as Logger, { warn: (m: string) => { why = m; return capture; } });
      const clone = await startFromTemplate(hv, cfg, vm, kernelParams, capture);
      if (!clone) throw new VmCacheError('start', why || 'the VM template cannot be cloned');
      started = true;
      const wire = dialAgent(clone.info.agentSocket);
      const agent = new AgentClient(wire);
      await agent.check(cfg['agent.kata'].dial_timeout * 1000);
      // The container start path once, left translated in this live QEMU for the claimed pod
      // (vm-cache-warm.ts); a pinned policy admits nothing but Check before CreateSandbox.
      if (cfg.factory.vm_cache_warm_container && !policy) await warmCachedVmContainerPath(agent, log);
      // The pod's sandbox share, now rather than on the claimed pod's path.
      if (!hv.addShare) throw new VmCacheError('start', 'the hypervisor cannot hotplug shares');
      share = new SandboxVolumes(path.join(vmDir, 'shared'));
      await share.prepare();
      await hv.addShare(sandboxShareDevice(share.sharedDir));
      // And a NIC, probed by the guest now (undefined, with a warning, if it cannot be);
      // not under a pinned policy, which admits no UpdateInterface before CreateSandbox.
      if (!policy) nic = await preplugNic(hv, agent, log);
      const pre: PrestartedVm = {
        info: clone.info, wire, agent, cloneMs: clone.cloneMs, copyMs: clone.copyMs, share, nic,
        attach: async (v) => {
          for (const sh of v.shares ?? []) {
            if (!hv.addShare) throw new VmCacheError('start', 'the hypervisor cannot hotplug shares');
            await hv.addShare(sh);
          }
          for (const d of v.disks) await hv.addDisk(d);
          for (const n of v.nets ?? []) {
            if (!hv.addNet) throw new VmCacheError('start', 'the hypervisor cannot hotplug network devices');
            await hv.addNet(n);
          }
        },
      };
      const c = new CachedVm(hv, vmDir, kernelParams, template, pre);
      // The idle sandbox's memory services, in the VM dir (mem.sock there), until the claim.
      c.memory = await startSandboxMemory(hv, cfg, vm.id, vmDir, size.memoryMiB, agent, size.vcpus).catch((err) => {
        log.warn('memory services of the cached VM did not start', { err: errorMessage(err) });
        return undefined;
      });
      return c;
    } catch (err) {
      if (started) await hv.stop().catch(() => undefined);
      nic?.close();
      await share?.close().catch((e) => log.warn('cannot unmount the cached VM\'s share', { err: errorMessage(e) }));
      // Never a recursive delete through a mount that is still there.
      removeTreeSafely(vmDir);
      throw err instanceof VmCacheError ? err : new VmCacheError('start', `cached VM: ${errorMessage(err)}`, { cause: err });
    }
  }

  get qemuPid(): number {
    return this.pre.info.pids[0] ?? 0;
  }

  /** Hands the VM over to a sandbox (its memory services stop: the sandbox starts its own). */
  async handOver(): Promise<PrestartedVm> {
    await this.memory?.close().catch(() => undefined);
    this.memory = undefined;
    return this.pre;
  }

  /** Stops the VM (never claimed, or not usable for the pod) and removes its directory. */
  async stop(): Promise<void> {
    await this.memory?.close().catch(() => undefined);
    this.memory = undefined;
    this.pre.agent.close();
    await this.hv.stop().catch(() => undefined);
    this.pre.nic?.close();
    await this.pre.share?.close().catch(() => undefined);
    removeTreeSafely(this.vmDir);
  }
}

/** A VM directory name for slot `slot`. */
export function vmDirName(slot: number): string {
  return `vm-${slot}-${crypto.randomBytes(4).toString('hex')}`;
}
