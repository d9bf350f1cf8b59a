/**
 * Which shim (and VM) a container belongs to, and where that shim listens.
 * CRI marks pod members with annotations in the bundle's config.json:
 * `io.kubernetes.cri.container-type` = "sandbox" | "container" and
 * `io.kubernetes.cri.sandbox-id`; a "container" goes to its sandbox's shim,
 * everything else starts its own. The socket path is a hash of containerd's
 * address, the namespace and the group id under <dir of containerd's
 * socket>/s/, the place containerd's own shims use (/run/containerd/s).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const CONTAINER_TYPE = 'io.kubernetes.cri.container-type';
export const SANDBOX_ID = 'io.kubernetes.cri.sandbox-id';

export function bundleAnnotations(bundle: string): Record<string, string> {
  try {
    const spec = JSON.parse(fs.readFileSync(path.join(bundle, 'config.json'), 'utf8')) as { annotations?: Record<string, string> };
    return spec.annotations && typeof spec.annotations === 'object' ? spec.annotations : {};
  } catch {
    return {};
  }
}

/** The sandbox (grouping) id for container `id`. */
export function groupId(id: string, annotations: Record<string, string>): string {
  if (annotations[CONTAINER_TYPE] === 'container' && annotations[SANDBOX_ID]) return annotations[SANDBOX_ID];
  return id;
}

export function socketPath(containerdAddress: string, namespace: string, group: string): string {
  const addr = containerdAddress.replace(/^unix:\/\//, '');
  const dir = path.join(path.dirname(addr || '/run/containerd/containerd.sock'), 's');
  const h = crypto.createHash('sha256').update(`${addr}\0${namespace}\0${group}`).digest('hex').slice(0, 32);
  return path.join(dir, h);
}
