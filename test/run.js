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
function leftovers() {
  const ps = require('node:child_process').execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  const procs = ps.split('\n').filter((l) => l.includes(suiteTmp) && /qemu|containerd|kata|sleep/.test(l) && !/ ps -eo/.test(l));
  const mounts = fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.includes(suiteTmp));
  return [...procs.map((l) => l.trim()), ...mounts];
}

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
  try {
    fs.rmSync(suiteTmp, { recursive: true, force: true });
  } catch { /* a leaked mount keeps it busy; reported above */ }
  process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  process.exitCode = failures > 0 || failed > 0 ? 1 : 0;
});
runner.on('pass', () => passed++);
runner.on('fail', () => failed++);
runner.on('pending', () => skipped++);
