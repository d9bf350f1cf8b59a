/**
 * A cached VM's container-path warm-up (WarmContainerPath; issue 16,
 * src/factory/vm-cache-vm.ts, README "VM templates", the cache). A cached
 * VM is a live QEMU waiting for its pod: whatever its guest runs while it
 * waits stays translated in that QEMU's TCG cache (and its files in the
 * guest's page cache) for the pod that claims it. A template clone's QEMU
 * is fresh, so the pod's first `crun run` pays the translation of crun,
 * ld.so and the kernel's clone/mount/pivot_root paths under TCG. So a
 * cached VM, before it registers as ready, asks its agent to run the
 * container start path once: create, start, wait for and remove one
 * throwaway container running /bin/true through the real path (a
 * separate AgentSandbox with the agent's own runtime: Container, the
 * guest bundle, one `crun run` with its cgroup and namespaces, the output
 * pipes), with the guest's own root bind-mounted read-only as its rootfs
 * (a bind of `/` without its submounts: crun's proc, sysfs and cgroup
 * mounts then land on empty directories, as in a real rootfs, instead of
 * on the guest's own mounts, where the kernel refuses the same
 * filesystem twice with EBUSY).
 *
 * Nothing of it may be the pod's: the request carries nothing from the
 * host (no spec, no paths), it is refused once CreateSandbox came or a
 * container exists (a claimed VM; a normal sandbox always has one before
 * the host would ask), a CreateSandbox or CreateContainer arriving while
 * it runs waits for it (AgentSandbox.warming), and it removes what it made
 * (crun's state, the container's cgroup directory, the bind mount, its
 * scratch directory) whether the container ran or not.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { AgentError } from './container';
import { AgentSandbox, type AgentOptions } from './sandbox';
import { syscallMounter, type Mounter } from './storage';
import { DEFAULT_CGROUP_ROOT } from './cgroup';
import type { OciRuntime } from './oci-runtime';
import type { OciSpec } from '../protocols/oci';
import type { WarmContainerPathResponse } from '../protocols/agent-api';

/** The throwaway container's id (also its cgroup directory's and crun state's name). */
export const WARM_CONTAINER_ID = 'kata-ts-warm-up';
/** Where the warm-up's bundle, pipes and rootfs mount point live (tmpfs in the guest); removed afterwards. */
export const WARM_CONTAINER_SCRATCH = '/run/kata-ts/warm-container';
/** How long the throwaway container may take before it is killed (a TCG guest under load is slow). */
export const WARM_CONTAINER_TIMEOUT_MS = 60_000;

export interface WarmContainerOptions {
  /** The agent's own OCI runtime (crun): the path to warm is its. */
  runtime: OciRuntime;
  scratch?: string;
  mounter?: Mounter;
  cgroupRoot?: string;
  /** What is bind-mounted as the container's root (default the guest's `/`). */
  rootSource?: string;
  timeoutMs?: number;
}

/**
 * The spec a `ctr run` of a plain image sends, in the shape the host's
 * (containerd's default) has: namespaces, default capabilities, the
 * rlimit, masked and read-only paths; the bundle code adds the default
 * mounts and the cgroup path as for any container.
 */
export function warmContainerSpec(rootfs: string): OciSpec {
  const caps = ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID', 'CAP_SETUID',
    'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE'];
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false, user: { uid: 0, gid: 0 }, args: ['/bin/true'], env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], cwd: '/',
      capabilities: { bounding: caps, effective: caps, permitted: caps },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }], noNewPrivileges: true,
    },
    root: { path: rootfs, readonly: true },
    hostname: WARM_CONTAINER_ID,
    mounts: [],
    linux: {
      resources: { devices: [{ allow: false, access: 'rwm' }] },
      namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network' }],
      maskedPaths: ['/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
        '/proc/timer_stats', '/proc/sched_debug', '/sys/firmware', '/proc/scsi'],
      readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    },
  } as OciSpec;
}

/** The warm-up's options for an agent sandbox made with `o`: its runtime, mounter and cgroup root; scratch beside its state dir. */
export function warmOptionsFor(o: Readonly<AgentOptions>): WarmContainerOptions {
  return { runtime: o.runtime, mounter: o.mounter, cgroupRoot: o.cgroupRoot, scratch: path.join(path.dirname(o.stateDir), 'warm-container') };
}

const msSince = (t: bigint) => Math.round(Number(process.hrtime.bigint() - t) / 1e6);

/**
 * Runs the warm-up for the agent sandbox `owner` (the VM's real one, which
 * it only checks and holds off; the container lives in a sandbox of its
 * own). Throws AgentError 'failed-precondition' when the VM is not a
 * waiting one; otherwise resolves with the phases, cleanup errors included
 * (the container's outcome is reported, not thrown: a warm-up that failed
 * costs the pod time, not its VM).
 */
export async function warmContainerPath(owner: AgentSandbox, opts: WarmContainerOptions): Promise<WarmContainerPathResponse> {
  if (!owner.pristine) {
    throw new AgentError('failed-precondition', 'WarmContainerPath is only for a VM waiting for its pod (a cached VM): this one has a sandbox or a container');
  }
  if (owner.warming) throw new AgentError('failed-precondition', 'a container-path warm-up is already running');
  const run = runWarmUp(opts);
  owner.warming = run.then(() => undefined, () => undefined);
  try {
    return await run;
  } finally {
    owner.warming = undefined;
  }
}

async function runWarmUp(opts: WarmContainerOptions): Promise<WarmContainerPathResponse> {
  const t0 = process.hrtime.bigint();
  const scratch = opts.scratch ?? WARM_CONTAINER_SCRATCH;
  const mounter = opts.mounter ?? syscallMounter;
  const cgroupRoot = opts.cgroupRoot ?? DEFAULT_CGROUP_ROOT;
  const rootfs = path.join(scratch, 'rootfs');
  const id = WARM_CONTAINER_ID;
  const res: WarmContainerPathResponse = { total_ms: 0, mount_ms: 0, create_ms: 0, start_ms: 0, wait_ms: 0, remove_ms: 0, exit_status: -1, errors: [] };
  const errors: string[] = [];
  let mounted = false;
  const sb = new AgentSandbox({ runtime: opts.runtime, stateDir: path.join(scratch, 'containers'), manageHost: false, mounter, cgroupRoot });
  try {
    let t = process.hrtime.bigint();
    // What an earlier warm-up of this VM could not remove: never deleted through a mount.
    const left = await removeScratch(scratch, rootfs, mounter);
    if (left.length) throw new AgentError('internal', `an earlier warm-up's ${left.join('; ')}`);
    await fs.mkdir(rootfs, { recursive: true });
    await mounter.mount(opts.rootSource ?? '/', rootfs, 'none', ['bind', 'ro']);
    mounted = true;
    res.mount_ms = msSince(t);
    t = process.hrtime.bigint();
    await sb.createContainer({ container_id: id, exec_id: '', storages: [], oci_spec_json: JSON.stringify(warmContainerSpec(rootfs)) });
    res.create_ms = msSince(t);
    t = process.hrtime.bigint();
    await sb.startContainer(id);
    res.start_ms = msSince(t);
    t = process.hrtime.bigint();
    const timeoutMs = opts.timeoutMs ?? WARM_CONTAINER_TIMEOUT_MS;
    let timer: NodeJS.Timeout | undefined;
    const exit = await Promise.race([
      sb.waitProcess({ container_id: id, exec_id: '' }),
      new Promise<undefined>((r) => { timer = setTimeout(() => r(undefined), timeoutMs); }),
    ]);
    clearTimeout(timer);
    res.wait_ms = msSince(t);
    if (!exit) errors.push(`the container did not exit within ${timeoutMs} ms (killed)`);
    else res.exit_status = exit.signal ? 128 + exit.signal : exit.status;
    if (exit && res.exit_status !== 0) errors.push(`the container exited with status ${res.exit_status}`);
    t = process.hrtime.bigint();
    await sb.removeContainer(id, 0);
    res.remove_ms = msSince(t);
  } catch (err) {
    errors.push((err as Error).message);
  } finally {
    // Whatever happened above: nothing of the container may outlive the call.
    await sb.destroySandbox().catch((err: Error) => errors.push(`destroy: ${err.message}`));
    if ((await opts.runtime.hasState?.(id).catch(() => true)) !== false) await opts.runtime.delete(id).catch((err: Error) => errors.push(`delete: ${err.message}`));
    await fs.rmdir(path.join(cgroupRoot, id)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') errors.push(`cgroup: ${err.message}`);
    });
    errors.push(...(await removeScratch(scratch, rootfs, mounted ? mounter : undefined)));
  }
  res.errors = errors;
  res.total_ms = msSince(t0);
  return res;
}

/** Unmounts the rootfs and removes the scratch directory; never a recursive delete through a mount still there. */
async function removeScratch(scratch: string, rootfs: string, mounter: Mounter | undefined): Promise<string[]> {
  try {
    if (mounter) await mounter.umount(rootfs);
    // rmdir fails (EBUSY, ENOTEMPTY) while the bind mount is still there.
    await fs.rmdir(rootfs).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    await fs.rm(scratch, { recursive: true, force: true });
    return [];
  } catch (err) {
    return [`scratch: ${(err as Error).message}`];
  }
}
