/**
 * `kata-ctl pages [SANDBOX-ID] [--fresh] [--json]`: the page scanner's view
 * of guest RAM — per sandbox resident, zero and duplicate pages, pages it
 * shares with other sandboxes, and what merging would save, within each
 * sandbox and host-wide (src/ctl/memory-metrics.ts). --fresh asks every
 * owner for a pass now instead of its last one.
 */
import type { CtlCommand } from '../command';
import { ctlConfig, printJson, JSON_OPTION, type GlobalArgs } from '../common';
import { fetchScans, summarize } from '../memory-metrics';
import { listSandboxes } from '../sandboxes';
import { formatMiB } from '../../common/units';

interface PagesArgs extends GlobalArgs {
  sandboxId?: string;
  fresh: boolean;
  json: boolean;
}

export const pagesCommand: CtlCommand<PagesArgs> = {
  command: 'pages [sandbox-id]',
  describe: 'page scanner: zero and duplicate guest pages per sandbox and across sandboxes',
  builder: (y) => y
    .positional('sandbox-id', { type: 'string', describe: 'only this sandbox (cross-sandbox figures need them all)' })
    .option('fresh', { type: 'boolean', default: false, describe: 'scan now instead of reporting the last pass' })
    .option('json', JSON_OPTION) as never,
  handler: async (argv) => {
    const rows = listSandboxes(ctlConfig(argv).runtime.run_dir).filter((r) => !argv.sandboxId || r.id === argv.sandboxId);
    if (argv.sandboxId && rows.length === 0) {
      process.stderr.write(`kata-ctl: no sandbox "${argv.sandboxId}"\n`);
      return 1;
    }
    const sum = summarize(await fetchScans(rows, { fresh: argv.fresh }));
    if (argv.json) {
      printJson({ schemaVersion: 1, ...sum });
    } else {
      const mib = (pages: number) => formatMiB(pages * 4096);
      for (const s of sum.sandboxes) {
        process.stdout.write(`${s.id}: resident ${mib(s.residentPages)} of ${mib(s.ramBytes / 4096)}, zero ${mib(s.zeroPages)}, duplicate ${mib(s.duplicatePages)}, ` +
          `shared with other sandboxes ${mib(s.sharedWithOtherSandboxesPages)}; merging would save ${mib(s.savingBytes / 4096)} ` +
          `(pass ${Math.round(s.durationMs)} ms, max event-loop delay ${s.eventLoopDelayMaxMs.toFixed(1)} ms, at ${s.at})\n`);
      }
      process.stdout.write(`host-wide: merging would save ${mib(sum.hostWideSavingBytes / 4096)}, of which ${mib(sum.crossSandboxSavingBytes / 4096)} only across sandboxes\n`);
    }
    for (const e of sum.errors) process.stderr.write(`kata-ctl: ${e}\n`);
    return sum.errors.length && !sum.sandboxes.length ? 1 : 0;
  },
};
