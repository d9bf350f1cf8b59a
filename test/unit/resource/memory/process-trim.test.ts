/**
 * src/resource/memory/process-trim: the addon's malloc_trim really returns
 * freed heap to the kernel, the hold/release bookkeeping (timers armed while
 * any sandbox holds it, none left after the last stop), and no trimming
 * without an addon function.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { native } from '../../../../src/common/native';
import { holdProcessTrim, setTrimForTests, trimProcessMemory, trimTimersArmed, TRIM_AFTER_START_MS } from '../../../../src/resource/memory/process-trim';

function anonKiB(): number {
  return Number(/^Anonymous:\s+(\d+)/m.exec(fs.readFileSync('/proc/self/smaps_rollup', 'utf8'))![1]);
}

describe('memory/process-trim', () => {
  afterEach(() => setTrimForTests(undefined));

  it('the addon\'s mallocTrim gives freed heap inside the arena back to the kernel', () => {
    const n = native();
    expect(n.mallocTrim, 'addon built without mallocTrim: cd native && npx node-gyp rebuild').to.be.a('function');
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    // 6000 Buffers of 8 KiB (malloc'd: below glibc's mmap threshold); every
    // 8th kept, so the freed ones sit inside the heap where free() alone
    // cannot return them (the kept ones pin the top).
    const all: Array<Buffer | undefined> = [];
    for (let i = 0; i < 6000; i++) all.push(Buffer.allocUnsafeSlow(8192).fill(1));
    for (let i = 0; i < all.length; i++) if (i % 8 !== 0) all[i] = undefined;
    gc();
    gc();
    const before = anonKiB();
    n.mallocTrim!();
    const after = anonKiB();
    expect(all.filter(Boolean).length).to.equal(750);
    // 5250 freed buffers = 41 MiB; at least a quarter of it must leave the process.
    expect(before - after, `anonymous ${before} -> ${after} KiB`).to.be.at.least(10 * 1024);
  });

  it('trims through the hook and counts', () => {
    let calls = 0;
    setTrimForTests(() => { calls++; return 1; });
    expect(trimProcessMemory()).to.equal(true);
    expect(trimProcessMemory()).to.equal(true);
    expect(calls).to.equal(2);
  });

  it('arms its timers while held and leaves none after the last stop (idempotent)', () => {
    setTrimForTests(() => 1);
    expect(trimTimersArmed()).to.equal(0);
    const a = holdProcessTrim();
    const b = holdProcessTrim();
    expect(trimTimersArmed()).to.equal(TRIM_AFTER_START_MS.length * 2 + 1);
    a.stop();
    a.stop();
    expect(trimTimersArmed()).to.be.greaterThan(0);
    b.stop();
    expect(trimTimersArmed()).to.equal(0);
  });

  it('runs the first trim soon after a hold', async function () {
    this.timeout(10_000);
    let calls = 0;
    setTrimForTests(() => { calls++; return 1; });
    const h = holdProcessTrim();
    try {
      await new Promise((r) => setTimeout(r, TRIM_AFTER_START_MS[0] + 300));
      expect(calls).to.equal(1);
    } finally {
      h.stop();
    }
  });
});
