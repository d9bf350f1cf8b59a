/**
 * `kata-ctl exec SANDBOX-ID [-t] [-- CMD [ARGS...]]`: the debug console — a
 * shell (or one command) in the guest VM itself, outside every container.
 * Allowed only when the configuration says `[agent.kata]
 * debug_console_enabled = true`; the sandbox's owner and the guest agent
 * enforce the same setting. Exit status: the guest command's, 125 when
 * kata-ctl itself failed, 127 when the command does not exist.
 */
import type { CtlCommand } from '../command';
import { ctlConfig, type GlobalArgs } from '../common';
import { errorMessage } from '../../common/errors';
import { AgentCallError } from '../../runtime/agent-client';
import { dialSandboxAgent } from '../../runtime/ctl-channel';
import { runConsole } from '../console';
import { listSandboxes } from '../sandboxes';

interface ExecArgs extends GlobalArgs {
  sandboxId: string;
  tty?: boolean;
  _: (string | number)[];
}

export const EXEC_FAILURE = 125;

export const execCommand: CtlCommand<ExecArgs> = {
  command: 'exec <sandbox-id>',
  describe: 'debug console: a shell (or -- CMD) in the sandbox VM itself',
  builder: (y) => y
    .usage('$0 exec <sandbox-id> [-t] [-- CMD [ARGS...]]')
    .positional('sandbox-id', { type: 'string', demandOption: true, describe: 'sandbox (see kata-ctl list)' })
    .option('tty', { alias: 't', type: 'boolean', describe: 'allocate a terminal (default: only for the interactive shell on a terminal)' }) as never,
  handler: async (argv) => {
    const fail = (msg: string) => {
      process.stderr.write(`kata-ctl: ${msg}\n`);
      return EXEC_FAILURE;
    };
    const cfg = ctlConfig(argv);
    if (!cfg['agent.kata'].debug_console_enabled) {
      return fail(`the debug console is disabled: set [agent.kata] debug_console_enabled = true in ${cfg.source || 'the configuration'} and start the sandbox with it`);
    }
    // After `--`, yargs leaves the command in argv._ behind the verb.
    const command = argv._.slice(1).map(String);
    const row = listSandboxes(cfg.runtime.run_dir).find((r) => r.id === argv.sandboxId);
    if (!row) return fail(`no sandbox "${argv.sandboxId}" under ${cfg.runtime.run_dir} (see kata-ctl list)`);
    if (row.status === 'stale') return fail(`sandbox "${row.id}" is stale (${row.reason}): there is no VM to connect to; run kata-ctl cleanup`);
    const agent = dialSandboxAgent(row.dir);
    if (!agent) return fail(`sandbox "${row.id}" serves no control socket (it is still starting, or its runtime predates kata-ctl exec)`);
    const terminal = argv.tty ?? (command.length === 0 && !!process.stdin.isTTY);
    try {
      return await runConsole(agent, { command, terminal }, { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env });
    } catch (err) {
      if (err instanceof AgentCallError && err.kind === 'not-found' && /^executable file/.test(err.message)) {
        process.stderr.write(`kata-ctl: ${err.message}\n`);
        return 127;
      }
      return fail(errorMessage(err));
    } finally {
      agent.close();
      process.stdin.destroy();
    }
  },
};
