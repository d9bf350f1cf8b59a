/**
 * The agent's state: one sandbox (this VM) and its containers. The gRPC
 * service (service.ts) is a thin translation onto these methods, so the logic
 * is testable without gRPC or a VM.
 */
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type * as api from '../protocols/agent-api';
import { AgentError, Container } from './container';
import type { OciRuntime } from './oci-runtime';
import type { GuestProcess } from './process';
import { StorageRegistry, type Mounter } from './storage';
import { DebugConsoles, type DebugConsoleOptions } from './debug-console';
import { readGuestStats } from './guest-stats';
import { ContainerCgroup, DEFAULT_CGROUP_ROOT, parseKeyed, type LinuxResources } from './cgroup';
import { GUEST_RESOLV_CONF, GuestNetwork } from './network';
import { POD_NAMESPACES } from './bundle';
import { closePassed, PassfdError, wantsPassfd, type PassedStdio, type PassfdStreams } from './passfd';

export const AGENT_VERSION = '0.1.0';

export interface AgentOptions {
  runtime: OciRuntime;
  /** Where container bundles and scratch live (tmpfs in the guest). */
  stateDir: string;
  mounter?: Mounter;
  /** Apply guest-wide settings (hostname, sysctls); off in unit tests. */
  manageHost?: boolean;
  /** Debug console (processes outside containers); disabled when absent. */
  debugConsole?: DebugConsoleOptions;
  /** Parent of the containers' cgroup v2 directories (crun's cgroupsPath, bundle.ts). */
  cgroupRoot?: string;
  /** Guest networking (rtnetlink); defaults to the real one when manageHost is on. */
  network?: GuestNetwork;
  /** Writes one guest-wide sysctl; defaults to /proc/sys when manageHost is on (tests record). */
  writeSysctl?: (name: string, value: string) => Promise<void>;
  /** Passfd IO's streams (passfd.ts), when the kernel command line names a listener port. */
  passfd?: PassfdStreams;
}

/**
 * Writes a sysctl of the guest (its network namespace is the pod's). Names
 * come dotted (net.ipv4.ip_forward) or slashed (net/ipv4/conf/eth0.1/rp_filter:
 * the form for components that hold a dot), as sysctl(8) takes them.
 */
export async function writeGuestSysctl(name: string, value: string, root = '/proc/sys'): Promise<void> {
  const parts = name.split(name.includes('/') ? '/' : '.');
  if (!/^[A-Za-z0-9_.\/-]+$/.test(name) || parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw new AgentError('invalid', `bad sysctl name ${name}`);
  }
  await fs.writeFile(path.join(root, ...parts), value).catch((err: Error) => {
    throw new AgentError('invalid', `sysctl ${name}=${value}: ${err.message}`);
  });
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export class AgentSandbox {
  readonly containers = new Map<string, Container>();
  sandboxId = '';
  private readonly started = Date.now();
  readonly consoles: DebugConsoles;
  /** Containers OOM-killed and not yet told (GetOOMEvent), and who waits. */
  private readonly oomQueue: string[] = [];
  private readonly oomWaiters: ((id: string) => void)[] = [];
  private readonly oomWatches = new Map<string, () => void>();
  /** Passfd IO: a created container's init stdio sockets, until StartContainer gives them to crun. */
  private readonly passedInit = new Map<string, PassedStdio>();
  /** Containers frozen by PauseContainer. */
  readonly paused = new Set<string>();
  /** Storages by mount point across containers (the volume share and the pod's shm are mounted once). */
  readonly storages: StorageRegistry;
  private readonly net: GuestNetwork | undefined;
  /** CreateSandbox carried DNS lines: containers without their own resolv.conf get the guest's. */
  private dnsGiven = false;
  /**
   * The pod's sandbox container: the first container created (CRI's pause).
   * Later containers join its pid/ipc/uts namespaces where their spec gives
   * a path, as CRI asks (bundle.ts).
   */
  sandboxContainerId = '';
  /** CreateSandbox has come: this VM is a pod's (warm-container.ts refuses from then on). */
  private sandboxCreated = false;
  /** A cached VM's container-path warm-up in progress (warm-container.ts): the pod's first RPCs wait for it. */
  warming: Promise<void> | undefined;

  constructor(private readonly opts: AgentOptions) {
    this.storages = new StorageRegistry(opts.mounter);
    this.consoles = new DebugConsoles(opts.debugConsole ?? { enabled: false, ptyHelper: '', dir: '' });
    this.net = opts.network ?? (opts.manageHost ? new GuestNetwork() : undefined);
  }

  /** What this sandbox was made with (runtime, state dir, mounter, cgroup root). */
  get options(): Readonly<AgentOptions> {
    return this.opts;
  }

  /** No CreateSandbox yet and no container: a VM still waiting for its pod. */
  get pristine(): boolean {
    return !this.sandboxCreated && this.containers.size === 0 && !this.sandboxContainerId;
  }

  /** The guest network, or a clear refusal where the agent does not manage one (unit tests). */
  get network(): GuestNetwork {
    if (!this.net) throw new AgentError('failed-precondition', 'this agent does not manage the guest network');
    return this.net;
  }

  async createSandbox(req: api.CreateSandboxRequest): Promise<void> {
    this.sandboxCreated = true;
    if (this.warming) await this.warming;
    this.sandboxId = req.sandbox_id;
    if (this.net) {
      this.net.loopbackUp();
      await this.net.writeResolvConf(req.dns ?? []);
      this.dnsGiven = (req.dns ?? []).length > 0;
    }
    if (!this.opts.manageHost) return;
    if (req.hostname) {
      await fs.writeFile('/proc/sys/kernel/hostname', req.hostname).catch(() => undefined);
    }
    for (const [k, v] of Object.entries(req.sysctls ?? {})) {
      if (!/^[a-z0-9_.]+$/.test(k)) throw new AgentError('invalid', `bad sysctl name ${k}`);
      await fs.writeFile(path.join('/proc/sys', ...k.split('.')), v).catch((err: Error) => {
        throw new AgentError('invalid', `sysctl ${k}=${v}: ${err.message}`);
      });
    }
  }

  async destroySandbox(): Promise<void> {
    this.consoles.killAll();
    for (const stop of this.oomWatches.values()) stop();
    this.oomWatches.clear();
    for (const c of [...this.containers.values()]) await c.remove(0).catch(() => undefined);
    this.containers.clear();
  }

  container(id: string): Container {
    const c = this.containers.get(id);
    if (!c) throw new AgentError('not-found', `container ${id} not found`);
    return c;
  }

  async createContainer(req: api.CreateContainerRequest): Promise<void> {
    if (this.warming) await this.warming;
    if (!ID_RE.test(req.container_id)) throw new AgentError('invalid', `invalid container id "${req.container_id}"`);
    if (this.containers.has(req.container_id)) throw new AgentError('already-exists', `container ${req.container_id} already exists`);
    const c = new Container(req.container_id, path.join(this.opts.stateDir, req.container_id), this.opts.runtime, this.opts.mounter, this.storages);
    const first = !this.sandboxContainerId;
    // A container joining the pod's namespaces needs the sandbox container set up, not just cloned (Container.recorded).
    if (!first) await this.containers.get(this.sandboxContainerId)?.recorded;
    if (first) this.sandboxContainerId = c.id;
    this.containers.set(c.id, c);
    try {
      // Passfd IO: the init's stdio streams are taken now (a bad port fails the create), given to crun at start.
      if (wantsPassfd(req)) this.passedInit.set(c.id, await this.takePassfd(req, terminalOf(req.oci_spec_json)));
      await c.create(req.oci_spec_json, req.storages ?? [], {
        resolvConf: this.dnsGiven ? GUEST_RESOLV_CONF : undefined,
        sandboxPid: first ? undefined : this.sandboxPid(req.oci_spec_json),
        guestSysctls: (s) => this.applyGuestSysctls(s),
        devices: req.devices ?? [],
      });
    } catch (err) {
      closePassed(this.passedInit.get(c.id));
      this.passedInit.delete(c.id);
      this.containers.delete(c.id);
      if (first) this.sandboxContainerId = '';
      await c.remove(0).catch(() => undefined);
      throw err;
    }
  }

  /**
   * The guest pid of the sandbox container's init, for a container whose
   * spec asks to join pod namespaces (a pid/ipc/uts path); undefined when it
   * asks for none. Refused when the sandbox container is not running: its
   * namespaces are gone (or not there yet).
   */
  private sandboxPid(specJson: string): number | undefined {
    let wants = false;
    try {
      const ns = (JSON.parse(specJson) as { linux?: { namespaces?: { type?: string; path?: string }[] } }).linux?.namespaces;
      wants = Array.isArray(ns) && ns.some((n) => !!n?.path && POD_NAMESPACES.has(n.type ?? ''));
    } catch {
      return undefined; // Container.create reports the bad JSON
    }
    if (!wants) return undefined;
    const sb = this.containers.get(this.sandboxContainerId);
    const pid = sb?.state === 'running' ? (sb.init?.pid ?? 0) : 0;
    if (pid <= 0) {
      throw new AgentError('failed-precondition', `cannot join the pod's namespaces: sandbox container ${this.sandboxContainerId} is not running`);
    }
    return pid;
  }

  /** net.* sysctls of a container's spec: the guest's network namespace is the pod's. */
  private async applyGuestSysctls(s: Record<string, string>): Promise<void> {
    const write = this.opts.writeSysctl ?? (this.opts.manageHost ? writeGuestSysctl : undefined);
    if (!write) return;
    for (const [k, v] of Object.entries(s)) await write(k, v);
  }

  /** The streams a request's ports name (passfd.ts); refused without a listener or with a terminal. */
  private async takePassfd(ports: api.StdioPorts, terminal: boolean): Promise<PassedStdio> {
    if (!this.opts.passfd) throw new PassfdError('failed-precondition', 'stdio ports given, but this guest has no passfd listener (boot it with agent.passfd_listener_port=N: [runtime] use_passfd_io = true)');
    // Taken even when refused, so the named streams do not linger until they expire.
    const passed = await this.opts.passfd.takeAll(ports);
    if (terminal) {
      closePassed(passed);
      throw new PassfdError('invalid', 'passfd stdio ports are not for a terminal process (its pty carries the stdio)');
    }
    return passed;
  }

  async startContainer(id: string): Promise<number> {
    const c = this.container(id);
    const passed = this.passedInit.get(id);
    this.passedInit.delete(id);
    const p = await c.start(passed);
    this.oomWatches.get(id)?.();
    this.oomWatches.set(id, this.cgroup(id).watchOom(() => this.pushOom(id)));
    return p.pid;
  }

  async removeContainer(id: string, timeout: number): Promise<void> {
    const c = this.container(id);
    // A frozen container cannot stop on SIGTERM: thaw it first.
    if (this.paused.has(id)) await this.cgroup(id).freeze(false).catch(() => undefined);
    this.paused.delete(id);
    await c.remove(timeout);
    closePassed(this.passedInit.get(id)); // created, never started
    this.passedInit.delete(id);
    this.containers.delete(id);
    this.oomWatches.get(id)?.();
    this.oomWatches.delete(id);
  }

  cgroup(id: string): ContainerCgroup {
    return new ContainerCgroup(this.opts.cgroupRoot ?? DEFAULT_CGROUP_ROOT, id);
  }

  private running(id: string, what: string): Container {
    const c = this.container(id);
    if (c.state !== 'running') throw new AgentError('failed-precondition', `cannot ${what} container ${id}: it is ${c.state}`);
    return c;
  }

  async pauseContainer(id: string): Promise<void> {
    this.running(id, 'pause');
    if (this.paused.has(id)) throw new AgentError('failed-precondition', `container ${id} is already paused`);
    await this.cgroup(id).freeze(true);
    this.paused.add(id);
  }

  async resumeContainer(id: string): Promise<void> {
    this.running(id, 'resume');
    if (!this.paused.has(id)) throw new AgentError('failed-precondition', `container ${id} is not paused`);
    await this.cgroup(id).freeze(false);
    this.paused.delete(id);
  }

  async updateContainer(req: api.UpdateContainerRequest): Promise<void> {
    this.running(req.container_id, 'update');
    let r: LinuxResources;
    try {
      r = JSON.parse(req.resources_json || '{}') as LinuxResources;
    } catch (err) {
      throw new AgentError('invalid', `resources are not valid JSON: ${(err as Error).message}`);
    }
    if (typeof r !== 'object' || r === null || Array.isArray(r)) throw new AgentError('invalid', 'resources must be a JSON object (OCI LinuxResources)');
    await this.cgroup(req.container_id).update(r);
  }

  private pushOom(id: string): void {
    const w = this.oomWaiters.shift();
    if (w) w(id);
    else this.oomQueue.push(id);
  }

  /** The next OOM-killed container id, waiting as long as it takes; cancel() drops the wait. */
  waitOom(): { promise: Promise<string>; cancel: () => void } {
    const id = this.oomQueue.shift();
    if (id !== undefined) return { promise: Promise.resolve(id), cancel: () => undefined };
    let waiter!: (id: string) => void;
    const promise = new Promise<string>((resolve) => (waiter = resolve));
    this.oomWaiters.push(waiter);
    return {
      promise,
      cancel: () => {
        const i = this.oomWaiters.indexOf(waiter);
        if (i >= 0) this.oomWaiters.splice(i, 1);
      },
    };
  }

  /** An event taken by a caller that went away goes back to the front. */
  requeueOom(id: string): void {
    const w = this.oomWaiters.shift();
    if (w) w(id);
    else this.oomQueue.unshift(id);
  }

  async execProcess(req: api.ExecProcessRequest): Promise<number> {
    if (!req.exec_id) throw new AgentError('invalid', 'exec_id is required');
    if (this.paused.has(req.container_id)) throw new AgentError('failed-precondition', `container ${req.container_id} is paused`);
    const c = this.container(req.container_id);
    const passed = wantsPassfd(req) ? await this.takePassfd(req, terminalOf(req.process_json, true)) : undefined;
    const p = await c.exec(req.exec_id, req.process_json, passed);
    return p.pid;
  }

  /** container_id "" addresses a debug console process (debug-console.ts). */
  process(ref: api.ProcessRef): GuestProcess {
    if (!ref.container_id) return this.consoles.process(ref.exec_id ?? '');
    return this.container(ref.container_id).process(ref.exec_id ?? '');
  }

  async signalProcess(req: api.SignalProcessRequest): Promise<void> {
    if (!Number.isInteger(req.signal) || req.signal < 1 || req.signal > 64) throw new AgentError('invalid', `invalid signal ${req.signal}`);
    if (!req.container_id) return this.consoles.signal(req.exec_id ?? '', req.signal);
    await this.container(req.container_id).signal(req.exec_id ?? '', req.signal);
  }

  async waitProcess(ref: api.ProcessRef): Promise<api.WaitProcessResponse> {
    const e = await this.process(ref).wait();
    return { status: e.status, signal: e.signal, exited_at_ms: e.exitedAt.getTime() };
  }

  async stats(id: string): Promise<api.StatsContainerResponse> {
    this.container(id);
    const cg = this.cgroup(id);
    const read = async (f: string) => (await cg.read(f)).trim();
    const num = (txt: string) => (txt && txt !== 'max' ? Number(txt) : 0);
    const cpu = parseKeyed(await read('cpu.stat'));
    const events = parseKeyed(await read('memory.events'));
    let ioR = 0, ioW = 0;
    for (const line of (await read('io.stat')).split('\n')) {
      ioR += Number(/rbytes=(\d+)/.exec(line)?.[1] ?? 0);
      ioW += Number(/wbytes=(\d+)/.exec(line)?.[1] ?? 0);
    }
    return {
      cpu_usage_usec: cpu.usage_usec ?? 0, cpu_user_usec: cpu.user_usec ?? 0, cpu_system_usec: cpu.system_usec ?? 0,
      cpu_nr_periods: cpu.nr_periods ?? 0, cpu_nr_throttled: cpu.nr_throttled ?? 0, cpu_throttled_usec: cpu.throttled_usec ?? 0,
      memory_usage_bytes: num(await read('memory.current')), memory_limit_bytes: num(await read('memory.max')),
      memory_max_usage_bytes: num(await read('memory.peak')), memory_oom: events.oom ?? 0, memory_oom_kill: events.oom_kill ?? 0,
      pids_current: num(await read('pids.current')), pids_limit: num(await read('pids.max')), io_read_bytes: ioR, io_write_bytes: ioW,
    };
  }

  async startDebugConsole(req: api.DebugConsoleRequest): Promise<api.DebugConsoleResponse> {
    const passed = wantsPassfd(req) ? await this.takePassfd(req, !!req.terminal) : undefined;
    const { execId, proc } = await this.consoles.start(req, passed);
    return { exec_id: execId, pid: proc.pid };
  }

  guestStats(): Promise<api.GuestStatsResponse> {
    return readGuestStats();
  }

  async guestDetails(): Promise<api.GuestDetailsResponse> {
    return {
      agent_version: AGENT_VERSION,
      kernel_release: os.release(),
      mem_total_bytes: os.totalmem(),
      cpus: os.cpus().length,
      uptime_ms: Date.now() - this.started,
      crun_version: await this.opts.runtime.version().catch(() => ''),
    };
  }
}

/** Whether a spec (or, `isProcess`, an OCI Process) asks for a terminal; bad JSON is reported by the create/exec itself. */
function terminalOf(json: string, isProcess = false): boolean {
  try {
    const v = JSON.parse(json) as { terminal?: unknown; process?: { terminal?: unknown } };
    return !!(isProcess ? v?.terminal : v?.process?.terminal);
  } catch {
    return false;
  }
}
