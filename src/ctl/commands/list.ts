/** `kata-ctl list [--json]`: sandboxes under the configured run_dir (src/ctl/sandboxes.ts). */
import type { CtlCommand } from '../command';
import { ctlConfig, JSON_OPTION, printJson, type GlobalArgs } from '../common';
import { listSandboxes, listText } from '../sandboxes';

export const listCommand: CtlCommand<GlobalArgs> = {
  command: ['list', 'ls'],
  describe: 'list sandboxes (running, and stale ones left by crashed runtimes)',
  builder: (y) => y.option('json', JSON_OPTION) as never,
  handler: async (argv) => {
    const rows = listSandboxes(ctlConfig(argv).runtime.run_dir);
    if (argv.json) printJson({ schemaVersion: 1, sandboxes: rows });
    else process.stdout.write(listText(rows));
    return 0;
  },
};
