/**
 * What this host can really run (ARCHITECTURE.md decision 3).
 *
 * `/dev/kvm` opening is not enough: on PVM hosts the kernel's KVM runs a
 * standard guest only through its instruction emulator (~1-2 M instr/s), so
 * Linux never boots in useful time. We measure instead: QEMU runs a 64 KiB
 * firmware of our own (real mode, reset vector) that counts a register down
 * from LOOP_ITERATIONS and exits through isa-debug-exit. In hardware the loop
 * takes well under a millisecond; emulated, about a second. The same firmware
 * with zero iterations gives QEMU's own start-up cost, which is subtracted.
 * The verdict is cached per host boot (/proc/sys/kernel/random/boot_id).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';

export const LOOP_ITERATIONS = 1_000_000;
/** Loop time above which KVM is "emulating": hardware needs ~1 ms for 2 M instructions. */
export const EMULATION_THRESHOLD_MS = 150;

export interface KvmProbe {
  /** /dev/kvm exists and opens read-write. */
  devKvm: boolean;
  /** KVM runs standard guests in hardware. */
  hardware: boolean;
  /** Milliseconds the 2M-instruction loop took under KVM (startup subtracted), or -1. */
  loopMs: number;
  /** Approximate guest instructions per second under KVM. */
  instructionsPerSecond: number;
  /** CPU virtualization flags seen in /proc/cpuinfo. */
  cpuFlags: string[];
  /** kvm_pvm loaded (Linux PVM: KVM without hardware virtualization). */
  pvm: boolean;
  reason: string;
}

/** The probe firmware: 64 KiB (QEMU wants a multiple of 64 KiB), code at the reset vector. */
export function probeFirmware(iterations: number): Buffer {
  const fw = Buffer.alloc(65536, 0xf4); // hlt everywhere
  const code = Buffer.from([
    0x66, 0xb9, 0, 0, 0, 0, // mov ecx, imm32
    0x66, 0x49, //             dec ecx          <- loop
    0x75, 0xfc, //             jnz loop
    0xb0, 0x00, //             mov al, 0
    0xe6, 0xf4, //             out 0xf4, al     (isa-debug-exit)
    0xf4, //                   hlt
  ]);
  code.writeUInt32LE(Math.max(1, iterations >>> 0), 2);
  code.copy(fw, 0xfff0);
  return fw;
}

function runFirmware(qemu: string, fwPath: string, accel: string, timeoutMs: number): Promise<{ ms: number; ok: boolean }> {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(qemu, ['-M', `microvm,accel=${accel}`, '-nodefaults', '-nographic', '-display', 'none', '-m', '16',
      '-bios', fwPath, '-device', 'isa-debug-exit,iobase=0xf4,iosize=1', '-no-reboot'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      // isa-debug-exit with value 0 makes QEMU exit with status 1.
      resolve({ ms, ok: code === 1 && !err.includes('failed') });
    });
    child.on('error', () => resolve({ ms: -1, ok: false }));
  });
}

function cpuFlags(): string[] {
  const txt = fs.existsSync('/proc/cpuinfo') ? fs.readFileSync('/proc/cpuinfo', 'utf8') : '';
  const line = txt.split('\n').find((l) => l.startsWith('flags')) ?? '';
  return ['vmx', 'svm', 'hypervisor'].filter((f) => new RegExp(`\\b${f}\\b`).test(line));
}

export async function probeKvm(qemu = '/usr/bin/qemu-system-x86_64', cacheDir?: string): Promise<KvmProbe> {
  const bootId = fs.existsSync('/proc/sys/kernel/random/boot_id') ? fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() : '';
  const cacheFile = cacheDir ? path.join(cacheDir, 'kvm-probe.json') : undefined;
  if (cacheFile && fs.existsSync(cacheFile)) {
    try {
      const c = JSON.parse(fs.readFileSync(cacheFile, 'utf8')) as { bootId: string; probe: KvmProbe };
      if (c.bootId === bootId && bootId) return c.probe;
    } catch { /* re-probe */ }
  }
  const flags = cpuFlags();
  const pvm = fs.existsSync('/sys/module/kvm_pvm');
  let devKvm = false;
  try {
    fs.closeSync(fs.openSync('/dev/kvm', 'r+'));
    devKvm = true;
  } catch { /* absent or no permission */ }
  const base: KvmProbe = { devKvm, hardware: false, loopMs: -1, instructionsPerSecond: 0, cpuFlags: flags, pvm, reason: '' };
  if (!devKvm) return { ...base, reason: '/dev/kvm is missing or not accessible' };
  if (!fs.existsSync(qemu)) return { ...base, reason: `cannot measure: ${qemu} not found` };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-probe-'));
  try {
    const f0 = path.join(dir, 'fw0.bin');
    const f1 = path.join(dir, 'fw1.bin');
    fs.writeFileSync(f0, probeFirmware(1));
    fs.writeFileSync(f1, probeFirmware(LOOP_ITERATIONS));
    const empty = await runFirmware(qemu, f0, 'kvm', 20000);
    const loop = await runFirmware(qemu, f1, 'kvm', 20000);
    if (!empty.ok || !loop.ok) return { ...base, reason: 'QEMU could not run a guest with KVM acceleration' };
    const loopMs = Math.max(0.01, loop.ms - empty.ms);
    const ips = Math.round((2 * LOOP_ITERATIONS) / (loopMs / 1000));
    const hardware = loopMs < EMULATION_THRESHOLD_MS;
    const probe: KvmProbe = {
      ...base, hardware, loopMs: Math.round(loopMs * 10) / 10, instructionsPerSecond: ips,
      reason: hardware
        ? `KVM ran 2M guest instructions in ${loopMs.toFixed(1)} ms: hardware virtualization`
        : `KVM ran 2M guest instructions in ${loopMs.toFixed(0)} ms (~${(ips / 1e6).toFixed(1)} M instr/s): standard guests are emulated instruction by instruction${pvm ? ' (kvm_pvm loaded: PVM host)' : ''}${flags.includes('vmx') || flags.includes('svm') ? '' : ', and the CPU shows no vmx/svm flag'}`,
    };
    if (cacheFile) {
      fs.mkdirSync(path.dirname(cacheFile), { recursive: true });
      fs.writeFileSync(cacheFile, JSON.stringify({ bootId, probe }));
    }
    return probe;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export interface HypervisorChoice {
  hypervisor: 'qemu' | 'builtin';
  accel: 'kvm' | 'tcg';
  reason: string;
}

/**
 * Decision 3: builtin where KVM runs guests in hardware; else QEMU with KVM
 * (hardware); else QEMU with TCG. (QEMU "with KVM on a PVM host" is never
 * chosen automatically: it is slower than TCG.)
 */
export function chooseHypervisor(requested: 'auto' | 'qemu' | 'builtin', accel: 'auto' | 'kvm' | 'tcg', probe: KvmProbe, builtinAvailable: boolean): HypervisorChoice {
  const hwAccel: 'kvm' | 'tcg' = probe.hardware ? 'kvm' : 'tcg';
  const a = accel === 'auto' ? hwAccel : accel;
  if (requested === 'qemu') return { hypervisor: 'qemu', accel: a, reason: accel === 'auto' ? `qemu requested; ${probe.reason || 'no KVM'} -> ${a}` : `qemu requested with accel=${a}` };
  if (requested === 'builtin') return { hypervisor: 'builtin', accel: 'kvm', reason: 'builtin requested' };
  if (probe.hardware && builtinAvailable) return { hypervisor: 'builtin', accel: 'kvm', reason: probe.reason };
  return { hypervisor: 'qemu', accel: a, reason: probe.hardware ? `${probe.reason}; builtin VMM not available, using QEMU+KVM` : `${probe.reason}; using QEMU with ${a.toUpperCase()}` };
}
