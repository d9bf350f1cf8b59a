/**
 * test/run.js, the suite's entry point, on small fixture trees (compiled
 * tests in one directory, their "sources" in another): it cannot be green
 * by accident. No files or a filter matching none fails; the leak check is
 * its own line, not a pass, and a leak is one failure; `.only` is refused;
 * a compiled test whose source is gone is not run and is named; under
 * CI=true only skips through skipOrFail(…, { hostCannot: true }) stay
 * skips, every other skip fails the run.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { REPO } from '../../helpers/guest';

const RUNNER = path.join(REPO, 'test', 'run.js');
const SKIP_HELPER = path.resolve(__dirname, '..', '..', 'helpers', 'skip.js');

interface Run { code: number | null; out: string; closing: string }

describe('test runner (test/run.js)', function () {
  this.timeout(30000);
  let dir: string, dist: string, src: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-runner-'));
    dist = path.join(dir, 'dist');
    src = path.join(dir, 'src');
    fs.mkdirSync(dist);
    fs.mkdirSync(src);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** A compiled test file; `source: false` leaves out its test/…ts. */
  function addTest(rel: string, js: string, source = true): void {
    fs.mkdirSync(path.dirname(path.join(dist, rel)), { recursive: true });
    fs.writeFileSync(path.join(dist, rel), js);
    if (source) {
      const ts = path.join(src, rel.replace(/\.js$/, '.ts'));
      fs.mkdirSync(path.dirname(ts), { recursive: true });
      fs.writeFileSync(ts, '// source\n');
    }
  }
  function run(args: string[] = [], env: NodeJS.ProcessEnv = {}): Run {
    const r = spawnSync(process.execPath, [RUNNER, ...args], {
      encoding: 'utf8', timeout: 25000,
      env: { ...process.env, CI: '', KATA_TS_TEST_DIST: dist, KATA_TS_TEST_SRC: src, ...env },
    });
    const out = r.stdout + r.stderr;
    const lines = r.stdout.trimEnd().split('\n');
    return { code: r.status, out, closing: lines[lines.length - 1] };
  }

  it('no test files at all: fails, and says so', () => {
    const r = run();
    expect(r.closing).to.equal('0 passed, 1 failed, 0 skipped');
    expect(r.code).to.equal(1);
    expect(r.out).to.contain('no test files to run');
  });

  it('a filter that matches no file: fails, naming the filter', () => {
    addTest('unit/a.test.js', "it('passes', () => {});\n");
    const r = run(['no-such-thing']);
    expect(r.closing).to.equal('0 passed, 1 failed, 0 skipped');
    expect(r.code).to.equal(1);
    expect(r.out).to.contain('none matching "no-such-thing"');
    // The same tree with a matching filter passes: the file is not the problem.
    const ok = run(['unit/a']);
    expect([ok.code, ok.closing]).to.deep.equal([0, '1 passed, 0 failed, 0 skipped']);
  });

  it('files that hold no test: fails ("no tests ran")', () => {
    addTest('unit/empty.test.js', "describe('nothing here', () => {});\n");
    const r = run();
    expect(r.closing).to.equal('0 passed, 1 failed, 0 skipped');
    expect(r.code).to.equal(1);
    expect(r.out).to.contain('no tests ran');
  });

  it('the leak check is its own line and not counted as a passed test', () => {
    addTest('unit/a.test.js', "it('one', () => {}); it('two', () => {});\n");
    const r = run();
    expect(r.closing).to.equal('2 passed, 0 failed, 0 skipped');
    expect(r.code).to.equal(0);
    expect(r.out).to.match(/^leak check: no VMs, shims or mounts left behind$/m);
  });

  it('a leak is counted as one failure, named, and the leaked process killed', async () => {
    const pidFile = path.join(dir, 'leaked.pid');
    addTest('unit/leak.test.js', `
      const { spawn } = require('node:child_process');
      it('starts a daemon and forgets it', () => {
        const c = spawn('sleep', ['300'], { detached: true, stdio: 'ignore' });
        c.unref();
        require('node:fs').writeFileSync(${JSON.stringify(pidFile)}, String(c.pid));
      });
    `);
    const r = run();
    expect(r.closing).to.equal('1 passed, 1 failed, 0 skipped');
    expect(r.code).to.equal(1);
    expect(r.out).to.match(/leak check FAILED \(counted as 1 failure\)/);
    const pid = Number(fs.readFileSync(pidFile, 'utf8'));
    expect(r.out).to.match(new RegExp(`^\\s+${pid} sleep 300`, 'm'));
    // Killed by the runner; reaped (by init, it was reparented) soon after.
    const alive = () => {
      try { return !/^\S+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return false; }
    };
    for (let i = 0; i < 50 && alive(); i++) await new Promise((res) => setTimeout(res, 100));
    expect(alive(), `leaked sleep ${pid} still running`).to.equal(false);
  });

  it('refuses .only', () => {
    addTest('unit/a.test.js', "it.only('the one', () => {}); it('the others', () => { throw new Error('never run'); });\n");
    const r = run();
    expect(r.closing).to.equal('0 passed, 1 failed, 0 skipped');
    expect(r.code).to.equal(1);
    expect(r.out).to.contain('`.only` is refused');
  });

  it('does not run a compiled test whose source is gone, and names it', () => {
    addTest('unit/kept.test.js', "it('kept', () => {});\n");
    addTest('unit/gone.test.js', "it('from a deleted source', () => { throw new Error('stale test ran'); });\n", false);
    const r = run();
    expect(r.out).to.not.contain('stale test ran');
    expect(r.out).to.match(/ignored 1 compiled test file\(s\) whose source is gone:\n.*gone\.test\.js \(no .*gone\.test\.ts\)/);
    expect(r.closing).to.equal('1 passed, 0 failed, 0 skipped');
    expect(r.code).to.equal(0);
  });

  describe('skips', () => {
    beforeEach(() => addTest('unit/skips.test.js', `
      const { skipOrFail } = require(${JSON.stringify(SKIP_HELPER)});
      describe('needs hardware KVM', function () {
        before(function () { skipOrFail(this, 'KVM only emulates guests here', { hostCannot: true }); });
        it('a', () => {});
        it('b', () => {});
      });
      it('needs xxhsum', function () { skipOrFail(this, 'xxhsum not installed'); });
      it('skips by hand', function () { this.skip(); });
    `));

    it('on a developer machine every skip is a skip, with its reason printed', () => {
      const r = run();
      expect(r.closing).to.equal('0 passed, 0 failed, 4 skipped');
      expect(r.code).to.equal(0);
      expect(r.out).to.contain('skipped (this host cannot): KVM only emulates guests here');
      expect(r.out).to.contain('skipped: xxhsum not installed');
    });

    it('under CI=true a missing prerequisite and a bare skip fail; only the host limit skips', () => {
      const r = run([], { CI: 'true' });
      expect(r.closing).to.equal('0 passed, 2 failed, 2 skipped');
      expect(r.code).to.equal(1);
      expect(r.out).to.match(/MissingPrerequisiteError: missing prerequisite .*: xxhsum not installed/);
      expect(r.out).to.match(/1 test\(s\) skipped without a host limit, counted as failures.*\n\s+skips by hand/);
      expect(r.out).to.match(/skipped because this host cannot:\n\s+2 test\(s\): KVM only emulates guests here/);
    });
  });
});
