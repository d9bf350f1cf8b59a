/**
 * `kata-ctl balloon SANDBOX-ID [--set MiB] [--json]`: the sandbox's
 * virtio-balloon (free page reporting; reclaim_guest_freed_memory = true in
 * [hypervisor.qemu], or [hypervisor.builtin] for the builtin VMM's own
 * device) read — and set first with --set — through its owner's mem.sock
 * (QMP query-balloon / balloon, or src/virtio/balloon in process). Figures the
 * guest reports outside its RAM are printed as warnings, never used.
 */
import type { CtlCommand } from '../command';
import { ctlConfig, printJson, JSON_OPTION, type GlobalArgs } from '../common';
import { errorMessage } from '../../common/errors';
import { memoryCtlCall } from '../../resource/memory/ctl-socket';
import { listSandboxes } from '../sandboxes';
import { formatMiB } from '../../common/units';

interface BalloonArgs extends GlobalArgs {
  sandboxId: string;
  set?: number;
  json: boolean;
}

export const balloonCommand: CtlCommand<BalloonArgs> = {
  command: 'balloon <sandbox-id>',
  describe: 'read or set (--set MiB) a sandbox\'s memory balloon: guest RAM it may keep',
  builder: (y) => y
    .positional('sandbox-id', { type: 'string', demandOption: true, describe: 'sandbox (see kata-ctl list)' })
    .option('set', { type: 'number', describe: 'target guest memory in MiB (the balloon takes the rest back)' })
    .option('json', JSON_OPTION) as never,
  handler: async (argv) => {
    const fail = (msg: string) => {
      process.stderr.write(`kata-ctl: ${msg}\n`);
      return 1;
    };
    if (argv.set !== undefined && (!Number.isInteger(argv.set) || argv.set < 1)) return fail(`--set ${argv.set}: expected a whole number of MiB ≥ 1`);
    const row = listSandboxes(ctlConfig(argv).runtime.run_dir).find((r) => r.id === argv.sandboxId);
    if (!row) return fail(`no sandbox "${argv.sandboxId}"`);
    if (row.status !== 'running') return fail(`sandbox ${row.id} is not running (${row.reason})`);
    let res: Record<string, unknown>;
    try {
      res = (await memoryCtlCall(row.dir, { op: 'balloon', setMiB: argv.set })).balloon as Record<string, unknown>;
    } catch (err) {
      return fail(errorMessage(err));
    }
    const warnings = (res.warnings as string[]) ?? [];
    if (argv.json) {
      printJson({ schemaVersion: 1, sandbox: row.id, ...res });
    } else {
      const st = res.stats as Record<string, number>;
      const mib = (b: number | undefined) => (b === undefined ? '?' : formatMiB(b));
      process.stdout.write(`sandbox ${row.id}: RAM ${res.ramMiB} MiB, guest may use ${res.actualMiB === undefined ? '? (not reported)' : `${res.actualMiB} MiB`}` +
        `${res.targetMiB !== undefined ? ` (target set to ${res.targetMiB} MiB; the guest gets there at its pace)` : ''}\n`);
      if (st && Object.keys(st).length) process.stdout.write(`guest: total ${mib(st['stat-total-memory'])}, free ${mib(st['stat-free-memory'])}, available ${mib(st['stat-available-memory'])}, caches ${mib(st['stat-disk-caches'])}\n`);
    }
    for (const w of warnings) process.stderr.write(`kata-ctl: warning: ${w}\n`);
    return 0;
  },
};
