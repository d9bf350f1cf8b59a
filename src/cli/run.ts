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
import { createSandboxHypervisor, sandboxBootVfio } from '../runtime/hypervisor-choice';
import { Sandbox, type RootfsShare } from '../runtime/sandbox';
import { defaultSpec, readBundle } from '../runtime/spec';
import { attachProcess } from '../runtime/stdio';
import { attachPassfd, openPassfdStreams, type PassfdStreams } from '../runtime/passfd-stdio';
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

export function defaultRootfs(cfg: Config): string {
  return path.join(cfg.runtime.cache_dir, 'rootfs', 'busybox');
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
  const rootfs = path.resolve(o.rootfs ?? defaultRootfs(cfg));
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

/** Runs the container; returns its exit status. Throws on runtime errors. */
export async function runContainer(o: RunOptions, cfg: Config): Promise<number> {
  const log = logger('run');
  const stdinTty = !!process.stdin.isTTY;
  const consoleSize = process.stdout.isTTY ? { height: process.stdout.rows, width: process.stdout.columns } : undefined;
  const fromImage = o.image ? await resolveImageContainer(o, cfg, consoleSize) : undefined;
  const { spec, rootfs } = fromImage ? { spec: fromImage.spec, rootfs: '' } : resolveContainer(o, cfg, consoleSize);
  if (o.volumes?.length) spec.mounts = [...(spec.mounts ?? []), ...o.volumes.map(parseVolume)];
  const terminal = !!spec.process?.terminal;
  // A bad policy fails here, before a VM boots.
  const policy = o.policy ? policyFromFile(o.policy) : undefined;
  // [hypervisor.qemu] cold_plug_vfio: the spec's /dev/vfio groups go on the VM's command line (checked before a VM boots).
  const bootVfio = sandboxBootVfio(cfg, spec);
  const { hv, choice } = await createSandboxHypervisor(cfg, o.hypervisor);
  log.info('hypervisor chosen', { ...choice });
  const id = o.name ?? `run-${crypto.randomBytes(6).toString('hex')}`;
  const containerId = id;
  // Bad volumes fail here, before a VM boots (createContainer checks again).
  if (spec.mounts?.some(isBindMount)) planVolumes(containerId, spec.mounts, '/');
  const rootfsShare: RootfsShare = o.rootfsShare ?? (o.rootfs || o.bundle ? 'virtiofs' : 'erofs');
  const sandbox = new Sandbox({ id, config: cfg, hypervisor: hv, vcpus: o.cpus, memoryMiB: o.memory, hostname: spec.hostname, volumes: spec.mounts?.some(isBindMount) ?? false, bootContainers: [{ id: containerId, rootfs, rootfsShare, image: fromImage?.imageId }], netns: o.netns, dns: o.dns, policy, bootVfio });

  let interrupted: string | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    interrupted = sig;
    void sandbox.stop();
  };
  const signals: NodeJS.Signals[] = terminal ? ['SIGTERM', 'SIGHUP'] : ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of signals) process.on(s, onSignal);
  let rawSet = false;
  let passfd: PassfdStreams | undefined;
  try {
    await sandbox.start();
    // [runtime] use_passfd_io: stdio on vsock streams of its own (passfd-stdio.ts); a terminal keeps the agent's path.
    if (cfg.runtime.use_passfd_io && !terminal) passfd = await openPassfdStreams(sandbox.vsockSocket, cfg.runtime.passfd_listener_port, { stdin: true, stdout: true, stderr: true });
    await sandbox.createContainer(containerId, spec, rootfs, { stdio: passfd?.ports });
    await sandbox.startContainer(containerId);
    if (terminal && stdinTty) {
      process.stdin.setRawMode(true);
      rawSet = true;
    }
    const io = { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, terminal };
    const attached = passfd ? attachPassfd(sandbox.agent, containerId, '', passfd, io) : attachProcess(sandbox.agent, containerId, '', io);
    const onResize = () => void attached.resize(process.stdout.rows, process.stdout.columns).catch(() => undefined);
    if (terminal && process.stdout.isTTY) {
      process.stdout.on('resize', onResize);
      onResize();
    }
    const vmGone = hv.exited().then((why) => {
      throw new Error(`the VM stopped unexpectedly: ${why}`);
    });
    const st = await Promise.race([attached.done, vmGone]);
    process.stdout.off('resize', onResize);
    sandbox.markExited(containerId);
    return st.status;
  } catch (err) {
    if (interrupted) throw new Error(`interrupted by ${interrupted}`);
    throw err;
  } finally {
    passfd?.close();
    if (rawSet) process.stdin.setRawMode(false);
    process.stdin.pause();
    process.stdin.destroy();
    await sandbox.stop();
    for (const s of signals) process.off(s, onSignal);
  }
}
