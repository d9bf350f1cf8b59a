/** `kata-ctl env [--json]`: the resolved configuration and environment (src/ctl/env.ts). */
import type { CtlCommand } from '../command';
import { ctlConfig, JSON_OPTION, printJson, type GlobalArgs } from '../common';
import { envReport, envText } from '../env';
import { factoryEnv } from '../factory-state';

export const envCommand: CtlCommand<GlobalArgs> = {
  command: 'env',
  describe: 'show the resolved configuration, versions and paths',
  builder: (y) => y.option('json', JSON_OPTION) as never,
  handler: async (argv) => {
    const cfg = ctlConfig(argv);
    const r = envReport(cfg, await factoryEnv(cfg));
    if (argv.json) printJson(r);
    else process.stdout.write(envText(r));
    return 0;
  },
};
