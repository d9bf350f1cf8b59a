/**
 * The containerd side of installing kata-ts, as Kata's kata-deploy does it:
 * a runtime handler for containerd's CRI plugin in containerd's config.toml
 * (config version 2, containerd 1.6/1.7), so that a Kubernetes RuntimeClass
 * with `handler: kata-ts` runs its pods in kata-ts VMs:
 *
 *   [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-ts]
 *     runtime_type = "io.containerd.kata-ts.v2"
 *     privileged_without_host_devices = true
 *     pod_annotations = ["io.katacontainers.*"]
 *
 * The snippet is one block between marker comments, appended at the end
 * (TOML allows a table anywhere once), so uninstall removes exactly what
 * install wrote and leaves every other byte of the file as it was. Both are
 * idempotent: a second install (same handler) or uninstall changes nothing
 * and writes nothing. Before any write the file is copied to
 * `<file>.kata-ts.bak`, and the new text goes in through a temp file and a
 * rename (same owner and mode), after checking that it still parses and
 * says what we meant. What we refuse, with the reason: a version 1 (or
 * unversioned, non-empty) config, whose plugin tables have other names; a
 * table for the handler that we did not write (the user's own: we neither
 * overwrite nor remove it); a file that is not TOML.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError } from '../common/errors';
import { parseToml, TomlError, type TomlTable, type TomlValue } from '../common/toml';

export class ContainerdConfigError extends KataError<'invalid' | 'conflict' | 'io'> {}

export const DEFAULT_CONTAINERD_CONFIG = '/etc/containerd/config.toml';
export const DEFAULT_HANDLER = 'kata-ts';
export const RUNTIME_TYPE = 'io.containerd.kata-ts.v2';
export const POD_ANNOTATIONS = ['io.katacontainers.*'];
const CRI = 'io.containerd.grpc.v1.cri';

export interface InstallOptions {
  /** The CRI runtime handler name (RuntimeClass `handler`). */
  handler?: string;
  /** Copy the file to <file>.kata-ts.bak before changing it (default true). */
  backup?: boolean;
  /** Compute the result, write nothing. */
  dryRun?: boolean;
  /**
   * The handler's kata-ts configuration file: written as the runtime's
   * options `ConfigPath` (Kata's way), which containerd hands the shim
   * (src/shim/runtime-options.ts). Absent: the shim finds its file as
   * everywhere else ($KATA_TS_CONFIG, /etc/kata-ts/configuration.toml).
   */
  configPath?: string;
}

export interface ConfigChange {
  file: string;
  changed: boolean;
  /** Where the previous content was saved, if it was. */
  backup?: string;
  /** The file's text after the change (also when dryRun). */
  text: string;
  /** Notes for the user (e.g. the CRI plugin is disabled in this config). */
  warnings: string[];
}

const begin = (h: string) => `# BEGIN kata-ts runtime handler "${h}" (written by kata-ctl install containerd; kata-ctl uninstall containerd removes it)`;
const end = (h: string) => `# END kata-ts runtime handler "${h}"`;

function checkHandler(h: string): void {
  // A bare TOML key, and a valid RuntimeClass handler (DNS label).
  if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(h)) throw new ContainerdConfigError('invalid', `handler name '${h}' must be a DNS label (lower-case letters, digits, '-'), as a RuntimeClass handler is`);
}

/** The config snippet for `handler` (what install appends, markers included). */
export function runtimeSnippet(handler = DEFAULT_HANDLER, configPath?: string): string {
  checkHandler(handler);
  const table = `plugins."${CRI}".containerd.runtimes.${handler}`;
  return [
    begin(handler),
    `[${table}]`,
    `  runtime_type = "${RUNTIME_TYPE}"`,
    '  # A VM does not get the host\'s devices for a privileged container (as Kata).',
    '  privileged_without_host_devices = true',
    '  # Pod annotations the shim may read (Kata\'s prefix; CRI passes no others).',
    `  pod_annotations = [${POD_ANNOTATIONS.map((a) => JSON.stringify(a)).join(', ')}]`,
    ...(configPath ? [
      `[${table}.options]`,
      '  # This handler\'s kata-ts configuration (containerd passes it to the shim).',
      `  ConfigPath = ${JSON.stringify(configPath)}`,
    ] : []),
    end(handler),
  ].join('\n') + '\n';
}

/** A configuration file for a handler must be one the shim can load: absolute and a file. */
function checkConfigPath(p: string): void {
  if (!path.isAbsolute(p)) throw new ContainerdConfigError('invalid', `--config ${p}: must be an absolute path (containerd passes it to the shim as it is)`);
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    throw new ContainerdConfigError('invalid', `--config ${p}: no such file`);
  }
  if (!st.isFile()) throw new ContainerdConfigError('invalid', `--config ${p}: not a regular file`);
}

function parse(text: string, file: string): TomlTable {
  try {
    return parseToml(text).value;
  } catch (err) {
    if (err instanceof TomlError) throw new ContainerdConfigError('invalid', `${file}: not valid TOML: ${err.message}`, { cause: err });
    throw err;
  }
}

const table = (v: TomlValue | undefined): TomlTable | undefined => (v && typeof v === 'object' && !Array.isArray(v) ? v : undefined);

function runtimesOf(cfg: TomlTable): TomlTable | undefined {
  return table(table(table(table(cfg.plugins)?.[CRI])?.containerd)?.runtimes);
}

/** [start, endExclusive) line range of our block for `handler`, or undefined. */
function findBlock(lines: string[], handler: string, file: string): [number, number] | undefined {
  const b = lines.findIndex((l) => l.trim() === begin(handler));
  if (b < 0) return undefined;
  const e = lines.findIndex((l, i) => i > b && l.trim() === end(handler));
  if (e < 0) throw new ContainerdConfigError('invalid', `${file}: the kata-ts block for "${handler}" has its BEGIN marker (line ${b + 1}) but no END marker; fix the file by hand`);
  return [b, e + 1];
}

function checkVersion(cfg: TomlTable, file: string): void {
  const v = cfg.version;
  if (v === 2 || v === 3) {
    if (v === 3) throw new ContainerdConfigError('invalid', `${file}: config version 3 (containerd 2.x) names the CRI plugin differently; this installer writes version 2 (containerd 1.6/1.7)`);
    return;
  }
  if (v === undefined && Object.keys(cfg).length === 0) return; // empty, or comments only
  throw new ContainerdConfigError('invalid', `${file}: containerd config version ${v ?? '1 (no version key)'}: its CRI plugin is named "cri", not "${CRI}"; convert it to version 2 (\`containerd config default\` shows the layout) and run again`);
}

function writeAtomically(file: string, text: string): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.kata-ts.tmp`);
  let mode = 0o644;
  let owner: { uid: number; gid: number } | undefined;
  try {
    const st = fs.statSync(file);
    mode = st.mode & 0o7777;
    owner = { uid: st.uid, gid: st.gid };
  } catch {
    /* a new file */
  }
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(tmp, text, { mode });
    fs.chmodSync(tmp, mode);
    if (owner && process.getuid?.() === 0) fs.chownSync(tmp, owner.uid, owner.gid);
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw new ContainerdConfigError('io', `cannot write ${file}: ${(err as Error).message}`, { cause: err });
  }
}

function readConfig(file: string): { text: string; exists: boolean } {
  try {
    return { text: fs.readFileSync(file, 'utf8'), exists: true };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { text: '', exists: false };
    throw new ContainerdConfigError('io', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
}

function commit(file: string, before: { text: string; exists: boolean }, text: string, opts: InstallOptions, warnings: string[]): ConfigChange {
  if (text === before.text) return { file, changed: false, text, warnings };
  if (opts.dryRun) return { file, changed: true, text, warnings };
  let backup: string | undefined;
  if (opts.backup !== false && before.exists) {
    backup = `${file}.kata-ts.bak`;
    try {
      fs.copyFileSync(file, backup);
    } catch (err) {
      throw new ContainerdConfigError('io', `cannot back up ${file} to ${backup}: ${(err as Error).message}`, { cause: err });
    }
  }
  writeAtomically(file, text);
  return { file, changed: true, backup, text, warnings };
}

/** Adds (or refreshes) the kata-ts runtime handler in containerd's config `file`. */
export function installContainerdRuntime(file = DEFAULT_CONTAINERD_CONFIG, opts: InstallOptions = {}): ConfigChange {
  const handler = opts.handler ?? DEFAULT_HANDLER;
  if (opts.configPath !== undefined) checkConfigPath(opts.configPath);
  const snippet = runtimeSnippet(handler, opts.configPath);
  const before = readConfig(file);
  const cfg = parse(before.text, file);
  checkVersion(cfg, file);
  const lines = before.text.split('\n');
  const block = findBlock(lines, handler, file);
  let text: string;
  if (block) {
    // Ours already: bring it up to date in place (no change when it is).
    text = [...lines.slice(0, block[0]), ...snippet.replace(/\n$/, '').split('\n'), ...lines.slice(block[1])].join('\n');
  } else {
    if (runtimesOf(cfg)?.[handler] !== undefined) {
      throw new ContainerdConfigError('conflict', `${file}: a runtime handler "${handler}" is already configured there, not by kata-ctl; leaving it alone (remove it, or pick another name with --handler)`);
    }
    const old = before.text === '' || before.text.endsWith('\n') ? before.text : `${before.text}\n`;
    const base = cfg.version === undefined ? `version = 2\n${old}` : old;
    text = `${base}\n${snippet}`;
  }
  const after = parse(text, file);
  const rt = table(runtimesOf(after)?.[handler]);
  if (rt?.runtime_type !== RUNTIME_TYPE) throw new ContainerdConfigError('invalid', `${file}: after the edit, the handler "${handler}" does not read back as ${RUNTIME_TYPE}; nothing written`);
  if (opts.configPath !== undefined && table(rt.options)?.ConfigPath !== opts.configPath) throw new ContainerdConfigError('invalid', `${file}: after the edit, the handler "${handler}" does not read back with ConfigPath ${opts.configPath}; nothing written`);
  const warnings: string[] = [];
  const disabled = after.disabled_plugins;
  if (Array.isArray(disabled) && disabled.some((p) => p === 'cri' || p === CRI)) {
    warnings.push(`${file} disables containerd's CRI plugin (disabled_plugins): Kubernetes cannot use any handler until it is enabled`);
  }
  return commit(file, before, text, opts, warnings);
}

/** Removes the block install wrote for `handler`; a handler we did not write is left alone. */
export function uninstallContainerdRuntime(file = DEFAULT_CONTAINERD_CONFIG, opts: InstallOptions = {}): ConfigChange {
  const handler = opts.handler ?? DEFAULT_HANDLER;
  checkHandler(handler);
  const before = readConfig(file);
  if (!before.exists) return { file, changed: false, text: '', warnings: [`${file} does not exist: nothing to remove`] };
  const lines = before.text.split('\n');
  const block = findBlock(lines, handler, file);
  const warnings: string[] = [];
  if (!block) {
    if (runtimesOf(parse(before.text, file))?.[handler] !== undefined) {
      warnings.push(`${file} has a runtime handler "${handler}" that kata-ctl did not write; left as it is`);
    }
    return { file, changed: false, text: before.text, warnings };
  }
  // Drop the block and the blank line install put before it.
  let start = block[0];
  if (start > 0 && lines[start - 1] === '') start--;
  const text = [...lines.slice(0, start), ...lines.slice(block[1])].join('\n');
  parse(text, file);
  return commit(file, before, text, opts, warnings);
}
