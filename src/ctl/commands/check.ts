/**
 * `kata-ctl check [--json] [--no-cache]`: host capability report
 * (src/ctl/host-check.ts). Exit 0 only when a sandbox can start.
 */
import type { CtlCommand } from '../command';
import { ctlConfig, JSON_OPTION, printJson, type GlobalArgs } from '../common';
import { checkText, runHostCheck } from '../host-check';

interface CheckArgs extends GlobalArgs {
  cache: boolean;
}

export const checkCommand: CtlCommand<CheckArgs> = {
  command: 'check',
  describe: 'check whether this host can run kata-ts sandboxes, and how',
  builder: (y) => y
    .option('json', JSON_OPTION)
    .option('cache', { type: 'boolean', default: true, describe: 'use the KVM measurement cached for this boot (--no-cache re-measures)' }) as never,
  handler: async (argv) => {
    const cfg = ctlConfig(argv);
    const r = await runHostCheck(cfg, { noCache: !argv.cache });
    if (argv.json) printJson(r);
    else process.stdout.write(checkText(r));
    return r.ok ? 0 : 1;
  },
};
