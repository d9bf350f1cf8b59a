/**
 * `kata-ctl cleanup [--dry-run] [--json]`: remove stale sandboxes — kill
 * their leftover VMM (only pids whose command line names the sandbox) and
 * delete their directories. Live sandboxes are never touched.
 */
import type { CtlCommand } from '../command';
import { ctlConfig, JSON_OPTION, printJson, type GlobalArgs } from '../common';
import { cleanupStale } from '../sandboxes';

interface CleanupArgs extends GlobalArgs {
  dryRun: boolean;
}

export const cleanupCommand: CtlCommand<CleanupArgs> = {
  command: 'cleanup',
  describe: 'remove the state and VMs of sandboxes whose runtime died',
  builder: (y) => y
    .option('json', JSON_OPTION)
    .option('dry-run', { type: 'boolean', default: false, describe: 'only say what would be removed' }) as never,
  handler: async (argv) => {
    const r = await cleanupStale(ctlConfig(argv).runtime.run_dir, { dryRun: argv.dryRun });
    if (argv.json) {
      printJson({ schemaVersion: 1, dryRun: argv.dryRun, ...r });
      return r.removed.every((e) => e.removed || argv.dryRun) ? 0 : 1;
    }
    const verb = argv.dryRun ? 'would remove' : 'removed';
    for (const e of r.removed) {
      const kills = e.killed.length ? `; ${argv.dryRun ? 'would kill' : 'killed'} VMM pid ${e.killed.join(', ')}` : '';
      const skips = e.skipped.map((s) => `; left pid ${s.pid} alone: ${s.why}`).join('');
      process.stdout.write(`${verb} ${e.id} (${e.reason})${kills}${skips}${!argv.dryRun && !e.removed ? ' — FAILED to remove the directory' : ''}\n`);
    }
    if (!r.removed.length) process.stdout.write('no stale sandboxes\n');
    return r.removed.every((e) => e.removed || argv.dryRun) ? 0 : 1;
  },
};
