#!/usr/bin/env node
/*
 * Test entry point (`npm test` after set-up): runs every compiled mocha test
 * under dist/test (unit, integration, e2e), prints mocha's spec report and
 * then one closing line CI reads: `N passed, N failed, N skipped`.
 * Pass a substring to run only matching files: `node test/run.js vsock`.
 *
 * The run cannot be green by accident:
 * - no test files (or a filter matching none), or no test run at all, is a
 *   failure;
 * - `.only` is refused (mocha's forbidOnly);
 * - a compiled dist/test/X.test.js whose source test/X.test.ts is gone is
 *   not run, and is named;
 * - the leak check after the suite is reported on its own line; it is not a
 *   test, but leaks count as one failure;
 * - under CI=true a skipped test fails the run unless it was skipped through
 *   test/helpers/skip.ts with `hostCannot` (what this host cannot have, such
 *   as hardware KVM); skipOrFail itself throws for a missing prerequisite.
 * KATA_TS_TEST_DIST / KATA_TS_TEST_SRC point it at other compiled / source
 * trees (the runner's own test uses that).
 */
'use strict';
const path = require('node:path');
const fs = require('node:fs');
const Mocha = require('mocha');

function walk(dir, out) {
  if (!fs.existsSync(dir)) return out;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (e.name.endsWith('.test.js')) out.push(p);
  }
  return out;
}

/** Prints the closing line and exits: 0 only with no failure. */
function finish(passed, failed, skipped) {
  process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`, () => process.exit(failed > 0 ? 1 : 0));
}

const root = path.resolve(process.env.KATA_TS_TEST_DIST || path.join(__dirname, '..', 'dist', 'test'));
const srcRoot = path.resolve(process.env.KATA_TS_TEST_SRC || __dirname);
const filter = process.argv[2];
const inCi = /^(true|1|yes)$/i.test(process.env.CI || '');
const HOST_CANNOT_MARK = 'kataTsHostCannot'; // set by test/helpers/skip.ts
const compiled = walk(root, []).sort();
// tsc never deletes outputs: a test renamed or removed in test/ keeps its
// old .js in dist/test, which would still run (and pass, or fail) unseen.
const sourceOf = (f) => path.join(srcRoot, path.relative(root, f)).replace(/\.js$/, '.ts');
const stale = compiled.filter((f) => !fs.existsSync(sourceOf(f)));
if (stale.length) {
  process.stdout.write(`ignored ${stale.length} compiled test file(s) whose source is gone:\n${stale.map((f) => `  ${path.relative(process.cwd(), f)} (no ${path.relative(process.cwd(), sourceOf(f))})`).join('\n')}\n`);
}
const files = compiled.filter((f) => !stale.includes(f) && (!filter || f.includes(filter)));
if (files.length === 0) {
  process.stdout.write(`no test files to run: ${compiled.length - stale.length} under ${root}${filter ? `, none matching "${filter}"` : ''} (build with tsc first)\n`);
  finish(0, 1, 0);
  return;
}
// Everything the suite creates lives under one private TMPDIR (os.tmpdir()
// honours it, children inherit it), so the leak check below can tell this
// run's VMs, shims and mounts from anything else on the machine.
const suiteTmp = fs.mkdtempSync('/tmp/kts-');
process.env.TMPDIR = suiteTmp;
/** Pids of live processes the suite started: they inherit TMPDIR=suiteTmp,
 * so this finds them even after they daemonize or change their name. */
function suiteProcesses() {
  const mark = Buffer.from(`TMPDIR=${suiteTmp}\0`);
  const out = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (!fs.readFileSync(`/proc/${d}/environ`).includes(mark)) continue;
      if (/^\S+\s+\S+\s+Z/.test(fs.readFileSync(`/proc/${d}/stat`, 'utf8').replace(/\(.*\)/, 'x'))) continue; // zombie
      out.push({ pid: Number(d), args: fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').join(' ').trim() });
    } catch { /* gone meanwhile, or a kernel thread */ }
  }
  return out;
}
function leftovers() {
  const ps = require('node:child_process').execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  const named = ps.split('\n').filter((l) => l.includes(suiteTmp) && /qemu|containerd|kata|sleep/.test(l) && !/ ps -eo/.test(l)).map((l) => l.trim());
  const seen = new Set(named.map((l) => Number(l.split(/\s+/)[0])));
  const inherited = suiteProcesses().filter((p) => !seen.has(p.pid)).map((p) => `${p.pid} ${p.args}`);
  const mounts = fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.includes(suiteTmp));
  return [...named, ...inherited, ...mounts];
}

/** Kills whatever the suite left running, so a leak fails the run instead
 * of hanging it (a daemon holding CI's stdout open keeps CI waiting). */
function killLeftovers() {
  for (const p of suiteProcesses()) {
    try { process.kill(p.pid, 'SIGKILL'); } catch { /* already gone */ }
  }
}

// Whole-run watchdog: mocha bounds each test and hook, but nothing bounds a
// hang between them; CI must get an answer, not a timeout.
const WATCHDOG_MS = Number(process.env.KATA_TS_TEST_WATCHDOG_MS || 60 * 60 * 1000);
let current = '(none)';
const watchdog = setTimeout(() => {
  process.stdout.write(`\nwatchdog: the suite ran past ${WATCHDOG_MS / 60000} min; stuck in: ${current}\n`);
  killLeftovers();
  process.stdout.write(`\n${passed} passed, ${failed + 1} failed, ${skipped} skipped\n`, () => process.exit(1));
}, WATCHDOG_MS);
watchdog.unref();

// What the runner itself holds open (stdout/stderr pipes or ttys, the
// watchdog), so the end-of-run check names only what tests left behind.
void process.stdout; void process.stderr;
const baseline = process.getActiveResourcesInfo();

// KATA_TS_TEST_GREP: only the tests whose full title matches (one case of a long file while iterating; never set by CI).
const mocha = new Mocha({ timeout: 120000, reporter: 'spec', forbidOnly: true, ...(process.env.KATA_TS_TEST_GREP ? { grep: process.env.KATA_TS_TEST_GREP } : {}) });
for (const f of files) mocha.addFile(f);
let passed = 0, failed = 0, skipped = 0;
/** Skips under CI=true that no host limit explains (counted as failures). */
const unexplained = [];
/** Why tests were skipped: reason → count (from skipOrFail's mark). */
const skipReasons = new Map();
function hostCannot(t) {
  for (let r = t; r; r = r.parent) if (typeof r[HOST_CANNOT_MARK] === 'string') return r[HOST_CANNOT_MARK];
  return undefined;
}
let runner;
try {
  runner = mocha.run(done);
} catch (err) {
  // mocha loads the files inside run(): a file that throws while loading,
  // or a `.only` (forbidOnly), ends the run here.
  const only = err && err.code === 'ERR_MOCHA_FORBIDDEN_EXCLUSIVITY';
  process.stdout.write(`\n${only ? '`.only` is refused (forbidOnly): it would silently run a fraction of the suite' : 'cannot load the test files'}: ${err && err.stack || err}\n`);
  fs.rmSync(suiteTmp, { recursive: true, force: true });
  finish(0, 1, 0);
  return;
}
function done(failures) {
  if (passed + failed + skipped === 0) {
    failed++;
    process.stdout.write(`\nno tests ran in ${files.length} file(s): counted as a failure\n`);
  }
  if (unexplained.length) {
    process.stdout.write(`\nCI=true: ${unexplained.length} test(s) skipped without a host limit, counted as failures (skip through test/helpers/skip.ts):\n${unexplained.map((t) => `  ${t}`).join('\n')}\n`);
  }
  if (skipReasons.size) {
    process.stdout.write(`\nskipped because this host cannot:\n${[...skipReasons].map(([r, n]) => `  ${n} test(s): ${r}`).join('\n')}\n`);
  }
  // Not a test: it gets its own line and is not counted as a pass; leaks
  // are counted as one failure.
  const leaked = leftovers();
  if (leaked.length) {
    failed++;
    process.stdout.write(`\nleak check FAILED (counted as 1 failure): left behind after the suite:\n${leaked.map((l) => `  ${l}`).join('\n')}\n`);
  } else {
    process.stdout.write('\nleak check: no VMs, shims or mounts left behind\n');
  }
  killLeftovers();
  try {
    fs.rmSync(suiteTmp, { recursive: true, force: true });
  } catch { /* a leaked mount keeps it busy; reported above */ }
  // Anything still holding the event loop (a server or child a test forgot)
  // would keep this process, and CI, waiting forever: name it, then exit.
  const open = process.getActiveResourcesInfo();
  for (const r of baseline) { const i = open.indexOf(r); if (i >= 0) open.splice(i, 1); }
  if (open.length) process.stdout.write(`\nnote: still open at the end of the run (closed by exiting): ${open.join(', ')}\n`);
  // mocha's own count covers failures our events might not (e.g. .only refused).
  if (failures > failed) failed = failures;
  finish(passed, failed, skipped);
}
runner.on('test', (t) => { current = t.fullTitle(); });
runner.on('hook', (h) => { current = h.fullTitle(); });
runner.on('pass', () => passed++);
runner.on('fail', () => failed++);
runner.on('pending', (t) => {
  const why = hostCannot(t);
  if (why) skipReasons.set(why, (skipReasons.get(why) || 0) + 1);
  if (inCi && !why) {
    failed++;
    unexplained.push(t.fullTitle());
  } else {
    skipped++;
  }
});
