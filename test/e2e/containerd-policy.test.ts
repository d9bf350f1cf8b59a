/**
 * Agent policy through containerd: the pod annotation
 * io.katacontainers.config.agent.policy (base64 JSON) given to `ctr run`
 * reaches the shim and the guest agent. An allowed `ctr task exec` runs, a
 * denied one fails naming the rule and never runs; a container whose command
 * the policy does not allow is refused at Create, with no shim or VM left.
 */
import { expect } from 'chai';
import { IMAGE, RUNTIME, TestContainerd, startTestContainerd, stopTestContainerd } from '../helpers/containerd';
import { POLICY_ANNOTATION } from '../../src/protocols/agent-policy';
import { until } from '../helpers/until';

describe('e2e: agent policy by pod annotation with io.containerd.kata-ts.v2', function () {
  this.timeout(240000);
  let cd: TestContainerd;
  const policy = JSON.stringify({
    version: 1,
    create_container: { process: { args: [['sleep', '[0-9]+']] } },
    exec_process: { process: { args: [['echo', '[a-z ]+']] } },
  });
  const annotation = ['--annotation', `${POLICY_ANNOTATION}=${Buffer.from(policy).toString('base64')}`];

  before(async function () {
    cd = await startTestContainerd(this);
  });

  after(async () => {
    await stopTestContainerd(cd);
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') process.stdout.write(`containerd log tail:\n${cd.log.split('\n').slice(-25).join('\n')}\n`);
  });

  it('an allowed exec runs; a denied exec fails naming the rule', async () => {
    const r = await cd.ctr(['run', '-d', '--runtime', RUNTIME, ...annotation, IMAGE, 'pol1', 'sleep', '600']);
    expect(r.code, r.stderr).to.equal(0);
    try {
      const ok = await cd.ctr(['task', 'exec', '--exec-id', 'ok1', 'pol1', 'echo', 'allowed by policy']);
      expect(ok.stderr).to.equal('');
      expect(ok.code).to.equal(0);
      expect(ok.stdout).to.equal('allowed by policy\n');
      const bad = await cd.ctr(['task', 'exec', '--exec-id', 'bad1', 'pol1', 'sh', '-c', 'echo pwned']);
      expect(bad.code).to.not.equal(0);
      expect(bad.stdout).to.equal('');
      expect(bad.stderr).to.match(/policy denied ExecProcess: rule exec_process\.process\.args: command line \["sh","-c","echo pwned"\] matches none of the 1 allowed/);
    } finally {
      await cd.ctr(['task', 'kill', '-s', 'SIGKILL', 'pol1']);
      await until('pol1 stopped', async () => ((await cd.ctr(['task', 'ls'])).stdout.split('\n').some((l) => l.startsWith('pol1 ') && /STOPPED/.test(l)) ? true : undefined));
      await cd.ctr(['task', 'delete', 'pol1']);
      await cd.ctr(['containers', 'delete', 'pol1']);
    }
    await until('shim gone', async () => (cd.shimPids().length === 0 ? true : undefined), 15000);
  });

  it('refuses a container whose command the policy does not allow, leaving no shim or VM', async () => {
    const r = await cd.ctr(['run', '--rm', '--runtime', RUNTIME, ...annotation, IMAGE, 'pol2', 'sh', '-c', 'echo pwned']);
    expect(r.code).to.not.equal(0);
    expect(r.stdout).to.equal('');
    expect(r.stderr).to.match(/policy denied CreateContainer: rule create_container\.process\.args/);
    await until('shim gone', async () => (cd.shimPids().length === 0 && cd.qemuPids().length === 0 ? true : undefined), 20000);
    await cd.ctr(['containers', 'delete', 'pol2']);
  });
});
