/**
 * One container in a sandbox of its own, from start to exit status: what
 * `kata-ts run` does once the container is resolved (src/cli/run.ts). Two
 * callers share it: `kata-ts run` itself (a VM it boots or clones, its own
 * stdio and signals) and a pre-started VM cache entry that a `kata-ts run`
 * claimed (src/factory/vm-cache-run-serve.ts: the VM already running, the
 * claimer's stdio passed as fds, its signals and window sizes as lines).
 * Teardown always happens: the sandbox is stopped on every path.
 */
import type { Readable, Writable } from 'node:stream';
import type { Config } from './config';
import type { Hypervisor, VfioDevice } from '../hypervisor/hypervisor';
import type { OciSpec } from '../protocols/oci';
import type { HostPolicy } from './policy';
import { Sandbox, type PrestartedVm, type RootfsShare } from './sandbox';
import { attachProcess } from './stdio';
import { attachPassfd, openPassfdStreams, type PassfdStreams } from './passfd-stdio';
import { isBindMount } from './volumes';

/** What runs: the resolved container and the sandbox options it needs. */
export interface RunPlan {
  /** Sandbox and container id. */
  id: string;
  spec: OciSpec;
  /** The rootfs directory on the host ('' for a converted image). */
  rootfs: string;
  rootfsShare: RootfsShare;
  /** A virtio-fs rootfs shared read-only, with a throwaway overlay in the guest (Sandbox bootContainers). */
  rootfsOverlay?: boolean;
  image?: string;
  vcpus?: number;
  memoryMiB?: number;
  netns?: string;
  dns?: string[];
  policy?: HostPolicy;
  bootVfio?: VfioDevice[];
}

/** The caller's side of the run: stdio, terminal size, interruptions. */
export interface RunIo {
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
  /** The terminal's size now (a -t run), if stdout is one. */
  size(): { rows: number; cols: number } | undefined;
  /** Calls `cb` at each window size change; returns the unsubscribe. */
  onResize(cb: () => void): () => void;
  /** Calls `cb` with the reason when the run must stop (a signal); returns the unsubscribe. */
  onInterrupt(cb: (why: string) => void): () => void;
  /** The container runs (a terminal's stdin goes raw now); undone by `finished`. */
  started(): void;
  finished(): void;
}

/** Runs `plan` in a new sandbox on `hv` (or the pre-started VM); returns its exit status. Throws on runtime errors. */
export async function runInSandbox(plan: RunPlan, cfg: Config, hv: Hypervisor, io: RunIo, prestarted?: PrestartedVm): Promise<number> {
  const { spec, id } = plan;
  const containerId = id;
  const terminal = !!spec.process?.terminal;
  const sandbox = new Sandbox({
    id, config: cfg, hypervisor: hv, vcpus: plan.vcpus, memoryMiB: plan.memoryMiB, hostname: spec.hostname, volumes: spec.mounts?.some(isBindMount) ?? false,
    bootContainers: [{ id: containerId, rootfs: plan.rootfs, rootfsShare: plan.rootfsShare, image: plan.image, overlay: plan.rootfsOverlay }],
    netns: plan.netns, dns: plan.dns, policy: plan.policy, bootVfio: plan.bootVfio, prestarted,
  });
  let interrupted: string | undefined;
  const offInterrupt = io.onInterrupt((why) => {
    interrupted = why;
    void sandbox.stop();
  });
  let started = false;
  let offResize = () => undefined as void;
  let passfd: PassfdStreams | undefined;
  try {
    await sandbox.start();
    // [runtime] use_passfd_io: stdio on vsock streams of its own (passfd-stdio.ts); a terminal keeps the agent's path.
    if (cfg.runtime.use_passfd_io && !terminal) passfd = await openPassfdStreams(sandbox.vsockSocket, cfg.runtime.passfd_listener_port, { stdin: true, stdout: true, stderr: true });
    await sandbox.createContainer(containerId, spec, plan.rootfs, { stdio: passfd?.ports });
    await sandbox.startContainer(containerId);
    if (terminal) {
      io.started();
      started = true;
    }
    const stdio = { stdin: io.stdin, stdout: io.stdout, stderr: io.stderr, terminal };
    const attached = passfd ? attachPassfd(sandbox.agent, containerId, '', passfd, stdio) : attachProcess(sandbox.agent, containerId, '', stdio);
    const onResize = () => {
      const s = io.size();
      if (s) void attached.resize(s.rows, s.cols).catch(() => undefined);
    };
    if (terminal) {
      offResize = io.onResize(onResize);
      onResize();
    }
    const vmGone = hv.exited().then((why) => {
      throw new Error(`the VM stopped unexpectedly: ${why}`);
    });
    const st = await Promise.race([attached.done, vmGone]);
    sandbox.markExited(containerId);
    return st.status;
  } catch (err) {
    if (interrupted) throw new Error(`interrupted by ${interrupted}`);
    throw err;
  } finally {
    offResize();
    passfd?.close();
    if (started) io.finished();
    io.stdin.pause();
    io.stdin.destroy();
    await sandbox.stop();
    offInterrupt();
  }
}
