/**
 * The VM factory (Kata's `[factory]`, QEMU): make, inspect, destroy and
 * clone the one VM template at `[factory] template_path`.
 *
 * init: boot a template VM (qemu-template.ts: QEMU's own devices only, RAM
 * in `<path>/memory`), wait for the agent's ready line, pause, save the
 * device state with x-ignore-shared, quit, write the manifest. A tmpfs is
 * mounted at the path first (as Kata does), so the template's RAM is memory,
 * not a disk file written back. Anything that fails leaves nothing behind.
 *
 * clone (prepareClone): the template must be valid for the configuration
 * the sandbox runs with (template-key.ts); its RAM is copied into a memfd
 * (memory.ts) and QemuHypervisor.startClone does the rest.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { errorMessage } from '../common/errors';
import { logger } from '../common/log';
import { QmpClient } from '../hypervisor/qmp';
import { baseKernelParams } from '../hypervisor/hypervisor';
import { ownedBy, type QemuClone, type QemuHypervisor } from '../hypervisor/qemu';
import { waitForMarker } from '../protocols/agent-dialer';
import { guestAssets, vmSizing, type Config } from '../runtime/config';
import { dataExtents, startCloneMemory, type CloneMemory } from './memory';
import { restoreTemplate, saveTemplate, templateArgs, TemplateError, type TemplateMachine } from './qemu-template';
import { fileIdentity, sha256File, TEMPLATE_FORMAT, templateKey, type TemplateInputs } from './template-key';
import { MemoryPlanError, qemuMemoryPlan, type QemuMemoryOptions } from '../hypervisor/memory-plan';
import { MEMORY, prepareTemplateDir, removeTemplateFiles, STATE, TEMPLATE_FILES, templateStatus, writeManifest, type TemplateStatus } from './template-store';

/** What a template is made for: the QEMU settings and the sandbox's kernel parameters. */
export interface FactoryTarget {
  config: Config;
  /** QEMU binary, machine, its extra properties, the accelerator in use. */
  qemu: { binary: string; machine: string; machineAccelerators: string; accel: 'kvm' | 'tcg'; rootBlockDriver: string;
    /** The memory devices and hotplug room (DAX image, balloon, virtio-mem, TCG cache): the template carries them as a cold boot has them. */
    memory?: QemuMemoryOptions;
    /** Settings in use that a template does not reproduce (their config key names). */
    unsupported?: string[] };
  /** The sandbox part of the kernel command line (sandboxKernelParams). */
  kernelParams: string;
  vcpus?: number;
  memoryMiB?: number;
}

/** FactoryTarget['qemu'] of a QEMU hypervisor as the runtime built it. */
export function qemuTarget(hv: QemuHypervisor): FactoryTarget['qemu'] {
  const s = hv.settings;
  return { binary: s.binary, machine: s.machine, machineAccelerators: s.machineAccelerators ?? '', accel: s.accel, rootBlockDriver: hv.rootBlockDriver, memory: { ...(s.memory ?? {}) }, unsupported: [] };
}

/** Why a configuration cannot use templates at all (undefined: it can). */
export function templateUnsupported(t: FactoryTarget): string | undefined {
  if (t.qemu.unsupported?.length) return `VM templates do not reproduce ${t.qemu.unsupported.join(', ')} ([hypervisor.qemu])`;
  if (t.qemu.machine !== 'pc') return `VM templates need machine_type = "pc" (hotplug of the agent channel after restore), not "${t.qemu.machine}"`;
  // With the DAX image the root is the NVDIMM and there is no root disk at all.
  if (t.qemu.rootBlockDriver !== 'virtio-blk' && !t.qemu.memory?.imageNvdimm) return 'VM templates need root_block_driver = "virtio-blk": QEMU cannot migrate a vhost-user-blk root disk';
  return undefined;
}

/**
 * Kernel parameters only templates and their clones boot with. `acpi=noirq`:
 * no ACPI interrupt routing, so enabling a PCI device no longer evaluates
 * the DSDT's `_PRT`. QEMU's `pc` machine builds that 128-entry package in
 * an AML loop, and under TCG with this kernel's SLOB allocator one
 * evaluation took ~0.4 s of the guest's only vCPU, paid once per
 * hotplugged device before the agent could answer (guest RIP samples: SLOB
 * and the ACPI interpreter; README "VM templates"). Our devices are all
 * virtio with MSI-X, which needs no INTx route; a device without MSI gets
 * no legacy interrupt in a clone (the kernel says "can't find IRQ for PCI
 * INT A").
 *
 * `agent.warmup=1` (src/agent/warmup.ts TEMPLATE_WARMUP_PARAM; a literal
 * here: the runtime does not load agent code): the template's agent serves a
 * round of RPCs to itself before its ready line (src/agent/warmup.ts), so
 * every clone inherits the RPC path's code already compiled.
 */
export const TEMPLATE_KERNEL_PARAMS = 'acpi=noirq agent.warmup=1';

export class VmFactory {
  private readonly log = logger('factory');
  readonly dir: string;

  constructor(private readonly t: FactoryTarget) {
    this.dir = t.config.factory.template_path;
  }

  /** The machine the template (and every clone) runs. */
  machine(): TemplateMachine {
    const cfg = this.t.config;
    const assets = guestAssets(cfg, 'qemu');
    const size = vmSizing(cfg, 'qemu');
    const debug = cfg['agent.kata'].enable_debug || cfg.runtime.enable_debug;
    const vcpus = this.t.vcpus ?? size.vcpus;
    const memoryMiB = this.t.memoryMiB ?? size.memoryMiB;
    const memory = this.t.qemu.memory ?? {};
    // As a cold boot (qemu-command-line.ts): the NVDIMM's root parameters, and the plan's own (memhp_default_state).
    const plan = this.plan({ kernel: assets.kernel, image: assets.image, vcpus, memoryMiB, memory });
    const base = plan.rootParams ? baseKernelParams(debug).replace('root=/dev/vda', plan.rootParams) : baseKernelParams(debug);
    return {
      kernel: assets.kernel, image: assets.image,
      kernelCmdline: `${base} ${TEMPLATE_KERNEL_PARAMS} ${plan.kernelParams.join(' ')} ${this.t.kernelParams}`.replace(/ +/g, ' ').trim(),
      vcpus, memoryMiB,
      machine: this.t.qemu.machine, machineAccelerators: this.t.qemu.machineAccelerators, accel: this.t.qemu.accel,
      memory,
    };
  }

  /** The memory plan of the template's machine; a configuration QEMU would refuse is TemplateError('config'). */
  private plan(m: Pick<TemplateMachine, 'kernel' | 'image' | 'vcpus' | 'memoryMiB' | 'memory'>): ReturnType<typeof qemuMemoryPlan> {
    try {
      return qemuMemoryPlan({ memoryMiB: m.memoryMiB, vcpus: m.vcpus, image: m.image }, m.memory, false, this.t.qemu.accel);
    } catch (err) {
      if (err instanceof MemoryPlanError) throw new TemplateError('config', err.message, { cause: err });
      throw err;
    }
  }

  /** The key inputs of this configuration; throws TemplateError('config') when a file is missing. */
  inputs(m = this.machine()): TemplateInputs {
    const id = (what: string, f: string) => {
      try {
        return fileIdentity(f);
      } catch (err) {
        throw new TemplateError('config', `${what} ${f}: ${errorMessage(err)}`, { cause: err });
      }
    };
    const plan = this.plan(m);
    return {
      format: TEMPLATE_FORMAT, kernel: id('guest kernel', m.kernel), image: id('guest image', m.image), qemu: id('QEMU', this.t.qemu.binary),
      kernelCmdline: m.kernelCmdline, vcpus: m.vcpus, memoryMiB: m.memoryMiB, machine: m.machine,
      machineAccelerators: m.machineAccelerators, accel: m.accel,
      memory: {
        m: plan.m, smp: plan.smp, daxImage: plan.daxImage ? id('DAX guest image', plan.daxImage) : null,
        balloon: !!m.memory.balloon, virtioMemMiB: plan.virtioMem?.sizeMiB ?? 0,
      },
    };
  }

  status(): TemplateStatus {
    let wanted: TemplateInputs;
    try {
      wanted = this.inputs();
    } catch (err) {
      return { schemaVersion: 1, path: this.dir, state: 'stale', reasons: [errorMessage(err)], wantedKey: '' };
    }
    const st = templateStatus(this.dir, wanted);
    const why = templateUnsupported(this.t);
    if (why && st.state === 'valid') return { ...st, state: 'stale', reasons: [why] };
    return st;
  }

  /**
   * Builds the template (replacing whatever is at the path). `progress`
   * gets one line per step. Throws TemplateError; leaves nothing behind.
   */
  async init(progress: (line: string) => void = () => undefined): Promise<TemplateStatus> {
    const why = templateUnsupported(this.t);
    if (why) throw new TemplateError('config', why);
    const m = this.machine();
    const inputs = this.inputs(m);
    const mounted = prepareTemplateDir(this.dir, TEMPLATE_FILES, m.memoryMiB, progress, (msg) => new TemplateError('config', msg));
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-tpl-'));
    const consoleLog = path.join(work, 'console.log');
    const qmp = new QmpClient();
    let child: ReturnType<typeof spawn> | undefined;
    let exited: Promise<string> = new Promise(() => undefined);
    try {
      const args = [...templateArgs(m, path.join(this.dir, MEMORY), consoleLog), '-qmp', `unix:${path.join(work, 'qmp.sock')},server=on,wait=off`];
      const devs = [inputs.memory.daxImage ? 'DAX image nvdimm' : '', inputs.memory.balloon ? 'balloon' : '', inputs.memory.virtioMemMiB ? `virtio-mem ${inputs.memory.virtioMemMiB} MiB` : ''].filter(Boolean);
      progress(`booting the template VM (${m.vcpus} vCPU, ${m.memoryMiB} MiB, ${m.accel}${devs.length ? `; ${devs.join(', ')}` : ''})`);
      const t0 = Date.now();
      const c = spawn(...ownedBy(this.t.qemu.binary, args, this.log), { stdio: ['ignore', 'ignore', 'pipe'] });
      child = c;
      let stderr = '';
      c.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4096); });
      exited = new Promise<string>((resolve) => {
        c.on('exit', (code, sig) => resolve(`QEMU exited (${sig ?? `status ${code}`})${stderr.trim() ? `: ${stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`));
        c.on('error', (err) => resolve(`QEMU failed to start: ${err.message}`));
      });
      const up = await Promise.race([qmp.connect(path.join(work, 'qmp.sock'), 15000).then(() => undefined), exited]);
      if (up !== undefined) throw new TemplateError('boot', up);
      try {
        await waitForMarker(consoleLog, this.t.config['agent.kata'].dial_timeout * 1000, exited);
      } catch (err) {
        const tail = fs.existsSync(consoleLog) ? fs.readFileSync(consoleLog, 'utf8').split('\n').filter(Boolean).slice(-8).join('\n') : '';
        throw new TemplateError('boot', `template VM: ${errorMessage(err)}${tail ? `; last console lines:\n${tail}` : ''}`, { cause: err });
      }
      const bootS = (Date.now() - t0) / 1000;
      // The agent's warm-up (agent.warmup=1) says on the console what it ran, before its ready line.
      const warm = /kata-agent: template warm-up: ([^\n]*)/.exec(fs.readFileSync(consoleLog, 'utf8'))?.[1];
      progress(`agent ready after ${bootS.toFixed(1)} s (${warm ? `warm-up: ${warm}` : 'no warm-up line on the console'}); pausing and saving the device state`);
      const t1 = Date.now();
      await saveTemplate(qmp, path.join(this.dir, STATE), exited);
      const saveS = (Date.now() - t1) / 1000;
      await qmp.execute('quit').catch(() => undefined);
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000).unref())]);
      progress(`saved in ${saveS.toFixed(2)} s; hashing kernel and image for the manifest`);
      const memBytes = fs.statSync(path.join(this.dir, MEMORY)).size;
      const fd = fs.openSync(path.join(this.dir, MEMORY), 'r');
      let dataBytes = 0;
      try { for (const [a, b] of dataExtents(fd, memBytes)) dataBytes += b - a; } finally { fs.closeSync(fd); }
      const version = spawnSync(this.t.qemu.binary, ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0]?.trim() ?? '';
      writeManifest(this.dir, {
        schemaVersion: 1, key: templateKey(inputs), inputs, createdAt: new Date().toISOString(), qemuVersion: version,
        kernelSha256: await sha256File(m.kernel), imageSha256: await sha256File(m.image),
        stateBytes: fs.statSync(path.join(this.dir, STATE)).size, memoryBytes: memBytes, memoryDataBytes: dataBytes,
        mountedTmpfs: mounted, bootS, saveS,
      });
    } catch (err) {
      if (child && child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
      this.removeFiles();
      if (mounted) spawnSync('umount', [this.dir]);
      throw err instanceof TemplateError ? err : new TemplateError('save', `cannot make the VM template: ${errorMessage(err)}`, { cause: err });
    } finally {
      qmp.close();
      fs.rmSync(work, { recursive: true, force: true });
    }
    const st = this.status();
    progress(`template ${st.manifest?.key ?? '?'} ready at ${this.dir}`);
    return st;
  }

  private removeFiles(): void {
    for (const f of TEMPLATE_FILES) fs.rmSync(path.join(this.dir, f), { force: true });
  }

  /** Removes the template (files, the tmpfs init mounted, the directory if empty). Returns what it removed. */
  destroy(): string[] {
    return removeTemplateFiles(this.dir, TEMPLATE_FILES, (msg) => new TemplateError('config', msg));
  }

  /**
   * A clone of the template for a sandbox VM in `vmDir`, or why not (the
   * template's state). The RAM copy has started (memory.ts) and runs while
   * QEMU starts. The caller gives `clone` to QemuHypervisor.startClone and
   * must call `release()` after it returned or threw.
   */
  prepareClone(vmDir: string): { clone: QemuClone; memory: CloneMemory; release(): void } | { reason: string } {
    const st = this.status();
    if (st.state !== 'valid' || !st.manifest) return { reason: `VM template ${st.state}: ${st.reasons.join('; ')}` };
    let memory: CloneMemory;
    try {
      memory = startCloneMemory(path.join(this.dir, MEMORY), st.manifest.memoryBytes);
    } catch (err) {
      return { reason: `cannot copy the VM template's memory: ${errorMessage(err)}` };
    }
    const statePath = path.join(this.dir, STATE);
    const args = templateArgs(this.machine(), memory.path, path.join(vmDir, 'console.log'), { incoming: true });
    let released = false;
    return {
      memory,
      clone: {
        args,
        // A CID per clone (§5.10.4: 3 and up); the hybrid socket is per sandbox anyway.
        guestCid: crypto.randomInt(3, 0x7fffffff),
        // The RAM copy overlaps QEMU's start; the state loads once it is complete.
        restore: async (qmp) => {
          await memory.done;
          await restoreTemplate(qmp, statePath);
        },
      },
      release: () => {
        // After the copy settles: its writes target this fd.
        if (!released) void memory.done.catch(() => undefined).then(() => fs.closeSync(memory.fd));
        released = true;
      },
    };
  }
}
