/**
 * The agent's idle trimmer (src/agent/idle-trim.ts): it trims only after a
 * quiet spell that follows activity (a call's start and end), not held off
 * by an open call, at most once per gap, again only when the memory grew,
 * not at all when disabled; and the real trim (full GC + malloc_trim) runs in
 * this process without throwing.
 */
import { expect } from 'chai';
import { IdleTrimmer, trimAgentMemory, withIdleTrim } from '../../../src/agent/idle-trim';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('unit: agent idle trim', function () {
  const made: IdleTrimmer[] = [];
  const trimmer = (o: ConstructorParameters<typeof IdleTrimmer>[0]) => {
    // Growth rule off unless a test sets it (the real RssAnon of this process moves).
    const t = new IdleTrimmer({ memory: () => 0, growthKiB: 0, ...o });
    made.push(t);
    return t;
  };
  afterEach(() => { for (const t of made.splice(0)) t.stop(); });

  it('trims once after the quiet time that follows activity, and not without activity', async function () {
    let n = 0;
    const t = trimmer({ quietMs: 30, minGapMs: 0, trim: () => { n++; } });
    await sleep(80);
    expect(n).to.equal(0);
    t.touch();
    await sleep(15);
    t.touch(); // re-armed: still quiet-time away
    await sleep(20);
    expect(n).to.equal(0);
    await sleep(60);
    expect(n).to.equal(1);
    await sleep(80);
    expect(n, 'no activity since: no second trim').to.equal(1);
  });

  it('counts the start and the end of a call as activity; an open call does not hold the trim', async function () {
    let n = 0;
    const t = trimmer({ quietMs: 40, minGapMs: 0, trim: () => { n++; } });
    let release!: () => void;
    const handlers = withIdleTrim({
      Slow: () => new Promise<object>((r) => { release = () => r({}); }),
      Fails: async () => { throw new Error('bad'); },
      async *Stream() { yield 1; await sleep(10_000); },
    }, t);
    const pending = handlers.Slow();
    await sleep(100);
    expect(n, 'a long call (WaitProcess, GetOOMEvent) does not hold the trim off').to.equal(1);
    await sleep(20);
    release();
    await pending;
    await sleep(20);
    expect(n, 'its end is activity: quiet time again').to.equal(1);
    await sleep(80);
    expect(n).to.equal(2);
    await handlers.Fails().catch(() => undefined);
    await sleep(100);
    expect(n, 'a failed call settles too').to.equal(3);
    const it = handlers.Stream()[Symbol.asyncIterator]();
    await it.next();
    await sleep(100);
    expect(n, 'a stream counts when it starts').to.equal(4);
    await it.return?.(undefined);
  });

  it('keeps the minimum gap between trims, and a disabled trimmer never trims', async function () {
    let clock = 1_000;
    let n = 0;
    const t = trimmer({ quietMs: 10, minGapMs: 60, now: () => clock, trim: () => { n++; } });
    t.touch();
    await sleep(40);
    expect(n).to.equal(1);
    t.touch();
    clock += 20; // 40 ms of the gap left
    await sleep(30);
    expect(n, 'inside the gap').to.equal(1);
    clock += 40;
    await sleep(80);
    expect(n).to.equal(2);
    let m = 0;
    const off = trimmer({ enabled: false, quietMs: 5, minGapMs: 0, trim: () => { m++; } });
    off.touch();
    await sleep(40);
    expect(m).to.equal(0);
  });

  it('trims again only when the anonymous memory grew since the last trim', async function () {
    let kib = 10_000;
    let n = 0;
    const t = trimmer({ quietMs: 10, minGapMs: 0, growthKiB: 1024, memory: () => kib, trim: () => { n++; kib -= 300; } });
    t.touch();
    await sleep(50);
    expect(n, 'the first quiet spell trims').to.equal(1);
    kib += 1000; // 9700 + 1000: 1000 KiB above the floor
    t.touch();
    await sleep(50);
    expect(n, 'a polling host: quiet spells without growth do not trim').to.equal(1);
    kib += 100;
    t.touch();
    await sleep(50);
    expect(n).to.equal(2);
  });

  it('a trim that throws is swallowed; the real trim runs here', async function () {
    const t = trimmer({ quietMs: 5, minGapMs: 0, trim: () => { throw new Error('boom'); } });
    t.touch();
    await sleep(40);
    expect(t.trims).to.equal(1);
    expect(() => trimAgentMemory()).not.to.throw();
  });
});
