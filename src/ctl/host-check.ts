/**
 * `kata-ctl check`: can this host run kata-ts sandboxes, and how.
 *
 * Each item is measured or looked up, never assumed: KVM is judged by the
 * capability probe (src/hypervisor/capabilities.ts: a timed firmware loop,
 * because on PVM hosts /dev/kvm works yet emulates every guest instruction),
 * kernel features by /dev nodes, /proc/filesystems and /sys, binaries by
 * running them for their version, guest assets by reading and hashing them.
 * `required` items fail the check (a sandbox cannot start without them);
 * the rest are warnings for features later issues use. Every non-ok item
 * says how to fix it.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { chooseHypervisor, probeKvm, type HypervisorChoice, type KvmProbe } from '../hypervisor/capabilities';
import { BUILTIN_AVAILABLE } from '../hypervisor';
import { guestAssets, type Config } from '../runtime/config';
import { factoryEnv, factoryLine } from './factory-state';
import { formatMiB } from '../common/units';

export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface CheckItem {
  id: string;
  title: string;
  status: CheckStatus;
  required: boolean;
  detail: string;
  fix?: string;
  path?: string;
  version?: string;
  sha256?: string;
  /** configuration: the Kata keys kata-ts ignores, "file:line: …". */
  warnings?: string[];
}

export interface CheckReport {
  schemaVersion: 1;
  /** A sandbox can start: no required item failed. */
  ok: boolean;
  hypervisor: HypervisorChoice;
  kvm: KvmProbe;
  checks: CheckItem[];
}

/** First line of `bin --version`, or undefined when it cannot run. */
export function binaryVersion(bin: string, args = ['--version']): string | undefined {
  try {
    const out = execFileSync(bin, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10000 });
    return out.split('\n').find((l) => l.trim())?.trim();
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; code?: string };
    if (e.code === 'ENOENT') return undefined;
    // some tools print their version and exit non-zero (mkfs.erofs -V on old releases)
    return `${e.stdout ?? ''}${e.stderr ?? ''}`.split('\n').find((l) => l.trim())?.trim();
  }
}

/** Where `name` is on PATH, or undefined. */
export function which(name: string): string | undefined {
  for (const d of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    const p = path.join(d, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch { /* next */ }
  }
  return undefined;
}

/** sha256 of a file, hex; streamed in 1 MiB reads (guest images are tens of MiB). */
export function fileSha256(file: string): string {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    let n: number;
    while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

function exists(p: string): boolean {
  return fs.existsSync(p);
}

function filesystems(): string[] {
  try {
    return fs.readFileSync('/proc/filesystems', 'utf8').split('\n').map((l) => l.trim().split(/\s+/).pop() ?? '').filter(Boolean);
  } catch {
    return [];
  }
}

/** Whether a kernel module for `name` is installed (it would load on demand). */
function moduleInstalled(name: string): boolean {
  const dir = path.join('/lib/modules', os.release());
  try {
    return fs.readFileSync(path.join(dir, 'modules.dep'), 'utf8').includes(`/${name}.ko`);
  } catch {
    return false;
  }
}

function item(id: string, title: string, ok: boolean, required: boolean, detail: string, fix: string, extra: Partial<CheckItem> = {}): CheckItem {
  return { id, title, status: ok ? 'ok' : required ? 'fail' : 'warn', required, detail, ...(ok ? {} : { fix }), ...extra };
}

function fsItem(name: string, title: string, fsList: string[]): CheckItem {
  const inKernel = fsList.includes(name);
  const mod = !inKernel && moduleInstalled(name);
  return item(name, title, inKernel || mod, false,
    inKernel ? `${name} in /proc/filesystems` : mod ? `${name} is a module that loads on demand` : `${name} not in /proc/filesystems and no module installed`,
    `enable CONFIG_${name === 'overlay' ? 'OVERLAY_FS' : name.toUpperCase() + '_FS'} in the host kernel or modprobe ${name}`);
}

export interface CheckOptions {
  /** Re-measure KVM instead of using the per-boot cached verdict. */
  noCache?: boolean;
}

export async function runHostCheck(cfg: Config, opts: CheckOptions = {}): Promise<CheckReport> {
  const q = cfg['hypervisor.qemu'];
  const probe = await probeKvm(q.path, opts.noCache ? undefined : cfg.runtime.run_dir);
  const choice = chooseHypervisor(cfg.runtime.hypervisor as 'auto' | 'qemu' | 'builtin', q.accel as 'auto' | 'kvm' | 'tcg', probe, BUILTIN_AVAILABLE);
  const checks: CheckItem[] = [];
  // The configuration's verdict is the runtime's and the shim's (one loadConfig): errors never get here.
  checks.push(item('configuration', 'configuration', cfg.warnings.length === 0, false,
    `${cfg.source || 'built-in defaults'}${cfg.warnings.length ? `: ${cfg.warnings.length} Kata key(s) not supported by kata-ts, ignored (each logged with its line)` : ''}`,
    'remove the keys named in the warnings, or leave them: a warning never stops a sandbox', cfg.warnings.length ? { warnings: cfg.warnings } : {}));
  const virtFlags = probe.cpuFlags.filter((f) => f === 'vmx' || f === 'svm');

  checks.push(item('kvm-device', '/dev/kvm present and usable', probe.devKvm, false,
    probe.devKvm ? '/dev/kvm opens read-write' : '/dev/kvm is missing or not accessible',
    'modprobe kvm_intel (or kvm_amd), and give this user access to /dev/kvm (kvm group); without it guests run under TCG'));
  checks.push(item('kvm-hardware', 'KVM runs standard guests in hardware', probe.hardware, false,
    probe.reason || 'not measured',
    probe.pvm ? 'this is a PVM host (kvm_pvm): standard guests are emulated; kata-ts uses QEMU with TCG here. Use a host with VT-x/AMD-V exposed for hardware speed'
      : 'enable VT-x/AMD-V (BIOS, or nested virtualization for a VM host); until then kata-ts uses QEMU with TCG', { version: probe.loopMs >= 0 ? `${probe.loopMs} ms / 2M instructions` : undefined }));
  checks.push(item('cpu-virt-flags', 'CPU virtualization flags (vmx/svm)', virtFlags.length > 0, false,
    `flags seen: ${probe.cpuFlags.join(' ') || '(none)'}`, 'enable VT-x/AMD-V in firmware, or nested virtualization on the parent hypervisor'));
  checks.push(item('vhost-vsock', 'vhost-vsock (/dev/vhost-vsock)', exists('/dev/vhost-vsock'), false,
    exists('/dev/vhost-vsock') ? '/dev/vhost-vsock present' : 'absent: the agent channel uses virtio-serial / hybrid vsock instead', 'modprobe vhost_vsock'));
  checks.push(item('vhost-net', 'vhost-net (/dev/vhost-net)', exists('/dev/vhost-net'), false,
    exists('/dev/vhost-net') ? '/dev/vhost-net present' : 'absent: networking falls back to userspace virtio-net', 'modprobe vhost_net'));
  const ksmRun = exists('/sys/kernel/mm/ksm/run') ? fs.readFileSync('/sys/kernel/mm/ksm/run', 'utf8').trim() : '';
  checks.push(item('ksm', 'KSM (kernel same-page merging)', ksmRun !== '', false,
    ksmRun !== '' ? `available, run=${ksmRun}${ksmRun === '0' ? ' (off)' : ''}` : '/sys/kernel/mm/ksm missing', 'build the host kernel with CONFIG_KSM'));
  checks.push(item('tun', 'TUN/TAP (/dev/net/tun)', exists('/dev/net/tun'), false, exists('/dev/net/tun') ? '/dev/net/tun present' : 'absent', 'modprobe tun'));
  checks.push(item('fuse', 'FUSE (/dev/fuse)', exists('/dev/fuse'), false, exists('/dev/fuse') ? '/dev/fuse present' : 'absent', 'modprobe fuse'));
  checks.push(item('loop', 'loop devices (/dev/loop-control)', exists('/dev/loop-control'), false, exists('/dev/loop-control') ? '/dev/loop-control present' : 'absent', 'modprobe loop'));
  const v2 = exists('/sys/fs/cgroup/cgroup.controllers');
  checks.push(item('cgroup', 'cgroups', v2 || exists('/sys/fs/cgroup'), false,
    v2 ? `cgroup v2 (controllers: ${fs.readFileSync('/sys/fs/cgroup/cgroup.controllers', 'utf8').trim()})` : exists('/sys/fs/cgroup') ? 'cgroup v1' : 'no cgroup filesystem mounted',
    'mount cgroup2 on /sys/fs/cgroup', { version: v2 ? 'v2' : 'v1' }));
  const fsList = filesystems();
  checks.push(fsItem('overlay', 'overlayfs', fsList));
  checks.push(fsItem('erofs', 'EROFS', fsList));

  const qemuVersion = exists(q.path) ? binaryVersion(q.path) : undefined;
  checks.push(item('qemu', 'QEMU', !!qemuVersion, true,
    qemuVersion ? qemuVersion : `${q.path} not found or does not run`,
    'apt-get install qemu-system-x86 (or set [hypervisor.qemu] path)', { path: q.path, version: qemuVersion }));
  const mkfs = which('mkfs.erofs');
  const mkfsVersion = mkfs ? binaryVersion(mkfs, ['-V']) : undefined;
  checks.push(item('mkfs.erofs', 'mkfs.erofs (container root filesystems)', !!mkfs, true,
    mkfs ? mkfsVersion ?? 'present' : 'not on PATH', 'apt-get install erofs-utils', { path: mkfs, version: mkfsVersion }));
  const crun = which('crun');
  const crunVersion = crun ? binaryVersion(crun) : undefined;
  checks.push(item('crun', 'crun (copied into the guest image)', !!crun, false,
    crun ? crunVersion ?? 'present' : 'not on PATH: needed only to rebuild the guest image', 'apt-get install crun', { path: crun, version: crunVersion }));

  const assets = guestAssets(cfg, 'qemu');
  const kernelOk = exists(assets.kernel);
  const releaseFile = path.join(path.dirname(assets.kernel), 'release');
  const release = exists(releaseFile) ? fs.readFileSync(releaseFile, 'utf8').trim() : undefined;
  checks.push(item('guest-kernel', 'guest kernel', kernelOk, true,
    kernelOk ? `${assets.kernel}${release ? ` (Linux ${release})` : ''}` : `${assets.kernel} missing`,
    'run scripts/setup.sh (builds guest/kernel), or set [hypervisor.qemu] kernel', { path: assets.kernel, version: release, sha256: kernelOk ? fileSha256(assets.kernel) : undefined }));
  const imageOk = exists(assets.image);
  checks.push(item('guest-image', 'guest image', imageOk, true,
    imageOk ? `${assets.image} (${formatMiB(fs.statSync(assets.image).size)})` : `${assets.image} missing`,
    'run scripts/setup.sh (builds guest/image), or set [hypervisor.qemu] image', { path: assets.image, sha256: imageOk ? fileSha256(assets.image) : undefined }));
  let runDirOk = true;
  try {
    fs.mkdirSync(cfg.runtime.run_dir, { recursive: true, mode: 0o755 });
    fs.accessSync(cfg.runtime.run_dir, fs.constants.W_OK);
  } catch {
    runDirOk = false;
  }
  checks.push(item('run-dir', 'run directory writable', runDirOk, true, cfg.runtime.run_dir,
    `run as root or set [runtime] run_dir to a writable directory`, { path: cfg.runtime.run_dir }));
  // [factory]: a stale or missing template never stops a sandbox (it cold-boots), so a warning at most.
  const factory = await factoryEnv(cfg);
  checks.push(item('factory', 'VM template ([factory])', !factory.enabled || factory.state === 'valid', false, factoryLine(factory),
    'kata-ctl factory init (re)makes the template for this configuration', { path: factory.path }));
  const hvOk = choice.hypervisor !== 'builtin' || BUILTIN_AVAILABLE;
  checks.push(item('hypervisor', 'hypervisor', hvOk, true, `${choice.hypervisor} with ${choice.accel.toUpperCase()}: ${choice.reason}`,
    'the builtin VMM is not in this build: set [runtime] hypervisor = "qemu"'));
  return { schemaVersion: 1, ok: checks.every((c) => c.status !== 'fail'), hypervisor: choice, kvm: probe, checks };
}

export function checkText(r: CheckReport): string {
  const mark = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL' } as const;
  const lines = r.checks.map((c) => {
    let l = `[${mark[c.status]}] ${c.title}: ${c.detail}`;
    if (c.fix) l += `\n       fix: ${c.fix}`;
    return l;
  });
  lines.push('');
  lines.push(`hypervisor: ${r.hypervisor.hypervisor} (${r.hypervisor.accel}) — ${r.hypervisor.reason}`);
  lines.push(r.ok ? 'kata-ts can run sandboxes on this host' : `kata-ts cannot run sandboxes on this host: ${r.checks.filter((c) => c.status === 'fail').map((c) => c.id).join(', ')} failed`);
  return lines.join('\n') + '\n';
}
