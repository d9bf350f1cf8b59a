/**
 * What a VM template must match to be cloned: the template key.
 *
 * A clone resumes the template's guest exactly as it was saved — its kernel,
 * the agent and everything else in the guest image already loaded, its
 * kernel command line (with the agent policy's hash) already parsed, its
 * vCPUs, RAM size, machine and memory devices (DAX NVDIMM, balloon,
 * virtio-mem, hotplug room) fixed — and QEMU refuses (or worse, silently
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
export const TEMPLATE_FORMAT = 6; // 2 had two extra rng devices (PCI link warmers, reverted); 3 is format 1's layout again; 4 boots with acpi=noirq; 5 warms the agent's RPCs (agent.warmup=1); 6 carries the memory devices (DAX nvdimm, balloon, virtio-mem, hotplug room)

export interface FileIdentity {
  path: string;
  ino: number;
  size: number;
  mtimeMs: number;
}

/**
 * The memory side of the template's machine (issue 13), as its QEMU had it
 * (src/hypervisor/memory-plan.ts): the guest's ACPI tables, its e820 map,
 * the NVDIMM it mounted as root, the balloon and virtio-mem drivers it
 * probed are all in the saved state, so a clone must have exactly these.
 * The TCG cache size is not here: it is QEMU's own, never seen by the guest
 * or the migration stream, so a clone runs with the configuration's.
 */
export interface TemplateMemory {
  /** QEMU's -m (boot size, DIMM slots, maxmem) and -smp (vCPUs, maxcpus). */
  m: string;
  smp: string;
  /** The uncompressed image behind the DAX NVDIMM; null: no NVDIMM (root on virtio-blk). */
  daxImage: FileIdentity | null;
  /** virtio-balloon with free page reporting. */
  balloon: boolean;
  /** The virtio-mem device's size in MiB (requested-size 0 in the template); 0: none. */
  virtioMemMiB: number;
}

/** What a template made before format 6 had: none of the memory devices. */
export const NO_MEMORY_DEVICES: Readonly<Pick<TemplateMemory, 'daxImage' | 'balloon' | 'virtioMemMiB'>> = { daxImage: null, balloon: false, virtioMemMiB: 0 };

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
  memory: TemplateMemory;
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
  out.push(...memoryDifferences(saved.memory, now.memory));
  return out;
}

/** The memory devices' part of keyDifferences (a manifest before format 6 has no `memory`). */
function memoryDifferences(saved: TemplateMemory | undefined, now: TemplateMemory): string[] {
  const out: string[] = [];
  const a = { m: '', smp: '', ...NO_MEMORY_DEVICES, ...saved };
  const onOff = (v: boolean) => (v ? 'on' : 'off');
  if (!a.daxImage !== !now.daxImage) out.push(`DAX image nvdimm: template ${a.daxImage ? a.daxImage.path : 'without'}, now ${now.daxImage ? now.daxImage.path : 'without (disable_image_nvdimm)'}`);
  else if (a.daxImage && now.daxImage) {
    const x = a.daxImage;
    const y = now.daxImage;
    if (x.path !== y.path) out.push(`DAX image is now ${y.path} (template: ${x.path})`);
    else if (x.ino !== y.ino || x.size !== y.size || x.mtimeMs !== y.mtimeMs) out.push(`DAX image ${y.path} changed since the template was made`);
  }
  if (a.balloon !== now.balloon) out.push(`balloon (reclaim_guest_freed_memory): template ${onOff(a.balloon)}, now ${onOff(now.balloon)}`);
  if (a.virtioMemMiB !== now.virtioMemMiB) out.push(`virtio-mem device: template ${a.virtioMemMiB ? `${a.virtioMemMiB} MiB` : 'none'}, now ${now.virtioMemMiB ? `${now.virtioMemMiB} MiB` : 'none'}`);
  // Only when known: a format-5 manifest's -m/-smp were the plain sizes (already compared above).
  if (saved && a.m !== now.m) out.push(`-m ${a.m} → ${now.m} (default_memory, default_maxmemory, memory_slots)`);
  if (saved && a.smp !== now.smp) out.push(`-smp ${a.smp} → ${now.smp} (default_vcpus, default_maxvcpus)`);
  return out;
}

/** sha256 of a file, streamed (factory init and status only). */
export async function sha256File(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}
