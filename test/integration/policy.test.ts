/**
 * Agent policy against a real VM (QEMU): `kata-ts run --policy FILE` runs an
 * allowed command and refuses a denied one before it starts; through the
 * Sandbox API an allowed exec runs, a denied exec gets PermissionDenied naming
 * the rule and is logged on the guest console, kata-ctl exec (the debug
 * console) is refused, and the host cannot replace the policy with a second
 * CreateSandbox.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runCommand, type CommandResult } from '../helpers/spawn';
import { kataCtl } from '../helpers/kata-ctl';
import { REPO, requireGuest, testRunDir, testConfig, writeTestConfig, expectNothingLeft, leftoverQemu, collectOutput, copyBusyboxRootfs } from '../helpers/guest';
import { selectHypervisor } from '../../src/hypervisor';
import { Sandbox } from '../../src/runtime/sandbox';
import { defaultSpec, defaultProcess } from '../../src/runtime/spec';
import { AgentCallError } from '../../src/runtime/agent-client';
import { hostPolicy } from '../../src/runtime/policy';
import { policySha256 } from '../../src/protocols/agent-policy';
import { configureLogging } from '../../src/common/log';

function kataTs(args: string[], opts: { timeoutMs?: number } = {}): Promise<CommandResult> {
  return runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), ...args], opts);
}

describe('integration: agent policy (QEMU)', function () {
  this.timeout(240000);
  let runDir: string;

  before(function () {
    requireGuest(this);
    configureLogging({ silent: true });
    runDir = testRunDir();
  });

  after(() => {
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  describe('kata-ts run --policy', () => {
    let cfgFile: string;
    let policyFile: string;
    before(() => {
      cfgFile = writeTestConfig(runDir);
      policyFile = path.join(runDir, 'policy.json');
      fs.writeFileSync(policyFile, JSON.stringify({
        version: 1,
        requests: { deny: ['ExecProcess', 'StartDebugConsole'] },
        create_container: { process: { args: [['echo', '[a-z ]+']], env: { deny: ['LD_PRELOAD=.*'] } } },
      }, null, 2));
    });

    it('runs a command the policy allows', async () => {
      const r = await kataTs(['run', '--config', cfgFile, '--policy', policyFile, '--', 'echo', 'allowed by policy']);
      expect(r.stderr).to.equal('');
      expect(r.code).to.equal(0);
      expect(r.stdout).to.equal('allowed by policy\n');
    });

    it('refuses a command the policy does not allow: PermissionDenied naming the rule, the command never runs', async () => {
      const r = await kataTs(['run', '--config', cfgFile, '--policy', policyFile, '--', 'sh', '-c', 'echo pwned']);
      expect(r.code).to.equal(125);
      expect(r.stdout).to.equal('');
      expect(r.stderr.trim().split('\n')).to.have.length(1);
      expect(r.stderr).to.match(/^kata-ts: policy denied CreateContainer: rule create_container\.process\.args: command line \["sh","-c",.*\] matches none of the 1 allowed\n$/);
      expect(leftoverQemu(runDir)).to.deep.equal([]);
    });

    it('refuses a malformed policy before booting a VM, naming the file and the fault', async () => {
      const bad = path.join(runDir, 'bad-policy.json');
      fs.writeFileSync(bad, JSON.stringify({ version: 1, requests: { deny: ['Exec'] } }));
      const t0 = Date.now();
      const r = await kataTs(['run', '--config', cfgFile, '--policy', bad, '--', 'echo', 'hi']);
      expect(r.code).to.equal(125);
      expect(r.stderr).to.equal(`kata-ts: agent policy ${bad}: policy.requests.deny[0]: unknown RPC "Exec" (known: ${r.stderr.split('(known: ')[1]?.trimEnd()}\n`);
      expect(Date.now() - t0, 'no VM booted').to.be.below(8000);
    });
  });

  describe('exec under a policy (Sandbox API)', () => {
    let sandbox: Sandbox | undefined;
    let rootfs = '';
    let ctlCfg = '';
    const policyText = JSON.stringify({ version: 1, requests: { deny: ['StartDebugConsole'] }, exec_process: { process: { args: [['ls', '/[a-z]*'], ['cat', '/proc/cmdline']], allow_root: false } } });

    const collect = (cid: string, execId: string) => collectOutput(sandbox!.agent, cid, execId);
    const refusal = async (p: Promise<unknown>): Promise<AgentCallError> => {
      const err = await p.then(() => undefined, (e: unknown) => e);
      expect(err, 'refused').to.be.instanceOf(AgentCallError);
      return err as AgentCallError;
    };

    before(async () => {
      rootfs = path.join(runDir, 'rootfs');
      copyBusyboxRootfs(rootfs);
      const cfg = testConfig(runDir);
      // The configuration allows the debug console; the policy refuses it.
      cfg['agent.kata'].debug_console_enabled = true;
      ctlCfg = writeTestConfig(runDir, 'debug_console_enabled = true\n');
      const { hv } = await selectHypervisor(cfg, 'qemu');
      sandbox = new Sandbox({ id: 'policy1', config: cfg, hypervisor: hv, bootContainers: [{ id: 'app', rootfs }], policy: hostPolicy(policyText, 'test') });
      await sandbox.start();
      await sandbox.createContainer('app', defaultSpec({ args: ['sleep', '120'] }), rootfs);
      await sandbox.startContainer('app');
    });

    after(async () => {
      await sandbox?.stop();
    });

    it('runs an allowed exec', async () => {
      await sandbox!.exec('app', 'ok1', defaultProcess({ args: ['ls', '/'], uid: 1000, gid: 1000 }));
      const r = await collect('app', 'ok1');
      expect(r.status).to.equal(0);
      expect(r.out.split('\n')).to.include.members(['bin', 'etc']);
      // the policy's hash is pinned on the guest kernel command line for the VM's life
      await sandbox!.exec('app', 'ok-cmdline', defaultProcess({ args: ['cat', '/proc/cmdline'], uid: 1000, gid: 1000 }));
      const c = await collect('app', 'ok-cmdline');
      expect(c.status).to.equal(0);
      expect(c.out).to.contain(`agent.policy_sha256=${policySha256(policyText)}`);
    });

    it('denies an exec the policy does not allow, names the rule and logs it in the guest', async () => {
      const shell = await refusal(sandbox!.exec('app', 'bad1', defaultProcess({ args: ['sh', '-c', 'cat /etc/passwd'], uid: 1000, gid: 1000 })));
      expect(shell.kind).to.equal('permission-denied');
      expect(shell.message).to.equal('policy denied ExecProcess: rule exec_process.process.args: command line ["sh","-c","cat /etc/passwd"] matches none of the 2 allowed');
      const root = await refusal(sandbox!.exec('app', 'bad2', defaultProcess({ args: ['ls', '/'], uid: 0, gid: 0 })));
      expect(root.message).to.match(/rule exec_process\.process\.allow_root: the process would run as uid 0/);
      // the process never existed in the guest
      expect((await refusal(sandbox!.agent.waitProcess({ container_id: 'app', exec_id: 'bad1' }))).kind).to.equal('not-found');
      const console = fs.readFileSync(sandbox!.vmInfo!.consoleLog, 'utf8');
      const lines = console.split('\n').filter((l) => l.includes('"policy denied request"')).map((l) => JSON.parse(l.slice(l.indexOf('{'))));
      expect(lines.map((l) => [l.rpc, l.rule])).to.deep.include.members([['ExecProcess', 'exec_process.process.args'], ['ExecProcess', 'exec_process.process.allow_root']]);
    });

    it('refuses the debug console (kata-ctl exec) the configuration allows', async () => {
      const r = await kataCtl(['--config', ctlCfg, 'exec', 'policy1', '--', 'true']);
      expect(r.code).to.equal(125);
      expect(r.stderr).to.match(/^kata-ctl: .*policy denied StartDebugConsole: rule requests\.deny: StartDebugConsole is denied\n$/);
    });

    it('cannot be replaced from the host: a second CreateSandbox is refused and the policy stays', async () => {
      const again = await refusal(sandbox!.agent.createSandbox({ sandbox_id: 'policy1', hostname: '', dns: [], sysctls: {}, policy_json: '' }));
      expect(again.kind).to.equal('permission-denied');
      expect(again.message).to.match(/rule create_sandbox\.once: the sandbox was already created; its policy is fixed/);
      const still = await refusal(sandbox!.exec('app', 'bad3', defaultProcess({ args: ['sh'], uid: 1000, gid: 1000 })));
      expect(still.message).to.match(/exec_process\.process\.args/);
      await sandbox!.exec('app', 'ok2', defaultProcess({ args: ['ls', '/etc'], uid: 1000, gid: 1000 }));
      expect((await collect('app', 'ok2')).status).to.equal(0);
    });
  });
});
