/**
 * QEMU's side of VM templating: the command line a template and its clones
 * share, and the two migrations over QMP (docs/devel/migration.rst,
 * qapi/migration.json).
 *
 * The template VM holds ONLY devices QEMU can migrate — its own virtio-blk
 * for the guest image (slot 3), virtio-rng (slot 5, and two more on slots 4
 * and 6 that only enable PCI interrupt links: LINK_WARMER_SLOTS), the
 * serial console and vmgenid — with guest RAM in a file mapped shared and bound through a NUMA
 * node. Saving with the `x-ignore-shared` capability leaves that RAM out of
 * the stream (it is already in the file): the state file is a few hundred
 * KB of device and CPU state. A clone runs the same command line with its
 * own RAM (see memory.ts), `-S -incoming defer`, loads the state and
 * resumes. Our vhost-user devices (vsock, virtio-fs, blk) are never in the
 * template: QEMU 7.2 marks vhost-user-vsock and vhost-user-fs unmigratable,
 * and their backends live in the process that owns the sandbox; the clone
 * hotplugs them after resume (QemuHypervisor.startClone).
 *
 * vmgenid: QEMU writes a fresh generation id into guest memory on every
 * incoming migration (guid=auto) and raises an ACPI notification; Linux ≥
 * 5.18 with CONFIG_VMGENID reseeds its RNG from it, so two clones' CRNGs
 * diverge before the agent's ReseedRandomDev even arrives.
 */
import * as fs from 'node:fs';
import { KataError } from '../common/errors';
import type { QmpClient } from '../hypervisor/qmp';

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
}

/**
 * Slots of two small devices (virtio-rng) whose only job is to make the
 * template's guest enable the PCI interrupt links LNKD and LNKB while it
 * boots. On the pc machine slot s raises INTA on link (s - 1) mod 4: the
 * root disk (slot 3) enables LNKC and the rng (slot 5) LNKA, nothing else
 * enabled B or D. A device hotplugged into a clone on a slot whose link is
 * not enabled yet makes the guest evaluate the link's ACPI methods
 * (_PRS/_SRS/_CRS, "ACPI: \_SB_.LNKD: Enabled at IRQ 11") inside its probe:
 * 0.35 s quiet, 0.7–1.3 s at a load of 8 under TCG, and the agent (one
 * vCPU) answers nothing meanwhile. With all four links enabled in the
 * template, a clone's hotplugged vsock (slot 7, LNKC) and its first disks
 * and shares (slots 8.., LNKD, LNKA, LNKB, LNKC) probe without it. Measured
 * in README "VM templates (issue 16)".
 */
export const LINK_WARMER_SLOTS = [4, 6];

/** Where a clone's agent channel (vhost-user-vsock) is hotplugged: a free fixed slot below the dynamic ones, on the enabled link LNKC. */
export const CLONE_VSOCK_SLOT = 7;

/**
 * argv (without -qmp/-pidfile) of a template VM or a clone. `memPath` is
 * the file behind guest RAM, always mapped share=on: the template's so
 * the RAM lands in its file, a clone's so vhost-user backends can map it.
 * `privateMem` maps it share=off instead (copy-on-write of the template's
 * file): measured by bench/factory.ts, usable only without vhost-user devices.
 */
export function templateArgs(m: TemplateMachine, memPath: string, consoleLog: string, opts: { incoming?: boolean; privateMem?: boolean } = {}): string[] {
  const args = [
    '-name', 'kata-ts-template,debug-threads=on',
    '-M', `${m.machine},accel=${m.accel}${m.machineAccelerators ? `,${m.machineAccelerators}` : ''}`,
    '-cpu', m.accel === 'kvm' ? 'host' : 'max',
    '-smp', String(m.vcpus),
    '-m', `${m.memoryMiB}M`,
    '-object', `memory-backend-file,id=mem,size=${m.memoryMiB}M,mem-path=${memPath},share=${opts.privateMem ? 'off' : 'on'}`,
    '-numa', 'node,memdev=mem',
    '-nodefaults', '-nographic', '-no-user-config', '-no-reboot',
    // The kernel is loaded as option ROM/fw_cfg blobs whose sizes the
    // migration stream checks: a clone passes the same kernel and line.
    '-kernel', m.kernel,
    '-append', m.kernelCmdline,
    '-chardev', `file,id=console,path=${consoleLog}`,
    '-serial', 'chardev:console',
    '-drive', `if=none,id=rootimg,file=${m.image},format=raw,readonly=on,cache=unsafe`,
    '-device', 'virtio-blk-pci,drive=rootimg,serial=kata-root,addr=0x3',
    '-device', 'virtio-rng-pci,id=rng,addr=0x5',
    // Link warmers (see LINK_WARMER_SLOTS): after these, every PCI
    // interrupt link is enabled in the template's guest.
    ...LINK_WARMER_SLOTS.flatMap((slot) => ['-device', `virtio-rng-pci,id=linkwarm${slot},addr=0x${slot.toString(16)}`]),
    '-device', 'vmgenid,id=vmgenid0,guid=auto',
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
