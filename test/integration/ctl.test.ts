/**
 * kata-ctl against one real sandbox (QEMU, TCG on these hosts), shared by
 * every test here to keep the suite short: `kata-ts run -- sleep` owns it,
 * kata-ctl lists it, scrapes its metrics, runs commands in the guest, and
 * drives an interactive debug console through a real terminal (a private
 * tmux server): the guest kernel answers `uname -r`, Ctrl-C reaches the
 * guest, `stty size` follows a window resize, Ctrl-D ends the session and
 * the terminal settings are restored. Everything started here is stopped here.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { CACHE, REPO, expectNothingLeft, requireGuest, testRunDir, writeTestConfig } from '../helpers/guest';
import { kataCtl } from '../helpers/kata-ctl';
import { parsePrometheus, sampleOf } from '../helpers/prometheus';
import { listSandboxes, type SandboxRow, type CleanupEntry } from '../../src/ctl/sandboxes';
import { ctlSocketPath } from '../../src/runtime/ctl-channel';
import { skipOrFail } from '../helpers/skip';

const ID = 'ctl-it';

describe('integration: kata-ctl on a running sandbox (QEMU)', function () {
  this.timeout(180000);
  let runDir: string;
  let cfg: string;
  let owner: ChildProcess | undefined;
  let ownerLog = '';
  const tmuxSock = `kata-ts-ctl-${process.pid}`;
  const tmux = (...args: string[]) => execFileSync('tmux', ['-L', tmuxSock, '-f', '/dev/null', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const ctl = (args: string[], c = cfg) => kataCtl(['--config', c, ...args], { timeoutMs: 60000 });
  const guestRelease = () => fs.readFileSync(path.join(CACHE, 'kernel', 'release'), 'utf8').trim();

  before(async function () {
    requireGuest(this);
    runDir = testRunDir();
    cfg = writeTestConfig(runDir, 'debug_console_enabled = true\n');
    owner = spawn(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), 'run', '--config', cfg, '--name', ID, '--', 'sleep', '900'], { stdio: ['ignore', 'pipe', 'pipe'] });
    owner.stdout!.on('data', (d: Buffer) => (ownerLog += d.toString()));
    owner.stderr!.on('data', (d: Buffer) => (ownerLog += d.toString()));
    const deadline = Date.now() + 150000;
    for (;;) {
      const row = listSandboxes(runDir).find((r) => r.id === ID);
      if (row?.phase === 'running' && row.containers === 1 && fs.existsSync(ctlSocketPath(row.dir))) break;
      if (owner.exitCode !== null || Date.now() > deadline) throw new Error(`sandbox did not come up: ${ownerLog}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  });

  after(async () => {
    try {
      tmux('kill-server');
    } catch { /* no server */ }
    if (owner && owner.exitCode === null && owner.signalCode === null) {
      const gone = new Promise((r) => owner!.once('exit', r));
      owner.kill('SIGTERM');
      const t = setTimeout(() => owner!.kill('SIGKILL'), 30000);
      await gone;
      clearTimeout(t);
    }
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  it('list shows it running, with its VMM, vCPUs, memory and container', async () => {
    const r = await ctl(['list', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const row = (JSON.parse(r.stdout) as { sandboxes: SandboxRow[] }).sandboxes.find((s) => s.id === ID)!;
    expect(row).to.include({ status: 'running', phase: 'running', hypervisor: 'qemu', ownerPid: owner!.pid, vcpus: 1, memoryMiB: 512, containers: 1 });
    if (fs.existsSync('/sys/module/kvm_pvm')) expect(row.accel).to.equal('tcg');
    expect(row.vmPids).to.have.length(1);
    expect(fs.readFileSync(`/proc/${row.vmPids[0]}/cmdline`, 'utf8')).to.include('qemu-system');
  });

  it('exec -- CMD runs in the guest VM (its kernel, not the host one) and returns the status', async () => {
    const r = await ctl(['exec', ID, '--', 'uname', '-r']);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout.trim()).to.equal(guestRelease());
    expect(r.stdout.trim()).to.not.equal(os.release());
    // outside the container: the guest's own root has the agent bundle
    expect((await ctl(['exec', ID, '--', 'sh', '-c', 'test -d /opt/kata-ts && exit 7'])).code).to.equal(7);
    const nf = await ctl(['exec', ID, '--', 'no-such-command']);
    expect(nf.code).to.equal(127);
    expect(nf.stderr).to.match(/not found/);
  });

  it('exec is refused with a clear message when the configuration disables the debug console', async () => {
    const off = path.join(runDir, 'off.toml');
    fs.writeFileSync(off, fs.readFileSync(cfg, 'utf8').replace('debug_console_enabled = true', 'debug_console_enabled = false'));
    const r = await ctl(['exec', ID, '--', 'true'], off);
    expect(r.code).to.equal(125);
    expect(r.stderr).to.equal(`kata-ctl: the debug console is disabled: set [agent.kata] debug_console_enabled = true in ${off} and start the sandbox with it\n`);
  });

  it('metrics has host and guest sides, as valid Prometheus text', async () => {
    const r = await ctl(['metrics', ID]);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stderr).to.equal('');
    const f = parsePrometheus(r.stdout);
    const l = { sandbox_id: ID };
    expect(sampleOf(f, 'kata_guest_up', l)!.value).to.equal(1);
    expect(sampleOf(f, 'kata_guest_memory_total_bytes', l)!.value).to.be.within(400 * 1048576, 512 * 1048576);
    expect(sampleOf(f, 'kata_guest_uptime_seconds', l)!.value).to.be.greaterThan(0);
    expect(sampleOf(f, 'kata_host_process_pss_bytes', { ...l, role: 'vmm' })!.value).to.be.greaterThan(50 * 1048576);
    expect(sampleOf(f, 'kata_host_process_cpu_seconds_total', { ...l, role: 'runtime' })!.value).to.be.greaterThan(0);
    expect(sampleOf(f, 'kata_container_pids', { ...l, container_id: ID })!.value).to.be.at.least(1);
    expect(sampleOf(f, 'kata_container_memory_usage_bytes', { ...l, container_id: ID })).to.not.equal(undefined);
  });

  it('the interactive console: guest kernel, Ctrl-C to the guest, resize, Ctrl-D, terminal restored', async function () {
    try {
      execFileSync('tmux', ['-V']);
    } catch {
      skipOrFail(this, 'tmux not installed');
    }
    const dir = fs.mkdtempSync(path.join(runDir, 'tty-'));
    const script = `stty -g > ${dir}/before; node ${path.join(REPO, 'bin', 'kata-ctl')} --config ${cfg} exec ${ID}; echo $? > ${dir}/rc; stty -g > ${dir}/after; sleep 600`;
    tmux('new-session', '-d', '-x', '80', '-y', '24', '-s', 'c', `sh -c '${script}'`);
    const screen = () => tmux('capture-pane', '-p', '-t', 'c');
    const waitFor = async (re: RegExp, what: string, ms = 20000) => {
      const end = Date.now() + ms;
      while (!re.test(screen())) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}; screen:\n${screen()}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    const keys = (...k: string[]) => tmux('send-keys', '-t', 'c', ...k);
    await waitFor(/^\/ # ?$/m, 'the guest shell prompt');
    keys('uname -r', 'Enter');
    await waitFor(new RegExp(`^${guestRelease().replace(/\./g, '\\.')}\\s*$`, 'm'), 'the guest kernel release');
    keys('sleep 300', 'Enter');
    await new Promise((r) => setTimeout(r, 500));
    keys('C-c');
    keys('echo alive-$((20+22))', 'Enter');
    await waitFor(/^alive-42\s*$/m, 'the shell after Ctrl-C (sleep interrupted in the guest)', 10000);
    keys('stty size', 'Enter');
    await waitFor(/^24 80\s*$/m, 'stty size 24 80');
    tmux('resize-window', '-t', 'c', '-x', '100', '-y', '30');
    await new Promise((r) => setTimeout(r, 500));
    keys('stty size', 'Enter');
    await waitFor(/^30 100\s*$/m, 'stty size following the resize');
    keys('C-d');
    const end = Date.now() + 15000;
    while (!fs.existsSync(path.join(dir, 'after')) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
    expect(fs.readFileSync(path.join(dir, 'rc'), 'utf8').trim(), 'exit status after Ctrl-D').to.equal('0');
    expect(fs.readFileSync(path.join(dir, 'after'), 'utf8'), 'terminal settings restored').to.equal(fs.readFileSync(path.join(dir, 'before'), 'utf8'));
    tmux('kill-session', '-t', 'c');
  });

  it('cleanup leaves the live sandbox alone', async () => {
    const r = await ctl(['cleanup', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const out = JSON.parse(r.stdout) as { removed: CleanupEntry[]; kept: string[] };
    expect(out.removed).to.deep.equal([]);
    expect(out.kept).to.deep.equal([ID]);
  });
});
