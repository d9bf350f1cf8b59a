/**
 * The test guest's `count` mode (test/fixtures/vmm-guest/guest.c) as the
 * snapshot tests and bench/vmm-snapshot.ts see it: start it, parse its
 * "count <i> tag <c> acc <hex>" lines and check that a stream of them is one
 * unbroken computation (consecutive i, acc = acc*31 + i*7 + tag mod 2^64),
 * which is what a correctly restored guest continues.
 */
import { Machine, type MachineOptions } from '../../../src/vmm/machine';
import { buildGuest } from './guest-build';

export interface CountLine { i: number; tag: string; acc: bigint }

/** Complete count lines in `out` (a trailing partial line is ignored). */
export function countLines(out: string): CountLine[] {
  const lines: CountLine[] = [];
  for (const m of out.matchAll(/^count (\d+) tag (.) acc 0x([0-9a-f]+)\n/gm)) lines.push({ i: Number(m[1]), tag: m[2], acc: BigInt('0x' + m[3]) });
  return lines;
}

/** Undefined when `lines` (starting at i = 1) is one unbroken computation; else what breaks it. */
export function checkCount(lines: CountLine[]): string | undefined {
  let acc = 0n;
  for (let k = 0; k < lines.length; k++) {
    const l = lines[k];
    if (l.i !== k + 1) return `line ${k}: count ${l.i}, expected ${k + 1}`;
    acc = BigInt.asUintN(64, acc * 31n + BigInt(l.i) * 7n + BigInt(l.tag.charCodeAt(0)));
    if (acc !== l.acc) return `count ${l.i}: acc 0x${l.acc.toString(16)}, expected 0x${acc.toString(16)}`;
  }
  return undefined;
}

/** A started count guest; `out()` is its serial output so far. */
export function startCountGuest(n = 100000, opts: Partial<MachineOptions> & { touchMiB?: number; extra?: string } = {}): { machine: Machine; out: () => string } {
  const g = buildGuest();
  if (!g.elf) throw new Error(g.reason);
  let out = '';
  const machine = new Machine({
    memoryBytes: 64 << 20, vcpus: 1, kernel: g.elf, apsRunnable: true, ...opts,
    cmdline: `test=count n=${n}${opts.touchMiB ? ` touch=${opts.touchMiB}` : ''}${opts.extra ? ` ${opts.extra}` : ''}`,
    serialOut: (b) => { out += Buffer.from(b).toString('latin1'); },
  });
  machine.start();
  return { machine, out: () => out };
}
