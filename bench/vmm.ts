/**
 * Builtin VMM benchmark (issue 4). Reproduce: `npx tsc -p tsconfig.json &&
 * node dist/bench/vmm.js [exits]` (needs /dev/kvm, gcc/ld, qemu-system-x86_64).
 *
 *  1. Exit round trip (PIO → TypeScript → answer → guest), per exit:
 *     a. thread: the vCPU's native thread hands each exit to the JS thread
 *        (thread-safe function) and waits — the mechanism the VMM uses;
 *     b. runOnce: KVM_RUN called synchronously on the JS thread (what a
 *        Worker-per-vCPU design would cost), same exit record;
 *     c. C: a raw ioctl loop, no JS (bench/c/vmm-exit.c).
 *     All run a guest loop of `out` to the UART scratch register; on a PVM
 *     host each loop iteration is also emulated, which is in every figure.
 *  2. Time from `new Machine()` to the first serial byte of the test guest,
 *     next to QEMU (-accel kvm, microvm) from spawn to the first serial byte
 *     of a 64 KiB firmware that writes one byte at the reset vector.
 *  3. Host memory: PSS of this process while a builtin VM runs, minus PSS
 *     before it, minus the guest RAM the guest touched (memfd pages).
 * Results: JSON on stdout and build/bench/vmm.json.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { compileC, ROOT, runJson } from './native';
import { Machine } from '../src/vmm/machine';
import { buildGuest } from '../test/unit/vmm/guest-build';

function pssKiB(): number {
  const t = fs.readFileSync('/proc/self/smaps_rollup', 'utf8');
  return Number(/^Pss:\s+(\d+)/m.exec(t)![1]);
}

async function exitThread(elf: string, n: number): Promise<number> {
  let out = '';
  const m = new Machine({ memoryBytes: 32 << 20, vcpus: 1, kernel: elf, cmdline: `test=pio n=${n}`, serialOut: (b) => (out += Buffer.from(b).toString('latin1')) });
  // Time from the first exit of the loop: sample the exit counter.
  m.start();
  let t0 = 0n, e0 = 0;
  while (m.vcpus[0].exits < 50) await new Promise((r) => setImmediate(r));
  t0 = process.hrtime.bigint(); e0 = m.vcpus[0].exits;
  await m.ended;
  const ns = Number(process.hrtime.bigint() - t0);
  const exits = m.vcpus[0].exits - e0;
  m.close();
  if (!out.includes('pio done')) throw new Error(`guest did not finish: ${out}`);
  return ns / exits;
}

function exitRunOnce(elf: string, n: number): number {
  const m = new Machine({ memoryBytes: 32 << 20, vcpus: 1, kernel: elf, cmdline: `test=pio n=${n}` });
  const v = m.vcpus[0];
  let t0 = 0n, count = 0;
  for (;;) {
    const reason = v.native.runOnce();
    if (v.handleExit(reason) || m.endReason) break; // the i8042 reset ends the loop
    if (++count === 50) t0 = process.hrtime.bigint();
  }
  const ns = Number(process.hrtime.bigint() - t0) / (count - 50);
  m.close();
  return ns;
}

async function firstByteBuiltin(elf: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  let t1 = 0n;
  const m = new Machine({ memoryBytes: 32 << 20, vcpus: 1, kernel: elf, cmdline: 'test=serial', serialOut: () => { if (!t1) t1 = process.hrtime.bigint(); } });
  m.start();
  await m.ended;
  m.close();
  return Number(t1 - t0) / 1e6;
}

function firstByteQemu(): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-bench-vmm-'));
  const fw = Buffer.alloc(65536, 0xf4);
  // mov dx,0x3f8; mov al,'K'; out dx,al; hlt — at the reset vector (real mode).
  Buffer.from([0xba, 0xf8, 0x03, 0xb0, 0x4b, 0xee, 0xf4]).copy(fw, 0xfff0);
  fs.writeFileSync(path.join(dir, 'fw.bin'), fw);
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const q = spawn('qemu-system-x86_64', ['-M', 'microvm,accel=kvm', '-nodefaults', '-nographic', '-display', 'none', '-m', '32',
      '-bios', path.join(dir, 'fw.bin'), '-serial', 'stdio', '-no-reboot'], { stdio: ['ignore', 'pipe', 'pipe'] });
    q.stdout.once('data', () => { const ms = Number(process.hrtime.bigint() - t0) / 1e6; q.kill('SIGKILL'); resolve(ms); });
    q.on('error', reject);
    q.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
    setTimeout(() => { q.kill('SIGKILL'); reject(new Error('qemu: no serial byte in 20 s')); }, 20000).unref();
  });
}

async function memory(elf: string): Promise<{ pssBeforeKiB: number; pssRunningKiB: number; guestTouchedKiB: number; overheadKiB: number }> {
  global.gc?.();
  const before = pssKiB();
  const m = new Machine({ memoryBytes: 128 << 20, vcpus: 1, kernel: elf, cmdline: 'test=spin' });
  m.start();
  await new Promise((r) => setTimeout(r, 300));
  const running = pssKiB();
  // Guest RAM pages the guest (and the loader) touched: resident pages of the memfd.
  const smaps = fs.readFileSync('/proc/self/smaps', 'utf8');
  let touched = 0;
  for (const block of smaps.split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    if (block.includes('memfd:kata-ts-guest-ram')) touched += Number(/^Pss:\s+(\d+)/m.exec(block)?.[1] ?? 0);
  }
  await m.stop();
  m.close();
  return { pssBeforeKiB: before, pssRunningKiB: running, guestTouchedKiB: touched, overheadKiB: running - before - touched };
}

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 20000);
  const g = buildGuest();
  if (!g.elf) throw new Error(g.reason);
  const cBin = compileC('vmm-exit');
  const best = async (f: () => Promise<number> | number, rounds = 3): Promise<number> => { let b = Infinity; for (let i = 0; i < rounds; i++) b = Math.min(b, await f()); return b; };
  const thread = await best(() => exitThread(g.elf!, n));
  const sync = await best(() => exitRunOnce(g.elf!, n));
  const c = await best(() => runJson<{ nsPerExit: number }>(cBin, [String(n)]).nsPerExit);
  const builtinFirst = await best(() => firstByteBuiltin(g.elf!), 5);
  let qemuFirst: number | string;
  try { qemuFirst = await best(() => firstByteQemu(), 3); } catch (e) { qemuFirst = (e as Error).message; }
  const mem = await memory(g.elf!);
  const res = {
    host: { kernel: os.release(), cpus: os.cpus().length, pvm: fs.existsSync('/sys/module/kvm_pvm') },
    exitRoundTripUs: { thread: +(thread / 1e3).toFixed(2), runOnceOnJsThread: +(sync / 1e3).toFixed(2), cRawIoctl: +(c / 1e3).toFixed(2), exits: n },
    firstSerialByteMs: { builtin: +builtinFirst.toFixed(1), qemuKvmMicrovm: typeof qemuFirst === 'number' ? +qemuFirst.toFixed(1) : qemuFirst },
    memory: mem,
  };
  fs.mkdirSync(path.join(ROOT, 'build', 'bench'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, 'build', 'bench', 'vmm.json'), JSON.stringify(res, null, 2));
  console.log(JSON.stringify(res, null, 2));
}

main().catch((e) => { console.error(e); process.exit(1); });
