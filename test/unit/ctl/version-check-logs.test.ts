/**
 * Kata's kata-ctl habits: `version`, `check` with Kata's sub-verbs, `--json`
 * on erofs inspect/ls, and `log-parser` merging the runtime's, shim's and
 * agent's JSON logs into one time-ordered view. Through the real CLI where
 * the verb is the thing under test; log merging also as a unit, with bad input.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { kataCtl } from '../../helpers/kata-ctl';
import { REPO } from '../../helpers/guest';
import { skipOrFail } from '../../helpers/skip';
import { parseConfig } from '../../../src/runtime/config';
import type { VersionReport } from '../../../src/ctl/version';
import type { CheckReport } from '../../../src/ctl/host-check';
import { mergeLogs, parseLogLine, type LogEntry } from '../../../src/ctl/log-parser';

describe('kata-ctl version and check sub-verbs', function () {
  this.timeout(90000);
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-version-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('version --json: ours, Node, guest kernel and image, agent API', async () => {
    const cache = path.join(dir, 'cache');
    fs.mkdirSync(path.join(cache, 'kernel'), { recursive: true });
    fs.mkdirSync(path.join(cache, 'image'), { recursive: true });
    fs.writeFileSync(path.join(cache, 'kernel', 'vmlinux'), 'k');
    fs.writeFileSync(path.join(cache, 'kernel', 'release'), '6.1.0-test\n');
    fs.writeFileSync(path.join(cache, 'image', 'rootfs.erofs'), 'image');
    const cfg = path.join(dir, 'c.toml');
    fs.writeFileSync(cfg, `[runtime]\ncache_dir = "${cache}"\n`);
    const r = await kataCtl(['--config', cfg, 'version', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const v = JSON.parse(r.stdout) as VersionReport;
    const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
    expect(v.kataTs.version).to.equal(pkg.version);
    expect(v.node.version).to.equal(process.version);
    expect(v.guest.kernel.release).to.equal('6.1.0-test');
    expect(v.guest.image.sizeBytes).to.equal(5);
    expect(v.guest.image.sha256).to.match(/^[0-9a-f]{64}$/);
    expect(v.agentApi.service).to.equal('katats.agent.v1.AgentService');
    expect(v.configuration).to.equal(cfg);
    const t = await kataCtl(['--config', cfg, 'version']);
    expect(t.stdout).to.match(new RegExp(`^kata-ts ${pkg.version.replace(/\./g, '\\.')}`));
    expect(t.stdout).to.match(/guest kernel: Linux 6\.1\.0-test/);
    expect(t.stdout).to.match(/agent API: katats\.agent\.v1\.AgentService/);
  });

  it('check check-version-only answers from local data and says so; a bad sub-verb is refused', async () => {
    const r = await kataCtl(['check', 'check-version-only', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const v = JSON.parse(r.stdout) as VersionReport & { latestRelease: null; note: string };
    expect(v.latestRelease).to.equal(null);
    expect(v.note).to.match(/no network/);
    const bad = await kataCtl(['check', 'everything']);
    expect(bad.code).to.not.equal(0);
    expect(bad.stderr).to.match(/Choices: "all", "no-network-checks", "check-version-only"/);
  });

  it('check all / no-network-checks on a stock Kata configuration: a configuration item with each warning; a typo is an error with file:line', async () => {
    const fixture = path.join(REPO, 'test', 'fixtures', 'kata', 'configuration-qemu.toml');
    const cfg = path.join(dir, 'kata.toml');
    // The stock file plus our run dir (the KVM probe's per-boot cache).
    const runDir = fs.existsSync('/run/kata-ts/kvm-probe.json') ? '/run/kata-ts' : path.join(dir, 'run');
    fs.writeFileSync(cfg, fs.readFileSync(fixture, 'utf8').replace('[runtime]\n', `[runtime]\nrun_dir = "${runDir}"\n`));
    const expected = parseConfig(fs.readFileSync(cfg, 'utf8'), cfg).warnings;
    for (const verb of ['all', 'no-network-checks']) {
      const r = await kataCtl(['--config', cfg, 'check', verb, '--json']);
      const rep = JSON.parse(r.stdout) as CheckReport;
      const item = rep.checks.find((c) => c.id === 'configuration')!;
      expect(item.status, verb).to.equal('warn');
      expect(item.warnings, verb).to.deep.equal(expected);
    }
    const typo = path.join(dir, 'typo.toml');
    fs.writeFileSync(typo, '[hypervisor.qemu]\ndefault_vcpu = 2\n');
    const r = await kataCtl(['--config', typo, 'check']);
    expect(r.code).to.not.equal(0);
    expect(r.stderr).to.include(`${typo}:2: unknown key "default_vcpu" in [hypervisor.qemu]; did you mean "default_vcpus"?`);
  });
});

describe('kata-ctl erofs inspect/ls --json', function () {
  this.timeout(60000);
  let dir: string;
  let img: string;
  before(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-erofs-json-'));
    const src = path.join(dir, 'src');
    fs.mkdirSync(path.join(src, 'd'), { recursive: true });
    fs.writeFileSync(path.join(src, 'd', 'f.txt'), 'hello');
    fs.symlinkSync('d/f.txt', path.join(src, 'link'));
    img = path.join(dir, 'i.erofs');
    try {
      execFileSync('mkfs.erofs', [img, src], { stdio: 'ignore' });
    } catch {
      skipOrFail(this, 'mkfs.erofs (erofs-utils) is needed to build the test image');
    }
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('inspect gives the superblock and an inode; ls gives one object per entry', async () => {
    const sb = JSON.parse((await kataCtl(['erofs', 'inspect', img, '--json'])).stdout) as Record<string, unknown>;
    expect(sb.schemaVersion).to.equal(1);
    expect(sb.magic).to.equal('0xE0F5E1E2');
    expect(sb.blockSize).to.equal(4096);
    expect(sb.inodes).to.be.a('number');
    const f = JSON.parse((await kataCtl(['erofs', 'inspect', img, '/d/f.txt', '--json'])).stdout) as Record<string, unknown>;
    expect(f).to.include({ name: '/d/f.txt', type: 'file', size: 5 });
    expect(f.xattrs).to.deep.equal([]);
    const doc = JSON.parse((await kataCtl(['erofs', 'ls', img, '/', '--json'])).stdout) as { schemaVersion: number; path: string; entries: Record<string, unknown>[] };
    expect(doc).to.include({ schemaVersion: 1, path: '/' });
    const ls = doc.entries;
    const byName = Object.fromEntries(ls.map((e) => [e.name, e]));
    expect(Object.keys(byName).sort()).to.deep.equal(['d', 'link']);
    expect(byName.d).to.include({ type: 'dir', mode: 'drwxr-xr-x' });
    expect(byName.link).to.include({ type: 'symlink', target: 'd/f.txt' });
    const one = JSON.parse((await kataCtl(['erofs', 'ls', img, '/d/f.txt', '--json'])).stdout) as { entries: Record<string, unknown>[] };
    expect(one.entries).to.have.length(1);
    const missing = await kataCtl(['erofs', 'ls', img, '/nope', '--json']);
    expect(missing.code).to.not.equal(0);
  });
});

describe('kata-ctl log-parser', function () {
  this.timeout(60000);
  const line = (o: Record<string, unknown>) => JSON.stringify(o);

  it('merges runtime, shim (through containerd\'s journal prefix) and agent (guest console) logs by time', () => {
    const runtime = line({ time: '2026-01-01T00:00:03.000Z', level: 'warn', msg: 'r', source: 'kata-ts', sandbox: 'a' }) + '\n';
    const shim = `Jan 01 containerd[7]: ${line({ time: '2026-01-01T00:00:01.000Z', level: 'info', msg: 's1', source: 'containerd-shim-kata-ts-v2', sandbox: 'a' })}\n`
      + `Jan 01 containerd[7]: ${line({ time: '2026-01-01T00:00:04.000Z', level: 'debug', msg: 's2', source: 'containerd-shim-kata-ts-v2', sandbox: 'b' })}\n`;
    const agent = 'SeaBIOS (version 1.16)\r\n[    0.000000] Linux version 6.1\r\n'
      + line({ time: '2026-01-01T00:00:02.000Z', level: 'error', msg: 'a', source: 'agent' }) + '\r\n';
    const { entries, stats } = mergeLogs([{ file: 'rt', text: runtime }, { file: 'shim', text: shim }, { file: 'console.log', text: agent }]);
    expect(entries.map((e: LogEntry) => `${e.source}:${e.msg}`)).to.deep.equal(['containerd-shim-kata-ts-v2:s1', 'agent:a', 'kata-ts:r', 'containerd-shim-kata-ts-v2:s2']);
    expect(stats).to.deep.equal({ files: 3, lines: 6, entries: 4, skipped: 2 });
    expect(entries[1]).to.include({ file: 'console.log', line: 3 });
    expect(entries[0]!.fields).to.deep.equal({ sandbox: 'a' });
    // --level and --sandbox
    expect(mergeLogs([{ file: 'shim', text: shim }, { file: 'rt', text: runtime }], { level: 'warn' }).entries.map((e) => e.msg)).to.deep.equal(['r']);
    expect(mergeLogs([{ file: 'shim', text: shim }, { file: 'c', text: agent }], { sandbox: 'a' }).entries.map((e) => e.msg)).to.deep.equal(['s1', 'a']);
  });

  it('skips what is not a JSON log entry, and keeps ties in input order', () => {
    for (const bad of ['', 'plain text', '{not json', '[1,2]', '{"level":"info","msg":"no time"}', '{"time":"yesterday","msg":"x"}', '{"time":5}', 'null']) {
      expect(parseLogLine(bad, 'f', 1), bad).to.equal(undefined);
    }
    const t = '2026-01-01T00:00:00.000Z';
    const { entries } = mergeLogs([{ file: 'x', text: `${line({ time: t, msg: 'first' })}\n` }, { file: 'y', text: `${line({ time: t, msg: 'second' })}\n` }]);
    expect(entries.map((e) => e.msg)).to.deep.equal(['first', 'second']);
    expect(entries[0]).to.include({ level: 'info', source: 'x' });
  });

  it('through the CLI: files, stdin, --json; unreadable files and an unknown sandbox are errors', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-logs-'));
    try {
      const a = path.join(dir, 'a.log');
      fs.writeFileSync(a, line({ time: '2026-01-01T00:00:02.000Z', level: 'info', msg: 'two', source: 'kata-ts' }) + '\n');
      const stdin = line({ time: '2026-01-01T00:00:01.000Z', level: 'info', msg: 'one', source: 'agent' }) + '\n';
      const r = await kataCtl(['log-parser', a, '--stdin', '--json'], { input: stdin });
      expect(r.code, r.stderr).to.equal(0);
      const doc = JSON.parse(r.stdout) as { schemaVersion: number; stats: { entries: number }; entries: LogEntry[] };
      expect(doc.schemaVersion).to.equal(1);
      expect(doc.stats.entries).to.equal(2);
      expect(doc.entries.map((e) => e.msg)).to.deep.equal(['one', 'two']);
      expect(r.stderr).to.match(/2 entries from 2 file\(s\)/);
      const text = await kataCtl(['log-parser', a]);
      expect(text.stdout).to.equal('2026-01-01T00:00:02.000Z info  kata-ts two (a.log:1)\n');
      const missing = await kataCtl(['log-parser', path.join(dir, 'nope.log')]);
      expect(missing.code).to.equal(1);
      expect(missing.stderr).to.match(/cannot read log .*nope\.log/);
      const none = await kataCtl(['log-parser']);
      expect(none.code).to.equal(2);
      const cfg = path.join(dir, 'c.toml');
      fs.writeFileSync(cfg, `[runtime]\nrun_dir = "${path.join(dir, 'run')}"\n`);
      const sb = await kataCtl(['--config', cfg, 'log-parser', '--sandbox', 'nosuch']);
      expect(sb.code).to.equal(1);
      expect(sb.stderr).to.match(/no sandbox nosuch/);
      // A sandbox's own log: its guest console.
      const sdir = path.join(dir, 'run', 'sandboxes', 'sb1');
      fs.mkdirSync(sdir, { recursive: true });
      fs.writeFileSync(path.join(sdir, 'console.log'), `[ 0.1] kernel\n${line({ time: '2026-01-01T00:00:00.500Z', level: 'warn', msg: 'agent says', source: 'agent' })}\n`);
      const s = await kataCtl(['--config', cfg, 'log-parser', a, '--sandbox', 'sb1', '--json']);
      expect(s.code, s.stderr).to.equal(0);
      expect((JSON.parse(s.stdout) as { entries: LogEntry[] }).entries.map((e) => e.msg)).to.deep.equal(['agent says', 'two']);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
