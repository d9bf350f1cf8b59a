/** Shared helpers for the builtin VMM tests: run the test guest, count fds/threads. */
import * as fs from 'node:fs';
import { Machine, type MachineEnd, type MachineOptions } from '../../../src/vmm/machine';
import { buildGuest } from './guest-build';

export function kvmUsable(): string | undefined {
  try { fs.closeSync(fs.openSync('/dev/kvm', 'r+')); return undefined; } catch (e) { return `/dev/kvm not usable: ${(e as Error).message}`; }
}

export function fdCount(): number { return fs.readdirSync('/proc/self/fd').length; }
export function threadCount(): number { return fs.readdirSync('/proc/self/task').length; }

export interface GuestRun { out: string; end: MachineEnd; ms: number; machine: Machine }

/** Boots the test guest with `test=<name>` and waits for it to end (or times out and stops it). */
export async function runGuest(test: string, opts: Partial<MachineOptions> & { timeoutMs?: number; extra?: string; keep?: boolean } = {}): Promise<GuestRun> {
  const g = buildGuest();
  if (!g.elf) throw new Error(g.reason);
  let out = '';
  const t0 = process.hrtime.bigint();
  const machine = new Machine({
    memoryBytes: 64 << 20, vcpus: 1, kernel: g.elf, apsRunnable: true, ...opts,
    cmdline: `test=${test} ${opts.extra ?? ''}`.trim(),
    serialOut: (b) => { out += Buffer.from(b).toString('latin1'); },
  });
  machine.start();
  const timer = setTimeout(() => void machine.stop(), opts.timeoutMs ?? 20000);
  const end = await machine.ended;
  clearTimeout(timer);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (!opts.keep) machine.close();
  return { out, end, ms, machine };
}
