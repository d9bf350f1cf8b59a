/**
 * The VM template for the builtin VMM (`[factory]` with `hypervisor =
 * "builtin"`): Firecracker's snapshot model instead of QEMU's migration.
 *
 * init: boot the template VM with BuiltinHypervisor (root image + vsock,
 * the balloon when configured), wait for the agent's ready line on the
 * console (waitForMarker, as the QEMU template), pause, `snapshot()` into
 * `template_path` (state.bin: vCPU/VM/device state; memory.bin: sparse
 * guest RAM), stop, write manifest.json last. The path gets the same tmpfs
 * as a QEMU template, so memory.bin is page cache, not disk.
 *
 * clone: `BuiltinHypervisor.restore(template_path, vm)`: guest RAM is
 * memory.bin mapped MAP_PRIVATE (copy-on-write; clones share the
 * template's pages until they write), the vCPUs resume at the snapshot.
 * The vsock CID stays 3: each builtin VM has its own vsock device and its
 * own hybrid unix socket (no host-wide vhost-vsock namespace where two
 * clones' CIDs could meet), and the template's agent had no host
 * connection open, so there is nothing to reset (Firecracker sends
 * VIRTIO_VSOCK_EVENT_TRANSPORT_RESET because its connections from before
 * the snapshot are dead; ours were never made). Reseed and clock are the
 * runtime's makeCloneUnique, as for QEMU clones.
 *
 * The manifest has the QEMU template's shape (TemplateManifest), so
 * `kata-ctl factory status` and the key comparison are shared: `machine`
 * names the builtin VMM with its state version (VMM_STATE_VERSION), `qemu`
 * is a placeholder identity, `memory` holds the plain sizes and the
 * balloon.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { errorMessage } from '../common/errors';
import type { Logger } from '../common/log';
import { baseKernelParams, type VmConfig, type VmInfo } from '../hypervisor/hypervisor';
import { BuiltinHypervisor } from '../hypervisor/builtin';
import { waitForMarker } from '../protocols/agent-dialer';
import { MAGIC, MEMORY_FILE, STATE_FILE, VMM_STATE_VERSION } from '../vmm/snapshot/format';
import { guestAssets, vmSizing, type Config } from '../runtime/config';
import { TemplateError } from './qemu-template';
import { fileIdentity, sha256File, TEMPLATE_FORMAT, templateKey, type TemplateInputs } from './template-key';
import { MANIFEST, prepareTemplateDir, removeTemplateFiles, templateStatus, writeManifest, type TemplateLayout, type TemplateManifest, type TemplateStatus } from './template-store';

/** Only the kernel parameter the agent reads (src/agent/warmup.ts); acpi=noirq is QEMU pc's business. */
export const BUILTIN_TEMPLATE_KERNEL_PARAMS = 'agent.warmup=1';

/** Files a builtin template directory may hold. */
export const BUILTIN_TEMPLATE_FILES = [MANIFEST, `.${MANIFEST}.tmp`, STATE_FILE, MEMORY_FILE, `${STATE_FILE}.tmp`, `${MEMORY_FILE}.tmp`];

/** What the builtin template is made for (as the sandbox's VmConfig has it). */
export interface BuiltinTarget {
  config: Config;
  /** The sandbox part of the kernel command line (sandboxKernelParams). */
  kernelParams: string;
  vcpus?: number;
  memoryMiB?: number;
  /** The guest kernel and image; default the configuration's (guestAssets). */
  kernel?: string;
  image?: string;
  /** The builtin hypervisor's virtio-balloon ([hypervisor.builtin] reclaim_guest_freed_memory). */
  balloon?: boolean;
}

interface BuiltinMachine { kernel: string; image: string; kernelParams: string; cmdline: string; vcpus: number; memoryMiB: number; debug: boolean; balloon: boolean }

export class BuiltinFactory {
  readonly dir: string;

  constructor(private readonly t: BuiltinTarget) {
    this.dir = t.config.factory.template_path;
  }

  machine(): BuiltinMachine {
    const cfg = this.t.config;
    const assets = guestAssets(cfg, 'builtin');
    const size = vmSizing(cfg, 'builtin');
    const debug = cfg['agent.kata'].enable_debug || cfg.runtime.enable_debug;
    const kernelParams = `${BUILTIN_TEMPLATE_KERNEL_PARAMS} ${this.t.kernelParams}`.replace(/ +/g, ' ').trim();
    return {
      kernel: this.t.kernel ?? assets.kernel, image: this.t.image ?? assets.image, kernelParams,
      // As BuiltinHypervisor.start builds it: the guest parses this very line.
      cmdline: [baseKernelParams(debug), kernelParams].filter(Boolean).join(' '),
      vcpus: this.t.vcpus ?? size.vcpus, memoryMiB: this.t.memoryMiB ?? size.memoryMiB, debug, balloon: !!this.t.balloon,
    };
  }

  /** The key inputs; throws TemplateError('config') when the kernel or image is missing. */
  inputs(m = this.machine()): TemplateInputs {
    const id = (what: string, f: string) => {
      try {
        return fileIdentity(f);
      } catch (err) {
        throw new TemplateError('config', `${what} ${f}: ${errorMessage(err)}`, { cause: err });
      }
    };
    return {
      format: TEMPLATE_FORMAT, kernel: id('guest kernel', m.kernel), image: id('guest image', m.image),
      // No QEMU: the VMM is this process; its device-state version is in `machine`.
      qemu: { path: 'builtin-vmm', ino: 0, size: 0, mtimeMs: 0 },
      kernelCmdline: m.cmdline, vcpus: m.vcpus, memoryMiB: m.memoryMiB,
      machine: `builtin (${VMM_STATE_VERSION})`, machineAccelerators: '', accel: 'kvm',
      memory: { m: `${m.memoryMiB}M`, smp: String(m.vcpus), daxImage: null, balloon: m.balloon, virtioMemMiB: 0 },
    };
  }

  status(): TemplateStatus {
    let wanted: TemplateInputs;
    try {
      wanted = this.inputs();
    } catch (err) {
      return { schemaVersion: 1, path: this.dir, state: 'stale', reasons: [errorMessage(err)], wantedKey: '' };
    }
    return builtinTemplateStatus(this.dir, wanted);
  }

  /** Builds the template (replacing whatever is at the path). Throws TemplateError; leaves nothing behind. */
  async init(progress: (line: string) => void = () => undefined): Promise<TemplateStatus> {
    const m = this.machine();
    const inputs = this.inputs(m);
    const mounted = prepareTemplateDir(this.dir, BUILTIN_TEMPLATE_FILES, m.memoryMiB, progress, (msg) => new TemplateError('config', msg));
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-btpl-'));
    const hv = new BuiltinHypervisor({ balloon: m.balloon });
    try {
      progress(`booting the template VM with the builtin VMM (${m.vcpus} vCPU, ${m.memoryMiB} MiB${m.balloon ? '; balloon' : ''})`);
      const t0 = Date.now();
      const info = await hv.start({ id: 'template', dir: work, kernel: m.kernel, image: m.image, vcpus: m.vcpus, memoryMiB: m.memoryMiB, kernelParams: m.kernelParams, disks: [], debug: m.debug });
      try {
        await waitForMarker(info.consoleLog, this.t.config['agent.kata'].dial_timeout * 1000, hv.exited());
      } catch (err) {
        throw new TemplateError('boot', `template VM: ${errorMessage(err)}; last console lines:\n${hv.consoleTail(8)}`, { cause: err });
      }
      const bootS = (Date.now() - t0) / 1000;
      progress(`agent ready after ${bootS.toFixed(1)} s; pausing and snapshotting`);
      await hv.pause();
      const snap = await hv.snapshot(this.dir);
      await hv.stop();
      const saveS = snap.pausedMs / 1000;
      progress(`saved in ${saveS.toFixed(2)} s; hashing kernel and image for the manifest`);
      const manifest: TemplateManifest = {
        schemaVersion: 1, key: templateKey(inputs), inputs, createdAt: new Date().toISOString(), qemuVersion: `builtin VMM, state ${VMM_STATE_VERSION}`,
        kernelSha256: await sha256File(m.kernel), imageSha256: await sha256File(m.image),
        stateBytes: fs.statSync(path.join(this.dir, STATE_FILE)).size, memoryBytes: fs.statSync(path.join(this.dir, MEMORY_FILE)).size,
        memoryDataBytes: snap.memoryDataBytes, mountedTmpfs: mounted, bootS, saveS,
      };
      writeManifest(this.dir, manifest);
    } catch (err) {
      await hv.stop().catch(() => undefined);
      this.removeFiles();
      if (mounted) spawnSync('umount', [this.dir]);
      try { fs.rmdirSync(this.dir); } catch { /* not empty or gone */ }
      throw err instanceof TemplateError ? err : new TemplateError('save', `cannot make the VM template: ${errorMessage(err)}`, { cause: err });
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
    const st = this.status();
    progress(`template ${st.manifest?.key ?? '?'} ready at ${this.dir}`);
    return st;
  }

  private removeFiles(): void {
    for (const f of BUILTIN_TEMPLATE_FILES) fs.rmSync(path.join(this.dir, f), { force: true });
  }

  /** Removes the template (files, the tmpfs init mounted, the directory if empty). Returns what it removed. */
  destroy(): string[] {
    return removeTemplateFiles(this.dir, BUILTIN_TEMPLATE_FILES, (msg) => new TemplateError('config', msg));
  }
}

/** The builtin VMM's template: its snapshot state and memory files. */
const BUILTIN_TEMPLATE_LAYOUT: TemplateLayout = { state: STATE_FILE, memory: MEMORY_FILE, magic: MAGIC, magicName: "the builtin VMM's snapshot header" };

/** The builtin template at `dir` against the inputs the configuration has now (cheap: stats and an 8-byte read). */
export function builtinTemplateStatus(dir: string, wanted: TemplateInputs): TemplateStatus {
  return templateStatus(dir, wanted, BUILTIN_TEMPLATE_LAYOUT);
}

/**
 * The builtin VMM's clone: restore the template's snapshot (RAM mapped
 * MAP_PRIVATE from the template's memory.bin; builtin-template.ts). A
 * restore that fails (devices other than the template's, e.g. boot disks
 * or a NIC) has closed everything it opened: one warning, cold boot.
 */
export async function startBuiltinClone(hv: BuiltinHypervisor, cfg: Config, vm: VmConfig, kernelParams: string, log: Logger): Promise<{ info: VmInfo; cloneMs: number; copyMs: number } | undefined> {
  const factory = new BuiltinFactory({ config: cfg, kernelParams, vcpus: vm.vcpus, memoryMiB: vm.memoryMiB, kernel: vm.kernel, image: vm.image, balloon: hv.options.balloon === true });
  const t0 = Date.now();
  const st = factory.status();
  if (st.state !== 'valid') {
    log.warn(`VM template ${st.state}: ${st.reasons.join('; ')}; cold boot`);
    return undefined;
  }
  try {
    const info = await hv.restore(factory.dir, vm);
    return { info, cloneMs: Date.now() - t0, copyMs: 0 }; // no copy: the RAM is mapped copy-on-write
  } catch (err) {
    log.warn(`VM template clone failed (${errorMessage(err)}); cold boot`);
    return undefined;
  }
}
