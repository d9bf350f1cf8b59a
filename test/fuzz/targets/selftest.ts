/**
 * `selftest`: a target that fails on purpose, to check the harness sees
 * every kind of failure (not in the default list; run it by name):
 *   node dist/test/fuzz/run.js selftest --cases 3000 --budget-ms 200 --no-save
 * Byte 0 of an input picks: 0 ok, 1 the module's own error, 2 a TypeError,
 * 3 a WebAssembly trap, 4 an invariant, 5 slow (over budget), 6 a hang,
 * 7 unbounded memory (the worker's heap limit), 8 process.exit (a crash).
 * The seed is benign; mutation reaches the others.
 */
import { KataError } from '../../../src/common/errors';
import { invariant, type Target } from '../engine';

class SelfTestError extends KataError<'refused'> {}

// (module (func (export "trap") unreachable))
const TRAP = new WebAssembly.Instance(new WebAssembly.Module(Uint8Array.from([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 3, 2, 1, 0, 7, 8, 1, 4, 116, 114, 97, 112, 0, 0, 10, 5, 1, 3, 0, 0, 11,
]))).exports as { trap(): void };

export const selftest: Target = {
  name: 'selftest',
  describe: 'harness self-test: fails on purpose in every way the harness must catch',
  maxLen: 64,
  seeds: () => [Buffer.from([0, 0, 0, 0])],
  run(input) {
    const k = (input[0] ?? 0) % 9;
    const gate = input.length > 1 && input[1] === 0x5a; // the rare ones need a second byte
    switch (k) {
      case 1: throw new SelfTestError('refused', 'refused input');
      case 2: return (undefined as unknown as { x: string }).x;
      case 3: TRAP.trap(); return 'unreachable';
      case 4: invariant(false, 'selftest invariant'); return '';
      case 5: { const end = Date.now() + 300; while (Date.now() < end) { /* slow */ } return 'slow'; }
      case 6: if (gate) for (;;) { /* hang */ } return 'no-hang';
      case 7: if (gate) { const keep: number[][] = []; for (;;) keep.push(new Array(1 << 20).fill(1)); } return 'no-oom';
      case 8: if (gate) process.exit(7); return 'no-exit';
      default: return 'ok';
    }
  },
  expected: (err) => err instanceof SelfTestError,
};
