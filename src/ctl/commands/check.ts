/**
 * `kata-ctl check [all|no-network-checks|check-version-only] [--json] [--no-cache]`:
 * host capability report (src/ctl/host-check.ts). Exit 0 only when a sandbox
 * can start. Kata's sub-verbs where they apply:
 *   all (the default)    every check, with the configuration's verdict
 *   no-network-checks    the same: none of our checks touches the network
 *                        (Kata's "all" also asks GitHub for releases; we do not)
 *   check-version-only   the installed versions (kata-ctl version), and a
 *                        plain statement that no release feed is queried
 */
import type { CtlCommand } from '../command';
import { ctlConfig, JSON_OPTION, printJson, type GlobalArgs } from '../common';
import { checkText, runHostCheck } from '../host-check';
import { versionReport, versionText } from '../version';

interface CheckArgs extends GlobalArgs {
  cache: boolean;
  what?: string;
}

export const CHECK_SUBVERBS = ['all', 'no-network-checks', 'check-version-only'] as const;
const NO_RELEASE_FEED = 'kata-ts publishes no releases to compare with; this is the installed version, read from local files only (no network)';

export const checkCommand: CtlCommand<CheckArgs> = {
  command: 'check [what]',
  describe: 'check whether this host can run kata-ts sandboxes, and how',
  builder: (y) => y
    .positional('what', { type: 'string', choices: [...CHECK_SUBVERBS], default: 'all', describe: 'all | no-network-checks (the same: no check uses the network) | check-version-only' })
    .option('json', JSON_OPTION)
    .option('cache', { type: 'boolean', default: true, describe: 'use the KVM measurement cached for this boot (--no-cache re-measures)' }) as never,
  handler: async (argv) => {
    const cfg = ctlConfig(argv);
    if (argv.what === 'check-version-only') {
      const v = versionReport(cfg);
      if (argv.json) printJson({ ...v, latestRelease: null, note: NO_RELEASE_FEED });
      else process.stdout.write(versionText(v) + `note: ${NO_RELEASE_FEED}\n`);
      return 0;
    }
    const r = await runHostCheck(cfg, { noCache: !argv.cache });
    if (argv.json) printJson(r);
    else process.stdout.write(checkText(r));
    return r.ok ? 0 : 1;
  },
};
