/**
 * `kata-ctl factory init | status | destroy [--json]` — the VM template
 * (src/factory), Kata's `kata-runtime factory` verbs (runtime-rs still stubs
 * them). The template is made for the configuration sandboxes run with:
 * the hypervisor the runtime would pick (QEMU), its accelerator, the
 * sandbox kernel parameters with `[agent.kata] policy_file`'s hash. A
 * sandbox with another policy (`kata-ts run --policy`) or sizing finds the
 * template stale and cold-boots.
 */
import type { CtlCommand } from '../command';
import { ctlConfig, JSON_OPTION, printJson, type GlobalArgs } from '../common';
import { factoryFor } from '../factory-state';
import type { TemplateStatus } from '../../factory/template-store';
import type { TemplateMemory } from '../../factory/template-key';
import { formatMiB } from '../../common/units';
import { cacheStatus, fillCache, stopCache, waitCacheSettled, type CacheStatus } from '../../factory/vm-cache-fill';
import { cacheDir, configIdentity } from '../../factory/vm-cache-store';
import type { Config } from '../../runtime/config';

interface FactoryArgs extends GlobalArgs {
  action: string;
}

function mib(n: number | undefined): string {
  return n === undefined ? '-' : formatMiB(n);
}

function age(s: number | undefined): string {
  if (s === undefined) return '-';
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

/** The template's memory devices in one line: -m/-smp, the DAX image, the balloon, virtio-mem. */
export function memoryText(mem: TemplateMemory | undefined): string {
  if (!mem) return 'none recorded (made before template format 6)';
  return [`-m ${mem.m}`, `-smp ${mem.smp}`, mem.daxImage ? `DAX image ${mem.daxImage.path}` : 'root on virtio-blk (no DAX)',
    mem.balloon ? 'balloon with free page reporting' : 'no balloon', mem.virtioMemMiB ? `virtio-mem ${mem.virtioMemMiB} MiB` : 'no virtio-mem'].join('; ');
}

/** Human text of a template status. */
export function statusText(st: TemplateStatus, enabled: boolean): string {
  const m = st.manifest;
  const lines = [
    `template:   ${st.path}`,
    `state:      ${st.state}${st.reasons.length ? ` — ${st.reasons[0]}` : ''}`,
    ...st.reasons.slice(1).map((r) => `            ${r}`),
    `enabled:    ${enabled ? 'yes ([factory] enable_template = true)' : 'no ([factory] enable_template = false: sandboxes cold-boot)'}`,
    `key:        ${m?.key ?? '-'}${st.wantedKey && m && m.key !== st.wantedKey ? ` (configuration wants ${st.wantedKey})` : ''}`,
  ];
  if (m) {
    lines.push(
      `created:    ${m.createdAt} (${age(st.ageS)} ago), boot ${m.bootS.toFixed(1)} s, save ${m.saveS.toFixed(2)} s`,
      `machine:    ${m.inputs.machine}, ${m.inputs.accel}, ${m.inputs.vcpus} vCPU, ${m.inputs.memoryMiB} MiB; ${m.qemuVersion}`,
      // The memory devices the template carries (format 6; an older manifest has none).
      `memory:     ${memoryText(m.inputs.memory)}`,
      `kernel:     ${m.inputs.kernel.path} sha256:${m.kernelSha256.slice(0, 16)}`,
      `image:      ${m.inputs.image.path} sha256:${m.imageSha256.slice(0, 16)}`,
      `sizes:      state ${mib(m.stateBytes)}, memory ${mib(m.memoryBytes)} (${mib(m.memoryDataBytes)} data, ${m.inputs.machine.startsWith('builtin') ? 'mapped copy-on-write by each clone' : 'copied per clone'}), on host ${mib(st.diskBytes)}${m.mountedTmpfs ? ' (tmpfs)' : ''}`,
    );
  }
  return lines.join('\n') + '\n';
}

/** Human lines of the pre-started VM cache ([factory] vm_cache_number). */
export function cacheText(c: CacheStatus): string {
  if (c.number === 0 && !c.ready.length && !c.starting.length) return 'VM cache:   none ([factory] vm_cache_number = 0)\n';
  return [
    `VM cache:   ${c.ready.length}/${c.number} ready${c.starting.length ? `, ${c.starting.length} starting` : ''} in ${c.dir}`,
    ...c.ready.map((r) => `            slot ${r.slot}: shim pid ${r.pid}, QEMU pid ${r.qemuPid}, ready since ${r.readyAt}`),
    ...c.starting.map((r) => `            slot ${r.slot}: starting (pid ${r.pid})`),
  ].join('\n') + '\n';
}

/** How long `factory init` waits for the cache to fill. */
const FILL_TIMEOUT_MS = 300000;

/** Fills the cache after `init` and waits for it; progress on stderr. */
async function fillAfterInit(cfg: Config): Promise<CacheStatus> {
  const spawned = fillCache(cfg, { configPath: configIdentity(cfg).path, debug: false, nice: 0 });
  if (spawned.length) process.stderr.write(`factory: starting ${spawned.length} pre-started VM(s) for the VM cache (slots ${spawned.join(', ')})\n`);
  await waitCacheSettled(cfg, FILL_TIMEOUT_MS, spawned);
  const c = cacheStatus(cfg);
  if (c.ready.length < c.number) process.stderr.write(`factory: warning: only ${c.ready.length} of ${c.number} cached VMs are ready (see ${c.dir}/slot-N.log)\n`);
  return c;
}

export const factoryCommand: CtlCommand<FactoryArgs> = {
  command: 'factory <action>',
  describe: 'VM template for fast sandbox start: init (make or remake), status, destroy',
  builder: (y) =>
    y
      .positional('action', { type: 'string', choices: ['init', 'status', 'destroy'], demandOption: true })
      .option('json', JSON_OPTION) as never,
  handler: async (argv) => {
    const cfg = ctlConfig(argv);
    const factory = await factoryFor(cfg);
    switch (argv.action) {
      case 'init': {
        // Cached VMs are clones of the template being replaced: they go first.
        const stopped = await stopCache(cacheDir(cfg));
        if (stopped.length) process.stderr.write(`factory: stopped ${stopped.length} cached VM(s) of the previous template\n`);
        const st = await factory.init((line) => process.stderr.write(`factory: ${line}\n`));
        const cache = st.state === 'valid' && cfg.factory.vm_cache_number > 0 ? await fillAfterInit(cfg) : cacheStatus(cfg);
        if (argv.json) printJson({ ...st, enabled: cfg.factory.enable_template, vmCache: cache });
        else process.stdout.write(statusText(st, cfg.factory.enable_template) + cacheText(cache));
        return st.state === 'valid' ? 0 : 1;
      }
      case 'status': {
        const st = factory.status();
        const cache = cacheStatus(cfg);
        if (argv.json) printJson({ ...st, enabled: cfg.factory.enable_template, vmCache: cache });
        else process.stdout.write(statusText(st, cfg.factory.enable_template) + cacheText(cache));
        return st.state === 'valid' ? 0 : 1;
      }
      default: {
        // Cached VMs first: they are clones of the template.
        const stopped = await stopCache(cacheDir(cfg));
        const removed = [...stopped.map((p) => `cached VM (shim pid ${p})`), ...factory.destroy()];
        if (argv.json) printJson({ schemaVersion: 1, path: factory.dir, removed });
        else process.stdout.write(removed.length ? removed.map((r) => `removed ${r}\n`).join('') : `no template at ${factory.dir}\n`);
        return 0;
      }
    }
  },
};
