/**
 * `containerd-shim-kata-ts-v2 delete`: containerd runs it (in the bundle
 * directory) when a shim died or could not start, to clean up what that
 * shim left (when that shim is really gone — a live one still serves
 * the rest of its pod): the VM (QEMU processes recorded in the sandbox state — checked
 * by command line before killing, so a reused pid is never hit), the
 * sandbox directory, the host rootfs mount and the socket. It prints a
 * DeleteResponse (protobuf) — exit status 137, as containerd's own shims
 * report a task killed with its shim.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readState } from '../runtime/state';
import { removeTreeSafely, unmountAllSync } from '../runtime/volumes';
import { encode, timestamp } from '../protocols/ttrpc/messages';
import type { ShimFlags } from './flags';
import { unmountRootfs } from './rootfs';
import { BUNDLE_MARKER, type BundleMarker } from './service';
import { bundleAnnotations, groupId, socketPath } from './grouping';

function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

async function killAndWait(pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  for (let i = 0; i < 100 && fs.existsSync(`/proc/${pid}`); i++) {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0];
    if (st === 'Z') break; // reaped by its (dead) parent's reaper soon
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Kills the VM and removes the sandbox dir, unless its shim still runs (it serves other pod members). */
export async function cleanupSandbox(m: BundleMarker): Promise<boolean> {
  if (m.shimPid && m.shimPid !== process.pid && cmdline(m.shimPid).includes('containerd-shim-kata-ts-v2')) return false;
  const st = readState(m.sandboxDir);
  // Volumes (bind mounts under <sandbox>/shared) go first, lazily, while the
  // VM is still there: once it is gone, removing the directory is all that is
  // left (containerd's clients see the task stop as soon as the VM dies).
  unmountAllSync(m.sandboxDir);
  for (const pid of st?.vmPids ?? []) {
    if (cmdline(pid).includes(m.sandboxDir)) await killAndWait(pid);
  }
  // A tree that still has a mount is left rather than deleted through it.
  removeTreeSafely(m.sandboxDir);
  return true;
}

export async function deleteShim(flags: ShimFlags): Promise<Buffer> {
  const bundle = flags.bundle || process.cwd();
  let marker: BundleMarker | undefined;
  try {
    marker = JSON.parse(fs.readFileSync(path.join(bundle, BUNDLE_MARKER), 'utf8')) as BundleMarker;
  } catch {
    marker = undefined;
  }
  const shimGone = marker ? await cleanupSandbox(marker) : true;
  await unmountRootfs(bundle);
  // containerd runs `delete` after every shim disconnect, also when one pod
  // member is done and the shim lives on for the others: keep its socket then.
  if (shimGone && flags.address && flags.id) {
    const sock = socketPath(flags.address, flags.namespace, groupId(flags.id, bundleAnnotations(bundle)));
    fs.rmSync(sock, { force: true });
  }
  return encode('containerd.task.v2.DeleteResponse', { pid: 0, exit_status: 128 + 9, exited_at: timestamp(new Date()) });
}
