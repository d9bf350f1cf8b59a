/**
 * Adapts an OCI spec from the host into the bundle crun runs in the guest.
 *
 * The host's spec was written for a host: namespace paths, hooks, AppArmor
 * and SELinux labels and cgroup paths name host objects that do not exist in
 * the guest. Kata's agent drops or rewrites the same things: the VM is the
 * pod, so containers share the guest's network namespace; hooks run on the
 * host side if anywhere; the cgroup lives under the agent's own hierarchy.
 * A pid/ipc/uts namespace *path* is CRI asking to join the pod's (the
 * sandbox container's) namespace: it is pointed at the sandbox container's
 * guest namespace, as Kata's agent does (update_container_namespaces).
 * net.* sysctls cannot be set by crun without a network namespace of the
 * container's own; they are taken out for the agent to apply guest-wide
 * (the guest's netns is the pod's).
 * Everything else (args, env, cwd, user, rlimits, capabilities, hostname,
 * mounts, readonly root, seccomp, other sysctls) passes through to crun.
 */
import { validateSpec, type OciSpec, type OciMount, type OciNamespace } from '../protocols/oci';
import { SANDBOX_SHM_GUEST_DIR, underSharedGuestDir, isDirectVolumeGuestPath } from '../protocols/guest-paths';
export { validateSpec } from '../protocols/oci';

/** Mounts every Linux container expects; added when the spec lacks them. */
export const DEFAULT_MOUNTS: OciMount[] = [
  { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
  { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
  { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
  { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
  { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
  { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
  { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
];

const KEPT_NAMESPACES = new Set(['pid', 'ipc', 'uts', 'mount', 'cgroup', 'user']);
/** Namespaces a container may share with its pod's sandbox container (CRI gives their paths). */
export const POD_NAMESPACES = new Set(['pid', 'ipc', 'uts']);

export interface GuestBundleOptions {
  containerId: string;
  /** Guest path of the mounted container root filesystem. */
  rootfs: string;
  /**
   * Guest pid of the sandbox container's init (the pod's first container,
   * CRI's pause), when this container is another container of the pod. A
   * pid/ipc/uts namespace with a path then joins /proc/<pid>/ns/<type>.
   * Absent for the sandbox container itself (and outside a pod): paths are
   * dropped and crun creates the namespace.
   */
  sandboxPid?: number;
}

/** Guest-side namespace path of the pod's namespace `type`, held by the sandbox init `pid`. */
export function podNamespacePath(pid: number, type: string): string {
  return `/proc/${pid}/ns/${type}`;
}

/** A sysctl crun cannot apply in a container that shares the guest's network namespace. */
export function isNetworkSysctl(name: string): boolean {
  return name.startsWith('net.') || name.startsWith('net/');
}

/**
 * Takes the net.* sysctls out of an adapted spec (mutating it) and returns
 * them: they belong to the pod's network namespace, which is the guest's.
 */
export function takeGuestSysctls(spec: OciSpec): Record<string, string> {
  const out: Record<string, string> = {};
  const all = spec.linux?.sysctl;
  if (!all) return out;
  for (const [k, v] of Object.entries(all)) {
    if (!isNetworkSysctl(k)) continue;
    out[k] = v;
    delete all[k];
  }
  if (Object.keys(all).length === 0) delete spec.linux!.sysctl;
  return out;
}

/** Returns the spec crun will run in the guest (a new object). */
export function adaptSpecForGuest(input: OciSpec, opts: GuestBundleOptions): OciSpec {
  validateSpec(input);
  const spec: OciSpec = JSON.parse(JSON.stringify(input));
  spec.root = { path: opts.rootfs, readonly: input.root?.readonly ?? false };
  delete spec.hooks;
  if (spec.process) {
    delete spec.process.apparmorProfile;
    delete spec.process.selinuxLabel;
  }
  const linux = (spec.linux ??= {});
  delete linux.mountLabel;
  linux.cgroupsPath = `/kata-ts/${opts.containerId}`;
  // Host namespace paths mean nothing here; the guest's network namespace is
  // the pod's, shared by every container (Kata does the same). A pid, ipc or
  // uts path names the pod's namespace (the sandbox container's): join the
  // sandbox container's in the guest. A namespace absent from the spec
  // (HostPID, HostIPC) is the guest's own, the nearest a VM has to the host's.
  const ns: OciNamespace[] = (linux.namespaces ?? [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }])
    .filter((n) => KEPT_NAMESPACES.has(n.type))
    .map((n) =>
      n.path && opts.sandboxPid && POD_NAMESPACES.has(n.type) ? { type: n.type, path: podNamespacePath(opts.sandboxPid, n.type) } : { type: n.type },
    );
  if (!ns.some((n) => n.type === 'mount')) ns.push({ type: 'mount' });
  linux.namespaces = ns;
  // Bind mounts: the host translated each volume's source to a path under
  // the sandbox's volume share (src/runtime/volumes.ts), and /dev/shm to the
  // pod's tmpfs; those are kept as they are (type, options, propagation) for
  // crun. Any other bind source is a host path that means nothing here.
  const mounts = (spec.mounts ?? []).filter((m) => !isBind(m) || underSharedGuestDir(m.source ?? '') || m.source === SANDBOX_SHM_GUEST_DIR || isDirectVolumeGuestPath(m.source ?? ''));
  for (const d of DEFAULT_MOUNTS) if (!mounts.some((m) => m.destination === d.destination)) mounts.push(d);
  // /sys/fs/cgroup: cgroup v2 in the guest.
  for (const m of mounts) if (m.destination === '/sys/fs/cgroup') { m.type = 'cgroup2'; m.source = 'cgroup2'; }
  spec.mounts = sortMounts(mounts);
  return spec;
}

function isBind(m: OciMount): boolean {
  return m.type === 'bind' || (m.options ?? []).includes('bind') || (m.options ?? []).includes('rbind');
}

/** Parents before children, preserving order otherwise (crun mounts in order). */
function sortMounts(mounts: OciMount[]): OciMount[] {
  return mounts
    .map((m, i) => ({ m, i, depth: m.destination.replace(/\/+$/, '').split('/').length }))
    .sort((a, b) => a.depth - b.depth || a.i - b.i)
    .map((x) => x.m);
}
