/**
 * Fuzz harness entry point, run on demand (not part of `npm test`; the unit
 * suite only replays the kept corpus, test/unit/fuzz-corpus.test.ts):
 *
 *   npx tsc -p tsconfig.json
 *   node dist/test/fuzz/run.js [target ...] [--cases N] [--seed S]
 *        [--budget-ms MS] [--no-save] [--json FILE]
 *   npm run fuzz -- virtqueue-split --cases 100000
 *
 * Targets run one after the other, each in its own worker thread (one core
 * each; this machine has two and is shared). The main thread supervises:
 *  - a case that runs longer than 10 × the budget (default budget 1 s) is a
 *    hang: the worker is terminated, the input (mirrored into shared memory
 *    before every case) is saved, and a fresh worker carries on;
 *  - a worker that dies (V8 heap limit of 1 GiB → 'oom', any other exit →
 *    'crash') is recorded the same way;
 *  - a case slower than the budget but finishing is 'slow'.
 * Failures are written to test/fuzz/findings/<target>/ (not kept in git:
 * a fixed one becomes a regression test and a corpus entry), and inputs that
 * produced new outcome signatures are added to test/fuzz/corpus/<target>/
 * within its caps (≤ 200 files, ≤ 2 MiB). Exit status 1 if any failure.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import {
  classify, corpusName, corpusRoot, mutate, readCorpus, Rng, writeCorpus, type FailureKind, type Verdict,
} from './engine';
import { TARGETS, targetByName } from './targets';
import { configureLogging } from '../../src/common/log';

interface WorkerInput {
  target: string;
  cases: number;
  seed: number;
  budgetMs: number;
  /** Shared: [0] state (1 = in a case), [1] input length, [2] case index; bytes from 16. */
  sab: SharedArrayBuffer;
  /** Run seeds and corpus first (the first worker of a target does). */
  replay: boolean;
}

interface Failure { kind: FailureKind; signature: string; message: string; stack?: string; input: string; case: number }

interface WorkerReport {
  type: 'progress' | 'done';
  cases: number;
  rejects: number;
  oks: number;
  signatures: number;
  failures: Failure[];
  /** New-signature inputs, smallest per signature (base64). */
  keep?: Array<{ data: string; label: string }>;
  slowestMs: number;
  /** Cases re-run because one run exceeded the budget. */
  retried: number;
}

/** ctl words: [0] in a case, [1] input length, [2] case index, [3] next case, [4] stop. */
const SAB_HEADER = 32;
/** Outcome signatures kept per worker (each holds its smallest input). */
const MAX_SIGNATURES = 4096;

// ─────────────────────────────── worker ───────────────────────────────

async function workerMain(w: WorkerInput): Promise<void> {
  // Devices log every refused guest input; 10^6 of them would be the run.
  configureLogging({ silent: true });
  const target = targetByName(w.target);
  const rng = new Rng(w.seed);
  const ctl = new Int32Array(w.sab, 0, 5);
  const bytes = new Uint8Array(w.sab, SAB_HEADER);
  const sigs = new Map<string, Buffer>();
  const pool: Buffer[] = [];
  const failures: Failure[] = [];
  const failSigs = new Map<string, number>();
  let rejects = 0, oks = 0, slowestMs = 0, retried = 0;
  /** Signatures past MAX_SIGNATURES: counted (up to 100000), inputs not kept. */
  const overflow = new Set<string>();

  const runOnce = async (input: Buffer): Promise<{ v: Verdict; ms: number }> => {
    const t0 = performance.now();
    let v: Verdict;
    try {
      const r = target.run(input);
      const label = r instanceof Promise ? await r : r;
      v = { ok: true, signature: `ok:${label ?? ''}` };
    } catch (err) {
      v = classify(target, err);
    }
    return { v, ms: performance.now() - t0 };
  };

  const runOne = async (input: Buffer, index: number): Promise<Verdict> => {
    const n = Math.min(input.length, bytes.length);
    bytes.set(input.subarray(0, n), 0);
    Atomics.store(ctl, 1, n);
    Atomics.store(ctl, 2, index);
    Atomics.store(ctl, 0, 1);
    let { v, ms } = await runOnce(input);
    // Slow only if it stays slow: on this shared 2-core machine a GC or
    // scheduling pause can stretch any one case past the budget.
    for (let again = 0; again < 2 && v.ok && ms > w.budgetMs; again++) {
      retried++;
      ms = Math.min(ms, (await runOnce(input)).ms);
    }
    Atomics.store(ctl, 0, 0);
    if (ms > slowestMs) slowestMs = ms;
    if (v.ok && ms > w.budgetMs) {
      v = { ok: false, kind: 'slow', signature: `slow:${v.signature}`, message: `case took ${ms.toFixed(0)} ms three times (budget ${w.budgetMs} ms); outcome ${v.signature}` };
    }
    return v;
  };

  const record = (input: Buffer, v: Verdict, index: number): void => {
    if (v.ok) {
      if (v.signature.startsWith('reject:')) rejects++; else oks++;
      const prev = sigs.get(v.signature);
      // Bounded: a parser whose messages quote the input could otherwise
      // fill the heap with "new" signatures.
      if (!prev && sigs.size >= MAX_SIGNATURES) { if (overflow.size < 100_000) overflow.add(v.signature); return; }
      if (!prev) {
        sigs.set(v.signature, input);
        pool.push(input);
      } else if (input.length < prev.length) sigs.set(v.signature, input);
      return;
    }
    const seen = failSigs.get(v.signature) ?? 0;
    failSigs.set(v.signature, seen + 1);
    if (seen < 3) failures.push({ kind: v.kind, signature: v.signature, message: v.message, stack: v.stack, input: input.toString('base64'), case: index });
  };

  const report = (type: 'progress' | 'done', cases: number): void => {
    const msg: WorkerReport = { type, cases, rejects, oks, signatures: sigs.size + overflow.size, failures: failures.splice(0), slowestMs, retried };
    if (type === 'done') {
      msg.keep = [...sigs.entries()].map(([sig, data]) => ({ data: data.toString('base64'), label: sig.startsWith('reject') ? 'reject' : 'ok' }));
    }
    parentPort!.postMessage(msg);
  };

  // Seeds and the kept corpus first: they must all pass, and they are the
  // first parents.
  const start: Buffer[] = [...target.seeds(), ...readCorpus(target.name).map((e) => e.data)];
  if (w.replay) {
    for (const s of start) record(s, await runOne(s, -1), -1);
  } else {
    for (const s of start) pool.push(s);
  }
  if (pool.length === 0) pool.push(...start);
  if (pool.length === 0) pool.push(Buffer.alloc(0));

  const startIndex = Atomics.load(ctl, 3);
  let last = Date.now();
  let i = startIndex;
  for (; i < w.cases && Atomics.load(ctl, 4) === 0; i++) {
    // Parents: mostly recent discoveries, sometimes anything.
    const parent = pool.length > 8 && rng.chance(0.3) ? pool[pool.length - 1 - rng.below(Math.min(pool.length, 32))]! : rng.pick(pool);
    const other = rng.pick(pool);
    const input = target.mutate
      ? target.mutate(rng, parent, other)
      : mutate(rng, parent, other, { maxLen: target.maxLen, dictionary: target.dictionary });
    record(input, await runOne(input, i), i);
    Atomics.store(ctl, 3, i + 1);
    if ((i & 255) === 0 && Date.now() - last > 2000) {
      last = Date.now();
      report('progress', i + 1 - startIndex);
    }
  }
  target.close?.();
  report('done', i - startIndex);
}

// ──────────────────────────────── main ────────────────────────────────

interface TargetResult {
  target: string;
  cases: number;
  seconds: number;
  casesPerSecond: number;
  rejects: number;
  oks: number;
  signatures: number;
  failures: number;
  failureKinds: Record<string, number>;
  hangs: number;
  crashes: number;
  slowestMs: number;
  slowRetried: number;
  corpusAdded: number;
  /** Stopped by a signal before --cases. */
  stoppedEarly?: boolean;
  corpusFiles: number;
}

function parseArgs(argv: string[]): { targets: string[]; cases: number; seed: number; budgetMs: number; save: boolean; json?: string } {
  const out = { targets: [] as string[], cases: 1_000_000, seed: Date.now() >>> 0, budgetMs: 1000, save: true, json: undefined as string | undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = () => { const v = argv[++i]; if (v === undefined) throw new Error(`${a} needs a value`); return v; };
    if (a === '--cases') out.cases = Number(val());
    else if (a === '--seed') out.seed = Number(val()) >>> 0;
    else if (a === '--budget-ms') out.budgetMs = Number(val());
    else if (a === '--no-save') out.save = false;
    else if (a === '--json') out.json = val();
    else if (a === '--list') { for (const t of TARGETS) process.stdout.write(`${t.name.padEnd(18)} ${t.describe}\n`); process.exit(0); }
    else if (a.startsWith('-')) throw new Error(`unknown option ${a}`);
    else out.targets.push(a);
  }
  if (!Number.isInteger(out.cases) || out.cases < 0) throw new Error('--cases must be a non-negative integer');
  if (out.targets.length === 0) out.targets = TARGETS.map((t) => t.name);
  for (const t of out.targets) targetByName(t); // unknown names fail early
  return out;
}

async function fuzzTarget(name: string, o: { cases: number; seed: number; budgetMs: number; save: boolean }): Promise<TargetResult> {
  const target = targetByName(name);
  const sab = new SharedArrayBuffer(SAB_HEADER + Math.max(target.maxLen, 1 << 16));
  const ctl = new Int32Array(sab, 0, 5);
  current = ctl;
  const findings = path.join(path.dirname(corpusRoot()), 'findings', name);
  const t0 = Date.now();
  let cases = 0, rejects = 0, oks = 0, signatures = 0, hangs = 0, crashes = 0, slowestMs = 0, retried = 0;
  const kinds: Record<string, number> = {};
  let keep: Array<{ data: Buffer; label: string }> = [];
  const saveFailure = (f: Failure): void => {
    kinds[f.kind] = (kinds[f.kind] ?? 0) + 1;
    fs.mkdirSync(findings, { recursive: true });
    const data = Buffer.from(f.input, 'base64');
    const file = path.join(findings, corpusName(data, f.kind));
    fs.writeFileSync(file, data);
    fs.writeFileSync(`${file}.txt`, `${f.signature}\n${f.message}\n${f.stack ?? ''}\n`);
    process.stderr.write(`  FAIL ${name} case ${f.case}: ${f.kind}: ${f.message.split('\n')[0]} → ${path.relative(process.cwd(), file)}\n`);
  };
  let replay = true;
  let restarts = 0;
  while ((Atomics.load(ctl, 3) < o.cases && !stopping) || replay) {
    const wi: WorkerInput = { target: name, cases: o.cases, seed: (o.seed + restarts * 7919) >>> 0, budgetMs: o.budgetMs, sab, replay };
    replay = false;
    const worker = new Worker(__filename, { workerData: wi, resourceLimits: { maxOldGenerationSizeMb: 1024 } });
    let lastCase = -2, since = Date.now();
    let lastCases = 0;
    // This worker's cumulative counts (added to the totals when it ends).
    let cur = { rejects: 0, oks: 0, retried: 0 };
    const result = await new Promise<'done' | 'hang' | 'oom' | 'crash'>((resolve) => {
      let finished = false;
      const timer = setInterval(() => {
        const running = Atomics.load(ctl, 0) === 1;
        const idx = Atomics.load(ctl, 2);
        if (!running || idx !== lastCase) { lastCase = running ? idx : -2; since = Date.now(); return; }
        if (Date.now() - since > 10 * o.budgetMs) {
          finished = true;
          clearInterval(timer);
          void worker.terminate().then(() => resolve('hang'));
        }
      }, Math.min(250, o.budgetMs));
      worker.on('message', (m: WorkerReport) => {
        cases += m.cases - lastCases;
        lastCases = m.type === 'progress' ? m.cases : 0;
        cur = { rejects: m.rejects, oks: m.oks, retried: m.retried };
        signatures = Math.max(signatures, m.signatures);
        slowestMs = Math.max(slowestMs, m.slowestMs);
        for (const f of m.failures) saveFailure(f);
        if (m.type === 'progress') {
          const s = (Date.now() - t0) / 1000;
          process.stderr.write(`  ${name}: ${cases} cases, ${(cases / s).toFixed(0)}/s, ${m.signatures} signatures\n`);
        } else if (m.keep) keep = keep.concat(m.keep.map((k) => ({ data: Buffer.from(k.data, 'base64'), label: k.label })));
      });
      worker.on('error', (err: Error & { code?: string }) => {
        if (finished) return;
        finished = true;
        clearInterval(timer);
        resolve(err.code === 'ERR_WORKER_OUT_OF_MEMORY' ? 'oom' : 'crash');
        (worker as unknown as { __err?: Error }).__err = err;
      });
      worker.on('exit', (code) => {
        clearInterval(timer);
        if (finished) return;
        finished = true;
        resolve(code === 0 ? 'done' : 'crash');
      });
    });
    rejects += cur.rejects;
    oks += cur.oks;
    retried += cur.retried;
    if (result === 'done') break;
    // The case in flight when the worker was stopped or died.
    const idx = Atomics.load(ctl, 2);
    const len = Atomics.load(ctl, 1);
    const input = Buffer.from(new Uint8Array(sab, SAB_HEADER, len));
    if (result === 'hang') hangs++; else crashes++;
    saveFailure({ kind: result === 'oom' ? 'oom' : result, signature: result, message: `${result} in case ${idx}`, input: input.toString('base64'), case: idx });
    Atomics.store(ctl, 0, 0);
    Atomics.store(ctl, 3, Math.max(Atomics.load(ctl, 3), idx + 1));
    if (++restarts > 20) { process.stderr.write(`  ${name}: too many worker restarts, giving up\n`); break; }
  }
  const seconds = (Date.now() - t0) / 1000;
  cases = Atomics.load(ctl, 3);
  let corpusAdded = 0;
  if (o.save) {
    // Seeds first (replay must not need mkfs.erofs & co), then new
    // successes, then new refusals, smallest first within each.
    const rank = (l: string) => (l === 'ok' ? 0 : 1);
    keep.sort((a, b) => rank(a.label) - rank(b.label) || a.data.length - b.data.length);
    corpusAdded = writeCorpus(name, [...target.seeds().map((data) => ({ data, label: 'seed' })), ...keep]);
  }
  const failures = Object.values(kinds).reduce((s, n) => s + n, 0);
  return {
    target: name, cases, seconds: Math.round(seconds * 10) / 10, casesPerSecond: Math.round(cases / seconds), rejects, oks, signatures,
    failures, failureKinds: kinds, hangs, crashes, slowestMs: Math.round(slowestMs), slowRetried: retried, corpusAdded, corpusFiles: readCorpus(name).length,
  };
}

/** SIGINT/SIGTERM: the target in progress stops after its current case and is recorded; the rest are skipped. */
let stopping = false;
let current: Int32Array | undefined;

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (stopping) process.exit(130);
      stopping = true;
      process.stderr.write(`fuzz: ${sig}: stopping after the current case (again to quit at once)\n`);
      if (current) Atomics.store(current, 4, 1);
    });
  }
  process.stderr.write(`fuzz: ${o.targets.length} target(s), ${o.cases} cases each, seed ${o.seed}, budget ${o.budgetMs} ms/case\n`);
  const results: TargetResult[] = [];
  for (const t of o.targets) {
    if (stopping) break;
    process.stderr.write(`${t}: ${targetByName(t).describe}\n`);
    const r = await fuzzTarget(t, o);
    if (stopping) r.stoppedEarly = true;
    results.push(r);
    process.stdout.write(`${JSON.stringify(r)}\n`);
    if (o.json) fs.writeFileSync(o.json, JSON.stringify({ seed: o.seed, budgetMs: o.budgetMs, results }, null, 2));
  }
  process.stdout.write('\ntarget             cases      seconds  cases/s  signatures  failures  hangs  crashes  corpus\n');
  for (const r of results) {
    process.stdout.write(`${r.target.padEnd(18)} ${String(r.cases).padStart(9)} ${String(r.seconds).padStart(9)} ${String(r.casesPerSecond).padStart(8)} ${String(r.signatures).padStart(11)} ${String(r.failures).padStart(9)} ${String(r.hangs).padStart(6)} ${String(r.crashes).padStart(8)} ${String(r.corpusFiles).padStart(7)}\n`);
  }
  process.exitCode = results.some((r) => r.failures > 0) ? 1 : 0;
}

if (isMainThread) {
  main().catch((err) => {
    process.stderr.write(`fuzz: ${(err as Error).stack ?? err}\n`);
    process.exitCode = 2;
  });
} else {
  workerMain(workerData as WorkerInput).catch((err) => {
    // A throw out of the loop itself (not a case) is a harness bug: let the
    // supervisor see a crash.
    process.stderr.write(`fuzz worker: ${(err as Error).stack ?? err}\n`);
    process.exit(3);
  });
}
