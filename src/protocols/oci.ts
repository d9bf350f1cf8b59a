/**
 * The subset of the OCI runtime spec 1.0.2 (config.json) that kata-ts reads
 * and writes, as TypeScript types. Unknown fields are preserved as they pass
 * through (the guest's crun is the one that interprets the full spec).
 * Shared by the host (src/runtime builds and validates specs) and the agent
 * (which adapts them for the guest): the agent may import only src/protocols
 * and src/common.
 */
import { KataError } from '../common/errors';

export interface OciUser { uid: number; gid: number; additionalGids?: number[]; umask?: number; username?: string }
export interface OciRlimit { type: string; hard: number; soft: number }
export interface OciCapabilities { bounding?: string[]; effective?: string[]; inheritable?: string[]; permitted?: string[]; ambient?: string[] }
export interface OciProcess {
  terminal?: boolean;
  consoleSize?: { height: number; width: number };
  user: OciUser;
  args: string[];
  env?: string[];
  cwd: string;
  capabilities?: OciCapabilities;
  rlimits?: OciRlimit[];
  noNewPrivileges?: boolean;
  apparmorProfile?: string;
  oomScoreAdj?: number;
  selinuxLabel?: string;
  [k: string]: unknown;
}
export interface OciMount { destination: string; type?: string; source?: string; options?: string[] }
export interface OciNamespace { type: string; path?: string }
export interface OciLinux {
  namespaces?: OciNamespace[];
  resources?: Record<string, unknown>;
  cgroupsPath?: string;
  maskedPaths?: string[];
  readonlyPaths?: string[];
  seccomp?: unknown;
  mountLabel?: string;
  uidMappings?: unknown[];
  gidMappings?: unknown[];
  sysctl?: Record<string, string>;
  devices?: unknown[];
  [k: string]: unknown;
}
export interface OciSpec {
  ociVersion: string;
  process?: OciProcess;
  root?: { path: string; readonly?: boolean };
  hostname?: string;
  mounts?: OciMount[];
  hooks?: unknown;
  annotations?: Record<string, string>;
  linux?: OciLinux;
  [k: string]: unknown;
}

/** Signal names as the OCI/kill world spells them, to numbers (x86_64 Linux). */
export const SIGNALS: Record<string, number> = {
  SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGBUS: 7, SIGFPE: 8,
  SIGKILL: 9, SIGUSR1: 10, SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15,
  SIGSTKFLT: 16, SIGCHLD: 17, SIGCONT: 18, SIGSTOP: 19, SIGTSTP: 20, SIGTTIN: 21, SIGTTOU: 22,
  SIGURG: 23, SIGXCPU: 24, SIGXFSZ: 25, SIGVTALRM: 26, SIGPROF: 27, SIGWINCH: 28, SIGIO: 29,
  SIGPWR: 30, SIGSYS: 31,
};

/** A spec crun cannot run: kind 'invalid' (the agent answers INVALID_ARGUMENT). */
export class BundleError extends KataError<'invalid'> {
  constructor(message: string, options?: { cause?: unknown }) {
    super('invalid', message, options);
  }
}

/** Checks the parts of a spec crun cannot do without; throws BundleError. */
export function validateSpec(spec: unknown): asserts spec is OciSpec {
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) throw new BundleError('OCI spec must be a JSON object');
  const s = spec as Record<string, unknown>;
  if (typeof s.ociVersion !== 'string') throw new BundleError('OCI spec: ociVersion must be a string');
  const p = s.process as Record<string, unknown> | undefined;
  if (typeof p !== 'object' || p === null) throw new BundleError('OCI spec: process is required');
  if (!Array.isArray(p.args) || p.args.length === 0 || !p.args.every((a) => typeof a === 'string'))
    throw new BundleError('OCI spec: process.args must be a non-empty array of strings');
  if (typeof p.cwd !== 'string' || !p.cwd.startsWith('/')) throw new BundleError('OCI spec: process.cwd must be an absolute path');
  const u = p.user as Record<string, unknown> | undefined;
  if (typeof u !== 'object' || u === null || !Number.isInteger(u.uid) || !Number.isInteger(u.gid))
    throw new BundleError('OCI spec: process.user.uid and gid must be integers');
  if (p.env !== undefined && (!Array.isArray(p.env) || !p.env.every((e) => typeof e === 'string' && e.includes('='))))
    throw new BundleError('OCI spec: process.env must be an array of KEY=VALUE strings');
  if (s.mounts !== undefined && !Array.isArray(s.mounts)) throw new BundleError('OCI spec: mounts must be an array');
  for (const m of (s.mounts as unknown[] | undefined) ?? []) {
    const mm = m as Record<string, unknown>;
    if (typeof mm?.destination !== 'string' || !mm.destination.startsWith('/'))
      throw new BundleError('OCI spec: every mount needs an absolute destination');
  }
}

