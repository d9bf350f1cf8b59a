/** `kata-ctl version [--json]`: installed versions, from local data (src/ctl/version.ts). */
import type { CtlCommand } from '../command';
import { ctlConfig, JSON_OPTION, printJson, type GlobalArgs } from '../common';
import { versionReport, versionText } from '../version';

export const versionCommand: CtlCommand<GlobalArgs> = {
  command: 'version',
  describe: 'show the versions of kata-ts, Node, the guest kernel and image, and the agent API',
  builder: (y) => y.option('json', JSON_OPTION) as never,
  handler: async (argv) => {
    const r = versionReport(ctlConfig(argv));
    if (argv.json) printJson(r);
    else process.stdout.write(versionText(r));
    return 0;
  },
};
