/**
 * `kata-ts run`'s options, one table for yargs (help, errors, every other
 * command) and for a small fast-path parser that handles the plain cases of
 * `kata-ts [global options] run [options] [-- CMD...]` without loading
 * yargs: yargs 18 is ESM, and loading it took 0.15 s quiet and ~0.3 s at a
 * load of 11 on this host, all of it before QEMU could start.
 *
 * The fast path gives up (returns undefined, and yargs parses the same
 * argv) on anything it is not sure yargs reads the same way: --help,
 * unknown or negated options, combined short flags, `--opt=value` for
 * arrays and booleans, a boolean followed by true/false, numeric
 * positionals, a value outside its choices, a failed range check, a
 * repeated scalar option. So every error message is still yargs'. The unit
 * test test/unit/cli/run-args.test.ts compares both parsers over a list of
 * command lines.
 */

export type OptType = 'string' | 'boolean' | 'number';

export interface OptSpec {
  type: OptType;
  alias?: string;
  array?: boolean;
  choices?: readonly string[];
  default?: unknown;
  describe: string;
}

/** Options of every kata-ts command. */
export const GLOBAL_OPTIONS = {
  config: { type: 'string', describe: 'configuration file (default: $KATA_TS_CONFIG, then /etc/kata-ts/configuration.toml)' },
  debug: { type: 'boolean', default: false, describe: 'debug logging (JSON on stderr)' },
  'log-level': { type: 'string', choices: ['error', 'warn', 'info', 'debug'], describe: 'host log level (JSON on stderr; default warn, debug with --debug). info shows the start-up phases (\'sandbox ready\') without --debug\'s guest debug mode, which slows the boot' },
} as const satisfies Record<string, OptSpec>;

/** Options of `kata-ts run`. */
export const RUN_OPTIONS = {
  rootfs: { type: 'string', describe: 'container root filesystem directory (default: the built-in busybox image)' },
  bundle: { type: 'string', describe: 'OCI bundle directory (config.json + rootfs)' },
  image: { type: 'string', describe: 'a converted image (id, id prefix or reference in [image] store_dir), or a SOURCE `kata-ts image convert` takes, converted on first use; its entrypoint/cmd/env/cwd apply' },
  'rootfs-share': { type: 'string', choices: ['virtiofs', 'erofs'], describe: 'how the rootfs reaches the guest: virtio-fs share, changes land in the directory (default with --rootfs/--bundle), or EROFS image + throwaway overlay (default for the built-in image)' },
  hypervisor: { type: 'string', choices: ['auto', 'qemu', 'builtin'], default: 'auto', describe: 'which VMM' },
  memory: { type: 'number', alias: 'm', describe: 'guest memory in MiB' },
  cpus: { type: 'number', describe: 'guest vCPUs' },
  env: { type: 'string', alias: 'e', array: true, default: [], describe: 'environment variable KEY=VALUE (repeatable)' },
  workdir: { type: 'string', alias: 'w', describe: 'working directory in the container' },
  user: { type: 'string', alias: 'u', describe: 'UID[:GID] to run as' },
  tty: { type: 'boolean', alias: 't', default: false, describe: 'allocate a terminal' },
  hostname: { type: 'string', describe: 'container hostname' },
  'read-only': { type: 'boolean', default: false, describe: 'mount the container rootfs read-only' },
  name: { type: 'string', describe: 'sandbox/container id (default: random)' },
  volume: { type: 'string', alias: 'v', array: true, default: [], describe: 'bind mount HOST:GUEST[:ro|rw] (file or directory; repeatable), shared into the VM with virtio-fs' },
  net: { type: 'string', array: true, describe: 'networking: "none" (loopback only, the default) or "host-netns PATH": mirror every interface of the network namespace at PATH into the VM (as CNI would have set it up)' },
  dns: { type: 'string', array: true, default: [], describe: 'nameserver address (or a whole resolv.conf line) for the guest (repeatable)' },
  policy: { type: 'string', describe: 'agent policy file (JSON, see README "Agent policy"): the guest agent enforces it on every request; it cannot be changed after the sandbox is created (default: [agent.kata] policy_file)' },
} as const satisfies Record<string, OptSpec>;

/** What the run action reads (yargs' argv has these keys and more). */
export interface RunArgs {
  config?: string;
  debug: boolean;
  'log-level'?: 'error' | 'warn' | 'info' | 'debug';
  rootfs?: string;
  bundle?: string;
  image?: string;
  'rootfs-share'?: 'virtiofs' | 'erofs';
  hypervisor: 'auto' | 'qemu' | 'builtin';
  memory?: number;
  cpus?: number;
  env: string[];
  workdir?: string;
  user?: string;
  tty: boolean;
  hostname?: string;
  'read-only': boolean;
  name?: string;
  volume: string[];
  net?: string[];
  dns: string[];
  policy?: string;
  cmd?: string[];
}

/** yargs' .check for run; throws the message yargs prints. */
export function checkRunArgs(a: { memory?: number; cpus?: number }): true {
  if (a.memory !== undefined && (!Number.isInteger(a.memory) || a.memory < 64 || a.memory > 3584)) throw new Error('--memory must be an integer number of MiB between 64 and 3584');
  if (a.cpus !== undefined && (!Number.isInteger(a.cpus) || a.cpus < 1 || a.cpus > 64)) throw new Error('--cpus must be an integer between 1 and 64');
  return true;
}

const NUMERIC = /^-?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/**
 * `flags` (argv before `--`) parsed as yargs parses a plain `run` command
 * line, or undefined when this parser does not handle it (see the header).
 */
export function fastParseRun(flags: string[]): RunArgs | undefined {
  const specs: Record<string, OptSpec> = { ...GLOBAL_OPTIONS, ...RUN_OPTIONS };
  const byAlias = new Map<string, string>();
  for (const [name, s] of Object.entries(specs)) if (s.alias) byAlias.set(s.alias, name);
  const out: Record<string, unknown> = {};
  const seen = new Set<string>();
  const cmd: string[] = [];
  let inRun = false;
  for (let i = 0; i < flags.length; i++) {
    const tok = flags[i]!;
    if (!tok.startsWith('-') || tok === '-') {
      if (!inRun) {
        if (tok !== 'run') return undefined;
        inRun = true;
        continue;
      }
      if (NUMERIC.test(tok)) return undefined; // yargs makes it a number
      cmd.push(tok);
      continue;
    }
    let name: string | undefined;
    let inline: string | undefined;
    if (tok.startsWith('--')) {
      const eq = tok.indexOf('=');
      name = eq >= 0 ? tok.slice(2, eq) : tok.slice(2);
      inline = eq >= 0 ? tok.slice(eq + 1) : undefined;
    } else if (tok.length === 2) {
      name = byAlias.get(tok.slice(1));
    }
    if (!name || !(name in specs)) return undefined; // help, version, negation, combined flags, unknown
    if (name in RUN_OPTIONS && !inRun) return undefined;
    const spec = specs[name]!;
    if (seen.has(name) && !spec.array) return undefined;
    seen.add(name);
    if (spec.type === 'boolean') {
      if (inline !== undefined) return undefined;
      const next = flags[i + 1];
      if (next === 'true' || next === 'false') return undefined;
      out[name] = true;
      continue;
    }
    if (spec.array) {
      if (inline !== undefined) return undefined;
      const list = (out[name] as string[] | undefined) ?? [];
      let took = 0;
      while (i + 1 < flags.length && !flags[i + 1]!.startsWith('-')) {
        list.push(flags[++i]!);
        took++;
      }
      if (took === 0) return undefined;
      out[name] = list;
      continue;
    }
    const value = inline ?? flags[++i];
    if (value === undefined || (inline === undefined && value.startsWith('-'))) return undefined;
    if (spec.type === 'number') {
      if (!NUMERIC.test(value)) return undefined;
      out[name] = Number(value);
    } else {
      if (spec.choices && !spec.choices.includes(value)) return undefined;
      out[name] = value;
    }
  }
  if (!inRun) return undefined;
  for (const [name, s] of Object.entries(specs)) if (out[name] === undefined && 'default' in s) out[name] = Array.isArray(s.default) ? [] : s.default;
  if (cmd.length) out.cmd = cmd;
  try {
    checkRunArgs(out as { memory?: number; cpus?: number });
  } catch {
    return undefined;
  }
  return out as unknown as RunArgs;
}
