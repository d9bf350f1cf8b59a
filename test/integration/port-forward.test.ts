/**
 * CRI port-forward into a real VM (README "CRI validation suite",
 * portforward): `kata-ts run --net host-netns PATH` in a pod netns this
 * test sets up as CNI would, a busybox `nc -l` in the container on a port
 * nothing declares, and from the host — inside the pod netns, as
 * containerd's PortForward does — a dial to 127.0.0.1:PORT. The bytes
 * cross both ways (the container prints what it received; we get what it
 * sent), a port nobody serves in the guest resets the client, and after
 * the pod: no nat rule, no listener, no sandbox left. The same again in a
 * VM cloned from a template ([factory] enable_template), as the CRI suite
 * runs kata-ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { expect } from 'chai';
import { REPO, expectNothingLeft, leftoverQemu, pinGuestAssets, requireGuest, testRunDir, writeTestConfig } from '../helpers/guest';
import { runCommand } from '../helpers/spawn';
import { skipOrFail } from '../helpers/skip';
import { isMountPoint } from '../../src/factory/template-store';
import { PodNetns, ip } from '../helpers/netns';
import { dialInNetns, type DialResult } from '../helpers/port-forward';
import { RULE_COMMENT } from '../../src/runtime/port-forward';

describe('integration: CRI port-forward into the VM (kata-ts run --net host-netns)', function () {
  this.timeout(300_000);
  const net = new PodNetns({ podCidr: '10.96.0.2/24', prefix: 'ktpf' });
  const { pod } = net;
  const tag = pod.slice(-6);
  let runDir: string;
  let cfgFile: string;
  const natRules = () => execFileSync('nsenter', [`--net=/var/run/netns/${pod}`, 'iptables', '-t', 'nat', '-S', 'OUTPUT'], { encoding: 'utf8' });

  before(function () {
    requireGuest(this);
    runDir = testRunDir();
    cfgFile = writeTestConfig(runDir);
    net.create();
    ip('-n', pod, 'link', 'set', 'lo', 'up'); // CNI's loopback plugin does this for a real pod
  });

  after(() => {
    net.destroy();
    if (runDir) expectNothingLeft(runDir);
  });

  /** One pod with `cfg`: the forward both ways, a refused port, the rule there and gone after. Returns the run's stderr. */
  async function forwardThroughPod(cfg: string, extraArgs: string[] = []): Promise<string> {
    // 8082: the server under test (it sends its file, prints what it got);
    // 8083: holds the pod up until the test has dialled a port nobody serves.
    // nc's stdin stays open a while: busybox nc quits at its stdin's end, maybe before our bytes came;
    // it quits at our half-close (sent once its reply is here), and the script goes on when sleep ends.
    const script = `(echo "from the VM ${tag}"; sleep 5) | nc -l -p 8082 > /tmp/got; echo "container got: $(cat /tmp/got)"; nc -l -p 8083 < /dev/null > /dev/null; echo done`;
    const child = spawn(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), 'run', '--config', cfg, ...extraArgs,
      '--net', 'host-netns', `/var/run/netns/${pod}`, '--', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    let exited = false;
    const exit = new Promise<number | null>((res) => child.once('exit', (code) => { exited = true; res(code); }));
    try {
      // Until the VM is up (ECONNREFUSED: no forwarder yet) and nc listens (ECONNRESET: refused in the guest).
      const seen = new Set<string>();
      let got: DialResult = {};
      const deadline = Date.now() + 240_000;
      while (Date.now() < deadline && !exited) {
        got = await dialInNetns(pod, 8082, `to the VM ${tag}\n`, { untilReply: `from the VM ${tag}\n` });
        if (!got.err) break;
        seen.add(got.err);
        await new Promise((r) => setTimeout(r, 500));
      }
      expect(got.text, `dial errors meanwhile: ${[...seen].join(', ')}; run stderr: ${err}`).to.equal(`from the VM ${tag}\n`);
      expect([...seen].every((e) => e === 'ECONNREFUSED' || e === 'ECONNRESET'), [...seen].join(', ')).to.equal(true);
      // The pod is up (nc waits on 8083): a port nobody serves resets the client at once.
      const t0 = Date.now();
      expect(await dialInNetns(pod, 8099, 'x')).to.deep.equal({ err: 'ECONNRESET' });
      expect(Date.now() - t0).to.be.below(20_000);
      // The rule is there while the pod runs...
      expect(natRules()).to.contain(RULE_COMMENT);
      // Release the container's second listener (retrying while it is not up yet).
      for (let i = 0; i < 120 && !exited; i++) {
        const r = await dialInNetns(pod, 8083, '');
        if (!r.err) break;
        await new Promise((res) => setTimeout(res, 500));
      }
      const code = await exit;
      expect(out).to.contain(`container got: to the VM ${tag}`);
      expect(out).to.contain('done');
      expect(code).to.equal(0);
    } finally {
      if (!exited) {
        child.kill('SIGTERM');
        await exit;
      }
    }
    // ...and gone with it: no rule and no listener in the pod netns.
    expect(natRules()).not.to.contain(RULE_COMMENT);
    expect(ip('netns', 'exec', pod, 'ss', '-Hltn').trim()).to.equal('');
    return err;
  }

  it('carries a dial to 127.0.0.1:PORT in the pod netns to a server in the container, both ways', async () => {
    await forwardThroughPod(cfgFile);
  });

  it('does the same in a VM cloned from a template (the agent listens before the template is saved)', async function () {
    if (process.getuid?.() !== 0) skipOrFail(this, 'VM templates mount a tmpfs: run as root');
    // Pinned copies of the kernel and image: a guest image rebuilt meanwhile must not make the template stale.
    const pinned = pinGuestAssets(runDir);
    const tplDir = path.join(runDir, 'template');
    // A file of its own: the first test's configuration stays as it is.
    const tplCfg = path.join(runDir, 'template.toml');
    fs.writeFileSync(tplCfg, `${fs.readFileSync(cfgFile, 'utf8')}${pinned}[factory]\nenable_template = true\ntemplate_path = "${tplDir}"\n`);
    const ctl = (args: string[]) => runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ctl'), '--config', tplCfg, ...args], { timeoutMs: 240_000 });
    try {
      const init = await ctl(['factory', 'init']);
      expect(init.code, init.stderr).to.equal(0);
      const err = await forwardThroughPod(tplCfg, ['--log-level', 'info']);
      expect(err, 'the pod came from the template').to.match(/"template":true/);
    } finally {
      await ctl(['factory', 'destroy']).catch(() => undefined);
    }
    expect(leftoverQemu(tplDir), 'template qemu left running').to.deep.equal([]);
    expect(isMountPoint(tplDir), 'template tmpfs left mounted').to.equal(false);
  });
});
