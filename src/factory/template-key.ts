/**
 * What a VM template must match to be cloned: the template key.
 *
 * A clone resumes the template's guest exactly as it was saved — its kernel,
 * the agent and everything else in the guest image already loaded, its
 * kernel command line (with the agent policy's hash) already parsed, its
 * vCPUs, RAM size and machine fixed — and QEMU refuses (or worse, silently
 * misloads) device state from another QEMU build or machine. So every one of
 * those is part of the key, and a template whose key differs from the
 * configuration's is stale: `kata-ctl factory init` rebuilds it, a sandbox
 * never clones it.
 *
 * Files (kernel, image, QEMU) enter the key by identity — resolved path,
 * inode, size, mtime — which a clone can check in microseconds; the sha256
 * of kernel and image are computed once at `factory init` and kept in the
 * manifest for `factory status` (hashing the ~100 MB image on every sandbox
 * start would cost more than the clone saves).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

/** Bumped when the template layout or the clone procedure changes. */
export const TEMPLATE_FORMAT = 5; // 2 had two extra rng devices (PCI link warmers, reverted); 3 is format 1's layout again; 4 boots with acpi=noirq; 5 warms the agent's RPCs (agent.warmup=1)

export interface FileIdentity {
  path: string;
  ino: number;
  size: number;
  mtimeMs: number;
}

/** Everything a template is built from; two equal inputs give the same key. */
export interface TemplateInputs {
  format: number;
  kernel: FileIdentity;
  image: FileIdentity;
  qemu: FileIdentity;
  /** The full guest kernel command line (base, kernel_params, debug, policy hash). */
  kernelCmdline: string;
  vcpus: number;
  memoryMiB: number;
  machine: string;
  machineAccelerators: string;
  accel: string;
}

/** Identity of a file as the key sees it; throws (plain Error) when it is missing. */
export function fileIdentity(file: string): FileIdentity {
  const real = fs.realpathSync(file);
  const st = fs.statSync(real);
  return { path: real, ino: st.ino, size: st.size, mtimeMs: Math.trunc(st.mtimeMs) };
}

/** The key: 16 hex digits of sha256 over the inputs in a fixed order. */
export function templateKey(inputs: TemplateInputs): string {
  const ordered = JSON.stringify(inputs, Object.keys(flatten(inputs)).sort());
  return crypto.createHash('sha256').update(ordered).digest('hex').slice(0, 16);
}

/** Every key path of a nested object (for a stable JSON.stringify replacer list). */
function flatten(o: object, out: Record<string, true> = {}): Record<string, true> {
  for (const [k, v] of Object.entries(o)) {
    out[k] = true;
    if (v && typeof v === 'object') flatten(v as object, out);
  }
  return out;
}

/** Human reasons two inputs differ ("kernel changed (…)"), empty when equal. */
export function keyDifferences(saved: TemplateInputs, now: TemplateInputs): string[] {
  const out: string[] = [];
  if (saved.format !== now.format) out.push(`template format ${saved.format} → ${now.format}`);
  for (const f of ['kernel', 'image', 'qemu'] as const) {
    const a = saved[f];
    const b = now[f];
    if (a.path !== b.path) out.push(`${f} is now ${b.path} (template: ${a.path})`);
    else if (a.ino !== b.ino || a.size !== b.size || a.mtimeMs !== b.mtimeMs) out.push(`${f} ${b.path} changed since the template was made`);
  }
  if (saved.kernelCmdline !== now.kernelCmdline) out.push(`kernel command line differs (template: "${saved.kernelCmdline}", now: "${now.kernelCmdline}")`);
  for (const k of ['vcpus', 'memoryMiB', 'machine', 'machineAccelerators', 'accel'] as const) {
    if (saved[k] !== now[k]) out.push(`${k} ${JSON.stringify(saved[k])} → ${JSON.stringify(now[k])}`);
  }
  return out;
}

/** sha256 of a file, streamed (factory init and status only). */
export async function sha256File(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}
