/**
 * `kata-ctl`: the admin tool (host check, environment, sandboxes, debug
 * console, metrics, image tools). Thin: yargs parsing and dispatch to the
 * command modules in src/ctl/commands, each of which returns an exit code.
 */
import yargs from 'yargs';
import type { CtlCommand } from '../ctl/command';
import { errorMessage } from '../common/errors';
import { commands } from '../ctl/commands';

export async function main(args: string[]): Promise<void> {
  let code = 0;
  const y = yargs(args)
    .scriptName('kata-ctl')
    .usage('$0 <command> [options]')
    .option('config', { type: 'string', describe: 'configuration file (default: $KATA_TS_CONFIG, then /etc/kata-ts/configuration.toml)' })
    .option('debug', { type: 'boolean', describe: 'debug logging' })
    .strict()
    .demandCommand(1, 'kata-ctl: a command is required (see --help)')
    .help()
    .version(false)
    .fail((msg, err) => {
      process.stderr.write(`kata-ctl: ${msg ?? errorMessage(err)}\n`);
      process.exit(2);
    });
  for (const c of commands as CtlCommand<any>[]) {
    y.command(c.command, c.describe, c.builder, async (argv) => {
      try {
        code = await c.handler(argv);
      } catch (err) {
        process.stderr.write(`kata-ctl: ${errorMessage(err)}\n`);
        code = 1;
      }
    });
  }
  await y.parseAsync();
  process.exitCode = code;
}
