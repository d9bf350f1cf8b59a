/**
 * A VM must not outlive the process that owns it: `kata-ts run` killed with
 * SIGKILL (no chance to stop anything) takes its QEMU with it (QEMU runs
 * with a parent-death signal), and `kata-ctl cleanup` then removes the
 * sandbox directory the dead owner left. Killed twice: while its container
 * runs, and in the middle of booting (QEMU up, the agent not yet); each time
 * nothing is left under the run dir — no process naming it, no mount, no
 * socket file or bound socket, no sandbox dir.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { REPO, expectNothingLeft, leftoverQemu, requireGuest, testRunDir, writeTestConfig } from '../helpers/guest';
import { kataCtl } from '../helpers/kata-ctl';

/** Processes whose command line or environment names `dir`; mounts and unix sockets (files, bound) under it. */
function leftUnder(dir: string): { processes: string[]; mounts: string[]; sockets: string[] } {
  const mark = Buffer.from(dir);
  const processes: string[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${d}/cmdline`);
      if (cmd.includes(mark) || fs.readFileSync(`/proc/${d}/environ`).includes(mark)) processes.push(`${d} ${cmd.toString().split('\0').join(' ')}`);
    } catch { /* gone meanwhile */ }
  }
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(dir + '/'));
  const files: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.existsSync(d) ? fs.readdirSync(d, { withFileTypes: true }) : []) {
      if (e.isDirectory()) walk(path.join(d, e.name));
      else if (e.isSocket()) files.push(path.join(d, e.name));
    }
  };
  walk(dir);
  const bound = fs.readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1).map((l) => l.trim().split(/\s+/)[7] ?? '').filter((p) => p.startsWith(dir + '/'));
  return { processes, mounts, sockets: [...files, ...bound] };
}

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
    expect(r.stdout, 'cleanup removed the dead owner\'s sandbox').to.match(/^removed /m);
    expect(leftUnder(runDir)).to.deep.equal({ processes: [], mounts: [], sockets: [] });
    expect(fs.readdirSync(path.join(runDir, 'sandboxes')), 'sandbox dirs left').to.deep.equal([]);
  });

  it('SIGKILL of `kata-ts run` while its VM boots (QEMU up, agent not yet): QEMU goes too; cleanup leaves nothing', async () => {
    const owner = spawn(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), 'run', '--config', cfg, '--', 'sh', '-c', 'echo started; sleep 100'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    owner.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    owner.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const deadline = Date.now() + 60000;
    while (leftoverQemu(runDir).length === 0) {
      if (owner.exitCode !== null || Date.now() > deadline) throw new Error(`QEMU did not start: ${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const exited = new Promise((r) => owner.once('exit', r));
    owner.kill('SIGKILL');
    await exited;
    expect(out, 'killed before the container started').to.not.include('started');
    const killedAt = Date.now();
    while (leftoverQemu(runDir).length && Date.now() - killedAt < 5000) await new Promise((r) => setTimeout(r, 100));
    expect(leftoverQemu(runDir), 'QEMU still running 5 s after its owner was SIGKILLed').to.deep.equal([]);
    const r = await kataCtl(['--config', cfg, 'cleanup'], { timeoutMs: 60000 });
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout, 'cleanup removed the dead owner\'s sandbox').to.match(/^removed /m);
    expect(leftUnder(runDir)).to.deep.equal({ processes: [], mounts: [], sockets: [] });
    expectNothingLeft(runDir);
  });
});
