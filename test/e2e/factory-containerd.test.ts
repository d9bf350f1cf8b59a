/**
 * VM templates through containerd (issue 16): with `[factory]
 * enable_template = true` in kata-ts's configuration, the shim starts each
 * sandbox as a clone of the template `kata-ctl factory init` made — for
 * `ctr run` (containerd's task API) and for a CRI pod (containerd's CRI
 * plugin, as a kubelet drives it).
 *
 * That a sandbox was a clone is read from the shim's own 'sandbox ready'
 * line (info level, in containerd's log): `guest.template` is true and
 * carries the clone's vsock CID; a cold boot has neither, and a template
 * that cannot be used logs one warning ending in "cold boot", which must not
 * appear. The kernel and image are copies pinned for the suite, so a guest
 * image rebuilt meanwhile cannot make the template stale half way.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IMAGE, RUNTIME, TestContainerd, startTestContainerd, stopTestContainerd } from '../helpers/containerd';
import { BUSYBOX, CriContainerd, criUnavailable } from '../helpers/cri-containerd';
import type { PodSandboxConfig } from '../helpers/cri';
import { REPO, pinGuestAssets, requireGuest } from '../helpers/guest';
import { runCommand } from '../helpers/spawn';
import { skipOrFail } from '../helpers/skip';
import { until } from '../helpers/until';
import { isMountPoint } from '../../src/factory/template-store';

/** Config lines: kernel and image copied into `dir`, templates on, the template at `<dir>/tpl`. */
function factoryConfig(dir: string): string {
  return `${pinGuestAssets(dir)}[factory]\nenable_template = true\ntemplate_path = "${path.join(dir, 'tpl')}"\n`;
}

async function kataCtl(cfgFile: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ctl'), '--config', cfgFile, ...args], { timeoutMs: 300000 });
}

interface ReadyLine { sandbox?: string; guest?: { template?: boolean; guestCid?: number } }

/** The shim's 'sandbox ready' lines (JSON) for sandbox `id` in containerd's log. */
function readyLines(log: string, id: string): ReadyLine[] {
  const out: ReadyLine[] = [];
  for (const l of log.split('\n')) {
    const i = l.indexOf('{');
    if (i < 0 || !l.includes('"sandbox ready"')) continue;
    try {
      const j = JSON.parse(l.slice(i)) as ReadyLine;
      if (j.sandbox === id) out.push(j);
    } catch { /* a line containerd wrapped */ }
  }
  return out;
}

async function initTemplate(cfgFile: string, tplDir: string): Promise<void> {
  const init = await kataCtl(cfgFile, ['factory', 'init', '--json']);
  expect(init.code, `factory init: ${init.stderr}`).to.equal(0);
  expect(JSON.parse(init.stdout).state).to.equal('valid');
  expect(isMountPoint(tplDir), 'template tmpfs').to.equal(true);
}

async function destroyTemplate(cfgFile: string, tplDir: string): Promise<void> {
  const d = await kataCtl(cfgFile, ['factory', 'destroy']);
  expect(d.code, d.stderr).to.equal(0);
  expect(isMountPoint(tplDir), 'template tmpfs left mounted').to.equal(false);
}

describe('e2e: VM templates through ctr (io.containerd.kata-ts.v2)', function () {
  this.timeout(400000);
  let cd: TestContainerd | undefined;
  let cfgFile = '';
  let tplDir = '';

  before(async function () {
    if (process.getuid?.() !== 0) skipOrFail(this, 'VM templates mount a tmpfs: run as root');
    cd = await startTestContainerd(this, (c) => factoryConfig(c.dir));
    cfgFile = path.join(cd.dir, 'kata-ts.toml');
    tplDir = path.join(cd.dir, 'tpl');
    await initTemplate(cfgFile, tplDir);
  });

  after(async () => {
    if (!cd) return;
    // containerd is stopped (and checked) even when the template's removal fails.
    try {
      await destroyTemplate(cfgFile, tplDir);
    } finally {
      await stopTestContainerd(cd);
    }
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && cd) process.stdout.write(`containerd log tail:\n${cd.log.split('\n').slice(-25).join('\n')}\n`);
  });

  it('ctr run --rm starts the sandbox from the template: output, exit 0, nothing left', async () => {
    const r = await cd!.ctr(['run', '--rm', '--runtime', RUNTIME, IMAGE, 'tpl1', 'sh', '-c', 'echo from-a-clone; cat /proc/sys/kernel/random/boot_id >/dev/null']);
    expect(r.stderr).to.equal('');
    expect(r.stdout).to.equal('from-a-clone\n');
    expect(r.code).to.equal(0);
    const ready = readyLines(cd!.log, 'tpl1');
    expect(ready, `one 'sandbox ready' line from the shim in:\n${cd!.log.split('\n').slice(-15).join('\n')}`).to.have.length(1);
    expect(ready[0]!.guest?.template, 'the sandbox was a clone of the template').to.equal(true);
    expect(ready[0]!.guest?.guestCid).to.be.a('number').and.to.be.at.least(3);
    expect(cd!.log).to.not.match(/cold boot/);
    await until('shim gone', async () => (cd!.shimPids().length === 0 ? true : undefined), 15000);
    expect(cd!.qemuPids()).to.deep.equal([]);
  });

  it('two ctr runs are two clones with their own vsock CIDs', async () => {
    const [a, b] = await Promise.all(['tpl2', 'tpl3'].map((id) => cd!.ctr(['run', '--rm', '--runtime', RUNTIME, IMAGE, id, 'echo', id])));
    expect([a!.code, a!.stdout, b!.code, b!.stdout]).to.deep.equal([0, 'tpl2\n', 0, 'tpl3\n']);
    const ready = [...readyLines(cd!.log, 'tpl2'), ...readyLines(cd!.log, 'tpl3')];
    expect(ready.map((l) => l.guest?.template)).to.deep.equal([true, true]);
    expect(ready[0]!.guest?.guestCid).to.not.equal(ready[1]!.guest?.guestCid);
  });

  // A clone gets the volume share with its first container only when that
  // container has a bind mount; otherwise it is hotplugged with the first
  // member that has one (src/shim/service.ts volumesAtBoot).
  it('bind mounts from a clone: at its first container, and hotplugged for a later pod member', async () => {
    const vol = fs.mkdtempSync(path.join(cd!.dir, 'vol-'));
    fs.writeFileSync(path.join(vol, 'in'), 'host-data\n');
    const mount = ['--mount', `type=bind,src=${vol},dst=/data,options=rbind:rw`];
    const r = await cd!.ctr(['run', '--rm', '--runtime', RUNTIME, ...mount, IMAGE, 'tplv1', 'sh', '-c', 'cat /data/in; echo first > /data/out1']);
    expect([r.code, r.stdout, r.stderr]).to.deep.equal([0, 'host-data\n', '']);
    expect(fs.readFileSync(path.join(vol, 'out1'), 'utf8')).to.equal('first\n');
    expect(readyLines(cd!.log, 'tplv1').map((l) => l.guest?.template)).to.deep.equal([true]);

    const pod = ['--annotation', 'io.kubernetes.cri.sandbox-id=tplpod'];
    const a = await cd!.ctr(['run', '-d', '--runtime', RUNTIME, ...pod, '--annotation', 'io.kubernetes.cri.container-type=sandbox', IMAGE, 'tplpod', 'sleep', '600']);
    expect(a.code, a.stderr).to.equal(0);
    expect(readyLines(cd!.log, 'tplpod').map((l) => l.guest?.template)).to.deep.equal([true]);
    const b = await cd!.ctr(['run', '-d', '--runtime', RUNTIME, ...pod, '--annotation', 'io.kubernetes.cri.container-type=container', ...mount, IMAGE, 'tplpod-app', 'sh', '-c', 'cat /data/in > /data/out2; sleep 600']);
    expect(b.code, b.stderr).to.equal(0);
    expect(cd!.qemuPids(), 'one VM for the pod').to.have.length(1);
    await until('the member wrote through its bind mount', async () => (fs.existsSync(path.join(vol, 'out2')) && fs.readFileSync(path.join(vol, 'out2'), 'utf8') === 'host-data\n' ? true : undefined), 60000);
    expect((await cd!.ctr(['task', 'kill', '-s', 'SIGKILL', 'tplpod-app'])).code).to.equal(0);
    await until('member stopped', async () => (/STOPPED/.test((await cd!.ctr(['task', 'ls'])).stdout.split('\n').find((l) => l.startsWith('tplpod-app ')) ?? '') ? true : undefined));
    expect((await cd!.ctr(['task', 'delete', 'tplpod-app'])).stderr).to.match(/exit code 137/);
    expect((await cd!.ctr(['container', 'delete', 'tplpod-app'])).code).to.equal(0);
    expect(cd!.qemuPids(), 'the pod VM outlives its member').to.have.length(1);
    // The sandbox container, the last: its Delete stops the VM (containerd: Teardown), status still exact.
    expect((await cd!.ctr(['task', 'kill', '-s', 'SIGKILL', 'tplpod'])).code).to.equal(0);
    await until('sandbox container stopped', async () => (/STOPPED/.test((await cd!.ctr(['task', 'ls'])).stdout.split('\n').find((l) => l.startsWith('tplpod ')) ?? '') ? true : undefined));
    expect((await cd!.ctr(['task', 'delete', 'tplpod'])).stderr).to.match(/exit code 137/);
    expect(cd!.qemuPids(), 'Delete of the last container stopped the VM').to.deep.equal([]);
    expect((await cd!.ctr(['container', 'delete', 'tplpod'])).code).to.equal(0);
    await until('pod shim gone', async () => (cd!.shimPids().length === 0 ? true : undefined), 15000);
    expect(cd!.mountsBelow().filter((m) => m.startsWith(vol))).to.deep.equal([]);
  });
});

describe('e2e: VM templates through CRI (kata-ts handler)', function () {
  this.timeout(400000);
  let cd: CriContainerd | undefined;
  let cfgFile = '';
  let tplDir = '';

  before(async function () {
    requireGuest(this);
    if (process.getuid?.() !== 0) skipOrFail(this, 'VM templates mount a tmpfs: run as root');
    const why = criUnavailable('kata-ts');
    if (why) skipOrFail(this, why);
    cd = new CriContainerd();
    await cd.start({ kataExtraConfig: factoryConfig(cd.dir) });
    cfgFile = path.join(cd.dir, 'kata-ts.toml');
    tplDir = path.join(cd.dir, 'tpl');
    await initTemplate(cfgFile, tplDir);
  });

  after(async () => {
    if (!cd) return;
    try {
      await destroyTemplate(cfgFile, tplDir);
    } finally {
      const left = await cd.stop();
      expect(left, 'left behind after the suite (removed by force)').to.deep.equal({ pods: [], shims: [], qemu: [], mounts: [], cni: [] });
    }
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && cd) process.stdout.write(`containerd log tail:\n${cd.log.split('\n').slice(-25).join('\n')}\n`);
  });

  it('a pod starts from the template, its container runs and logs, and the pod goes away', async () => {
    const logDir = path.join(cd!.dir, 'pods', 'tplpod');
    fs.mkdirSync(logDir, { recursive: true });
    const config: PodSandboxConfig = { metadata: { name: 'tplpod', uid: 'tplpod', namespace: 'factory' }, hostname: 'tplpod', log_directory: logDir, linux: {} };
    const pod = await cd!.cri.runPodSandbox(config, 'kata-ts');
    try {
      const ctr = await cd!.cri.createContainer(pod, {
        metadata: { name: 'c' }, image: { image: BUSYBOX }, command: ['sh', '-c', 'echo pod-from-a-clone; hostname; sleep 3600'], log_path: 'c.log', linux: {},
      }, config);
      await cd!.cri.startContainer(ctr);
      // CRI's log file: "<time> stdout F <line>" per line.
      const log = await until('container log', async () => {
        const f = path.join(logDir, 'c.log');
        const t = fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '';
        return t.includes('tplpod') ? t : undefined;
      }, 60000);
      expect(log).to.match(/ stdout F pod-from-a-clone\n/);
      expect(log).to.match(/ stdout F tplpod\n/);
      const ready = readyLines(cd!.log, pod);
      expect(ready, 'one sandbox for the pod').to.have.length(1);
      expect(ready[0]!.guest?.template, 'the pod sandbox was a clone of the template').to.equal(true);
      expect(cd!.log).to.not.match(/cold boot/);
    } finally {
      await cd!.cri.stopPodSandbox(pod);
      await cd!.cri.removePodSandbox(pod);
    }
    await until('shim gone', async () => (cd!.shimPids().length === 0 ? true : undefined), 20000);
    expect(cd!.qemuPids()).to.deep.equal([]);
  });
});
