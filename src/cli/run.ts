/**
 * `kata-ts run`: boot a sandbox VM, run one container in it, stream its
 * stdio (or a terminal with -t), exit with the container's status, tear
 * everything down — also on Ctrl-C, SIGTERM and errors.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError } from '../common/errors';
import { logger } from '../common/log';
import type { OciMount, OciSpec } from '../protocols/oci';
import type { Config } from '../runtime/config';
import type { RootfsShare } from '../runtime/sandbox';
import { defaultSpec, readBundle } from '../runtime/spec';
import type { RunIo, RunPlan } from '../runtime/run-sandbox';
import { ReportedRunError } from '../runtime/run-status';
import { defaultRootfsDir, guestCopyOfRootfs } from '../runtime/guest-rootfs';
import type { RunClaimRequest } from '../factory/vm-cache-run-protocol';
import type { RunSession } from '../factory/vm-cache-run-claim';
import { isBindMount, planVolumes, VolumeError } from '../runtime/volumes';
import { policyFromFile } from '../runtime/policy';
import type { RunArgs } from './run-args';

export class RunError extends KataError<'usage' | 'rootfs'> {}

/**
 * What runContainer needs: the `kata-ts run` options it takes as parsed
 * (run-args.ts), plus those it takes in another form (volumes, netns from
 * --net, rootfsShare, readonly) and the command.
 */
export type RunOptions = Pick<RunArgs, 'rootfs' | 'bundle' | 'hypervisor' | 'memory' | 'cpus' | 'env' | 'workdir' | 'user' | 'tty' | 'hostname' | 'name' | 'policy'> & {
  readonly: boolean;
  /** `--volume HOST:GUEST[:ro|rw]` bind mounts (src/runtime/volumes.ts). */
  volumes?: string[];
  /**
   * How the rootfs reaches the guest: a virtio-fs share of the directory
   * (default for --rootfs/--bundle: the container's changes land in it) or
   * an EROFS image with a throwaway overlay (default for the built-in image,
   * which many runs share and none may modify).
   */
  rootfsShare?: RootfsShare;
  /** Network namespace whose interfaces the VM mirrors (--net host-netns PATH); none when absent. */
  netns?: string;
  /** Guest resolv.conf lines (--dns). */
  dns?: string[];
  /**
   * `--image SOURCE|ID`: the rootfs is a converted image (src/image; the
   * store's, or SOURCE converted on first use), served from the store —
   * no per-run mkfs.erofs. Its entrypoint/cmd/env/cwd/user apply.
   */
  image?: string;
  command: string[];
  /** --debug: the guest's debug mode too (no VM cache entry serves it). */
  debug?: boolean;
  /** The host log level in force (a VM cache entry that runs the container logs at it, on our stderr). */
  logLevel?: 'error' | 'warn' | 'info' | 'debug';
};

/** `--net none` | `--net host-netns PATH` → the netns path, or undefined for none. */
export function parseNet(words: string[] | undefined): string | undefined {
  if (!words || words.length === 0) return undefined;
  if (words.length === 1 && words[0] === 'none') return undefined;
  if (words.length === 2 && words[0] === 'host-netns') {
    if (!path.isAbsolute(words[1])) throw new RunError('usage', `--net host-netns needs an absolute path, got "${words[1]}"`);
    return words[1];
  }
  throw new RunError('usage', `invalid --net "${words.join(' ')}": expected "none" or "host-netns PATH"`);
}

/** "UID[:GID]" -> numbers; names are not resolved (no guest passwd lookup on the host). */
export function parseUser(u: string | undefined): { uid: number; gid: number } | undefined {
  if (u === undefined) return undefined;
  const m = /^(\d+)(?::(\d+))?$/.exec(u);
  if (!m) throw new RunError('usage', `invalid --user "${u}": expected UID[:GID] (numbers)`);
  return { uid: Number(m[1]), gid: Number(m[2] ?? m[1]) };
}

export function parseEnv(list: string[]): string[] {
  for (const e of list) if (!/^[^=\s]+=/.test(e)) throw new RunError('usage', `invalid --env "${e}": expected KEY=VALUE`);
  return list;
}

/**
 * `HOST:GUEST[:ro|rw]` → an OCI bind mount as Docker makes one (rbind,
 * rprivate). HOST is resolved against the working directory; paths with a
 * colon cannot be given this way (use a --bundle).
 */
export function parseVolume(v: string): OciMount {
  const parts = v.split(':');
  const [host, guest, mode = 'rw'] = parts;
  if (parts.length < 2 || parts.length > 3 || !host || !guest) throw new RunError('usage', `invalid --volume "${v}": expected HOST:GUEST[:ro|rw]`);
  if (!guest.startsWith('/')) throw new RunError('usage', `invalid --volume "${v}": the container path must be absolute`);
  if (mode !== 'ro' && mode !== 'rw') throw new RunError('usage', `invalid --volume "${v}": mode must be ro or rw`);
  // Refused as in config.json (volumes.ts), not normalised away by resolve().
  if (host.split('/').includes('..')) throw new VolumeError('invalid', `bind mount source "${host}" (for ${guest}) has a ".." component`);
  return { destination: guest, type: 'bind', source: path.resolve(host), options: ['rbind', 'rprivate', mode] };
}

/** Build the container spec and find its rootfs from the options. */
export function resolveContainer(o: RunOptions, cfg: Config, consoleSize?: { height: number; width: number }): { spec: OciSpec; rootfs: string } {
  if (o.rootfs && o.bundle) throw new RunError('usage', '--rootfs and --bundle cannot be used together');
  const user = parseUser(o.user);
  const env = parseEnv(o.env);
  if (o.bundle) {
    const { spec, rootfs } = readBundle(o.bundle);
    const p = spec.process!;
    if (o.command.length) p.args = o.command;
    if (env.length) p.env = [...(p.env ?? []), ...env];
    if (o.workdir) p.cwd = o.workdir;
    if (user) p.user = { ...p.user, ...user };
    if (o.tty) p.terminal = true;
    if (p.terminal && consoleSize) p.consoleSize = consoleSize;
    return { spec, rootfs };
  }
  const rootfs = path.resolve(o.rootfs ?? defaultRootfsDir(cfg));
  if (!fs.existsSync(rootfs) || !fs.statSync(rootfs).isDirectory()) {
    throw new RunError('rootfs', o.rootfs ? `rootfs ${rootfs} is not a directory` : `default image missing at ${rootfs} (run scripts/setup.sh)`);
  }
  if (o.command.length === 0) throw new RunError('usage', 'no command given: kata-ts run [options] -- CMD [ARGS...]');
  if (o.workdir && !o.workdir.startsWith('/')) throw new RunError('usage', `--workdir must be absolute: ${o.workdir}`);
  const spec = defaultSpec({
    args: o.command, env, cwd: o.workdir, uid: user?.uid, gid: user?.gid, terminal: o.tty,
    consoleSize: o.tty ? consoleSize : undefined, hostname: o.hostname, readonlyRootfs: o.readonly,
  });
  return { spec, rootfs };
}

/**
 * `--image`: finds (or converts) the image and builds the spec from its
 * config, the command line's options winning (a given command replaces the
 * image's cmd; its entrypoint stays, as with `docker run`).
 */
export async function resolveImageContainer(o: RunOptions, cfg: Config, consoleSize?: { height: number; width: number }): Promise<{ spec: OciSpec; imageId: string }> {
  if (o.rootfs || o.bundle) throw new RunError('usage', '--image cannot be used with --rootfs or --bundle');
  if (o.rootfsShare) throw new RunError('usage', '--rootfs-share does not apply to --image (a converted image is always its EROFS disks + an overlay)');
  if (o.workdir && !o.workdir.startsWith('/')) throw new RunError('usage', `--workdir must be absolute: ${o.workdir}`);
  // Loaded here, not at the top: a run without --image does not need the image store (sandbox.ts, same reason).
  const { findOrConvertImage, imageProcess } = await import('../runtime/image-rootfs');
  const { record } = await findOrConvertImage(cfg, o.image!, { progress: !!process.stderr.isTTY });
  const p = imageProcess(record, o.command);
  let user = parseUser(o.user);
  if (!user && p.user) {
    try {
      user = parseUser(p.user);
    } catch {
      throw new RunError('usage', `image ${record.id} runs as user "${p.user}", a name kata-ts cannot resolve on the host: give --user UID[:GID]`);
    }
  }
  const spec = defaultSpec({
    args: p.args, env: [...p.env, ...parseEnv(o.env)], cwd: o.workdir ?? p.cwd, uid: user?.uid, gid: user?.gid, terminal: o.tty,
    consoleSize: o.tty ? consoleSize : undefined, hostname: o.hostname, readonlyRootfs: o.readonly,
  });
  return { spec, imageId: record.id };
}

/**
 * Runs the container; returns its exit status. Throws on runtime errors.
 * With a pre-started VM cache configured ([factory] vm_cache_number) and an
 * entry ready, the container runs on a cached VM (runFromCache); else (one
 * line says why) on a VM this process starts.
 */
export async function runContainer(o: RunOptions, cfg: Config): Promise<number> {
  const log = logger('run');
  const consoleSize = process.stdout.isTTY ? { height: process.stdout.rows, width: process.stdout.columns } : undefined;
  const fromImage = o.image ? await resolveImageContainer(o, cfg, consoleSize) : undefined;
  const { spec, rootfs } = fromImage ? { spec: fromImage.spec, rootfs: '' } : resolveContainer(o, cfg, consoleSize);
  if (o.volumes?.length) spec.mounts = [...(spec.mounts ?? []), ...o.volumes.map(parseVolume)];
  const terminal = !!spec.process?.terminal;
  // A bad policy fails here, before a VM boots.
  const policy = o.policy ? policyFromFile(o.policy) : undefined;
  // [hypervisor.qemu] cold_plug_vfio: the spec's /dev/vfio groups go on the VM's command line (checked before a VM boots).
  // The hypervisor modules (~0.1 s to load) only when a VM is started here or devices are named: not before a VM cache claim.
  const hvChoice = () => import('../runtime/hypervisor-choice');
  const bootVfio = spec.linux?.devices?.length ? (await hvChoice()).sandboxBootVfio(cfg, spec) : undefined;
  const id = o.name ?? `run-${crypto.randomBytes(6).toString('hex')}`;
  // Bad volumes fail here, before a VM boots (createContainer checks again).
  if (spec.mounts?.some(isBindMount)) planVolumes(id, spec.mounts, '/');
  const rootfsShare: RootfsShare = o.rootfsShare ?? (o.rootfs || o.bundle ? 'virtiofs' : 'erofs');
  const plan: RunPlan = { id, spec, rootfs, rootfsShare, image: fromImage?.imageId, vcpus: o.cpus, memoryMiB: o.memory, netns: o.netns, dns: o.dns, policy, bootVfio };
  const cached = await runFromCache(o, cfg, plan);
  if (cached !== undefined) return cached;
  const { hv, choice } = await (await hvChoice()).createSandboxHypervisor(cfg, o.hypervisor);
  log.info('hypervisor chosen', { ...choice });
  const { runInSandbox } = await import('../runtime/run-sandbox');
  return runInSandbox(plan, cfg, hv, processIo(terminal));
}

/** This process's stdio, terminal and signals for runInSandbox. */
function processIo(terminal: boolean): RunIo {
  let raw = false;
  const signals: NodeJS.Signals[] = terminal ? ['SIGTERM', 'SIGHUP'] : ['SIGINT', 'SIGTERM', 'SIGHUP'];
  return {
    stdin: process.stdin, stdout: process.stdout, stderr: process.stderr,
    size: () => (process.stdout.isTTY ? { rows: process.stdout.rows, cols: process.stdout.columns } : undefined),
    onResize: (cb) => {
      if (!process.stdout.isTTY) return () => undefined;
      process.stdout.on('resize', cb);
      return () => process.stdout.off('resize', cb);
    },
    onInterrupt: (cb) => {
      for (const s of signals) process.on(s, cb);
      return () => { for (const s of signals) process.off(s, cb); };
    },
    started: () => {
      if (!process.stdin.isTTY) return;
      process.stdin.setRawMode(true);
      raw = true;
    },
    finished: () => { if (raw) process.stdin.setRawMode(false); },
  };
}

/** Why the VM cache cannot serve this run (it then starts a VM itself), or undefined. */
export function cacheCannotServe(o: RunOptions, plan: RunPlan): string | undefined {
  if (o.debug) return '--debug (cached VMs run without the guest\'s debug mode)';
  if (o.hypervisor === 'builtin') return '--hypervisor builtin (the cache holds QEMU clones)';
  if (plan.image) return '--image (the cache serves --rootfs, --bundle and the built-in image)';
  if (plan.netns) return '--net host-netns';
  if (plan.spec.mounts?.some(isBindMount)) return 'bind mounts (--volume or the bundle\'s)';
  if (plan.policy) return '--policy (a cached VM\'s kernel command line pins the configured policy)';
  if (plan.bootVfio?.length) return 'VFIO devices cold-plugged at boot';
  if (o.memory !== undefined || o.cpus !== undefined) return '--memory/--cpus (cached VMs have the configured size)';
  const builtIn = !o.rootfs && !o.bundle;
  if (o.rootfsShare === 'erofs' && !builtIn) return '--rootfs-share erofs with --rootfs/--bundle (a cached VM serves them through its virtio-fs share)';
  if (o.rootfsShare === 'virtiofs' && builtIn) return '--rootfs-share virtiofs for the built-in image (a cached VM never lets a run write to it)';
  return undefined;
}

/**
 * Runs `plan` on a pre-started VM from the cache: the cached process runs
 * it on this process's stdio (src/factory/vm-cache-run-*.ts) and this one
 * forwards signals and window sizes and exits with the status it reports.
 * Undefined when the cache is not configured or cannot serve it (one line
 * says why; a refill starts as after a shim's claim).
 */
async function runFromCache(o: RunOptions, cfg: Config, plan: RunPlan): Promise<number | undefined> {
  const n = cfg.factory.vm_cache_number;
  if (!(n > 0) || !cfg.factory.enable_template) return undefined;
  const log = logger('vm-cache');
  const why = cacheCannotServe(o, plan);
  if (why) {
    log.info(`VM cache not used: ${why}; starting a VM`);
    return undefined;
  }
  const [{ claimFromSlots }, { claimRunOne, RUN_CLAIM_TIMEOUT_MS }, { cacheDir, configIdentity }, { refillAfterClaim, refillDelayMs }] = await Promise.all([
    import('../factory/vm-cache-claim'), import('../factory/vm-cache-run-claim'), import('../factory/vm-cache-store'), import('../factory/vm-cache-fill'),
  ]);
  const identity = configIdentity(cfg);
  // The built-in image: the guest image's copy of it under a throwaway overlay (guest-rootfs.ts), else the
  // host directory shared read-only under one; --rootfs/--bundle are shared writable, as without the cache.
  const builtIn = !o.rootfs && !o.bundle;
  const inGuest = builtIn && !!guestCopyOfRootfs(cfg, 'qemu', plan.rootfs);
  const req: RunClaimRequest = {
    v: 1, mode: 'run', flags: { debug: false }, config: identity, logLevel: o.logLevel,
    run: { id: plan.id, spec: plan.spec, rootfs: plan.rootfs, rootfsShare: inGuest ? 'erofs' : 'virtiofs', rootfsOverlay: builtIn && !inGuest, dns: plan.dns ?? [] },
  };
  const t0 = Date.now();
  const r = await claimFromSlots(cacheDir(cfg), n, req, RUN_CLAIM_TIMEOUT_MS, claimRunOne());
  // The refill (a Node process, then a clone) waits: it must not take the CPU from the run it just served.
  let refilled = false;
  const refill = (delayMs?: number) => {
    if (refilled) return;
    refilled = true;
    refillAfterClaim(cfg, { configPath: identity.path, debug: false, delayMs });
  };
  if (!r.ok) {
    refill();
    log.warn(`VM cache: ${r.reason}; starting a VM`);
    return undefined;
  }
  log.info('claimed a pre-started VM from the VM cache', { slot: r.slot, cachePid: r.pid, qemuPid: r.meta.qemuPid, cachedAt: r.meta.readyAt, claimMs: Date.now() - t0 });
  // Spawned when the run ends or after the refill delay, whichever comes first (no second wait then).
  const timer = setTimeout(() => refill(0), refillDelayMs());
  try {
    return await followClaimedRun(r.value, !!plan.spec.process?.terminal);
  } finally {
    clearTimeout(timer);
    refill(0);
  }
}

/**
 * The claimer's part of a claimed run: this process's signals and window
 * sizes out, raw mode while the container runs, the status in — the same
 * terminal and signal handling as a run of its own (processIo).
 */
async function followClaimedRun(s: RunSession, terminal: boolean): Promise<number> {
  const io = processIo(terminal);
  const offSignals = io.onInterrupt((sig) => s.send({ signal: sig as 'SIGINT' }));
  const sendSize = () => {
    const size = io.size();
    if (size) s.send({ resize: size });
  };
  const offResize = terminal ? io.onResize(sendSize) : () => undefined;
  s.onStarted(() => {
    io.started();
    if (terminal) sendSize();
  });
  try {
    const end = await s.done;
    if ('exit' in end) return end.exit;
    throw new ReportedRunError(end.error, end.code);
  } finally {
    io.finished();
    offResize();
    offSignals();
  }
}
