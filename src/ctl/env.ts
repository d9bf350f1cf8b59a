/**
 * `kata-ctl env`: the resolved environment — which configuration file was
 * used and every effective value (SCHEMA order, defaults included), the
 * kata-ts and Node versions, the guest kernel and image with their hashes,
 * and the run and cache directories. The text form is valid TOML for the
 * configuration part, so it can be saved and edited as a starting file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { guestAssets, SCHEMA, type Config } from '../runtime/config';
import { sandboxesDir } from '../runtime/state';
import { fileSha256 } from './host-check';
import { stringifyToml } from '../common/toml';
import { factoryLine, type FactoryEnv } from './factory-state';

export interface EnvReport {
  schemaVersion: 1;
  config: { file: string | null; values: Record<string, Record<string, string | number | boolean | string[]>> };
  kataTs: { version: string; node: string };
  guest: {
    kernel: { path: string; exists: boolean; release: string | null; sha256: string | null };
    image: { path: string; exists: boolean; sizeBytes: number | null; sha256: string | null };
  };
  paths: { runDir: string; cacheDir: string; sandboxesDir: string };
  /** The VM template ([factory]); absent when not asked for (envReport without it). */
  factory?: FactoryEnv;
}

function packageVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

export function envReport(cfg: Config, factory?: FactoryEnv): EnvReport {
  const values: EnvReport['config']['values'] = {};
  for (const [sec, keys] of Object.entries(SCHEMA)) {
    const cur = (cfg as unknown as Record<string, Record<string, string | number | boolean | string[]>>)[sec]!;
    values[sec] = Object.fromEntries(Object.keys(keys).map((k) => [k, cur[k]!]));
  }
  const a = guestAssets(cfg, 'qemu');
  const kOk = fs.existsSync(a.kernel);
  const iOk = fs.existsSync(a.image);
  const rel = path.join(path.dirname(a.kernel), 'release');
  return {
    schemaVersion: 1,
    config: { file: cfg.source || null, values },
    kataTs: { version: packageVersion(), node: process.version },
    guest: {
      kernel: { path: a.kernel, exists: kOk, release: fs.existsSync(rel) ? fs.readFileSync(rel, 'utf8').trim() : null, sha256: kOk ? fileSha256(a.kernel) : null },
      image: { path: a.image, exists: iOk, sizeBytes: iOk ? fs.statSync(a.image).size : null, sha256: iOk ? fileSha256(a.image) : null },
    },
    paths: { runDir: cfg.runtime.run_dir, cacheDir: cfg.runtime.cache_dir, sandboxesDir: sandboxesDir(cfg.runtime.run_dir) },
    ...(factory ? { factory } : {}),
  };
}

/** One `key = value` line, written by the same TOML library that reads the file. */
function tomlLine(key: string, v: string | number | boolean | string[]): string {
  return stringifyToml({ [key]: v }).trim();
}

export function envText(r: EnvReport): string {
  const out: string[] = [];
  out.push(`# kata-ts ${r.kataTs.version} (node ${r.kataTs.node})`);
  out.push(`# configuration: ${r.config.file ?? '(none: built-in defaults)'}`);
  const k = r.guest.kernel;
  const i = r.guest.image;
  out.push(`# guest kernel: ${k.path} ${k.exists ? `Linux ${k.release ?? '?'} sha256:${k.sha256!.slice(0, 16)}` : '(missing)'}`);
  out.push(`# guest image:  ${i.path} ${i.exists ? `${i.sizeBytes} bytes sha256:${i.sha256!.slice(0, 16)}` : '(missing)'}`);
  out.push(`# run dir: ${r.paths.runDir}  cache dir: ${r.paths.cacheDir}`);
  if (r.factory) out.push(`# VM factory: ${factoryLine(r.factory)}`);
  for (const [sec, keys] of Object.entries(r.config.values)) {
    out.push('', `[${sec}]`);
    const specs = SCHEMA[sec as keyof typeof SCHEMA] as Record<string, { describe: string }>;
    for (const [key, v] of Object.entries(keys)) out.push(`${tomlLine(key, v)}  # ${specs[key]!.describe}`);
  }
  return out.join('\n') + '\n';
}
