/**
 * A VM must not outlive the process that owns it: `kata-ts run` killed with
 * SIGKILL (no chance to stop anything) takes its QEMU with it (QEMU runs
 * with a parent-death signal), and `kata-ctl cleanup` then removes the
 * sandbox directory the dead owner left.
 */
import { expect } from 'chai';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { REPO, expectNothingLeft, leftoverQemu, requireGuest, testRunDir, writeTestConfig } from '../helpers/guest';
import { kataCtl } from '../helpers/kata-ctl';

describe('integration: a VM dies with its owner (QEMU)', function () {
  this.timeout(180000);
  let runDir: string;
  let cfg: string;

  before(function () {
    requireGuest(this);
    runDir = testRunDir();
    cfg = writeTestConfig(runDir);
  });

  after(function () {
    if (!runDir) return;
    // Whatever happened above, kill what is left so the suite goes on clean.
    for (const l of leftoverQemu(runDir)) try { process.kill(Number(l.trim().split(/\s+/)[0]), 'SIGKILL'); } catch { /* gone */ }
  });

  it('SIGKILL of `kata-ts run` stops its QEMU within seconds; cleanup removes the rest', async () => {
    const owner = spawn(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), 'run', '--config', cfg, '--', 'sh', '-c', 'echo started; sleep 100'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    owner.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    owner.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const deadline = Date.now() + 150000;
    while (!out.includes('started')) {
      if (owner.exitCode !== null || Date.now() > deadline) throw new Error(`container did not start: ${out}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const qemu = leftoverQemu(runDir);
    expect(qemu, 'one QEMU running the container').to.have.length(1);
    const exited = new Promise((r) => owner.once('exit', r));
    owner.kill('SIGKILL');
    await exited;
    const killedAt = Date.now();
    while (leftoverQemu(runDir).length && Date.now() - killedAt < 5000) await new Promise((r) => setTimeout(r, 100));
    expect(leftoverQemu(runDir), 'QEMU still running 5 s after its owner was SIGKILLed').to.deep.equal([]);
    const r = await kataCtl(['--config', cfg, 'cleanup'], { timeoutMs: 60000 });
    expect(r.code, r.stderr).to.equal(0);
    expectNothingLeft(runDir);
  });
});
