/**
 * `kata-ctl version`: what is installed, from local data only — kata-ts's
 * version (package.json) and git commit when run from a checkout, Node and
 * V8, the guest kernel (its release file) and image (size, sha256, build
 * time) the configuration points at, and the agent API (proto/agent.proto's
 * package, which names its version). Nothing is asked of the network or of a
 * running VM.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { guestAssets, type Config } from '../runtime/config';
import { fileSha256 } from './host-check';

export interface VersionReport {
  schemaVersion: 1;
  kataTs: { version: string; commit: string | null };
  node: { version: string; v8: string };
  guest: {
    kernel: { path: string; release: string | null };
    image: { path: string; sizeBytes: number | null; sha256: string | null; built: string | null };
  };
  agentApi: { package: string | null; service: string | null };
  configuration: string | null;
}

/** The repository root (dist/src/ctl → three up; src/ctl → two up). */
function repoRoot(): string {
  for (const up of ['../../..', '../..']) {
    const dir = path.resolve(__dirname, up);
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
  }
  return path.resolve(__dirname, '../../..');
}

function readOr<T>(fn: () => T, fallback: T): T {
  try {
    return fn();
  } catch {
    return fallback;
  }
}

export function versionReport(cfg: Config): VersionReport {
  const root = repoRoot();
  const pkg = readOr(() => JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version?: string }, {});
  const commit = fs.existsSync(path.join(root, '.git'))
    ? readOr(() => execFileSync('git', ['-C', root, 'rev-parse', '--short=12', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }).trim() || null, null)
    : null;
  const proto = readOr(() => fs.readFileSync(path.join(root, 'proto', 'agent.proto'), 'utf8'), '');
  const pkgName = /^package\s+([\w.]+)\s*;/m.exec(proto)?.[1] ?? null;
  const svc = /^service\s+(\w+)/m.exec(proto)?.[1];
  const a = guestAssets(cfg, 'qemu');
  const releaseFile = path.join(path.dirname(a.kernel), 'release');
  const img = readOr(() => fs.statSync(a.image), undefined);
  return {
    schemaVersion: 1,
    kataTs: { version: pkg.version ?? 'unknown', commit },
    node: { version: process.version, v8: process.versions.v8 },
    guest: {
      kernel: { path: a.kernel, release: fs.existsSync(a.kernel) ? readOr(() => fs.readFileSync(releaseFile, 'utf8').trim(), null) : null },
      image: { path: a.image, sizeBytes: img?.size ?? null, sha256: img ? fileSha256(a.image) : null, built: img ? img.mtime.toISOString() : null },
    },
    agentApi: { package: pkgName, service: pkgName && svc ? `${pkgName}.${svc}` : null },
    configuration: cfg.source || null,
  };
}

export function versionText(r: VersionReport): string {
  const k = r.guest.kernel;
  const i = r.guest.image;
  return [
    `kata-ts ${r.kataTs.version}${r.kataTs.commit ? ` (commit ${r.kataTs.commit})` : ''}`,
    `node ${r.node.version} (v8 ${r.node.v8})`,
    `guest kernel: ${k.release ? `Linux ${k.release}` : 'not built'} ${k.path}`,
    `guest image: ${i.sizeBytes !== null ? `${i.sizeBytes} bytes, built ${i.built}, sha256:${i.sha256!.slice(0, 16)}` : 'not built'} ${i.path}`,
    `agent API: ${r.agentApi.service ?? 'unknown'}`,
    `configuration: ${r.configuration ?? '(none: built-in defaults)'}`,
  ].join('\n') + '\n';
}
