/**
 * `kata-ts`: run containers in lightweight VMs from the command line.
 *   kata-ts run [--rootfs DIR | --bundle DIR | --image SOURCE|ID] [--rootfs-share virtiofs|erofs] [--hypervisor auto|qemu|builtin]
 *               [--memory MiB] [--cpus N] [-e K=V]... [-w DIR] [-u UID[:GID]] [-t]
 *               [-v HOST:GUEST[:ro|rw]]... -- CMD...
 *   kata-ts image convert SOURCE [--chunk-size N] [--store DIR] [--json] | image ls [--json]
 * Thin: parse, call src/runtime, print. Errors are one line on stderr; the
 * exit status is the container's, or 125 when kata-ts itself failed (as
 * docker/podman do).
 */
import type { Argv } from 'yargs';
import { configureLogging } from '../common/log';
import { errorMessage } from '../common/errors';
import { loadConfig } from '../runtime/config';
import { parseNet, runContainer } from './run';
import { exitCodeFor, RUNTIME_FAILURE } from '../runtime/run-status';
import { checkRunArgs, fastParseRun, GLOBAL_OPTIONS, RUN_OPTIONS, type RunArgs } from './run-args';

export { exitCodeFor, RUNTIME_FAILURE };

/** `kata-ts run`'s action; returns the exit status. */
async function runAction(a: RunArgs, command: string[]): Promise<number> {
  const logLevel = a['log-level'] ?? (a.debug ? 'debug' : 'warn');
  configureLogging({ source: 'kata-ts', level: logLevel });
  try {
    const cfg = loadConfig(a.config, process.env);
    if (a.debug) cfg.runtime.enable_debug = true;
    return await runContainer({
      rootfs: a.rootfs, bundle: a.bundle, hypervisor: a.hypervisor, memory: a.memory, cpus: a.cpus,
      env: a.env ?? [], workdir: a.workdir, user: a.user, tty: a.tty, hostname: a.hostname,
      volumes: a.volume ?? [], policy: a.policy, image: a.image,
      readonly: a['read-only'], name: a.name, debug: a.debug, logLevel, rootfsShare: a['rootfs-share'], netns: parseNet(a.net), dns: a.dns ?? [], command: [...(a.cmd ?? []), ...command],
    }, cfg);
  } catch (err) {
    process.stderr.write(`kata-ts: ${errorMessage(err)}\n`);
    return exitCodeFor(err);
  }
}

/**
 * The whole command line as yargs reads it: `onRun` gets run's parsed
 * options (the unit test compares them with fastParseRun's), `setCode` the
 * exit status of the image commands.
 */
export function buildCli(y: Argv, onRun: (a: RunArgs) => Promise<void>, setCode: (c: number) => void, imageCommand: typeof import('./image').imageCommand): Argv {
  return y
    .scriptName('kata-ts')
    .usage('$0 <command> [options]')
    .options(GLOBAL_OPTIONS)
    .command('run [cmd..]', 'run a container in a new VM', (r) => r
      .usage('$0 run [options] -- CMD [ARGS...]')
      .options(RUN_OPTIONS)
      .check((a) => checkRunArgs(a as { memory?: number; cpus?: number })),
    (a) => onRun(a as unknown as RunArgs))
    .command(imageCommand(setCode))
    .demandCommand(1, 'a command is required (see --help)')
    .strict()
    .help()
    .version(false)
    .fail((msg, err) => {
      process.stderr.write(`kata-ts: ${msg ?? errorMessage(err)}\n`);
      process.exit(RUNTIME_FAILURE);
    });
}

export async function main(args: string[]): Promise<void> {
  const dd = args.indexOf('--');
  const command = dd >= 0 ? args.slice(dd + 1) : [];
  const flags = dd >= 0 ? args.slice(0, dd) : args;
  // A plain `run` needs neither yargs nor the image commands (run-args.ts).
  const fast = fastParseRun(flags);
  if (fast) {
    process.exitCode = await runAction(fast, command);
    return;
  }
  let code = 0;
  const [{ default: yargs }, { imageCommand }] = await Promise.all([import('yargs'), import('./image')]);
  await buildCli(yargs(flags), async (a) => { code = await runAction(a, command); }, (c) => { code = c; }, imageCommand).parseAsync();
  process.exitCode = code;
}
