/**
 * Volumes (a container's OCI bind mounts) and container root filesystems
 * through one sandbox-wide virtio-fs share, as Kata's `kataShared`: the host
 * bind-mounts each source into `<sandbox dir>/mounts/<container id>/<n>-<basename>`
 * and each container's rootfs (with rootfs_share = "virtiofs") into
 * `<sandbox dir>/mounts/<container id>/rootfs`; both propagate to the
 * read-only view `<sandbox dir>/shared` that the share (tag SHARED_FS_TAG)
 * serves. The guest mounts it once at SHARED_GUEST_DIR: a container's mount
 * keeps its type, options and propagation flags with its source translated
 * to the guest path — crun bind-mounts it from there — and a container's
 * root is SHARED_GUEST_DIR/<id>/rootfs, no device or guest mount of its own
 * (one virtio-fs device per sandbox, whatever its number of containers).
 * A rootfs bind is writable in the view (its propagated copy keeps the
 * flags of the bind in `mounts`): the container writes into containerd's
 * snapshot as under runc.
 *
 * What holds (and why):
 * - Read-only is enforced on the host: a `ro` volume's bind mount (and every
 *   mount below it, for rbind) is remounted MS_RDONLY|MS_REMOUNT|MS_BIND, so
 *   our FUSE server — the only way the guest reaches it — gets EROFS whatever
 *   the guest does with its own mount flags.
 * - Confinement is the rootfs share's: the FUSE server resolves one component
 *   at a time with O_NOFOLLOW from fds it holds (src/virtio/fs/passthrough.ts),
 *   so a guest `..` or symlink never walks the host; the share root itself is
 *   the sandbox's `shared` directory, never anything above it.
 * - Host updates are seen: each volume's bind mount is made a slave
 *   (MS_SLAVE, or MS_REC|MS_SLAVE for rbind) of its source — mounts the host
 *   adds under the source show up, nothing propagates back — and the files
 *   are the host's own, served with a 1 s cache (a kubelet `..data` symlink
 *   swap is visible within about a second).
 * - The guest cannot change the share's own tree, as in Kata: `mounts` is a
 *   private-then-shared self-bind that only the host writes, and `shared` is
 *   a read-only bind of it, slave to it, made before the VM opens it. New
 *   volume mounts in `mounts` appear in `shared`; the guest can neither
 *   create files there nor plant a symlink where the host will create a
 *   mount point, and every host path the runtime walks (mkdir, mount,
 *   umount) lies in `mounts` or `shared`, never under a guest-writable name.
 *   A `ro` volume's copy in `shared` is remounted read-only too (a
 *   propagated copy starts out as the mount it copies: writable).
 *   Nothing propagates out of the sandbox: `mounts` is its own peer group.
 * - /dev/shm (CRI's sandbox shm bind mount) is not shared from the host: it
 *   becomes a bind of one guest tmpfs per sandbox (SANDBOX_SHM_GUEST_DIR),
 *   shared by the pod's containers as the host tmpfs is under runc —
 *   shared memory through FUSE without DAX would not be coherent.
 * - Sources that are missing, sockets, FIFOs or devices, and sources or
 *   destinations with a `..` component are refused before anything is
 *   mounted; a failure half-way unmounts what that container got.
 * - Removal never deletes host data: mount points are removed with rmdir or
 *   unlink only after their unmount, and a sandbox directory that still has
 *   a mount below it is not removed at all.
 *
 * mount(2) is not reachable from Node and the native addon has no binding
 * for it; util-linux `mount`/`umount` are spawned instead (a few times per
 * container create, never on a data path; the shim already mounts container
 * roots the same way, and libmount handles propagation flags).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { KataError, errorMessage } from '../common/errors';
import type { OciMount } from '../protocols/oci';
import type { Storage } from '../protocols/agent-api';
import { SANDBOX_SHM_GUEST_DIR, SHARED_FS_TAG, SHARED_GUEST_DIR, SHARED_ROOTFS_NAME, sharedRootfsGuestPath } from '../protocols/guest-paths';

const execFileP = promisify(execFile);

export class VolumeError extends KataError<'invalid' | 'unsupported' | 'mount'> {}

/**
 * The agent storage that mounts a virtio-fs share (the volume share or a
 * container's rootfs) by its tag at `mountPoint`. `pciPath` is where the
 * device manager put the share's device (QEMU): the agent waits until the
 * virtiofs driver probed it there before mounting (src/agent/storage.ts).
 * The builtin VMM's virtio-mmio shares have none; the agent then goes by tag.
 */
export function virtiofsStorage(tag: string, mountPoint: string, pciPath: string | undefined): Storage {
  return { driver: 'virtiofs', source: tag, fstype: 'virtiofs', options: [], mount_point: mountPoint, ...(pciPath ? { driver_options: [`pci-path=${pciPath}`] } : {}) };
}

/** One bind mount of a container, planned: where it goes on the host and in the guest. */
export interface Volume {
  /** Host source as the spec gives it (absolute, no `..`). */
  source: string;
  /** Mount point in the sandbox's host-only `mounts` directory. */
  hostTarget: string;
  /** Its propagated copy in the served, read-only `shared` view. */
  sharedTarget: string;
  /** The same, as the guest sees it under SHARED_GUEST_DIR. */
  guestSource: string;
  kind: 'file' | 'dir';
  readonly: boolean;
  /** rbind: mounts below the source come along. */
  recursive: boolean;
  /** st_dev of the mounted root, once mounted (which inodes of the share it brings). */
  dev?: bigint;
}

export interface ContainerVolumes {
  /** The spec's mounts with bind sources translated to guest paths. */
  mounts: OciMount[];
  volumes: Volume[];
  /** A mount asks for the sandbox's /dev/shm (SANDBOX_SHM_GUEST_DIR). */
  needsShm: boolean;
}

export function isBindMount(m: OciMount): boolean {
  const o = m.options ?? [];
  return m.type === 'bind' || o.includes('bind') || o.includes('rbind');
}

function hasDotDot(p: string): boolean {
  return p.split('/').includes('..');
}

/** A file name made of the source's last component, safe in any path (≤ 64 bytes). */
function safeBase(source: string): string {
  const b = path.basename(source).replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 64);
  return b === '' || b === '.' || b === '..' ? 'root' : b;
}

type StatFn = (p: string) => fs.Stats;

/** The host-only directory whose read-only view is `sharedDir`. */
export function mountsDirOf(sharedDir: string): string {
  return path.join(path.dirname(sharedDir), 'mounts');
}

/**
 * Validates a container's bind mounts and translates them; touches nothing.
 * `sharedDir` is the sandbox's host share directory.
 */
export function planVolumes(containerId: string, mounts: OciMount[], sharedDir: string, stat: StatFn = fs.statSync): ContainerVolumes {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(containerId)) throw new VolumeError('invalid', `invalid container id "${containerId}"`);
  const out: ContainerVolumes = { mounts: [], volumes: [], needsShm: false };
  for (const m of mounts) {
    if (!isBindMount(m)) {
      out.mounts.push(m);
      continue;
    }
    const src = m.source ?? '';
    const dst = m.destination;
    if (hasDotDot(dst)) throw new VolumeError('invalid', `bind mount destination "${dst}" has a ".." component`);
    if (path.posix.normalize(dst).replace(/\/+$/, '') === '/dev/shm') {
      out.mounts.push({ ...m, type: 'bind', source: SANDBOX_SHM_GUEST_DIR, options: withBind(m.options) });
      out.needsShm = true;
      continue;
    }
    if (!src.startsWith('/')) throw new VolumeError('invalid', `bind mount source "${src}" (for ${dst}) must be an absolute host path`);
    if (hasDotDot(src)) throw new VolumeError('invalid', `bind mount source "${src}" (for ${dst}) has a ".." component`);
    let st: fs.Stats;
    try {
      st = stat(src);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new VolumeError('invalid', `bind mount source ${src} (for ${dst}) ${code === 'ENOENT' || code === 'ENOTDIR' ? 'does not exist' : `cannot be read: ${errorMessage(err)}`}`, { cause: err });
    }
    let kind: Volume['kind'];
    if (st.isDirectory()) kind = 'dir';
    else if (st.isFile()) kind = 'file';
    else {
      const what = st.isSocket() ? 'a unix socket (sockets cannot cross into the VM)' : st.isFIFO() ? 'a FIFO' : 'a device node';
      throw new VolumeError('invalid', `bind mount source ${src} (for ${dst}) is ${what}: only files and directories can be volumes`);
    }
    const name = `${out.volumes.length}-${safeBase(src)}`;
    const opts = m.options ?? [];
    const v: Volume = {
      source: src, kind,
      hostTarget: path.join(mountsDirOf(sharedDir), containerId, name),
      sharedTarget: path.join(sharedDir, containerId, name),
      guestSource: `${SHARED_GUEST_DIR}/${containerId}/${name}`,
      readonly: opts.includes('ro'),
      recursive: opts.includes('rbind'),
    };
    out.volumes.push(v);
    out.mounts.push({ ...m, type: 'bind', source: v.guestSource, options: withBind(m.options) });
  }
  return out;
}

/** crun needs bind or rbind among the options of a bind mount; everything else (ro, propagation) is kept. */
function withBind(options: string[] | undefined): string[] {
  const o = [...(options ?? [])];
  if (!o.includes('bind') && !o.includes('rbind')) o.push('rbind');
  return o;
}

/**
 * A container's root filesystem (a host directory: containerd's mounted
 * snapshot, or `kata-ts run --rootfs DIR`) planned as a writable recursive
 * bind into the sandbox share; touches nothing. Its guest path is
 * sharedRootfsGuestPath(containerId).
 */
export function planRootfs(containerId: string, rootfs: string, sharedDir: string, stat: StatFn = fs.statSync): Volume {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(containerId)) throw new VolumeError('invalid', `invalid container id "${containerId}"`);
  if (!rootfs.startsWith('/') || hasDotDot(rootfs)) throw new VolumeError('invalid', `rootfs "${rootfs}" must be an absolute host path without ".."`);
  let st: fs.Stats | undefined;
  try {
    st = stat(rootfs);
  } catch { /* below */ }
  if (!st?.isDirectory()) throw new VolumeError('invalid', `rootfs ${rootfs} is not a directory`);
  return {
    source: rootfs, kind: 'dir',
    hostTarget: path.join(mountsDirOf(sharedDir), containerId, SHARED_ROOTFS_NAME),
    sharedTarget: path.join(sharedDir, containerId, SHARED_ROOTFS_NAME),
    guestSource: sharedRootfsGuestPath(containerId),
    readonly: false,
    // As runc binds a rootfs (MS_BIND|MS_REC): mounts below it come along.
    recursive: true,
  };
}

/** The virtio-fs share (device) of a sandbox's share directory: the one device all its volumes and shared roots go through. */
export function sandboxShareDevice(sharedDir: string): { tag: string; path: string } {
  return { tag: SHARED_FS_TAG, path: sharedDir };
}

type Propagation = 'private' | 'shared' | 'slave';

/** The syscalls a volume needs, behind an interface (util-linux by default). */
export interface HostMounter {
  /**
   * A bind mount, then (same call) the propagation changes in the order
   * given (recursive for an rbind) and, with `readonly`, a read-only
   * remount of the new mount: one `mount` process per share mount (each
   * costs a process spawn on every pod's start).
   */
  bind(source: string, target: string, recursive: boolean, then?: { propagation?: Propagation[]; readonly?: boolean }): Promise<void>;
  /** Propagation of an existing mount: private, shared or slave, recursive or not. */
  propagation(target: string, kind: Propagation, recursive: boolean): Promise<void>;
  remountReadonly(target: string): Promise<void>;
  /** MNT_DETACH (each with everything below it): a busy mount (FUSE server fds, a process inside) cannot stay listed. */
  unmount(targets: string[]): Promise<void>;
}

async function run(args: string[]): Promise<void> {
  try {
    await execFileP('mount', args);
  } catch (err) {
    const e = err as { stderr?: string; message: string; code?: string };
    if (e.code === 'ENOENT') throw new VolumeError('mount', 'mount (util-linux) not found');
    throw new VolumeError('mount', `mount ${args.join(' ')}: ${(e.stderr || e.message).trim()}`);
  }
}

export const utilLinuxMounter: HostMounter = {
  // util-linux ≥ 2.23 applies --make-* after the bind, in the order given
  // (each its own mount(2)); ≥ 2.27 follows `-o ro` on a bind with the
  // MS_REMOUNT|MS_BIND|MS_RDONLY a bind needs to become read-only.
  bind: (source, target, recursive, then = {}) => run([
    recursive ? '--rbind' : '--bind',
    ...(then.propagation ?? []).map((k) => `--make-${recursive ? 'r' : ''}${k}`),
    ...(then.readonly ? ['-o', 'ro'] : []),
    source, target,
  ]),
  propagation: (target, kind, recursive) => run([`--make-${recursive ? 'r' : ''}${kind}`, target]),
  remountReadonly: (target) => run(['-o', 'remount,bind,ro', target]),
  async unmount(targets) {
    if (targets.length) await execFileP('umount', ['-l', ...targets]).catch(() => undefined);
  },
};

/** mountinfo's mount point field escapes space, tab, newline and backslash as \ooo. */
function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/**
 * Mount points at or below `dir`, shallowest (and oldest) first: unmounting
 * the first one with MNT_DETACH takes everything below it along, so the
 * runtime never walks a path below a volume's root (names there are the
 * source's, which a guest may rename).
 */
export function mountsUnder(dir: string, mountinfo = '/proc/self/mountinfo'): { target: string; readonly: boolean }[] {
  let abs = path.resolve(dir);
  try {
    abs = fs.realpathSync(abs);
  } catch { /* gone: compare as given */ }
  let text = '';
  try {
    text = fs.readFileSync(mountinfo, 'utf8');
  } catch {
    return [];
  }
  const found: { target: string; readonly: boolean; order: number }[] = [];
  text.split('\n').forEach((line, order) => {
    const f = line.split(' ');
    if (f.length < 6) return;
    const target = unescapeMountinfo(f[4]!);
    if (target === abs || target.startsWith(abs + '/')) found.push({ target, readonly: f[5]!.split(',').includes('ro'), order });
  });
  found.sort((a, b) => a.target.split('/').length - b.target.split('/').length || a.order - b.order);
  return found.map(({ target, readonly }) => ({ target, readonly }));
}

/**
 * Unmounts everything at or below `dir` (synchronously: crash clean-up paths
 * use it) and says whether nothing is left mounted there.
 */
export function unmountAllSync(dir: string): boolean {
  for (let i = 0; i < 64; i++) {
    const [m] = mountsUnder(dir);
    if (!m) return true;
    try {
      execFileSync('umount', ['-l', m.target], { stdio: 'ignore' });
    } catch { /* listed again if it stayed */ }
  }
  return mountsUnder(dir).length === 0;
}

/**
 * Removes a directory tree that may hold volume mounts (a sandbox
 * directory): unmounts first, and removes nothing when a mount is left —
 * a recursive delete through a bind mount would delete the host's data.
 */
export function removeTreeSafely(dir: string): boolean {
  if (!unmountAllSync(dir)) return false;
  fs.rmSync(dir, { recursive: true, force: true });
  return true;
}

/** The volumes of one sandbox on the host: the `mounts`/`shared` pair and each container's bind mounts. */
export class SandboxVolumes {
  private prepared = false;
  private readonly byContainer = new Map<string, Volume[]>();
  /** Containers whose rootfs is bound into the share (planRootfs). */
  private readonly rootfsOf = new Map<string, Volume>();
  /** Host-only: the runtime mounts here; `sharedDir` is its read-only view. */
  readonly mountsDir: string;

  constructor(readonly sharedDir: string, private readonly mounter: HostMounter = utilLinuxMounter) {
    this.mountsDir = mountsDirOf(sharedDir);
  }

  /**
   * Sets up `mounts` (its own peer group) and `shared` (a read-only slave
   * view of it). Call before the VM's FUSE server opens `shared` (it would
   * hold the directory below).
   */
  async prepare(): Promise<void> {
    if (this.prepared) return;
    fs.mkdirSync(this.mountsDir, { recursive: true, mode: 0o755 });
    fs.mkdirSync(this.sharedDir, { recursive: true, mode: 0o755 });
    const isMount = (d: string) => mountsUnder(d).some((m) => m.target === fs.realpathSync(d));
    try {
      if (!isMount(this.mountsDir)) {
        await this.mounter.bind(this.mountsDir, this.mountsDir, false, { propagation: ['private', 'shared'] });
      }
      if (!isMount(this.sharedDir)) {
        await this.mounter.bind(this.mountsDir, this.sharedDir, false, { propagation: ['slave'], readonly: true });
      }
    } catch (err) {
      await this.unmountAll();
      throw err;
    }
    this.prepared = true;
  }

  /**
   * Mounts a container's volumes; on any failure what it mounted is undone
   * (its rootfs bind too, if it has one) and the error thrown.
   */
  async add(containerId: string, volumes: Volume[]): Promise<void> {
    if (this.byContainer.has(containerId)) throw new VolumeError('invalid', `volumes of container ${containerId} are already mounted`);
    if (volumes.length === 0) return;
    await this.prepare();
    this.byContainer.set(containerId, volumes);
    try {
      this.containerDir(containerId);
      for (const v of volumes) await this.mountOne(v);
    } catch (err) {
      await this.remove(containerId);
      throw err;
    }
  }

  /**
   * Binds a container's rootfs (planRootfs) into the share; its guest path
   * is `v.guestSource`. Undone by remove(containerId), with the volumes; on
   * failure nothing of it stays mounted.
   */
  async addRootfs(containerId: string, v: Volume): Promise<void> {
    if (this.rootfsOf.has(containerId)) throw new VolumeError('invalid', `the rootfs of container ${containerId} is already shared`);
    await this.prepare();
    this.rootfsOf.set(containerId, v);
    try {
      this.containerDir(containerId);
      await this.mountOne(v);
    } catch (err) {
      this.rootfsOf.delete(containerId);
      await this.unmountUnder(v.hostTarget);
      await this.unmountUnder(v.sharedTarget);
      if (fs.existsSync(v.hostTarget) && !mountsUnder(v.hostTarget).length) fs.rmdirSync(v.hostTarget);
      throw err;
    }
  }

  /** Whether a container's rootfs is bound into the share. */
  hasRootfs(containerId: string): boolean {
    return this.rootfsOf.has(containerId);
  }

  /** `mounts/<id>`, made when missing (only the host writes in `mounts`: no guest-planted name here). */
  private containerDir(containerId: string): void {
    const dir = path.join(this.mountsDir, containerId);
    try {
      fs.mkdirSync(dir, { mode: 0o755 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !fs.lstatSync(dir).isDirectory()) throw err;
    }
  }

  private async mountOne(v: Volume): Promise<void> {
    if (v.kind === 'dir') fs.mkdirSync(v.hostTarget, { mode: 0o755 });
    else fs.writeFileSync(v.hostTarget, '', { flag: 'wx', mode: 0o644 });
    await this.mounter.bind(v.source, v.hostTarget, v.recursive, { propagation: ['slave'] });
    v.dev = fs.statSync(v.hostTarget, { bigint: true }).dev;
    if (!mountsUnder(v.sharedTarget).some((m) => m.target === v.sharedTarget || m.target === safeRealpath(v.sharedTarget))) {
      throw new VolumeError('mount', `the bind mount of ${v.source} did not propagate to ${v.sharedTarget}`);
    }
    if (v.readonly) {
      // Both copies, and every mount rbind brought along: a remount changes one mount only.
      for (const t of [...mountsUnder(v.hostTarget), ...mountsUnder(v.sharedTarget)]) await this.mounter.remountReadonly(t.target);
    }
  }

  /**
   * Unmounts a container's volumes and its shared rootfs and removes their
   * mount points (idempotent). Returns the st_dev of its rootfs when that
   * filesystem was the rootfs's alone (nothing else in the share is on it,
   * as containerd's overlay snapshot): the share's server may let go of all
   * it holds there (forgetShareDevice).
   */
  async remove(containerId: string): Promise<bigint | undefined> {
    const vols = this.byContainer.get(containerId) ?? this.rootfsOf.get(containerId);
    const ownDev = this.exclusiveRootfsDev(containerId);
    this.byContainer.delete(containerId);
    this.rootfsOf.delete(containerId);
    const dir = path.join(this.mountsDir, containerId);
    const view = path.join(this.sharedDir, containerId);
    if (!vols && !fs.existsSync(dir)) return;
    // Unmounting in `mounts` propagates to `shared`; whatever stayed goes after.
    await this.unmountUnder(dir);
    await this.unmountUnder(view);
    if (mountsUnder(dir).length || mountsUnder(view).length) throw new VolumeError('mount', `cannot unmount the volumes of ${containerId} under ${dir}`);
    if (!fs.existsSync(dir)) return ownDev;
    // Only empty mount points go: never a recursive delete here.
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) fs.rmdirSync(p);
      else fs.unlinkSync(p);
    }
    fs.rmdirSync(dir);
    return ownDev;
  }

  /** The st_dev of a container's rootfs bind if no other mount in the share, nor the share's own directory, is on it. */
  private exclusiveRootfsDev(containerId: string): bigint | undefined {
    const dev = this.rootfsOf.get(containerId)?.dev;
    if (dev === undefined) return undefined;
    try {
      if (fs.statSync(this.sharedDir, { bigint: true }).dev === dev) return undefined;
    } catch {
      return undefined;
    }
    for (const [id, vols] of this.byContainer) if (vols.some((v) => v.dev === dev) && id !== containerId) return undefined;
    for (const v of this.byContainer.get(containerId) ?? []) if (v.dev === dev) return undefined;
    for (const [id, v] of this.rootfsOf) if (id !== containerId && v.dev === dev) return undefined;
    return dev;
  }

  /**
   * Unmounts everything at or below the directories: the outermost mounts
   * in one `umount -l` (each detaches what is below it), again while any
   * stays listed.
   */
  private async unmountUnder(...dirs: string[]): Promise<void> {
    for (let i = 0; i < 64; i++) {
      const all = dirs.flatMap((d) => mountsUnder(d)).map((m) => m.target);
      const outer = [...new Set(all.filter((t) => !all.some((o) => o !== t && t.startsWith(o + '/'))))];
      if (!outer.length) return;
      await this.mounter.unmount(outer);
    }
  }

  private async unmountAll(): Promise<void> {
    await this.unmountUnder(this.sharedDir, this.mountsDir);
  }

  /** Every container's volumes, then the `shared` view and the `mounts` directory. */
  async close(): Promise<void> {
    let firstErr: unknown;
    for (const id of new Set([...this.byContainer.keys(), ...this.rootfsOf.keys()])) await this.remove(id).catch((err) => (firstErr ??= err));
    await this.unmountAll();
    this.prepared = false;
    if (mountsUnder(this.sharedDir).length || mountsUnder(this.mountsDir).length) throw new VolumeError('mount', `mounts are left under ${path.dirname(this.sharedDir)}`);
    if (firstErr) throw firstErr;
  }
}

function safeRealpath(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return p;
  }
}
