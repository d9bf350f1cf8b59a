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
// Leak check: anything a test started must be gone when the suite ends.
function ourProcesses() {
  const out = require('node:child_process').execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  return new Set(out.split('\n').filter((l) => /qemu-system.*kata-ts-|containerd-shim-kata-ts|containerd .*kata-ts-test/.test(l)).map((l) => l.trim()));
}
function ourMounts() {
  return new Set(fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => /kata-ts|kata-test|kata-shim/.test(l)));
}
const procsBefore = ourProcesses();
const mountsBefore = ourMounts();

const mocha = new Mocha({ timeout: 120000, reporter: 'spec' });
for (const f of files) mocha.addFile(f);
let passed = 0, failed = 0, skipped = 0;
const runner = mocha.run((failures) => {
  const leakedProcs = [...ourProcesses()].filter((p) => !procsBefore.has(p));
  const leakedMounts = [...ourMounts()].filter((m) => !mountsBefore.has(m));
  if (leakedProcs.length || leakedMounts.length) {
    failed++;
    process.stdout.write(`\nleak check FAILED: left behind after the suite:\n${[...leakedProcs, ...leakedMounts].map((l) => `  ${l}`).join('\n')}\n`);
  } else {
    passed++;
    process.stdout.write('\nleak check: no VMs, shims or mounts left behind\n');
  }
  process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  process.exitCode = failures > 0 || failed > 0 ? 1 : 0;
});
runner.on('pass', () => passed++);
runner.on('fail', () => failed++);
runner.on('pending', () => skipped++);
