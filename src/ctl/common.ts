/**
 * What every kata-ctl command shares: the global options (--config), loading
 * the configuration the same way the runtime does, and --json printing
 * (stable key order is the objects' own; two-space indent, trailing newline).
 */
import { loadConfig, type Config } from '../runtime/config';

export interface GlobalArgs {
  config?: string;
  json?: boolean;
}

export function ctlConfig(argv: GlobalArgs): Config {
  return loadConfig(argv.config, process.env);
}

export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + '\n');
}

export const JSON_OPTION = { type: 'boolean', default: false, describe: 'machine-readable output (documented, stable schema)' } as const;
