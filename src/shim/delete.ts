/**
 * `containerd-shim-kata-ts-v2 delete`: containerd runs it (in the bundle
 * directory) when a shim died or could not start, to clean up what that
 * shim left (when that shim is really gone — a live one still serves
 * the rest of its pod): the VM (QEMU processes recorded in the sandbox state — checked
 * by command line before killing, so a reused pid is never hit), the
 * sandbox directory, the host rootfs mount and the socket. It prints a
 * DeleteResponse (protobuf) — exit status 137, as containerd's own shims
 * report a task killed with its shim.
 *
 * containerd 1.6 runs this after every shim disconnect and waits for it
 * before `ctr run --rm` returns, so it loads little: the bundle marker
 * (marker.ts, not the task service) and our own protobuf codec with the one
 * message it prints (protobufjs and the containerd protos cost ~50 ms).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readState } from '../runtime/state';
import { removeTreeSafely, unmountAllSync } from '../runtime/volumes';
import { encodeMessage } from '../protocols/protobuf/codec';
import { parseProto } from '../protocols/protobuf/schema';
import type { ShimFlags } from './flags';
import { unmountRootfs } from './rootfs';
import { BUNDLE_MARKER, type BundleMarker } from './marker';
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

/** containerd.task.v2.DeleteResponse as in proto/containerd/task/v2/shim.proto (Timestamp: google/protobuf/timestamp.proto). */
const DELETE_RESPONSE_PROTO = `syntax = "proto3";
package shimdelete;
message Timestamp { int64 seconds = 1; int32 nanos = 2; }
message DeleteResponse { uint32 pid = 1; uint32 exit_status = 2; Timestamp exited_at = 3; }`;

/** The DeleteResponse bytes `delete` prints. */
export function encodeDeleteResponse(pid: number, exitStatus: number, at: Date): Buffer {
  const schema = parseProto(DELETE_RESPONSE_PROTO, 'shim-delete').messages.get('shimdelete.DeleteResponse')!;
  const ms = at.getTime();
  return encodeMessage(schema, { pid, exit_status: exitStatus, exited_at: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 } });
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
  return encodeDeleteResponse(0, 128 + 9, new Date());
}
