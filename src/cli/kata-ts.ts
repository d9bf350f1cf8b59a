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
import yargs from 'yargs';
import { configureLogging } from '../common/log';
import { errorMessage } from '../common/errors';
import { loadConfig } from '../runtime/config';
import { parseNet, runContainer } from './run';
import { AgentCallError } from '../runtime/agent-client';
import { imageCommand } from './image';

export const RUNTIME_FAILURE = 125;

/** 127 when the command does not exist in the container (as shells and docker report), else 125. */
export function exitCodeFor(err: unknown): number {
  if (err instanceof AgentCallError && err.kind === 'not-found' && /^executable file/.test(err.message)) return 127;
  return RUNTIME_FAILURE;
}

export async function main(args: string[]): Promise<void> {
  const dd = args.indexOf('--');
  const command = dd >= 0 ? args.slice(dd + 1) : [];
  const flags = dd >= 0 ? args.slice(0, dd) : args;
  let code = 0;
  await yargs(flags)
    .scriptName('kata-ts')
    .usage('$0 <command> [options]')
    .option('config', { type: 'string', describe: 'configuration file (default: $KATA_TS_CONFIG, then /etc/kata-ts/configuration.toml)' })
    .option('debug', { type: 'boolean', default: false, describe: 'debug logging (JSON on stderr)' })
    .option('log-level', { choices: ['error', 'warn', 'info', 'debug'] as const, describe: 'host log level (JSON on stderr; default warn, debug with --debug). info shows the start-up phases (\'sandbox ready\') without --debug\'s guest debug mode, which slows the boot' })
    .command('run [cmd..]', 'run a container in a new VM', (y) => y
      .usage('$0 run [options] -- CMD [ARGS...]')
      .option('rootfs', { type: 'string', describe: 'container root filesystem directory (default: the built-in busybox image)' })
      .option('bundle', { type: 'string', describe: 'OCI bundle directory (config.json + rootfs)' })
      .option('image', { type: 'string', describe: 'a converted image (id, id prefix or reference in [image] store_dir), or a SOURCE `kata-ts image convert` takes, converted on first use; its entrypoint/cmd/env/cwd apply' })
      .option('rootfs-share', { choices: ['virtiofs', 'erofs'] as const, describe: 'how the rootfs reaches the guest: virtio-fs share, changes land in the directory (default with --rootfs/--bundle), or EROFS image + throwaway overlay (default for the built-in image)' })
      .option('hypervisor', { choices: ['auto', 'qemu', 'builtin'] as const, default: 'auto' as const, describe: 'which VMM' })
      .option('memory', { alias: 'm', type: 'number', describe: 'guest memory in MiB' })
      .option('cpus', { type: 'number', describe: 'guest vCPUs' })
      .option('env', { alias: 'e', type: 'string', array: true, default: [] as string[], describe: 'environment variable KEY=VALUE (repeatable)' })
      .option('workdir', { alias: 'w', type: 'string', describe: 'working directory in the container' })
      .option('user', { alias: 'u', type: 'string', describe: 'UID[:GID] to run as' })
      .option('tty', { alias: 't', type: 'boolean', default: false, describe: 'allocate a terminal' })
      .option('hostname', { type: 'string', describe: 'container hostname' })
      .option('read-only', { type: 'boolean', default: false, describe: 'mount the container rootfs read-only' })
      .option('name', { type: 'string', describe: 'sandbox/container id (default: random)' })
      .option('volume', { alias: 'v', type: 'string', array: true, default: [] as string[], describe: 'bind mount HOST:GUEST[:ro|rw] (file or directory; repeatable), shared into the VM with virtio-fs' })
      .option('net', { type: 'string', array: true, describe: 'networking: "none" (loopback only, the default) or "host-netns PATH": mirror every interface of the network namespace at PATH into the VM (as CNI would have set it up)' })
      .option('dns', { type: 'string', array: true, default: [] as string[], describe: 'nameserver address (or a whole resolv.conf line) for the guest (repeatable)' })
      .option('policy', { type: 'string', describe: 'agent policy file (JSON, see README "Agent policy"): the guest agent enforces it on every request; it cannot be changed after the sandbox is created (default: [agent.kata] policy_file)' })
      .check((a) => {
        if (a.memory !== undefined && (!Number.isInteger(a.memory) || a.memory < 64 || a.memory > 3584)) throw new Error('--memory must be an integer number of MiB between 64 and 3584');
        if (a.cpus !== undefined && (!Number.isInteger(a.cpus) || a.cpus < 1 || a.cpus > 64)) throw new Error('--cpus must be an integer between 1 and 64');
        return true;
      }),
    async (a) => {
      configureLogging({ source: 'kata-ts', level: a['log-level'] ?? (a.debug ? 'debug' : 'warn') });
      try {
        const cfg = loadConfig(a.config, process.env);
        if (a.debug) cfg.runtime.enable_debug = true;
        code = await runContainer({
          rootfs: a.rootfs, bundle: a.bundle, hypervisor: a.hypervisor, memory: a.memory, cpus: a.cpus,
          env: (a.env as string[]) ?? [], workdir: a.workdir, user: a.user, tty: a.tty, hostname: a.hostname,
          volumes: (a.volume as string[]) ?? [], policy: a.policy, image: a.image,
          readonly: a['read-only'], name: a.name, rootfsShare: a['rootfs-share'], netns: parseNet(a.net as string[] | undefined), dns: (a.dns as string[]) ?? [], command: [...((a.cmd as string[] | undefined) ?? []), ...command],
        }, cfg);
      } catch (err) {
        process.stderr.write(`kata-ts: ${errorMessage(err)}\n`);
        code = exitCodeFor(err);
      }
    })
    .command(imageCommand((c) => { code = c; }))
    .demandCommand(1, 'a command is required (see --help)')
    .strict()
    .help()
    .version(false)
    .fail((msg, err) => {
      process.stderr.write(`kata-ts: ${msg ?? errorMessage(err)}\n`);
      process.exit(RUNTIME_FAILURE);
    })
    .parseAsync();
  process.exitCode = code;
}
