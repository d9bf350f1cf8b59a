/**
 * OCI specs on the host side: the default spec `kata-ts run` builds from its
 * flags (the same defaults `crun spec`/`runc spec` and Docker use: default
 * capability set, NOFILE rlimit, masked and read-only /proc paths), and
 * reading a bundle's config.json with clear errors.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { validateSpec, BundleError, type OciSpec, type OciProcess } from '../protocols/oci';
import { KataError } from '../common/errors';

export class SpecError extends KataError<'bundle' | 'invalid'> {}

export const DEFAULT_CAPS = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID',
  'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
];

export const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface ProcessOptions {
  args: string[];
  env?: string[];
  cwd?: string;
  uid?: number;
  gid?: number;
  additionalGids?: number[];
  terminal?: boolean;
  consoleSize?: { height: number; width: number };
}

export function defaultProcess(o: ProcessOptions): OciProcess {
  const env = [DEFAULT_PATH, ...(o.terminal ? ['TERM=xterm'] : [])];
  for (const e of o.env ?? []) {
    const k = e.slice(0, e.indexOf('=') + 1);
    const i = env.findIndex((x) => x.startsWith(k));
    if (i >= 0) env[i] = e;
    else env.push(e);
  }
  const p: OciProcess = {
    terminal: !!o.terminal,
    user: { uid: o.uid ?? 0, gid: o.gid ?? 0, ...(o.additionalGids?.length ? { additionalGids: o.additionalGids } : {}) },
    args: o.args,
    env,
    cwd: o.cwd ?? '/',
    capabilities: { bounding: DEFAULT_CAPS, effective: DEFAULT_CAPS, permitted: DEFAULT_CAPS },
    rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
    noNewPrivileges: true,
  };
  if (o.consoleSize) p.consoleSize = o.consoleSize;
  return p;
}

export function defaultSpec(o: ProcessOptions & { hostname?: string; readonlyRootfs?: boolean }): OciSpec {
  return {
    ociVersion: '1.0.2',
    process: defaultProcess(o),
    root: { path: 'rootfs', readonly: !!o.readonlyRootfs },
    hostname: o.hostname ?? 'kata-ts',
    mounts: [],
    linux: {
      namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network' }],
      maskedPaths: ['/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
        '/proc/timer_stats', '/proc/sched_debug', '/sys/firmware', '/proc/scsi'],
      readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    },
  };
}

/** Reads and validates <bundle>/config.json; returns the spec and the absolute rootfs dir. */
export function readBundle(bundleDir: string): { spec: OciSpec; rootfs: string } {
  const file = path.join(bundleDir, 'config.json');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new SpecError('bundle', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  let spec: unknown;
  try {
    spec = JSON.parse(text);
  } catch (err) {
    throw new SpecError('invalid', `${file} is not valid JSON: ${(err as Error).message}`);
  }
  try {
    validateSpec(spec);
  } catch (err) {
    if (err instanceof BundleError) throw new SpecError('invalid', `${file}: ${err.message.replace(/^OCI spec: /, '')}`);
    throw err;
  }
  const rootPath = spec.root?.path;
  if (!rootPath) throw new SpecError('invalid', `${file}: root.path is required`);
  const rootfs = path.resolve(bundleDir, rootPath);
  if (!fs.existsSync(rootfs) || !fs.statSync(rootfs).isDirectory()) throw new SpecError('bundle', `rootfs ${rootfs} is not a directory`);
  return { spec, rootfs };
}

/**
 * The pod's network namespace from a sandbox container's spec
 * (`linux.namespaces[type=network].path`, as CRI + CNI set it), or
 * undefined when the spec asks for a fresh namespace (no path) or none.
 */
export function networkNamespacePath(spec: OciSpec): string | undefined {
  const ns = spec.linux?.namespaces?.find((n) => n.type === 'network');
  return ns?.path || undefined;
}
