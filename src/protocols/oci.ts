/**
 * The subset of the OCI runtime spec 1.0.2 (config.json) that kata-ts reads
 * and writes, as TypeScript types. Unknown fields are preserved as they pass
 * through (the guest's crun is the one that interprets the full spec).
 * Shared by the host (src/runtime builds specs) and the agent (which adapts
 * them for the guest) — it lives with the agent because the agent may import
 * only src/protocols and itself; the host imports it as a types-only module.
 */
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
