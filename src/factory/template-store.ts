/**
 * The VM template on disk: `<template_path>/` holds `memory` (guest RAM,
 * sparse), `state` (QEMU's device/CPU state, x-ignore-shared) and
 * `manifest.json` (the key inputs, hashes, sizes), written last and
 * atomically — a directory without a readable manifest is no template.
 *
 * status() is what a sandbox start asks: cheap (stats and a 16-byte read,
 * no hashing), and says valid, or missing/stale/corrupt and why.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { keyDifferences, templateKey, type TemplateInputs } from './template-key';

export const MANIFEST = 'manifest.json';
export const MEMORY = 'memory';
export const STATE = 'state';
/** QEMU's migration stream starts with "QEVM" and version 3 (migration/savevm.c). */
const QEMU_VM_MAGIC = Buffer.from([0x51, 0x45, 0x56, 0x4d, 0x00, 0x00, 0x00, 0x03]);

export interface TemplateManifest {
  schemaVersion: 1;
  key: string;
  inputs: TemplateInputs;
  createdAt: string;
  qemuVersion: string;
  kernelSha256: string;
  imageSha256: string;
  stateBytes: number;
  memoryBytes: number;
  /** Bytes of `memory` holding data (what a clone copies). */
  memoryDataBytes: number;
  /** factory init mounted a tmpfs at the template path (destroy unmounts it). */
  mountedTmpfs: boolean;
  /** Seconds from QEMU spawn to the agent's ready line, and to the saved state. */
  bootS: number;
  saveS: number;
}

export type TemplateState = 'valid' | 'missing' | 'stale' | 'corrupt';

export interface TemplateStatus {
  schemaVersion: 1;
  path: string;
  state: TemplateState;
  /** Why it cannot be cloned (empty when valid). */
  reasons: string[];
  /** The key the current configuration asks for. */
  wantedKey: string;
  manifest?: TemplateManifest;
  ageS?: number;
  /** Bytes the template's files occupy on the host (allocated blocks). */
  diskBytes?: number;
}

function allocated(file: string): number {
  try {
    return fs.statSync(file).blocks * 512;
  } catch {
    return 0;
  }
}

/** The manifest at `dir`, or an Error if it is not one of ours. */
export function readManifest(dir: string): TemplateManifest {
  const m = JSON.parse(fs.readFileSync(path.join(dir, MANIFEST), 'utf8')) as TemplateManifest;
  const ok = m && m.schemaVersion === 1 && typeof m.key === 'string' && m.inputs && typeof m.stateBytes === 'number' && typeof m.memoryBytes === 'number';
  if (!ok) throw new Error('not a kata-ts template manifest');
  return m;
}

/** What a hypervisor's template holds: its state and RAM files, and the state file's first bytes. */
export interface TemplateLayout {
  state: string;
  memory: string;
  magic: Buffer;
  /** The header the magic starts, as an error names it. */
  magicName: string;
}

/** QEMU's template: a migration stream (x-ignore-shared) and the RAM file. */
export const QEMU_TEMPLATE_LAYOUT: TemplateLayout = { state: STATE, memory: MEMORY, magic: QEMU_VM_MAGIC, magicName: "QEMU's migration header" };

/** The template at `dir` (laid out as `layout`, QEMU's by default) against the inputs the configuration has now. */
export function templateStatus(dir: string, wanted: TemplateInputs, layout: TemplateLayout = QEMU_TEMPLATE_LAYOUT): TemplateStatus {
  const wantedKey = templateKey(wanted);
  const base = { schemaVersion: 1 as const, path: dir, wantedKey };
  if (!fs.existsSync(path.join(dir, MANIFEST))) {
    return { ...base, state: 'missing', reasons: [fs.existsSync(dir) ? `no template in ${dir} (run kata-ctl factory init)` : `${dir} does not exist (run kata-ctl factory init)`] };
  }
  let manifest: TemplateManifest;
  try {
    manifest = readManifest(dir);
  } catch (err) {
    return { ...base, state: 'corrupt', reasons: [`${path.join(dir, MANIFEST)}: ${(err as Error).message}`] };
  }
  const extra = {
    manifest, ageS: Math.round((Date.now() - Date.parse(manifest.createdAt)) / 1000),
    diskBytes: allocated(path.join(dir, layout.memory)) + allocated(path.join(dir, layout.state)) + allocated(path.join(dir, MANIFEST)),
  };
  const corrupt: string[] = [];
  const size = (f: string) => { try { return fs.statSync(path.join(dir, f)).size; } catch { return -1; } };
  const st = size(layout.state);
  if (st !== manifest.stateBytes) corrupt.push(st < 0 ? `${layout.state} is missing` : `${layout.state} holds ${st} bytes, the manifest says ${manifest.stateBytes} (truncated or replaced)`);
  else {
    const head = Buffer.alloc(layout.magic.length);
    const fd = fs.openSync(path.join(dir, layout.state), 'r');
    try { fs.readSync(fd, head, 0, head.length, 0); } finally { fs.closeSync(fd); }
    if (!head.equals(layout.magic)) corrupt.push(`${layout.state} does not start with ${layout.magicName}`);
  }
  const mem = size(layout.memory);
  if (mem !== manifest.memoryBytes) corrupt.push(mem < 0 ? `${layout.memory} is missing` : `${layout.memory} holds ${mem} bytes, the manifest says ${manifest.memoryBytes}`);
  if (corrupt.length) return { ...base, ...extra, state: 'corrupt', reasons: corrupt };
  if (manifest.key !== wantedKey) {
    const diff = keyDifferences(manifest.inputs, wanted);
    return { ...base, ...extra, state: 'stale', reasons: [`template key ${manifest.key} ≠ ${wantedKey}`, ...diff] };
  }
  return { ...base, ...extra, state: 'valid', reasons: [] };
}

/**
 * Makes `dir` ready for a new template: refuses a directory holding files
 * other than a template's (`files`) or `/`, removes an old template, and
 * mounts a tmpfs sized for the RAM there (as Kata does) unless something is
 * mounted already; without one, one warning line and the RAM is a file on
 * that filesystem. Returns whether it mounted the tmpfs. `onError` makes the
 * caller's error.
 */
export function prepareTemplateDir(dir: string, files: readonly string[], memoryMiB: number, progress: (line: string) => void, onError: (msg: string) => Error): boolean {
  // Never a tmpfs over, or a clean-up of, a directory that holds anything else.
  const foreign = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => !files.includes(f)) : [];
  if (path.resolve(dir) === '/' || foreign.length) {
    throw onError(`[factory] template_path ${dir} holds other files (${foreign.slice(0, 3).join(', ') || '/'}${foreign.length > 3 ? ', …' : ''}): refusing to make a template there; point it at a directory of its own`);
  }
  removeTemplateFiles(dir, files, onError);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (isMountPoint(dir)) return false;
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${memoryMiB + 64}M,mode=0700`, TMPFS_SOURCE, dir], { encoding: 'utf8' });
  if (r.status === 0) return true;
  progress(`warning: cannot mount a tmpfs at ${dir} (${(r.stderr || r.error?.message || '').trim()}); the template's RAM is a file on that filesystem`);
  return false;
}

/** Writes the manifest last, atomically (rename): until then the directory is no template. */
export function writeManifest(dir: string, m: TemplateManifest): void {
  const tmp = path.join(dir, `.${MANIFEST}.tmp`);
  fs.writeFileSync(tmp, JSON.stringify(m, null, 2) + '\n', { mode: 0o600 });
  fs.renameSync(tmp, path.join(dir, MANIFEST));
}

/** The source of the mount at `dir` (from /proc/self/mountinfo), or undefined when `dir` is no mount point. */
export function mountSource(dir: string): string | undefined {
  try {
    const real = fs.realpathSync(dir);
    const unescape = (x: string) => x.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
    let found: string | undefined;
    for (const l of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      // field 5 is the mount point; after " - ": fstype, source (octal-escaped).
      const mp = l.split(' ')[4];
      if (mp === undefined || unescape(mp) !== real) continue;
      found = unescape(l.split(' - ')[1]?.split(' ')[1] ?? ''); // the last mount there wins
    }
    return found;
  } catch {
    return undefined;
  }
}

export function isMountPoint(dir: string): boolean {
  return mountSource(dir) !== undefined;
}

/** The tmpfs source name factory init mounts with: destroy unmounts only its own. */
export const TMPFS_SOURCE = 'kata-ts-template';

/** Files a template directory may hold (anything else: it is not ours to mount over or clear). */
export const TEMPLATE_FILES = [MANIFEST, `.${MANIFEST}.tmp`, STATE, MEMORY];

/**
 * Removes a template's files (`files`: the hypervisor's list), then the
 * tmpfs `factory init` mounted (by its source name, and only once empty),
 * then the directory if empty. Returns what it removed. `onError` makes the
 * error for an unmount that fails (the caller's error class).
 */
export function removeTemplateFiles(dir: string, files: readonly string[], onError: (msg: string) => Error): string[] {
  const removed: string[] = [];
  if (!fs.existsSync(dir)) return removed;
  for (const f of files) {
    const p = path.join(dir, f);
    if (fs.existsSync(p)) {
      fs.rmSync(p, { force: true });
      removed.push(p);
    }
  }
  if (mountSource(dir) === TMPFS_SOURCE && fs.readdirSync(dir).length === 0) {
    const r = spawnSync('umount', [dir], { encoding: 'utf8' });
    if (r.status !== 0) throw onError(`cannot unmount ${dir}: ${(r.stderr || '').trim()}`);
    removed.push(`tmpfs at ${dir}`);
  }
  try {
    fs.rmdirSync(dir);
    removed.push(dir);
  } catch { /* not empty (someone else's files) or already gone */ }
  return removed;
}
