/**
 * `kata-ts run` from the pre-started VM cache (issue 16; src/factory/vm-cache-run-*.ts):
 * with `[factory] vm_cache_number = 1` filled by `kata-ctl factory init` in
 * a private template_path / vm_cache_endpoint / run_dir under
 * /run/kata-ts/<unique>, a run claims the cached VM (the QEMU that was
 * running before it is the one that ran it, and is gone after), its stdout,
 * stderr and exit status are exact, stdin goes through, the built-in image
 * on the host is unchanged after the container wrote to its root, a run
 * with another configuration file falls back with one line and leaves the
 * entry alone, and nothing is left afterwards (no QEMU, no entry, no
 * sandbox; `factory destroy` in after()).
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CACHE, REPO, leftoverQemu, pinGuestAssets, requireGuest } from '../helpers/guest';
import { runCommand } from '../helpers/spawn';
import { spawn } from 'node:child_process';
import { skipOrFail } from '../helpers/skip';
import { until } from '../helpers/until';
import { pidAlive } from '../../src/factory/vm-cache-store';

interface CacheJson { number: number; dir: string; ready: { slot: number; pid: number; qemuPid: number }[]; starting: { slot: number; pid: number }[] }

describe('integration: kata-ts run from the pre-started VM cache', function () {
  this.timeout(600000);
  const dir = path.join('/run/kata-ts', `rc-${process.pid}-${crypto.randomBytes(3).toString('hex')}`);
  const cfgFile = path.join(dir, 'kata-ts.toml');
  const otherCfg = path.join(dir, 'other.toml');
  const runDir = path.join(dir, 'run');
  const cacheDirPath = path.join(dir, 'cache');
  const seenPids: number[] = [];
  // The refill after each claim starts at once (not the default 2 s later): each test waits for it.
  const env = { KATA_TS_VM_CACHE_DELAY_MS: '0' };

  const kataCtl = (args: string[]) => runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ctl'), '--config', cfgFile, ...args], { timeoutMs: 300000 });
  const kataRun = (cfg: string, args: string[], input?: string) => runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), '--config', cfg, ...args], { input, env, timeoutMs: 300000 });
  async function status(): Promise<CacheJson> {
    const r = await kataCtl(['factory', 'status', '--json']);
    return (JSON.parse(r.stdout) as { vmCache: CacheJson }).vmCache;
  }
  /** The one ready entry (after the previous test's refill). */
  async function readyEntry(): Promise<CacheJson['ready'][number]> {
    const st = await until('one cached VM ready', async () => {
      const s = await status();
      return s.ready.length === 1 && !s.starting.length ? s : undefined;
    }, 180000);
    seenPids.push(st.ready[0]!.pid, st.ready[0]!.qemuPid);
    return st.ready[0]!;
  }

  before(async function () {
    if (process.getuid?.() !== 0) skipOrFail(this, 'VM templates mount a tmpfs: run as root');
    requireGuest(this);
    fs.mkdirSync(dir, { recursive: true });
    const text = `[runtime]\nrun_dir = "${runDir}"\ncache_dir = "${CACHE}"\n${pinGuestAssets(dir, { dax: true })}[factory]\nenable_template = true\ntemplate_path = "${path.join(dir, 'tpl')}"\nvm_cache_number = 1\nvm_cache_endpoint = "${cacheDirPath}"\n`;
    fs.writeFileSync(cfgFile, text);
    // The same settings in another file: its cached VMs would be another configuration's.
    fs.writeFileSync(otherCfg, `${text}# another file\n`);
    const init = await kataCtl(['factory', 'init', '--json']);
    expect(init.code, init.stderr).to.equal(0);
  });

  after(async () => {
    try {
      if (fs.existsSync(cfgFile)) await kataCtl(['factory', 'destroy']);
    } finally {
      for (const pid of seenPids) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('runs from the cache: exact stdout, stderr and exit status; the cached QEMU ran it and is gone', async () => {
    const e = await readyEntry();
    const r = await kataRun(cfgFile, ['run', '--', 'sh', '-c', 'echo out; echo err >&2; exit 7']);
    expect([r.code, r.stdout, r.stderr]).to.deep.equal([7, 'out\n', 'err\n']);
    // Claimed, not left waiting: the entry's process and QEMU ended with the run.
    await until('the claimed entry gone', async () => (!pidAlive(e.pid) && !pidAlive(e.qemuPid) ? true : undefined), 30000);
  });

  it('says it claimed (log line with the cached QEMU), and the host\'s built-in image is unchanged after the container wrote to /', async () => {
    const e = await readyEntry();
    const name = `kata-ts-run-cache-${crypto.randomBytes(4).toString('hex')}`;
    const busybox = path.join(CACHE, 'rootfs', 'busybox');
    const passwd = fs.readFileSync(path.join(busybox, 'etc', 'passwd'), 'utf8');
    const r = await kataRun(cfgFile, ['--log-level', 'info', 'run', '--', 'sh', '-c', `touch /${name} && ls /${name} && echo changed >> /etc/passwd && echo ok`]);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.equal(`/${name}\nok\n`);
    const claims = r.stderr.split('\n').filter((l) => l.includes('"msg":"claimed a pre-started VM from the VM cache"'));
    expect(claims, r.stderr).to.have.length(1);
    expect((JSON.parse(claims[0]!) as { qemuPid: number }).qemuPid).to.equal(e.qemuPid);
    // The cached process's own lines come to our stderr at our level: its sandbox was the pre-started VM.
    const ready = r.stderr.split('\n').filter((l) => l.includes('"msg":"sandbox ready"'));
    expect(ready.map((l) => (JSON.parse(l) as { guest?: { prestarted?: boolean } }).guest?.prestarted), r.stderr).to.deep.equal([true]);
    expect(fs.existsSync(path.join(busybox, name)), 'file created in the host rootfs').to.equal(false);
    expect(fs.readFileSync(path.join(busybox, 'etc', 'passwd'), 'utf8')).to.equal(passwd);
  });

  it('pipes stdin through (cat)', async () => {
    await readyEntry();
    const r = await kataRun(cfgFile, ['run', '--', 'cat'], 'hello\nfrom stdin\n');
    expect([r.code, r.stdout, r.stderr]).to.deep.equal([0, 'hello\nfrom stdin\n', '']);
  });

  it('a command missing in the container: 127 and the error as a run of its own prints it', async () => {
    await readyEntry();
    const r = await kataRun(cfgFile, ['run', '--', 'no-such-command']);
    expect(r.code, r.stderr).to.equal(127);
    expect(r.stdout).to.equal('');
    expect(r.stderr).to.match(/^kata-ts: .*no-such-command.*\n$/);
  });

  /** A run of `sleep 60` from the cache, once its container runs (the 'started' info line is the claim's; then a moment). */
  async function sleepingRun(): Promise<{ child: ReturnType<typeof spawn>; stderr: () => string; exited: Promise<number | null> }> {
    const child = spawn(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), '--config', cfgFile, '--log-level', 'info', 'run', '--', 'sleep', '60'], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    await until('the container runs', async () => (err.includes('"msg":"sandbox ready"') ? true : undefined), 120000);
    await new Promise((r) => setTimeout(r, 1500));
    return { child, stderr: () => err, exited };
  }

  it('SIGINT to kata-ts run stops the run as without the cache (125, one line); a killed claimer leaves no VM behind', async () => {
    let e = await readyEntry();
    const a = await sleepingRun();
    a.child.kill('SIGINT');
    expect(await a.exited).to.equal(125);
    expect(a.stderr().split('\n').filter((l) => l && !l.startsWith('{'))).to.deep.equal(['kata-ts: interrupted by SIGINT']);
    await until('the interrupted entry gone', async () => (!pidAlive(e.pid) && !pidAlive(e.qemuPid) ? true : undefined), 30000);
    e = await readyEntry();
    const b = await sleepingRun();
    b.child.kill('SIGKILL');
    await b.exited;
    // Its stdio gone with it: the entry interrupts the run, stops its VM and exits.
    await until('the orphaned entry gone', async () => (!pidAlive(e.pid) && !pidAlive(e.qemuPid) ? true : undefined), 60000);
    expect(fs.readdirSync(path.join(runDir, 'sandboxes'))).to.deep.equal([]);
  });

  it('with another configuration file the cache is stale for it: one line, a VM of its own, the entry untouched', async () => {
    const e = await readyEntry();
    const r = await kataRun(otherCfg, ['run', '--', 'echo', 'MARK']);
    expect([r.code, r.stdout], r.stderr).to.deep.equal([0, 'MARK\n']);
    const lines = r.stderr.split('\n').filter(Boolean);
    expect(lines, r.stderr).to.have.length(1);
    expect(JSON.parse(lines[0]!)).to.include({ level: 'warn', msg: 'VM cache: the 1 cached VM(s) were made with another configuration file or debug setting; starting a VM' });
    expect(pidAlive(e.pid) && pidAlive(e.qemuPid)).to.equal(true);
    expect((await status()).ready.map((x) => x.pid)).to.deep.equal([e.pid]);
  });

  it('options the cache cannot serve start a VM of their own, saying why at info level', async () => {
    const e = await readyEntry();
    const r = await kataRun(cfgFile, ['--log-level', 'info', 'run', '--memory', '384', '--', 'echo', 'sized']);
    expect([r.code, r.stdout], r.stderr).to.deep.equal([0, 'sized\n']);
    expect(r.stderr).to.include('"msg":"VM cache not used: --memory/--cpus (cached VMs have the configured size); starting a VM"');
    expect(pidAlive(e.pid) && pidAlive(e.qemuPid)).to.equal(true);
  });

  it('factory destroy leaves nothing: no QEMU, no entry, no sandbox', async () => {
    await readyEntry();
    const d = await kataCtl(['factory', 'destroy']);
    expect(d.code, d.stderr).to.equal(0);
    await until('no QEMU of this suite', async () => (leftoverQemu(dir).length === 0 ? true : undefined), 30000);
    for (const pid of seenPids) expect(pidAlive(pid), `pid ${pid} alive`).to.equal(false);
    expect(fs.existsSync(cacheDirPath) ? fs.readdirSync(cacheDirPath) : []).to.deep.equal([]);
    const sandboxes = path.join(runDir, 'sandboxes');
    expect(fs.existsSync(sandboxes) ? fs.readdirSync(sandboxes) : []).to.deep.equal([]);
  });
});
