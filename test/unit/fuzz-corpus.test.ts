/**
 * Replays the kept fuzz corpus (test/fuzz/corpus/<target>/: the seeds our
 * encoders and drivers made, and the inputs that gave a new outcome in a
 * run of `node dist/test/fuzz/run.js`) through every fuzz target, with the
 * same oracle as the fuzzer: each input must end in success or in the
 * module's own documented refusal — no other exception, no WebAssembly
 * trap, no invariant broken (bounds of guest memory, reply sizes, …) — and
 * within the fuzzer's time budget. A parser change that breaks on an input
 * the fuzzer once found interesting fails here, in seconds, on every run.
 */
import { expect } from 'chai';
import { configureLogging } from '../../src/common/log';
import { classify, CORPUS_MAX_BYTES, CORPUS_MAX_FILES, readCorpus } from '../fuzz/engine';
import { TARGETS } from '../fuzz/targets';

const BUDGET_MS = 1000;

describe('fuzz corpus replay (test/fuzz/corpus through every target)', function () {
  this.timeout(120000);
  before(() => configureLogging({ silent: true }));

  for (const target of TARGETS) {
    it(`${target.name}: every kept input is accepted or refused with the module's own error`, async () => {
      const corpus = readCorpus(target.name);
      expect(corpus.length, `no corpus kept for ${target.name}: run node dist/test/fuzz/run.js ${target.name}`).to.be.greaterThan(0);
      expect(corpus.length).to.be.at.most(CORPUS_MAX_FILES);
      expect(corpus.reduce((s, e) => s + e.data.length, 0)).to.be.at.most(CORPUS_MAX_BYTES);
      const failures: string[] = [];
      for (const { name, data } of corpus) {
        const t0 = performance.now();
        let verdict;
        try {
          const r = target.run(data);
          if (r instanceof Promise) await r;
          verdict = { ok: true as const };
        } catch (err) {
          verdict = classify(target, err);
        }
        const ms = performance.now() - t0;
        if (!verdict.ok) failures.push(`${name}: ${verdict.kind}: ${verdict.message}`);
        else if (ms > BUDGET_MS) failures.push(`${name}: took ${ms.toFixed(0)} ms (budget ${BUDGET_MS} ms)`);
      }
      expect(failures, failures.join('\n')).to.deep.equal([]);
    });
  }
});
