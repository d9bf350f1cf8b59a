/**
 * QEMU's side of VM templating: the command line a template and its clones
 * share, and the two migrations over QMP (docs/devel/migration.rst,
 * qapi/migration.json).
 *
 * The template VM holds ONLY devices QEMU can migrate — its own virtio-blk
 * for the guest image (slot 3), virtio-rng (slot 5), the serial console and
 * vmgenid — with guest RAM in a file mapped shared and bound through a NUMA
 * node. It also carries the configuration's memory devices, exactly as a
 * cold boot has them (src/hypervisor/memory-plan.ts, the same function
 * renders both): the guest image as a read-only DAX NVDIMM instead of the
 * virtio-blk disk, the virtio-balloon with free page reporting, one
 * virtio-mem device at requested-size 0, and the -m/-smp hotplug room. All
 * are QEMU's own, migratable devices. Their memory stays out of the state
 * file: the NVDIMM's backend is the image file (share=on, readonly), the
 * virtio-mem backend a memfd (share=on), and x-ignore-shared skips every
 * shared RAMBlock. A clone maps the same image file and gets a fresh,
 * empty virtio-mem memfd from its own QEMU; empty is right because nothing
 * was plugged in the template (its bitmap in the state says so). The NVDIMM
 * has no label area (no label-size), so there is no device memory to
 * carry; its NFIT and DSM buffer are ACPI RAM blocks, migrated as usual. Saving with the `x-ignore-shared` capability leaves that RAM out of
 * the stream (it is already in the file): the state file is a few hundred
 * KB of device and CPU state. A clone runs the same command line with its
 * own RAM (see memory.ts), `-S -incoming defer`, loads the state and
 * resumes. Our vhost-user devices (vsock, virtio-fs, blk) are never in the
 * template: QEMU 7.2 marks vhost-user-vsock and vhost-user-fs unmigratable,
 * and their backends live in the process that owns the sandbox; the clone
 * hotplugs them after resume (QemuHypervisor.startClone).
 *
 * The clone's agent answers once the guest has probed the hotplugged vsock
 * device: ~0.4 s after device_add on a quiet host under TCG, all of it in
 * the guest (a vhost-user message trace shows nothing asked of our backend
 * between the feature negotiation and DRIVER_OK). The clone's dmesg shows
 * `ACPI: \_SB_.LNKD: Enabled at IRQ 11` in that window (slot 4 is the
 * first device on link D). We tried a template that enables every link
 * itself (two more rng devices on slots 4 and 6, the clone's vsock on slot
 * 7): the line went away, but the time to the agent did not change in
 * interleaved runs (median ~0.55 s both, debug kernel; ~1.2 vs ~1.4 s at a
 * load of 8), so the layout stayed as it is. `pci=noacpi` stops ACPI
 * hotplug altogether. README "VM templates" has the figures.
 *
 * vmgenid: QEMU writes a fresh generation id into guest memory on every
 * incoming migration (guid=auto) and raises an ACPI notification; Linux ≥
 * 5.18 with CONFIG_VMGENID reseeds its RNG from it, so two clones' CRNGs
 * diverge before the agent's ReseedRandomDev even arrives.
 */
import * as fs from 'node:fs';
import { KataError } from '../common/errors';
import type { QmpClient } from '../hypervisor/qmp';
import { qemuMemoryPlan, type QemuMemoryOptions } from '../hypervisor/memory-plan';

export class TemplateError extends KataError<'config' | 'boot' | 'save' | 'restore' | 'missing' | 'stale' | 'corrupt'> {}

export interface TemplateMachine {
  kernel: string;
  image: string;
  kernelCmdline: string;
  vcpus: number;
  memoryMiB: number;
  machine: string;
  machineAccelerators: string;
  accel: 'kvm' | 'tcg';
  /** The memory devices and hotplug room, as the hypervisor's options have them (DAX, balloon, virtio-mem, TCG cache). */
  memory: QemuMemoryOptions;
}

/**
 * argv (without -qmp/-pidfile) of a template VM or a clone. `memPath` is
 * the file behind guest RAM, always mapped share=on: the template's so
 * the RAM lands in its file, a clone's so vhost-user backends can map it.
 * `privateMem` maps it share=off instead (copy-on-write of the template's
 * file): measured by bench/factory.ts, usable only without vhost-user devices.
 */
export function templateArgs(m: TemplateMachine, memPath: string, consoleLog: string, opts: { incoming?: boolean; privateMem?: boolean } = {}): string[] {
  // The same plan a cold boot of this configuration renders (qemu-command-line.ts): machine
  // properties (nvdimm=on), -m/-smp, the NVDIMM, virtio-mem and balloon, the TCG cache.
  const plan = qemuMemoryPlan({ memoryMiB: m.memoryMiB, vcpus: m.vcpus, image: m.image }, m.memory, false, m.accel);
  const args = [
    '-name', 'kata-ts-template,debug-threads=on',
    '-M', `${m.machine}${plan.accel ? '' : `,accel=${m.accel}`}${m.machineAccelerators ? `,${m.machineAccelerators}` : ''}${plan.machineProps.map((p) => `,${p}`).join('')}`,
    ...(plan.accel ? ['-accel', plan.accel] : []),
    '-cpu', m.accel === 'kvm' ? 'host' : 'max',
    '-smp', plan.smp,
    '-m', plan.m,
    '-object', `memory-backend-file,id=mem,size=${m.memoryMiB}M,mem-path=${memPath},share=${opts.privateMem ? 'off' : 'on'}`,
    '-numa', 'node,memdev=mem',
    '-nodefaults', '-nographic', '-no-user-config', '-no-reboot',
    // The kernel is loaded as option ROM/fw_cfg blobs whose sizes the
    // migration stream checks: a clone passes the same kernel and line.
    '-kernel', m.kernel,
    '-append', m.kernelCmdline,
    '-chardev', `file,id=console,path=${consoleLog}`,
    '-serial', 'chardev:console',
    // The root: the DAX NVDIMM when planned (in plan.args), else QEMU's virtio-blk on slot 3.
    ...(plan.daxImage ? [] : [
      '-drive', `if=none,id=rootimg,file=${m.image},format=raw,readonly=on,cache=unsafe`,
      '-device', 'virtio-blk-pci,drive=rootimg,serial=kata-root,addr=0x3',
    ]),
    '-device', 'virtio-rng-pci,id=rng,addr=0x5',
    '-device', 'vmgenid,id=vmgenid0,guid=auto',
    ...plan.args,
  ];
  if (opts.incoming) args.push('-S', '-incoming', 'defer');
  return args;
}

interface MigrationInfo {
  status?: string;
  'error-desc'?: string;
}

/** Polls query-migrate until completed (resolves) or failed/cancelled (throws `kind`). */
async function waitMigration(qmp: QmpClient, kind: 'save' | 'restore', timeoutMs: number, exited?: Promise<string>): Promise<void> {
  let gone: string | undefined;
  void exited?.then((r) => (gone = r));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<MigrationInfo>('query-migrate').catch((err: Error) => ({ status: 'failed', 'error-desc': err.message }) as MigrationInfo);
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new TemplateError(kind, `QEMU's migration ${kind === 'save' ? 'to' : 'from'} the template state failed${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
    }
    if (gone !== undefined) throw new TemplateError(kind, `QEMU ended during the template ${kind}: ${gone}`);
    if (Date.now() > deadline) throw new TemplateError(kind, `the template ${kind} did not finish within ${Math.round(timeoutMs / 1000)} s (status ${info.status ?? 'none'})`);
    await new Promise((r) => setTimeout(r, kind === 'restore' ? 2 : 10));
  }
}

/** Single-quotes a path for QEMU's exec: migration URI (run by /bin/sh -c). */
function shQuote(p: string): string {
  return `'${p.replace(/'/g, `'\\''`)}'`;
}

/** Pauses a running template VM and writes its device state to `statePath` (RAM stays in its file). */
export async function saveTemplate(qmp: QmpClient, statePath: string, exited?: Promise<string>): Promise<void> {
  await qmp.execute('stop');
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
  await qmp.execute('migrate', { uri: `exec:cat > ${shQuote(statePath)}` });
  await waitMigration(qmp, 'save', 60000, exited);
}

/**
 * Loads a template's state into a QEMU started with templateArgs(…,
 * {incoming: true}) and resumes the guest. The state file is opened here
 * and its fd handed to QEMU (getfd + `fd:` URI): a template removed after
 * that point no longer matters, and one removed before is a clear error
 * from this open — with `exec:cat FILE` QEMU 7.2 sat in "setup" forever
 * when cat found no file. A truncated or foreign state file ends in QEMU's
 * own load error (it exits), reported here.
 */
export async function restoreTemplate(qmp: QmpClient, statePath: string, exited?: Promise<string>, timeoutMs = 30000): Promise<void> {
  let fd: number;
  try {
    fd = fs.openSync(statePath, 'r');
  } catch (err) {
    throw new TemplateError('missing', `cannot open the template state ${statePath}: ${(err as Error).message}`, { cause: err });
  }
  try {
    await qmp.executeWithFd('getfd', { fdname: 'template-state' }, fd);
  } finally {
    fs.closeSync(fd);
  }
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
  await qmp.execute('migrate-incoming', { uri: 'fd:template-state' });
  await waitMigration(qmp, 'restore', timeoutMs, exited);
  await qmp.execute('cont');
}
