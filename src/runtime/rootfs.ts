/**
 * Container root filesystems for the guest: a host directory becomes an EROFS
 * image (mkfs.erofs from erofs-utils) attached as a read-only virtio-blk disk;
 * the agent mounts it and puts a tmpfs-backed overlay on top for writes.
 * Ownership, modes, times, xattrs and device nodes are preserved as in the
 * directory. (virtio-fs sharing replaces this as the default in a later issue.)
 */
import * as fs from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { KataError } from '../common/errors';

const execFileP = promisify(execFile);

export class RootfsError extends KataError<'missing' | 'mkfs'> {}

export async function buildErofsImage(dir: string, image: string): Promise<void> {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new RootfsError('missing', `rootfs ${dir} is not a directory`);
  try {
    // -T0: reproducible timestamps in the superblock; file times are kept.
    await execFileP('mkfs.erofs', ['-T0', '-Eforce-inode-extended', image, dir], { maxBuffer: 4 * 1024 * 1024 });
  } catch (err) {
    const e = err as { stderr?: string; message: string; code?: string };
    if (e.code === 'ENOENT') throw new RootfsError('mkfs', 'mkfs.erofs not found (apt-get install erofs-utils, or run scripts/setup.sh)');
    throw new RootfsError('mkfs', `mkfs.erofs ${dir}: ${(e.stderr || e.message).trim().split('\n').slice(-2).join(' ')}`);
  }
}
