#!/usr/bin/env node
/*
 * Test entry point (`npm test` after set-up): runs every compiled mocha test
 * under dist/test (unit, integration, e2e), prints mocha's spec report and
 * then one closing line CI reads: `N passed, N failed, N skipped`.
 * Pass a substring to run only matching files: `node test/run.js vsock`.
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

const root = path.join(__dirname, '..', 'dist', 'test');
const filter = process.argv[2];
const files = walk(root, []).sort().filter((f) => !filter || f.includes(filter));
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

const mocha = new Mocha({ timeout: 120000, reporter: 'spec' });
for (const f of files) mocha.addFile(f);
let passed = 0, failed = 0, skipped = 0;
const runner = mocha.run((failures) => {
  const leaked = leftovers();
  if (leaked.length) {
    failed++;
    process.stdout.write(`\nleak check FAILED: left behind after the suite:\n${leaked.map((l) => `  ${l}`).join('\n')}\n`);
  } else {
    passed++;
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
  const code = failures > 0 || failed > 0 ? 1 : 0;
  process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`, () => process.exit(code));
});
runner.on('test', (t) => { current = t.fullTitle(); });
runner.on('hook', (h) => { current = h.fullTitle(); });
runner.on('pass', () => passed++);
runner.on('fail', () => failed++);
runner.on('pending', () => skipped++);
