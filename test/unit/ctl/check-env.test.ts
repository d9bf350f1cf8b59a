/**
 * `kata-ctl check` and `kata-ctl env` through the real CLI, checked against
 * this machine: what /dev, /proc and /sys say, the QEMU and kernel versions,
 * and — on PVM hosts like these — that KVM is found to emulate guests and
 * QEMU with TCG is chosen. Bad configuration is reported with file:line.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { SCHEMA } from '../../../src/runtime/config';
import { parseToml } from '../../../src/common/toml';
import { EMULATION_THRESHOLD_MS } from '../../../src/hypervisor/capabilities';
import type { CheckReport } from '../../../src/ctl/host-check';
import type { EnvReport } from '../../../src/ctl/env';
import { kataCtl } from '../../helpers/kata-ctl';
import { CACHE } from '../../helpers/guest';
import { skipOrFail } from '../../helpers/skip';

describe('kata-ctl check', function () {
  this.timeout(90000);
  let dir: string;
  let cfg: string;
  let report: CheckReport;
  let code: number | null;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-check-'));
    cfg = path.join(dir, 'c.toml');
    // The KVM probe result is cached per boot in run_dir: share the system one when it exists.
    const runDir = fs.existsSync('/run/kata-ts/kvm-probe.json') ? '/run/kata-ts' : path.join(dir, 'run');
    fs.writeFileSync(cfg, `[runtime]\nrun_dir = "${runDir}"\ncache_dir = "${CACHE}"\n`);
    const r = await kataCtl(['--config', cfg, 'check', '--json']);
    code = r.code;
    report = JSON.parse(r.stdout) as CheckReport;
  });

  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('exits 0 exactly when no required item failed', () => {
    expect(report.schemaVersion).to.equal(1);
    expect(report.ok).to.equal(report.checks.every((c) => c.status !== 'fail'));
    expect(code).to.equal(report.ok ? 0 : 1);
    for (const c of report.checks) if (c.status !== 'ok') expect(c.fix, `${c.id} says how to fix it`).to.be.a('string').and.not.empty;
  });

  it('covers every item the issue lists', () => {
    expect(report.checks.map((c) => c.id)).to.include.members(['kvm-device', 'kvm-hardware', 'cpu-virt-flags', 'vhost-vsock', 'vhost-net', 'ksm', 'tun', 'fuse',
      'loop', 'cgroup', 'overlay', 'erofs', 'qemu', 'mkfs.erofs', 'crun', 'guest-kernel', 'guest-image', 'run-dir', 'hypervisor']);
  });

  it('agrees with /dev, /proc/cpuinfo and /sys on this machine', () => {
    const by = (id: string) => report.checks.find((c) => c.id === id)!;
    const flags = (fs.readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('flags')) ?? '').split(/\s+/);
    expect(by('cpu-virt-flags').status === 'ok').to.equal(flags.includes('vmx') || flags.includes('svm'));
    expect(by('tun').status === 'ok').to.equal(fs.existsSync('/dev/net/tun'));
    expect(by('vhost-vsock').status === 'ok').to.equal(fs.existsSync('/dev/vhost-vsock'));
    expect(by('ksm').status === 'ok').to.equal(fs.existsSync('/sys/kernel/mm/ksm/run'));
    expect(by('cgroup').version).to.equal(fs.existsSync('/sys/fs/cgroup/cgroup.controllers') ? 'v2' : 'v1');
    expect(report.kvm.pvm).to.equal(fs.existsSync('/sys/module/kvm_pvm'));
  });

  it('finds that KVM only emulates guests on a PVM host, with the measured evidence, and picks QEMU+TCG', function () {
    if (!fs.existsSync('/sys/module/kvm_pvm')) skipOrFail(this, 'not a PVM host', { hostCannot: true });
    expect(report.kvm.devKvm).to.equal(true);
    expect(report.kvm.hardware).to.equal(false);
    expect(report.kvm.loopMs).to.be.greaterThan(EMULATION_THRESHOLD_MS);
    expect(report.kvm.reason).to.match(/emulated instruction by instruction.*PVM/);
    const hw = report.checks.find((c) => c.id === 'kvm-hardware')!;
    expect(hw.status).to.equal('warn');
    expect(hw.required).to.equal(false);
    expect(report.hypervisor).to.include({ hypervisor: 'qemu', accel: 'tcg' });
  });

  it('reports binaries and guest assets with path, version and hash', () => {
    const by = (id: string) => report.checks.find((c) => c.id === id)!;
    const qemu = by('qemu');
    if (fs.existsSync('/usr/bin/qemu-system-x86_64')) {
      expect(qemu.version).to.equal(execFileSync('/usr/bin/qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).split('\n')[0]!.trim());
    }
    const k = by('guest-kernel');
    if (k.status === 'ok') {
      expect(k.version).to.equal(fs.readFileSync(path.join(path.dirname(k.path!), 'release'), 'utf8').trim());
      expect(k.sha256).to.match(/^[0-9a-f]{64}$/);
    }
  });

  it('fails, naming each missing required item and its fix, when QEMU and the guest are absent', async () => {
    const bad = path.join(dir, 'bad.toml');
    fs.writeFileSync(bad, `[runtime]\nrun_dir = "${path.join(dir, 'run2')}"\ncache_dir = "${path.join(dir, 'nocache')}"\n[hypervisor.qemu]\npath = "/nonexistent/qemu"\n`);
    const r = await kataCtl(['--config', bad, 'check']);
    expect(r.code).to.equal(1);
    expect(r.stdout).to.match(/^\[FAIL\] QEMU: \/nonexistent\/qemu not found/m);
    expect(r.stdout).to.match(/^\[FAIL\] guest kernel: .*nocache\/kernel\/vmlinux missing\n\s+fix: run scripts\/setup.sh/m);
    expect(r.stdout).to.match(/cannot run sandboxes on this host: qemu, guest-kernel, guest-image failed\n$/);
  });
});

describe('kata-ctl env', function () {
  this.timeout(30000);
  let dir: string;

  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-env-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('--json shows the file used and every effective value, defaults included', async () => {
    const f = path.join(dir, 'c.toml');
    fs.writeFileSync(f, `[runtime]\nrun_dir = "${dir}/run"\n\n[hypervisor.qemu]\ndefault_vcpus = 2\n`);
    const r = await kataCtl(['--config', f, 'env', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const e = JSON.parse(r.stdout) as EnvReport;
    expect(e.schemaVersion).to.equal(1);
    expect(e.config.file).to.equal(f);
    for (const [sec, keys] of Object.entries(SCHEMA)) expect(Object.keys(e.config.values[sec]!)).to.deep.equal(Object.keys(keys));
    expect(e.config.values['hypervisor.qemu']!.default_vcpus).to.equal(2);
    expect(e.config.values['hypervisor.qemu']!.default_memory).to.equal(SCHEMA['hypervisor.qemu'].default_memory.default);
    expect(e.paths).to.deep.equal({ runDir: `${dir}/run`, cacheDir: '/var/cache/kata-ts', sandboxesDir: `${dir}/run/sandboxes` });
    expect(e.kataTs.version).to.equal(JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', '..', 'package.json'), 'utf8')).version);
    if (e.guest.kernel.exists) expect(e.guest.kernel.sha256).to.match(/^[0-9a-f]{64}$/);
  });

  it('prints the configuration as TOML that parses back to the same values', async () => {
    const f = path.join(dir, 'c2.toml');
    fs.writeFileSync(f, `[agent.kata]\ndebug_console_enabled = true\n`);
    const [text, json] = await Promise.all([kataCtl(['--config', f, 'env']), kataCtl(['--config', f, 'env', '--json'])]);
    expect(text.code).to.equal(0);
    expect(text.stdout).to.include(`# configuration: ${f}`);
    const parsed = parseToml(text.stdout).value as Record<string, Record<string, unknown>>;
    const values = (JSON.parse(json.stdout) as EnvReport).config.values;
    // dotted section names nest in TOML
    expect(parsed.agent!.kata).to.deep.equal(values['agent.kata']);
    expect(parsed.hypervisor!.qemu).to.deep.equal(values['hypervisor.qemu']);
    expect(parsed.runtime).to.deep.equal(values.runtime);
  });

  it('reports a bad value with file and line, exit 1', async () => {
    const f = path.join(dir, 'bad.toml');
    fs.writeFileSync(f, `[runtime]\nrun_dir = "/tmp/x"\nstop_timeout = "ten"\n`);
    const r = await kataCtl(['--config', f, 'env']);
    expect(r.code).to.equal(1);
    expect(r.stderr).to.equal(`kata-ctl: ${f}:3: runtime.stop_timeout must be an integer\n`);
  });

  it('reports unknown keys and syntax errors with file and line', async () => {
    const f = path.join(dir, 'bad2.toml');
    fs.writeFileSync(f, `# comment\n[agent.kata]\ndebug_consol_enabled = true\n`);
    const r = await kataCtl(['--config', f, 'list']);
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(new RegExp(`^kata-ctl: ${f}:3: unknown key "debug_consol_enabled" in \\[agent.kata\\]`));
    fs.writeFileSync(f, `[runtime]\n\nrun_dir = "/tmp\n`);
    const s = await kataCtl(['--config', f, 'check']);
    expect(s.code).to.equal(1);
    expect(s.stderr).to.match(new RegExp(`^kata-ctl: ${f}:3: `));
  });
});
