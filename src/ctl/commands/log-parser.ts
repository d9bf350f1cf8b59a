/**
 * `kata-ctl log-parser [FILE...] [--stdin] [--sandbox ID] [--level L] [--json]`:
 * the runtime's, shim's and agent's JSON logs merged into one time-ordered
 * view (src/ctl/log-parser.ts). --stdin reads one more log from standard input
 * (e.g. `journalctl -u containerd -o cat | kata-ctl log-parser --stdin
 * --sandbox ID`; yargs gives no "-" argument); --sandbox adds the logs
 * kata-ts keeps for it (the guest console) and drops entries naming another
 * sandbox.
 */
import type { CtlCommand } from '../command';
import { ctlConfig, printJson, type GlobalArgs } from '../common';
import { entryText, mergeLogs, readLogs, sandboxLogFiles, type Level } from '../log-parser';

interface LogParserArgs extends GlobalArgs {
  files?: string[];
  sandbox?: string;
  level?: Level;
  stdin?: boolean;
}

export const logParserCommand: CtlCommand<LogParserArgs> = {
  command: 'log-parser [files..]',
  describe: 'merge runtime, shim and agent JSON logs into one time-ordered view',
  builder: (y) => y
    .positional('files', { type: 'string', array: true, describe: 'log files' })
    .option('stdin', { type: 'boolean', default: false, describe: 'also read a log from standard input' })
    .option('sandbox', { type: 'string', describe: 'add the sandbox\'s own logs (guest console) and keep only its entries' })
    .option('level', { type: 'string', choices: ['error', 'warn', 'info', 'debug'], describe: 'keep entries at this level or more severe' })
    .option('json', { type: 'boolean', default: false, describe: '{ schemaVersion, stats, entries: [{ time, level, source, msg, fields, file, line }] }' }) as never,
  handler: async (argv) => {
    const files = [...(argv.files ?? []), ...(argv.stdin ? ['-'] : [])];
    if (argv.sandbox) files.push(...sandboxLogFiles(ctlConfig(argv).runtime.run_dir, argv.sandbox));
    if (files.length === 0) {
      process.stderr.write('kata-ctl log-parser: give log files, --stdin, or --sandbox ID\n');
      return 2;
    }
    const { entries, stats } = mergeLogs(readLogs(files), { level: argv.level, sandbox: argv.sandbox });
    if (argv.json) printJson({ schemaVersion: 1, stats, entries });
    else process.stdout.write(entries.map(entryText).join('\n') + (entries.length ? '\n' : ''));
    process.stderr.write(`log-parser: ${stats.entries} entries from ${stats.files} file(s); ${stats.skipped} of ${stats.lines} lines were not JSON log entries\n`);
    return 0;
  },
};
