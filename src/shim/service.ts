/**
 * The containerd task service (containerd.task.v2.Task) of one shim, which
 * owns one sandbox VM (one pod): one method per RPC, each mapped onto
 * src/runtime's Sandbox. The first Create boots the VM with that container's
 * rootfs attached at boot; later Creates (other containers of the pod)
 * hotplug theirs. Errors are ShimError/runtime errors here; registration.ts
 * converts them to ttrpc codes.
 *
 * Pids: containerd is told the VM's host pid (QEMU) for a container's init,
 * as Kata does — it is the host process that embodies the container — and
 * the guest pid for exec'd processes; Pids lists guest pids.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { errorMessage } from '../common/errors';
import { logger } from '../common/log';
import { encode, timestamp } from '../protocols/ttrpc/messages';
import type { OciProcess, OciSpec } from '../protocols/oci';
import { loadConfig, type Config } from '../runtime/config';
import { createSandboxHypervisor, sandboxBootVfio, type Hypervisor } from '../runtime/hypervisor-choice';
import { imageForContainer } from '../runtime/image-rootfs';
import { annotatedConfig } from '../runtime/config-kata';
import { Sandbox, sandboxKernelParams, type PrestartedVm, type RootfsShare } from '../runtime/sandbox';
import { networkNamespacePath, readBundle } from '../runtime/spec';
import { isBindMount, planVolumes } from '../runtime/volumes';
import { attachProcess } from '../runtime/stdio';
import { attachPassfd, openPassfdStreams, type PassfdStreams } from '../runtime/passfd-stdio';
import type { StatsContainerResponse } from '../protocols/agent-api';
import { ShimError } from './errors';
import type { Publisher } from './events';
import { ShimProcess } from './process';
import { mountRootfs, unmountRootfs } from './rootfs';
import { openHostIo } from './stdio';
import { policyFromAnnotations, policyFromFile, type HostPolicy } from '../runtime/policy';
import type * as t from './types';

export const SHIM_VERSION = 'kata-ts 0.1.0';
import { BUNDLE_MARKER, type BundleMarker } from './marker';
import { configPathFromAny } from './runtime-options';
export { BUNDLE_MARKER, type BundleMarker };

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

interface ShimContainer {
  id: string;
  bundle: string;
  rootfs: t.CreateTaskRequest['rootfs'];
  init: ShimProcess;
  execs: Map<string, ShimProcess>;
}

export interface TaskServiceOptions {
  config: Config;
  /** The sandbox (pod) id this shim serves. */
  sandboxId: string;
  publisher: Publisher;
  /** Called once when Shutdown finds nothing left to serve. */
  onShutdown: () => void;
  hypervisor?: (cfg: Config) => Promise<Hypervisor>;
  /** containerd's socket and this shim's namespace: where converted images come from (image-rootfs.ts). */
  containerd?: { address: string; namespace: string };
  /** A claimed pre-started VM (the VM cache) for the pod's sandbox, if its configuration matches. */
  prestarted?: PrestartedSandboxVm;
}

/** A pre-started VM (src/shim/vm-cache-serve.ts) as the shim receives it. */
export interface PrestartedSandboxVm {
  vm: PrestartedVm;
  hypervisor: Hypervisor;
  /** The sandbox kernel parameters it was started with. */
  kernelParams: string;
  /** The configuration it was started with. */
  config: Config;
  /** Stops it (not usable for this pod). */
  discard(): Promise<void>;
}

export class TaskService {
  private readonly containers = new Map<string, ShimContainer>();
  /** Passfd IO ([runtime] use_passfd_io): a process's stdio streams ("id/exec"), opened before its CreateContainer/ExecProcess. */
  private readonly passfd = new Map<string, PassfdStreams>();
  private sandbox: Sandbox | undefined;
  /** sha256 of the agent policy the pod's sandbox was created with ('' for none): fixed from then on. */
  private policySha: string | undefined;
  private vmGone: string | undefined;
  /** Set when Delete of the pod's last container stopped the VM itself (an exit we caused, not a crash). */
  private vmStopped = false;
  private lock: Promise<unknown> = Promise.resolve();
  private shuttingDown = false;
  private readonly log;

  constructor(private readonly opts: TaskServiceOptions) {
    this.log = logger('shim', { sandbox: opts.sandboxId });
  }

  /** Create/Delete change the sandbox: one at a time. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.lock.then(fn, fn);
    this.lock = run.catch(() => undefined);
    return run;
  }

  private container(id: string): ShimContainer {
    const c = this.containers.get(id);
    if (!c) throw new ShimError('not-found', `container ${id} not found`);
    return c;
  }

  private process(id: string, execId: string): ShimProcess {
    const c = this.container(id);
    if (!execId) return c.init;
    const p = c.execs.get(execId);
    if (!p) throw new ShimError('not-found', `process ${execId} not found in container ${id}`);
    return p;
  }

  /** [runtime] rootfs_share: how containerd's rootfs (mounted at <bundle>/rootfs) reaches the guest. */
  private get rootfsShare(): RootfsShare {
    return this.opts.config.runtime.rootfs_share as RootfsShare;
  }

  private get hostPid(): number {
    return this.sandbox?.vmInfo?.pids[0] ?? 0;
  }

  private requireSandbox(): Sandbox {
    if (this.vmGone) throw new ShimError('failed-precondition', `the sandbox VM is gone: ${this.vmGone}`);
    if (this.vmStopped) throw new ShimError('failed-precondition', 'the sandbox was stopped when its last container was deleted');
    if (!this.sandbox) throw new ShimError('failed-precondition', 'the sandbox is not running');
    return this.sandbox;
  }

  async create(r: t.CreateTaskRequest): Promise<{ pid: number }> {
    return this.serial(async () => {
      if (!ID_RE.test(r.id)) throw new ShimError('invalid', `invalid container id "${r.id}"`);
      if (this.containers.has(r.id)) throw new ShimError('already-exists', `container ${r.id} already exists`);
      if (r.checkpoint) throw new ShimError('unimplemented', 'restoring from a checkpoint is not supported');
      if (this.shuttingDown) throw new ShimError('failed-precondition', 'the shim is shutting down');
      if (!r.bundle || !path.isAbsolute(r.bundle) || !fs.existsSync(r.bundle)) throw new ShimError('invalid', `bundle "${r.bundle}" is not an existing absolute path`);
      // The mounted rootfs stays until Delete (as under runc): the runtime
      // may share the directory itself (virtio-fs) rather than copy it.
      const mounted = await mountRootfs(r.bundle, r.rootfs);
      try {
        const { spec, rootfs } = readBundle(r.bundle);
        if (r.terminal && spec.process) spec.process.terminal = true;
        // A bad volume is refused before a VM boots for it (createContainer checks again).
        if (spec.mounts?.some(isBindMount)) planVolumes(r.id, spec.mounts, '/');
        // The pod's agent policy (annotation io.katacontainers.config.agent.policy,
        // base64 JSON), validated before a VM boots; absent: [agent.kata] policy_file.
        const policy = policyFromAnnotations(spec.annotations);
        // A converted image instead of the snapshot, when asked for (README "containerd and converted images").
        const image = await imageForContainer(this.opts.config, spec.annotations, { address: this.opts.containerd?.address || undefined, namespace: this.opts.containerd?.namespace || undefined });
        if (image) this.log.info('container runs from a converted image', { container: r.id, image });
        if (this.sandbox && policy && policy.sha256 !== this.policySha) {
          throw new ShimError('failed-precondition', `container ${r.id} carries an agent policy different from the one its pod's sandbox was created with; the policy cannot change after creation`);
        }
        if (!this.sandbox) {
          this.useOptionsConfig(r.options);
          this.policySha = policy?.sha256 ?? '';
          // Kata's io.katacontainers.config.hypervisor.* annotations, where enable_annotations allows.
          const pod = annotatedConfig(this.opts.config, spec.annotations);
          for (const w of pod.warnings) this.log.warn(w);
          // [hypervisor.qemu] cold_plug_vfio: this container's /dev/vfio groups go on the VM's command line (checked before a VM boots).
          const bootVfio = sandboxBootVfio(pod.config, spec);
          const pre = await this.takePrestarted(pod.config, policy, bootVfio);
          const hv = pre?.hypervisor ?? await (this.opts.hypervisor ?? (async (c: Config) => (await createSandboxHypervisor(c)).hv))(pod.config);
          const sb = new Sandbox({ id: this.opts.sandboxId, config: pod.config, hypervisor: hv, hostname: spec.hostname, policy, netns: networkNamespacePath(spec), volumes: this.volumesAtBoot(pod.config, hv, spec.mounts), bootVfio, bootContainers: [{ id: r.id, rootfs, rootfsShare: this.rootfsShare, image }], prestarted: pre?.vm });
          this.writeMarker(r.bundle, sb.dir);
          await sb.start();
          this.sandbox = sb;
          void hv.exited().then((why) => this.onVmExit(why));
          void this.watchOom(sb);
        } else {
          this.requireSandbox();
          this.writeMarker(r.bundle, this.sandbox.dir);
        }
        const streams = await this.openPassfd(r.id, '', { stdin: r.stdin, terminal: r.terminal });
        await this.sandbox.createContainer(r.id, spec, rootfs, { rootfsShare: this.rootfsShare, image, stdio: streams?.ports });
      } catch (err) {
        this.closePassfd(r.id, '');
        if (mounted) await unmountRootfs(r.bundle);
        throw err;
      }
      const init = new ShimProcess(r.id, '', { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal });
      init.pid = this.hostPid;
      this.containers.set(r.id, { id: r.id, bundle: r.bundle, rootfs: r.rootfs, init, execs: new Map() });
      this.opts.publisher.publish('TaskCreate', {
        container_id: r.id, bundle: r.bundle, rootfs: r.rootfs, pid: init.pid,
        io: { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal }, checkpoint: '',
      });
      this.log.info('container created', { container: r.id });
      return { pid: init.pid };
    });
  }

  /**
   * containerd's runtime options (ConfigPath, runtime-options.ts) in the
   * pod's first CreateTaskRequest: `start` already chose that file from the
   * same options on its stdin; a containerd that gives them only here gets
   * the file loaded now, before the sandbox is made.
   */
  private useOptionsConfig(options: t.Any | null | undefined): void {
    const file = options ? configPathFromAny(options) : undefined;
    if (!file || path.resolve(file) === path.resolve(this.opts.config.source ?? '')) return;
    this.opts.config = loadConfig(file);
    this.log.info('configuration from containerd\'s runtime options', { config: file });
  }

  /**
   * Whether the sandbox share (bind mounts; with rootfs_share = "virtiofs"
   * also every container's rootfs, which brings it at boot anyway) is
   * attached with the VM.
   * A cold boot takes it on the command line, where it costs little and a
   * later pod member with bind mounts needs no hotplug (which q35 and microvm
   * cannot do). A VM template's clone hotplugs every device anyway: there it
   * comes only when a container has a bind mount (a `ctr run` has none), one
   * virtio-fs device less for the guest to probe before its agent answers.
   */
  private volumesAtBoot(cfg: Config, hv: Hypervisor, mounts: OciSpec['mounts']): boolean {
    const clonable = cfg.factory.enable_template && hv.name === 'qemu' && cfg['hypervisor.qemu'].machine_type === 'pc';
    return !clonable || !!mounts?.some(isBindMount);
  }

  /**
   * The claimed pre-started VM, once, if it was started for what this pod
   * runs with (the configuration after the pod's annotations, the agent
   * policy's kernel parameter, no cold-plugged VFIO); otherwise it is
   * stopped with one info line and the sandbox starts as usual.
   */
  private async takePrestarted(cfg: Config, policy: HostPolicy | undefined, bootVfio: unknown[] | undefined): Promise<PrestartedSandboxVm | undefined> {
    const p = this.opts.prestarted;
    if (!p) return undefined;
    this.opts.prestarted = undefined;
    const file = cfg['agent.kata'].policy_file;
    const why = bootVfio?.length ? 'the pod cold-plugs VFIO devices'
      : JSON.stringify(cfg) !== JSON.stringify(p.config) ? 'the pod\'s annotations change the hypervisor configuration'
        : sandboxKernelParams(cfg, policy ?? (file ? policyFromFile(file) : undefined)) !== p.kernelParams ? 'the pod\'s agent policy differs from the configured one' : undefined;
    if (!why) return p;
    this.log.info(`the pre-started VM does not fit this pod (${why}): stopped; the sandbox starts as usual`);
    await p.discard();
    return undefined;
  }

  private writeMarker(bundle: string, sandboxDir: string): void {
    const m: BundleMarker = { sandboxId: this.opts.sandboxId, sandboxDir, runDir: this.opts.config.runtime.run_dir, shimPid: process.pid };
    fs.writeFileSync(path.join(bundle, BUNDLE_MARKER), JSON.stringify(m));
  }

  /**
   * Passfd IO (src/runtime/passfd-stdio.ts): opens a process's stdio streams
   * to the agent when configured; a terminal keeps the agent's path.
   */
  private async openPassfd(id: string, execId: string, o: { stdin: string; terminal: boolean }): Promise<PassfdStreams | undefined> {
    const rt = this.opts.config.runtime;
    if (!rt.use_passfd_io || o.terminal || !this.sandbox) return undefined;
    // stdout/stderr always: without a reader path the host discards them (openHostIo), as on the agent's path.
    const streams = await openPassfdStreams(this.sandbox.vsockSocket, rt.passfd_listener_port, { stdin: !!o.stdin, stdout: true, stderr: true });
    this.passfd.set(`${id}/${execId}`, streams);
    return streams;
  }

  private closePassfd(id: string, execId: string): void {
    this.passfd.get(`${id}/${execId}`)?.close();
    this.passfd.delete(`${id}/${execId}`);
  }

  async start(r: t.IdRequest): Promise<{ pid: number }> {
    const c = this.container(r.id);
    const p = this.process(r.id, r.exec_id);
    if (p.status !== 'created') throw new ShimError('failed-precondition', `process ${r.exec_id || r.id} is ${p.status}, not created`);
    if (r.exec_id && c.init.status !== 'running') throw new ShimError('failed-precondition', `container ${r.id} is not running`);
    const sb = this.requireSandbox();
    const io = openHostIo(p.stdio);
    p.io = io;
    try {
      if (r.exec_id) {
        const streams = await this.openPassfd(r.id, r.exec_id, { stdin: p.stdio.stdin, terminal: p.stdio.terminal });
        p.guestPid = await sb.exec(r.id, r.exec_id, p.spec!, streams?.ports);
        p.pid = p.guestPid;
      } else {
        p.guestPid = await sb.startContainer(r.id);
        p.pid = this.hostPid;
      }
    } catch (err) {
      p.io = undefined;
      if (r.exec_id) this.closePassfd(r.id, r.exec_id);
      await io.close();
      throw err;
    }
    p.status = 'running';
    const hostIo = { stdin: io.stdin, stdout: io.stdout, stderr: io.stderr, terminal: p.stdio.terminal };
    const streams = this.passfd.get(`${r.id}/${r.exec_id}`);
    this.passfd.delete(`${r.id}/${r.exec_id}`);
    const attached = streams ? attachPassfd(sb.agent, r.id, r.exec_id, streams, hostIo) : attachProcess(sb.agent, r.id, r.exec_id, hostIo);
    p.resize = attached.resize;
    attached.done.then(
      (st) => this.finish(p, st.status, st.exited_at_ms ? new Date(st.exited_at_ms) : new Date()),
      (err) => {
        this.log.warn('wait failed', { container: r.id, exec: r.exec_id, err: errorMessage(err) });
        return this.finish(p, 255, new Date());
      },
    );
    if (r.exec_id) this.opts.publisher.publish('TaskExecStarted', { container_id: r.id, exec_id: r.exec_id, pid: p.pid });
    else this.opts.publisher.publish('TaskStart', { container_id: r.id, pid: p.pid });
    return { pid: p.pid };
  }

  /** Exit bookkeeping: close the fifos (the client's EOF), then tell waiters and containerd. */
  private async finish(p: ShimProcess, status: number, at: Date): Promise<void> {
    await p.io?.close().catch(() => undefined);
    if (!p.setExited(status, at)) return;
    this.opts.publisher.publish('TaskExit', {
      container_id: p.containerId, id: p.execId || p.containerId, pid: p.pid, exit_status: status, exited_at: timestamp(at),
    });
  }

  private onVmExit(why: string): void {
    if (this.shuttingDown || this.vmStopped) return;
    this.vmGone = why;
    this.log.error('sandbox VM exited', { why });
    const now = new Date();
    for (const c of this.containers.values()) {
      for (const p of [c.init, ...c.execs.values()]) if (p.status !== 'stopped' && p.status !== 'created') void this.finish(p, 255, now);
    }
  }

  async delete(r: t.IdRequest): Promise<{ pid: number; exit_status: number; exited_at?: t.Timestamp }> {
    return this.serial(async () => {
      const c = this.container(r.id);
      const p = this.process(r.id, r.exec_id);
      if (p.status === 'running' || p.status === 'paused') throw new ShimError('failed-precondition', `cannot delete ${r.exec_id ? `process ${r.exec_id}` : `container ${r.id}`}: it is ${p.status}`);
      await p.io?.close();
      this.closePassfd(r.id, r.exec_id); // created, never started
      if (r.exec_id) {
        c.execs.delete(r.exec_id);
      } else {
        const execsDone = [...c.execs.values()].every((e) => e.status === 'stopped' || e.status === 'created');
        if (this.sandbox && !this.vmGone && !this.vmStopped && r.id === this.opts.sandboxId && this.containers.size === 1 && execsDone) {
          // The pod's own container, and the last: the pod is over (as Kata
          // stops the sandbox when its sandbox container is deleted). The VM
          // goes now, without first removing the container in the guest
          // (~0.5 s under TCG); containerd's Shutdown follows. Not while one
          // of its execs has not reported its exit yet: the agent's removal
          // delivers that exit status, a stopped VM would not.
          this.vmStopped = true;
          await this.sandbox.stop();
        } else if (this.sandbox && !this.vmGone && !this.vmStopped) {
          await this.sandbox.removeContainer(r.id).catch((err) => {
            if (!this.vmGone) throw err;
          });
        }
        this.containers.delete(r.id);
        await unmountRootfs(c.bundle);
      }
      const ex = p.exitInfo;
      const res = { pid: p.pid, exit_status: ex?.status ?? 0, exited_at: timestamp(ex?.exitedAt) };
      if (!r.exec_id) this.opts.publisher.publish('TaskDelete', { container_id: r.id, id: r.id, ...res });
      return res;
    });
  }

  async exec(r: t.ExecProcessRequest): Promise<void> {
    const c = this.container(r.id);
    if (!ID_RE.test(r.exec_id)) throw new ShimError('invalid', `invalid exec id "${r.exec_id}"`);
    if (c.execs.has(r.exec_id)) throw new ShimError('already-exists', `exec ${r.exec_id} already exists in container ${r.id}`);
    if (c.init.status === 'stopped') throw new ShimError('failed-precondition', `container ${r.id} is stopped`);
    if (c.init.status === 'paused') throw new ShimError('failed-precondition', `container ${r.id} is paused`);
    let spec: OciProcess;
    try {
      spec = JSON.parse(Buffer.from(r.spec?.value ?? []).toString('utf8')) as OciProcess;
    } catch (err) {
      throw new ShimError('invalid', `exec spec is not valid JSON: ${errorMessage(err)}`);
    }
    if (!Array.isArray(spec?.args) || spec.args.length === 0) throw new ShimError('invalid', 'exec spec: args must not be empty');
    spec.cwd ||= '/';
    spec.user ??= { uid: 0, gid: 0 };
    spec.terminal = r.terminal;
    c.execs.set(r.exec_id, new ShimProcess(r.id, r.exec_id, { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal }, spec));
    this.opts.publisher.publish('TaskExecAdded', { container_id: r.id, exec_id: r.exec_id });
  }

  async state(r: t.IdRequest): Promise<Record<string, unknown>> {
    const c = this.container(r.id);
    const p = this.process(r.id, r.exec_id);
    const ex = p.exitInfo;
    return {
      id: r.id, bundle: c.bundle, pid: p.pid, status: p.status.toUpperCase() as t.Status, stdin: p.stdio.stdin, stdout: p.stdio.stdout,
      stderr: p.stdio.stderr, terminal: p.stdio.terminal, exit_status: ex?.status ?? 0, exited_at: timestamp(ex?.exitedAt), exec_id: r.exec_id,
    };
  }

  async kill(r: t.KillRequest): Promise<void> {
    const p = this.process(r.id, r.exec_id);
    if (!Number.isInteger(r.signal) || r.signal < 1 || r.signal > 64) throw new ShimError('invalid', `invalid signal ${r.signal}`);
    if (p.status === 'stopped') throw new ShimError('not-found', `process ${r.exec_id || r.id} already finished`);
    if (p.status === 'created') {
      // Nothing runs yet: the process "dies" of the signal without starting.
      await this.finish(p, 128 + r.signal, new Date());
      return;
    }
    // A frozen cgroup still lets SIGKILL through (delete -f of a paused task).
    await this.requireSandbox().agent.signalProcess({ container_id: r.id, exec_id: r.exec_id, signal: r.signal });
  }

  async wait(r: t.IdRequest): Promise<{ exit_status: number; exited_at?: t.Timestamp }> {
    const e = await this.process(r.id, r.exec_id).wait();
    return { exit_status: e.status, exited_at: timestamp(e.exitedAt) };
  }

  async pids(r: { id: string }): Promise<{ processes: { pid: number }[] }> {
    const c = this.container(r.id);
    const procs = [c.init, ...c.execs.values()].filter((p) => p.status === 'running' || p.status === 'paused');
    return { processes: procs.map((p) => ({ pid: p.guestPid })) };
  }

  async closeIO(r: t.CloseIORequest): Promise<void> {
    const p = this.process(r.id, r.exec_id);
    if (r.stdin) p.io?.closeStdin();
  }

  async resizePty(r: t.ResizePtyRequest): Promise<void> {
    const p = this.process(r.id, r.exec_id);
    if (!p.stdio.terminal) throw new ShimError('failed-precondition', `process ${r.exec_id || r.id} has no terminal`);
    if (p.status !== 'running' || !p.resize) return;
    // The guest receives the pty from crun just after the process starts; a
    // resize right after Start (ctr sends one at once) can precede it.
    for (let i = 0; ; i++) {
      try {
        await p.resize(r.height, r.width);
        return;
      } catch (err) {
        if (i >= 10 || p.status !== 'running') {
          this.log.warn('resize failed', { container: r.id, exec: r.exec_id, err: errorMessage(err) });
          return;
        }
        await new Promise((res) => setTimeout(res, 50));
      }
    }
  }

  /**
   * The agent freezes the container's cgroup (cgroup.freeze; pausing the
   * whole VM with QMP stop dropped the agent connection). Its execs are
   * frozen with it, as under runc.
   */
  async pause(r: { id: string }): Promise<void> {
    const c = this.container(r.id);
    if (c.init.status !== 'running') throw new ShimError('failed-precondition', `container ${r.id} is ${c.init.status}, not running`);
    await this.requireSandbox().agent.pauseContainer(r.id);
    for (const p of [c.init, ...c.execs.values()]) if (p.status === 'running') p.status = 'paused';
    this.opts.publisher.publish('TaskPaused', { container_id: r.id });
  }

  async resume(r: { id: string }): Promise<void> {
    const c = this.container(r.id);
    if (c.init.status !== 'paused') throw new ShimError('failed-precondition', `container ${r.id} is ${c.init.status}, not paused`);
    await this.requireSandbox().agent.resumeContainer(r.id);
    for (const p of [c.init, ...c.execs.values()]) if (p.status === 'paused') p.status = 'running';
    this.opts.publisher.publish('TaskResumed', { container_id: r.id });
  }

  /** resources: an Any holding runtime-spec LinuxResources as JSON (containerd's typeurl for specs types). */
  async update(r: t.UpdateTaskRequest): Promise<void> {
    const c = this.container(r.id);
    if (c.init.status !== 'running' && c.init.status !== 'paused') throw new ShimError('failed-precondition', `container ${r.id} is ${c.init.status}`);
    const raw = Buffer.from(r.resources?.value ?? []).toString('utf8');
    let res: unknown;
    try {
      res = raw ? JSON.parse(raw) : {};
    } catch (err) {
      throw new ShimError('invalid', `resources (${r.resources?.type_url ?? 'no type'}) are not LinuxResources JSON: ${errorMessage(err)}`);
    }
    if (typeof res !== 'object' || res === null || Array.isArray(res)) throw new ShimError('invalid', 'resources must be a LinuxResources object');
    await this.requireSandbox().agent.updateContainer({ container_id: r.id, resources_json: JSON.stringify(res) });
  }

  /** Field numbers as containerd/cgroups cgroup2/stats/metrics.proto. */
  async stats(r: { id: string }): Promise<{ stats: t.Any }> {
    this.container(r.id);
    const s: StatsContainerResponse = await this.requireSandbox().agent.statsContainer(r.id);
    // The agent says 0 for "max"; containerd's cgroups package says MaxUint64.
    const limit = (v: number) => (v > 0 ? v : '18446744073709551615');
    const value = encode('io.containerd.cgroups.v2.Metrics', {
      pids: { current: s.pids_current, limit: limit(s.pids_limit) },
      cpu: { usage_usec: s.cpu_usage_usec, user_usec: s.cpu_user_usec, system_usec: s.cpu_system_usec,
        nr_periods: s.cpu_nr_periods, nr_throttled: s.cpu_nr_throttled, throttled_usec: s.cpu_throttled_usec },
      memory: { usage: s.memory_usage_bytes, usage_limit: limit(s.memory_limit_bytes), max_usage: s.memory_max_usage_bytes },
      io: { usage: [{ rbytes: s.io_read_bytes, wbytes: s.io_write_bytes }] },
      memory_events: { oom: s.memory_oom, oom_kill: s.memory_oom_kill },
    });
    return { stats: { type_url: 'io.containerd.cgroups.v2.Metrics', value } };
  }

  /** TaskOOM for each OOM kill the agent reports (GetOOMEvent long poll), for the VM's life. */
  private async watchOom(sb: Sandbox): Promise<void> {
    while (!this.shuttingDown && !this.vmGone && !this.vmStopped) {
      try {
        const e = await sb.agent.getOomEvent();
        if (e.container_id && this.containers.has(e.container_id)) this.opts.publisher.publish('TaskOOM', { container_id: e.container_id });
      } catch (err) {
        if (this.shuttingDown || this.vmGone || this.vmStopped) return;
        this.log.warn('OOM event poll failed', { err: errorMessage(err) });
        if ((err as { grpcCode?: number }).grpcCode === 12) return; // UNIMPLEMENTED: an agent without OOM events
        await new Promise((res) => setTimeout(res, 1000).unref());
      }
    }
  }

  async connect(r: { id: string }): Promise<{ shim_pid: number; task_pid: number; version: string }> {
    const c = this.containers.get(r.id);
    return { shim_pid: process.pid, task_pid: c?.init.pid ?? this.hostPid, version: SHIM_VERSION };
  }

  async checkpoint(): Promise<void> {
    throw new ShimError('unimplemented', 'checkpoint is not supported by kata-ts');
  }

  /** Ends the shim once no container is left (containerd calls this after each Delete). */
  async shutdown(r: t.ShutdownRequest): Promise<void> {
    if (this.containers.size > 0 && !r.now) return;
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    // Answer first; the caller closes its connection as we go away.
    setImmediate(() => this.opts.onShutdown());
  }

  /** Stop the VM and forget everything (shutdown, signals). */
  async teardown(): Promise<void> {
    this.shuttingDown = true;
    for (const c of this.containers.values()) {
      for (const p of [c.init, ...c.execs.values()]) await p.io?.close().catch(() => undefined);
      await unmountRootfs(c.bundle).catch(() => undefined);
    }
    await this.sandbox?.stop();
    await this.opts.publisher.flush();
    this.opts.publisher.close();
  }
}
