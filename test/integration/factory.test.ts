/**
 * VM templates end to end (issue 16, Factory): real QEMU (TCG here) makes a
 * template with `kata-ctl factory init`, `kata-ts run` clones it, and every
 * way a template can be wrong — stale key, a state file QEMU cannot load,
 * the template removed while a clone starts — ends in one warning and a
 * cold boot (or a clean error), never a half-started VM.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runCommand, type CommandResult } from '../helpers/spawn';
import { REPO, requireGuest, testRunDir, writeTestConfig, expectNothingLeft, leftoverQemu, pinGuestAssets } from '../helpers/guest';
import { skipOrFail } from '../helpers/skip';
import { PodNetns } from '../helpers/netns';
import { VmFactory, qemuTarget } from '../../src/factory/factory';
import { QemuHypervisor } from '../../src/hypervisor/qemu';
import { qemuMemoryOptions } from '../../src/hypervisor/index';
import { isMountPoint } from '../../src/factory/template-store';
import { loadConfig } from '../../src/runtime/config';

function node(bin: string, args: string[], timeoutMs = 240000): Promise<CommandResult> {
  return runCommand(process.execPath, [path.join(REPO, 'bin', bin), ...args], { timeoutMs });
}

/** The JSON log lines of a run's stderr (--log-level info), and the rest. */
function logLines(stderr: string): { json: Record<string, unknown>[]; text: string[] } {
  const json: Record<string, unknown>[] = [];
  const text: string[] = [];
  for (const l of stderr.split('\n').filter(Boolean)) {
    try { json.push(JSON.parse(l) as Record<string, unknown>); } catch { text.push(l); }
  }
  return { json, text };
}

function sandboxReady(stderr: string): { template?: boolean; guestCid?: number } {
  const line = logLines(stderr).json.find((j) => j.msg === 'sandbox ready');
  expect(line, `no 'sandbox ready' line in:\n${stderr}`).to.not.equal(undefined);
  return (line!.guest ?? {}) as { template?: boolean; guestCid?: number };
}

function warnings(stderr: string): string[] {
  return logLines(stderr).json.filter((j) => j.level === 'warn').map((j) => String(j.msg));
}

describe('integration: VM templates (kata-ctl factory, QEMU)', function () {
  this.timeout(600000);
  let runDir: string;
  let cfgFile: string;
  let tplDir: string;
  let pinned: string;
  const ctl = (args: string[], cfg = cfgFile) => node('kata-ctl', ['--config', cfg, ...args]);
  const run = (args: string[], cfg = cfgFile) => node('kata-ts', ['run', '--config', cfg, '--log-level', 'info', ...args]);

  before(function () {
    requireGuest(this);
    if (process.getuid?.() !== 0) skipOrFail(this, 'VM templates mount a tmpfs: run as root');
    runDir = testRunDir();
    tplDir = path.join(runDir, 'template');
    // Copies of the kernel and image as they are now: a guest image rebuilt
    // meanwhile (the cache's symlink moves on, old builds are pruned) would
    // make the template stale, or missing, half way through the suite.
    pinned = pinGuestAssets(runDir);
    cfgFile = writeTestConfig(runDir, `${pinned}[factory]\nenable_template = true\ntemplate_path = "${tplDir}"\n`);
  });

  after(async () => {
    if (!runDir) return;
    // Whatever a failed test left: the template (and its tmpfs) go too.
    await ctl(['factory', 'destroy']).catch(() => undefined);
    expect(leftoverQemu(tplDir), 'template qemu left running').to.deep.equal([]);
    expect(isMountPoint(tplDir), 'template tmpfs left mounted').to.equal(false);
    expectNothingLeft(runDir);
  });

  it('factory init makes a template that status calls valid', async () => {
    const init = await ctl(['factory', 'init', '--json']);
    expect(init.code, init.stderr).to.equal(0);
    expect(init.stderr).to.match(/agent ready after/);
    const st = JSON.parse((await ctl(['factory', 'status', '--json'])).stdout);
    expect(st.state).to.equal('valid');
    expect(st.enabled).to.equal(true);
    expect(st.manifest.key).to.equal(st.wantedKey);
    expect(st.manifest.stateBytes).to.be.greaterThan(10000);
    expect(st.manifest.memoryDataBytes).to.be.greaterThan(0).and.lessThan(st.manifest.memoryBytes);
    expect(isMountPoint(tplDir)).to.equal(true);
    expect(leftoverQemu(tplDir)).to.deep.equal([]);
  });

  it('kata-ts run starts from the template: output, exit status, no warning', async () => {
    const r = await run(['--', 'sh', '-c', 'echo MARK; echo err >&2; exit 3']);
    expect(r.code, r.stderr).to.equal(3);
    expect(r.stdout).to.equal('MARK\n');
    expect(sandboxReady(r.stderr).template).to.equal(true);
    expect(warnings(r.stderr)).to.deep.equal([]);
    expect(logLines(r.stderr).text).to.deep.equal(['err']);
  });

  it('two clones at once have their own vsock CID, RNG output and the right clock', async () => {
    const script = 'head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo; date +%s; cat /proc/sys/kernel/random/boot_id';
    const before = Math.floor(Date.now() / 1000);
    const [a, b] = await Promise.all([run(['--', 'sh', '-c', script]), run(['--', 'sh', '-c', script])]);
    const after = Math.ceil(Date.now() / 1000);
    for (const r of [a, b]) {
      expect(r.code, r.stderr).to.equal(0);
      expect(sandboxReady(r.stderr).template).to.equal(true);
    }
    const [ra, ta] = a.stdout.split('\n');
    const [rb, tb] = b.stdout.split('\n');
    expect(ra).to.match(/^[0-9a-f]{32}$/);
    expect(ra, 'RNG output of two clones').to.not.equal(rb);
    expect(sandboxReady(a.stderr).guestCid).to.be.a('number').and.not.equal(sandboxReady(b.stderr).guestCid);
    // The template's clock stopped when it was saved; SetGuestDateTime set it to now.
    for (const t of [Number(ta), Number(tb)]) expect(t).to.be.within(before - 2, after + 2);
  });

  it('two clones in two pod netns get each its own pod interface (MAC, address) hotplugged after resume', async () => {
    const nets = [new PodNetns({ podCidr: '10.98.1.2/24', prefix: 'ktsf' }), new PodNetns({ podCidr: '10.98.2.2/24', prefix: 'ktsf' })];
    try {
      for (const n of nets) n.create();
      const script = 'cat /sys/class/net/eth0/address; ip -4 -o addr show eth0 | grep -o "inet [0-9./]*"';
      const rs = await Promise.all(nets.map((n) => run(['--net', 'host-netns', n.podPath, '--', 'sh', '-c', script])));
      rs.forEach((r, i) => {
        expect(r.code, r.stderr).to.equal(0);
        expect(sandboxReady(r.stderr).template, r.stderr).to.equal(true);
        expect(r.stdout).to.equal(`${nets[i]!.podMac()}\ninet ${nets[i]!.podAddr}/24\n`);
      });
      expect(nets[0]!.podMac()).to.not.equal(nets[1]!.podMac());
    } finally {
      for (const n of nets) n.destroy();
    }
  });

  it('a stale template (other kernel parameters) is not cloned: one warning, cold boot', async () => {
    const other = writeTestConfig(runDir, `${pinned}kernel_params = "kata_ts_test=1"\n[factory]\nenable_template = true\ntemplate_path = "${tplDir}"\n`);
    const r = await run(['--', 'echo', 'cold'], other);
    writeTestConfig(runDir, `${pinned}[factory]\nenable_template = true\ntemplate_path = "${tplDir}"\n`);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.equal('cold\n');
    expect(sandboxReady(r.stderr).template).to.equal(undefined);
    const w = warnings(r.stderr);
    expect(w).to.have.length(1);
    expect(w[0]).to.match(/VM template stale: .*kernel command line differs.*; cold boot$/);
  });

  it('a state file QEMU cannot load (same size, damaged): one warning, cold boot, no QEMU left', async () => {
    const state = path.join(tplDir, 'state');
    const good = fs.readFileSync(state);
    const bad = Buffer.from(good);
    bad.fill(0xa5, 64, Math.min(bad.length, 64 + 4096)); // the QEVM header stays, the sections after it do not
    fs.writeFileSync(state, bad);
    try {
      const r = await run(['--', 'echo', 'fallback']);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.equal('fallback\n');
      const w = warnings(r.stderr);
      expect(w).to.have.length(1);
      expect(w[0]).to.match(/VM template clone failed \(.*\); cold boot$/);
      expect(leftoverQemu(runDir)).to.deep.equal([]);
    } finally {
      fs.writeFileSync(state, good);
    }
    // A truncated one is caught before QEMU runs (size against the manifest).
    fs.writeFileSync(state, good.subarray(0, 1000));
    try {
      const st = JSON.parse((await ctl(['factory', 'status', '--json'])).stdout);
      expect(st.state).to.equal('corrupt');
      expect(st.reasons.join(' ')).to.match(/truncated/);
    } finally {
      fs.writeFileSync(state, good);
    }
  });

  it('the template removed while a clone starts: a clear error, QEMU and its devices gone', async () => {
    const cfg = loadConfig(cfgFile);
    cfg.factory.template_path = tplDir;
    // The configuration's memory devices, as selectHypervisor gives them: the template was made with them.
    const hv = new QemuHypervisor({ binary: cfg['hypervisor.qemu'].path, machine: 'pc', accel: 'tcg', memory: qemuMemoryOptions(cfg['hypervisor.qemu']) });
    const factory = new VmFactory({ config: cfg, qemu: qemuTarget(hv), kernelParams: '' });
    const dir = path.join(runDir, 'sandboxes', 'gone');
    fs.mkdirSync(dir, { recursive: true });
    const state = path.join(tplDir, 'state');
    const saved = fs.readFileSync(state);
    const prep = factory.prepareClone(dir);
    try {
      if ('reason' in prep) throw new Error(prep.reason);
      const restore = prep.clone.restore;
      prep.clone.restore = async (qmp) => {
        fs.rmSync(state); // the directory's contents disappear between QEMU's start and the load
        return restore(qmp);
      };
      const err = await hv.startClone({ id: 'gone', dir, kernel: '', image: '', vcpus: 1, memoryMiB: cfg['hypervisor.qemu'].default_memory, kernelParams: '', disks: [], debug: false }, prep.clone).then(() => undefined, (e: Error) => e);
      expect(err, 'startClone succeeded without a state file').to.be.instanceOf(Error);
      expect(err!.message).to.match(/cannot open the template state .*ENOENT/);
      expect(leftoverQemu(dir)).to.deep.equal([]);
      expect(fs.existsSync(path.join(dir, 'vsock.sock')), 'hybrid vsock socket left').to.equal(false);
    } finally {
      if (!('reason' in prep)) prep.release();
      fs.writeFileSync(state, saved);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('factory destroy removes the template, its tmpfs and its directory', async () => {
    const r = await ctl(['factory', 'destroy', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    expect(JSON.parse(r.stdout).removed).to.include(path.join(tplDir, 'memory'));
    expect(fs.existsSync(tplDir)).to.equal(false);
    const st = JSON.parse((await ctl(['factory', 'status', '--json'])).stdout);
    expect(st.state).to.equal('missing');
    // With no template, a run cold-boots with one warning.
    const run2 = await run(['--', 'echo', 'no-template']);
    expect(run2.stdout, run2.stderr).to.equal('no-template\n');
    expect(warnings(run2.stderr)).to.have.length(1);
    expect(warnings(run2.stderr)[0]).to.match(/VM template missing/);
  });
});
