/**
 * A container in the guest: its storages, its crun bundle, its init process
 * and the processes exec'd into it. Lifecycle: create (mount rootfs, write
 * bundle) → start (crun run) → [exec ...] → remove (stop, crun delete,
 * unmount, remove bundle).
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { Device, Storage } from '../protocols/agent-api';
import { sharedRootfsGuestPath, underSharedGuestDir } from '../protocols/guest-paths';
import { applyDevices, type DeviceMapError, type DeviceResolver } from './devices';
import { adaptSpecForGuest, takeGuestSysctls, validateSpec } from './bundle';
import type { OciProcess, OciSpec } from '../protocols/oci';
import type { OciRuntime } from './oci-runtime';
import { GuestProcess, OutputFifos, consoleSocketPath } from './process';
import { StorageSet, type Mounter, type StorageRegistry } from './storage';
import { native } from '../common/native';
import { KataError } from '../common/errors';
import { executableExists } from './executable';
import { childStdio, closePassed, type PassedStdio } from './passfd';

export type ContainerState = 'created' | 'running' | 'stopped';

/** How long StartContainer waits for crun to record a started container (TCG guests are slow). */
export const START_STATE_WAIT_MS = 30_000;

/**
 * Where create/start report their phases (ms each): the agent's debug log
 * (main.ts sets it with agent.log=debug), nothing otherwise — so a slow
 * CreateContainer/StartContainer says which step was slow (README
 * performance) without loading winston on a normal boot.
 */
let phaseLog: ((msg: string, fields: Record<string, string | number>) => void) | undefined;
export function setContainerPhaseLog(fn: typeof phaseLog): void {
  phaseLog = fn;
}

/** Milliseconds between the marks, as `{name: ms}` (marks in order, the first is the start). */
class Phases {
  private last = process.hrtime.bigint();
  private readonly first = this.last;
  readonly ms: Record<string, number> = {};
  mark(name: string): void {
    const now = process.hrtime.bigint();
    this.ms[name] = Number(now - this.last) / 1e6;
    this.last = now;
  }
  report(msg: string, id: string): void {
    this.ms.totalMs = Number(this.last - this.first) / 1e6;
    phaseLog?.(msg, { container: id, ...Object.fromEntries(Object.entries(this.ms).map(([k, v]) => [k, Math.round(v * 10) / 10])) });
  }
}

/** The agent's error; service.ts turns `kind` into the gRPC status code the host sees. */
export class AgentError extends KataError<'not-found' | 'already-exists' | 'invalid' | 'failed-precondition' | 'permission-denied' | 'internal'> {}

export class Container {
  state: ContainerState = 'created';
  readonly processes = new Map<string, GuestProcess>();
  private readonly storages: StorageSet;
  init: GuestProcess | undefined;
  private spec!: OciSpec;
  /** Set once something waits for crun's record (see `recorded`); polled only then. */
  private recordedP: Promise<void> | undefined;
  private recordedWait: (() => Promise<void>) | undefined;
  /** init.pid is the container's init (from crun's record or crun's clone), not crun's own pid. */
  private initKnown = false;

  constructor(
    readonly id: string,
    readonly dir: string,
    private readonly runtime: OciRuntime,
    mounter?: Mounter,
    /** The sandbox's storages (shared ones are mounted once); a private set when absent. */
    registry?: StorageRegistry,
  ) {
    this.storages = new StorageSet(mounter, registry);
  }

  get bundleDir(): string {
    return path.join(this.dir, 'bundle');
  }

  /**
   * Console sockets live apart from the container's directory: with a CRI id
   * (64 hex digits) <stateDir>/<id>/console-….sock outgrows sun_path (108
   * bytes). A sibling of stateDir (/run/kata-ts/cs in the guest) plus a
   * short hash of the ids fits whatever the ids are.
   */
  get consoleDir(): string {
    return path.join(path.dirname(this.dir), '..', 'cs');
  }

  private async consoleSocket(execId: string): Promise<string> {
    await fs.mkdir(this.consoleDir, { recursive: true, mode: 0o700 });
    const sock = consoleSocketPath(this.consoleDir, execId, this.id);
    await fs.rm(sock, { force: true });
    return sock;
  }

  /**
   * `resolvConf`: the sandbox's guest resolv.conf (set when the host gave DNS
   * lines); a container whose spec mounts none gets it read-only at
   * /etc/resolv.conf, as a Docker user expects. Under CRI the kubelet's own
   * resolv.conf mount is there and wins.
   * `sandboxPid`: the pod's sandbox container's guest pid, whose pid/ipc/uts
   * namespaces this container joins where its spec gives a path (bundle.ts).
   * `guestSysctls`: applies the spec's net.* sysctls guest-wide (the guest's
   * netns is the pod's); crun gets the others.
   */
  async create(
    specJson: string,
    storages: Storage[],
    opts: { resolvConf?: string; sandboxPid?: number; guestSysctls?: (s: Record<string, string>) => Promise<void>; devices?: Device[]; resolveDevice?: DeviceResolver } = {},
  ): Promise<void> {
    let spec: unknown;
    try {
      spec = JSON.parse(specJson);
    } catch (err) {
      throw new AgentError('invalid', `OCI spec is not valid JSON: ${(err as Error).message}`);
    }
    try {
      validateSpec(spec);
    } catch (err) {
      throw new AgentError('invalid', (err as Error).message);
    }
    const ph = new Phases();
    await fs.mkdir(this.bundleDir, { recursive: true });
    // The rootfs is the last storage's mount point, unless the host put it
    // in the sandbox share (Kata's shared directory): then root.path is
    // this container's directory there and the storages only mount the share.
    const rootPath = (spec as OciSpec).root?.path ?? '';
    const inShare = rootPath === sharedRootfsGuestPath(this.id);
    if (!inShare && underSharedGuestDir(rootPath)) throw new AgentError('invalid', `root.path ${rootPath} is in the sandbox share but not this container's rootfs (${sharedRootfsGuestPath(this.id)})`);
    let rootfs = rootPath;
    for (const [i, s] of storages.entries()) {
      const mp = await this.storages.add(s, path.join(this.dir, `storage-${i}`));
      if (!inShare) rootfs = mp;
    }
    ph.mark('storagesMs');
    if (!rootfs.startsWith('/')) throw new AgentError('invalid', 'container has no rootfs: give a storage or an absolute root.path');
    if (inShare && !(await fs.stat(rootfs).then((st) => st.isDirectory(), () => false))) {
      throw new AgentError('failed-precondition', `the container's rootfs ${rootfs} is not a directory in the sandbox share (is the share mounted?)`);
    }
    // Disks the host attached for linux.devices: the guest's numbers (devices.ts).
    if (opts.devices?.length) {
      await applyDevices(spec as OciSpec, opts.devices, opts.resolveDevice).catch((err: DeviceMapError) => {
        throw new AgentError(err.kind === 'invalid' ? 'invalid' : 'failed-precondition', err.message, { cause: err });
      });
    }
    this.spec = adaptSpecForGuest(spec as OciSpec, { containerId: this.id, rootfs, sandboxPid: opts.sandboxPid });
    const net = takeGuestSysctls(this.spec);
    if (Object.keys(net).length > 0) await opts.guestSysctls?.(net);
    if (opts.resolvConf && !(this.spec.mounts ?? []).some((m) => m.destination === '/etc/resolv.conf')) {
      (this.spec.mounts ??= []).push({ destination: '/etc/resolv.conf', type: 'bind', source: opts.resolvConf, options: ['rbind', 'ro', 'nosuid', 'nodev', 'noexec'] });
    }
    ph.mark('specMs');
    await fs.writeFile(path.join(this.bundleDir, 'config.json'), JSON.stringify(this.spec));
    ph.mark('writeConfigMs');
    ph.report('container created', this.id);
  }

  /** `passed`: stdio sockets of passfd IO (passfd.ts), given to crun and closed here either way. */
  async start(passed?: PassedStdio): Promise<GuestProcess> {
    if (this.state !== 'created') { closePassed(passed); throw new AgentError('failed-precondition', `container ${this.id} is ${this.state}, not created`); }
    const ph = new Phases();
    this.checkExecutable(this.spec.process!);
    const terminal = !!this.spec.process?.terminal;
    const proc = new GuestProcess(this.id, '', terminal);
    let sock: string | undefined;
    let listenFd: number | undefined;
    let outputs: OutputFifos | undefined;
    let child;
    try {
      sock = terminal ? await this.consoleSocket('') : undefined;
      listenFd = sock ? native().unixListen(sock) : undefined;
      outputs = sock ? undefined : OutputFifos.open(this.dir, 'init');
      child = this.runtime.run(this.id, this.bundleDir, { consoleSocket: sock, stdio: outputs && childStdio(outputs.stdio(), passed) });
    } catch (err) {
      outputs?.closeAll();
      throw err;
    } finally {
      closePassed(passed); // crun has its copies (or never will)
    }
    this.init = proc;
    this.processes.set('', proc);
    this.state = 'running';
    const attached = proc.attach(child, listenFd, outputs, passed?.stdin !== undefined);
    proc.wait().then(() => {
      this.state = 'stopped';
    });
    const runPid = child.pid ?? 0;
    proc.pid = runPid;
    ph.mark('spawnMs');
    await attached;
    if (sock) await fs.rm(sock, { force: true });
    ph.mark('stdioMs');
    // The container process's own pid. `crun run` returns to us before it
    // has one, and the pid would be crun's, whose namespaces are the
    // guest's, not the pod's. Two sources, both file reads polled finely
    // (oci-runtime.ts): crun's status file, written once the init has
    // exec'd and crun has looked up its owner and clock; and, earlier, crun's
    // only child right after its clone, when the spec makes that child the
    // init (initIsFirstClone). The second answers StartContainer while crun
    // still mounts the container's filesystems, so its output is already
    // being read when the process runs; what needs crun's record (exec, a
    // pod container joining this one's namespaces) waits for `recorded`.
    const early = runPid > 0 && !!this.runtime.childPid && initIsFirstClone(this.spec);
    const deadline = Date.now() + START_STATE_WAIT_MS;
    let recorded = false;
    for (let delay = 2; !proc.exitStatus; delay = Math.min(delay * 2, 50)) {
      const p = await this.runtime.pid(this.id);
      if (p > 0) {
        proc.pid = p;
        recorded = this.initKnown = true;
        break;
      }
      const c = early ? await this.runtime.childPid!(runPid) : 0;
      if (c > 0 && !proc.exitStatus) {
        proc.pid = c;
        this.initKnown = true;
        break;
      }
      if (Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, delay));
    }
    ph.mark(recorded || !this.initKnown ? 'crunStateMs' : 'crunChildMs');
    if (!recorded && this.initKnown) this.recordedWait = () => this.waitRecorded(proc, deadline);
    ph.report('container started', this.id);
    return proc;
  }

  /** Until crun has recorded the container (or its run ended, or the start deadline passed). */
  private async waitRecorded(proc: GuestProcess, deadline: number): Promise<void> {
    for (let delay = 5; !proc.exitStatus && Date.now() < deadline; delay = Math.min(delay * 2, 50)) {
      const p = await this.runtime.pid(this.id);
      if (p > 0) {
        if (p !== proc.pid) phaseLog?.('container init pid differs from crun\'s record', { container: this.id, early: proc.pid, recorded: p });
        proc.pid = p;
        return;
      }
      await Promise.race([new Promise((r) => setTimeout(r, delay)), proc.wait()]);
    }
  }

  /**
   * Resolves once the runtime has recorded the started container, or its
   * start ended: `crun exec` and a container joining this one's namespaces
   * need the container fully set up, not just cloned. Polled from the first
   * wait on: a `kata-ts run` never asks, and a poll loop beside crun costs
   * crun CPU on a one-vCPU TCG guest.
   */
  get recorded(): Promise<void> {
    this.recordedP ??= this.recordedWait?.() ?? Promise.resolve();
    return this.recordedP;
  }

  /** `passed`: stdio sockets of passfd IO (passfd.ts), given to crun and closed here either way. */
  async exec(execId: string, processJson: string, passed?: PassedStdio): Promise<GuestProcess> {
    try {
      return await this.execWith(execId, processJson, passed);
    } finally {
      closePassed(passed);
    }
  }

  private async execWith(execId: string, processJson: string, passed: PassedStdio | undefined): Promise<GuestProcess> {
    if (this.state !== 'running') throw new AgentError('failed-precondition', `container ${this.id} is not running`);
    if (this.processes.has(execId)) throw new AgentError('already-exists', `exec ${execId} already exists in ${this.id}`);
    await this.recorded;
    let p: OciProcess;
    try {
      p = JSON.parse(processJson) as OciProcess;
    } catch (err) {
      throw new AgentError('invalid', `process is not valid JSON: ${(err as Error).message}`);
    }
    if (!Array.isArray(p.args) || p.args.length === 0) throw new AgentError('invalid', 'process.args must be a non-empty array');
    p.cwd ??= this.spec.process?.cwd ?? '/';
    p.user ??= this.spec.process?.user ?? { uid: 0, gid: 0 };
    p.env ??= this.spec.process?.env;
    this.checkExecutable(p);
    const file = path.join(this.dir, `exec-${execId}.json`);
    await fs.writeFile(file, JSON.stringify(p));
    const pidFile = path.join(this.dir, `exec-${execId}.pid`);
    const terminal = !!p.terminal;
    if (terminal && passed && Object.keys(passed).length) throw new AgentError('invalid', 'passfd stdio ports are not for a terminal process (its pty carries the stdio)');
    const sock = terminal ? await this.consoleSocket(execId) : undefined;
    const listenFd = sock ? native().unixListen(sock) : undefined;
    const outputs = sock ? undefined : OutputFifos.open(this.dir, `exec-${execId}`);
    let child;
    try {
      child = this.runtime.exec(this.id, file, { consoleSocket: sock, pidFile, stdio: outputs && childStdio(outputs.stdio(), passed) });
    } catch (err) {
      outputs?.closeAll();
      throw err;
    } finally {
      closePassed(passed); // crun has its copies (or never will)
    }
    const proc = new GuestProcess(this.id, execId, terminal);
    this.processes.set(execId, proc);
    await proc.attach(child, listenFd, outputs, passed?.stdin !== undefined);
    if (sock) await fs.rm(sock, { force: true });
    proc.pid = child.pid ?? 0;
    for (let i = 0; i < 40 && !proc.exitStatus; i++) {
      const txt = await fs.readFile(pidFile, 'utf8').catch(() => '');
      if (txt.trim()) {
        proc.pid = Number(txt.trim());
        break;
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    return proc;
  }

  /** Command-not-found as its own error (the CLI maps it to status 127). */
  private checkExecutable(p: OciProcess): void {
    const root = this.spec.root?.path;
    if (!root) return;
    if (!executableExists(root, p.args[0]!, p.env ?? [], p.cwd)) {
      throw new AgentError('not-found', `executable file \`${p.args[0]}\` not found in $PATH`);
    }
  }

  process(execId: string): GuestProcess {
    const p = this.processes.get(execId);
    if (!p) throw new AgentError('not-found', `no process "${execId}" in container ${this.id}`);
    return p;
  }

  async signal(execId: string, signal: number): Promise<void> {
    const p = this.process(execId);
    if (p.exitStatus) return;
    if (execId === '') {
      // While `crun run` lives, the init it parents is not reaped: signal it
      // by pid, without a `crun kill` process (oci-runtime.ts).
      const initPid = this.initKnown ? p.pid : undefined;
      await this.runtime.kill(this.id, signal, initPid).catch((err: Error) => {
        if (!p.exitStatus) throw new AgentError('internal', `signal ${signal} to ${this.id}: ${err.message}`);
      });
    } else if (p.pid > 0) {
      try {
        process.kill(p.pid, signal);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
    }
  }

  /** Stop (SIGTERM, then SIGKILL after timeoutSec) and remove everything. */
  async remove(timeoutSec: number): Promise<void> {
    const init = this.init;
    if (init && !init.exitStatus) {
      if (timeoutSec > 0) {
        await this.signal('', 15).catch(() => undefined);
        await Promise.race([init.wait(), new Promise((r) => setTimeout(r, timeoutSec * 1000).unref())]);
      }
      if (!init.exitStatus) {
        await this.signal('', 9).catch(() => undefined);
        await Promise.race([init.wait(), new Promise((r) => setTimeout(r, 5000).unref())]);
      }
    }
    // `crun run` deletes its own state when the container exits: a `crun
    // delete` process (0.1-0.4 s under TCG) only when crun still runs or
    // left state behind (killed), or the runtime cannot tell.
    const crunRunning = !!init && !init.exitStatus;
    if (crunRunning || (await this.runtime.hasState?.(this.id)) !== false) await this.runtime.delete(this.id);
    await this.storages.removeAll();
    await fs.rm(this.dir, { recursive: true, force: true });
    this.state = 'stopped';
  }
}

/**
 * Whether crun's first clone for this spec is the container's init, so its
 * only child is the init from the clone on (crun 1.8, linux.c
 * libcrun_run_linux_container): not with a user namespace (crun may clone
 * into it first and set up the maps), nor when joining a pid or time
 * namespace (crun forks again and the grandchild is the init), nor with
 * hooks (crun runs them as its children).
 */
export function initIsFirstClone(spec: OciSpec): boolean {
  const ns = spec.linux?.namespaces ?? [];
  if (ns.some((n) => n.type === 'user')) return false;
  if (ns.some((n) => (n.type === 'pid' || n.type === 'time') && !!n.path)) return false;
  const hooks = spec.hooks as Record<string, unknown> | undefined;
  if (hooks && Object.values(hooks).some((h) => Array.isArray(h) && h.length > 0)) return false;
  return true;
}
