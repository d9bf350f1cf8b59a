/**
 * The container rootfs containerd hands the shim: a list of mounts (an
 * overlayfs snapshot, or a bind) to be mounted at <bundle>/rootfs on the
 * host, as the runc shim does, and unmounted at Delete (or by `shim delete`
 * after a crash). The Sandbox gets that directory: as an EROFS image (the
 * container's writes then go to a guest tmpfs, not the snapshot) or, once
 * virtio-fs is the default, shared as it is.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { KataError } from '../common/errors';

const execFileP = promisify(execFile);

export class MountError extends KataError<'invalid' | 'mount'> {}

export interface ContainerdMount {
  type: string;
  source: string;
  target?: string;
  options: string[];
}

/** Mounts `mounts` in order on <bundle>/rootfs; returns true when anything was mounted. */
export async function mountRootfs(bundle: string, mounts: ContainerdMount[]): Promise<boolean> {
  if (mounts.length === 0) return false;
  const target = path.join(bundle, 'rootfs');
  fs.mkdirSync(target, { recursive: true });
  let done = 0;
  try {
    for (const m of mounts) {
      if (!m.type || /[\s]/.test(m.type)) throw new MountError('invalid', `invalid mount type "${m.type}"`);
      if (m.target) throw new MountError('invalid', `mount targets inside the rootfs are not supported (${m.target})`);
      const opts = m.options.filter((o) => o !== '');
      const bind = m.type === 'bind' || opts.includes('bind') || opts.includes('rbind');
      const args = bind ? ['--bind', m.source, target] : ['-t', m.type, ...(opts.length ? ['-o', opts.join(',')] : []), m.source, target];
      try {
        await execFileP('mount', args);
      } catch (err) {
        const e = err as { stderr?: string; message: string };
        throw new MountError('mount', `mount ${m.type} on ${target}: ${(e.stderr || e.message).trim()}`);
      }
      done++;
    }
  } catch (err) {
    for (let i = 0; i < done; i++) await unmountRootfs(bundle);
    throw err;
  }
  return true;
}

/** Unmounts <bundle>/rootfs if it is a mount point (idempotent; lazy, so a busy tree cannot stick). */
export async function unmountRootfs(bundle: string): Promise<void> {
  const target = path.join(bundle, 'rootfs');
  for (let i = 0; i < 8 && isMountPoint(target); i++) {
    await execFileP('umount', ['-l', target]).catch(() => undefined);
  }
}

export function isMountPoint(p: string): boolean {
  try {
    const abs = fs.realpathSync(p);
    return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === abs);
  } catch {
    return false;
  }
}
