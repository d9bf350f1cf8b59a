/**
 * `kata-ctl list` and `kata-ctl cleanup` on fabricated state: a live
 * sandbox (owned by this test process), a stale one whose owner pid is dead
 * and whose "VMM" is a sleeping dummy process started here (its command line
 * names the sandbox dir, as QEMU's does), a bystander process listed as a
 * VMM pid but not naming the dir (must survive: a reused pid), a recycled
 * owner pid (same pid, other start time) and a directory without state.
 * Every process started here is stopped here.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { processStartTime, writeState, type SandboxState } from '../../../src/runtime/state';
import type { SandboxRow, CleanupEntry } from '../../../src/ctl/sandboxes';
import { kataCtl } from '../../helpers/kata-ctl';

function idler(args: string[]): ChildProcess {
  return spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e9)', ...args], { stdio: 'ignore' });
}

function alive(p: ChildProcess): boolean {
  return p.exitCode === null && p.signalCode === null;
}

describe('kata-ctl list / cleanup (fabricated state)', function () {
  this.timeout(60000);
  let runDir: string;
  let cfg: string;
  let vmm: ChildProcess;
  let bystander: ChildProcess;
  let deadPid: number;

  const sbDir = (id: string) => path.join(runDir, 'sandboxes', id);
  const state = (id: string, over: Partial<SandboxState>): void => {
    fs.mkdirSync(sbDir(id), { recursive: true });
    writeState(sbDir(id), {
      id, phase: 'running', hypervisor: 'qemu', accel: 'tcg', ownerPid: process.pid, ownerStartTime: processStartTime(process.pid), vmPids: [],
      vcpus: 1, memoryMiB: 512, createdAt: new Date(Date.now() - 90_000).toISOString(), containers: [{ id: 'c1', state: 'running', pid: 1 }], ...over,
    });
  };

  before(async () => {
    runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-list-'));
    cfg = path.join(runDir, 'c.toml');
    fs.writeFileSync(cfg, `[runtime]\nrun_dir = "${runDir}"\n`);
    // a pid that certainly belonged to a process that has exited
    deadPid = spawnSync('true').pid!;
    vmm = idler([path.join(runDir, 'sandboxes', 'stale1', 'qemu.pid')]);
    bystander = idler(['unrelated']);
    await new Promise((r) => setTimeout(r, 300));
    state('live1', { vmPids: [bystander.pid!] });
    state('stale1', { ownerPid: deadPid, ownerStartTime: 1, vmPids: [vmm.pid!, bystander.pid!] });
    state('recycled', { ownerStartTime: (processStartTime(process.pid) ?? 0) + 12345 });
    fs.mkdirSync(sbDir('nostate'));
    const old = new Date(Date.now() - 3600_000);
    fs.utimesSync(sbDir('nostate'), old, old);
    fs.mkdirSync(sbDir('creating')); // fresh dir without state: being created, not listed yet
  });

  after(() => {
    for (const p of [vmm, bystander]) if (p && alive(p)) p.kill('SIGKILL');
    fs.rmSync(runDir, { recursive: true, force: true });
  });

  it('lists live and stale sandboxes with their details (--json)', async () => {
    const r = await kataCtl(['--config', cfg, 'list', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const out = JSON.parse(r.stdout) as { schemaVersion: number; sandboxes: SandboxRow[] };
    expect(out.schemaVersion).to.equal(1);
    const by = Object.fromEntries(out.sandboxes.map((s) => [s.id, s]));
    expect(Object.keys(by)).to.deep.equal(['live1', 'nostate', 'recycled', 'stale1']);
    expect(by.live1).to.include({ status: 'running', phase: 'running', hypervisor: 'qemu', accel: 'tcg', ownerPid: process.pid, vcpus: 1, memoryMiB: 512, containers: 1, reason: '' });
    expect(by.live1!.uptimeSeconds).to.be.within(89, 200);
    expect(by.stale1).to.include({ status: 'stale', reason: `owner pid ${deadPid} is gone` });
    expect(by.recycled!.status).to.equal('stale');
    expect(by.nostate).to.include({ status: 'stale', phase: 'unknown', reason: 'no readable state.json' });
  });

  it('lists as a table and points at cleanup', async () => {
    const r = await kataCtl(['--config', cfg, 'list']);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).to.match(/^ID\s+STATUS\s+HYPERVISOR\s+PIDS\s+VCPUS\s+MEMORY\s+UPTIME\s+CONTAINERS$/);
    expect(lines.find((l) => l.startsWith('live1'))).to.match(/^live1\s+running\s+qemu\/tcg\s+\d+,\d+\s+1\s+512MiB\s+1m\d+s\s+1$/);
    expect(lines.find((l) => l.startsWith('stale1'))).to.match(/^stale1\s+stale\s/);
    expect(lines.at(-1)).to.equal('3 stale sandbox(es): run `kata-ctl cleanup` to remove them');
  });

  it('--dry-run changes nothing', async () => {
    const r = await kataCtl(['--config', cfg, 'cleanup', '--dry-run']);
    expect(r.code).to.equal(0);
    expect(r.stdout).to.include(`would remove stale1 (owner pid ${deadPid} is gone); would kill VMM pid ${vmm.pid}`);
    expect(fs.existsSync(sbDir('stale1'))).to.equal(true);
    expect(alive(vmm)).to.equal(true);
  });

  it('removes stale sandboxes, kills only the VMM that names its sandbox, keeps live ones', async () => {
    const vmmGone = new Promise((r) => vmm.once('exit', r));
    const r = await kataCtl(['--config', cfg, 'cleanup', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const out = JSON.parse(r.stdout) as { schemaVersion: number; dryRun: boolean; removed: CleanupEntry[]; kept: string[] };
    expect(out.kept).to.deep.equal(['live1']);
    expect(out.removed.map((e) => e.id)).to.deep.equal(['nostate', 'recycled', 'stale1']);
    const stale = out.removed.find((e) => e.id === 'stale1')!;
    expect(stale.killed).to.deep.equal([vmm.pid]);
    expect(stale.skipped).to.deep.equal([{ pid: bystander.pid, why: `its command line does not name ${sbDir('stale1')} (pid reused)` }]);
    expect(out.removed.every((e) => e.removed)).to.equal(true);
    await vmmGone;
    expect(alive(bystander)).to.equal(true);
    expect(fs.readdirSync(path.join(runDir, 'sandboxes')).sort()).to.deep.equal(['creating', 'live1']);
  });

  it('says so when there is nothing to clean', async () => {
    const r = await kataCtl(['--config', cfg, 'cleanup']);
    expect(r.stdout).to.equal('no stale sandboxes\n');
  });
});
