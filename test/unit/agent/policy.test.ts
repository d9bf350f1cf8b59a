/**
 * The agent policy: the format (src/protocols/agent-policy.ts), the engine
 * (src/agent/policy.ts: per RPC and per argument rule), the gate's one-time
 * setting (sealed at the first CreateSandbox, pinned hash, fail closed), the
 * check at the gRPC edge (service.ts) and the host's loaders (src/runtime/policy.ts).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parsePolicy, policySha256, PolicyError, POLICY_ANNOTATION } from '../../../src/protocols/agent-policy';
import { evaluate, PolicyGate, pinnedPolicyHash, type Decision } from '../../../src/agent/policy';
import { AgentError } from '../../../src/agent/container';
import { AgentSandbox } from '../../../src/agent/sandbox';
import { agentHandlers, agentStatus, type StreamHandler, type UnaryHandler } from '../../../src/agent/service';
import { Code } from '../../../src/protocols/ttrpc/codes';
import type { RpcStatus } from '../../../src/protocols/ttrpc/rpc-server';
import { AgentCallError } from '../../../src/runtime/agent-client';
import { HostPolicyError, policyFromAnnotations, policyFromFile } from '../../../src/runtime/policy';
import { defaultSpec, defaultProcess } from '../../../src/runtime/spec';
import type { OciSpec } from '../../../src/protocols/oci';

const P = (o: unknown) => parsePolicy(JSON.stringify(o));
const malformed = (o: unknown, re: RegExp) => {
  const text = typeof o === 'string' ? o : JSON.stringify(o);
  expect(() => parsePolicy(text)).to.throw(PolicyError, re);
};
const denied = (d: Decision, rule: string, reason?: RegExp) => {
  expect(d.allowed, JSON.stringify(d)).to.equal(false);
  if (d.allowed) return;
  expect(d.rule).to.equal(rule);
  if (reason) expect(d.reason).to.match(reason);
};
const allowed = (d: Decision) => expect(d, JSON.stringify(d)).to.deep.equal({ allowed: true });

const containerReq = (spec: OciSpec, storages: { driver: string; source: string; fstype: string; mount_point: string }[] = []) =>
  ({ container_id: 'c1', exec_id: '', storages: storages.map((s) => ({ ...s, options: [] })), oci_spec_json: JSON.stringify(spec) });
const execReq = (proc: object) => ({ container_id: 'c1', exec_id: 'e1', process_json: JSON.stringify(proc) });
const sandboxReq = (policy: unknown, extra: { sysctls?: Record<string, string>; hostname?: string } = {}) =>
  ({ sandbox_id: 's', hostname: extra.hostname ?? '', dns: [], sysctls: extra.sysctls ?? {}, policy_json: typeof policy === 'string' ? policy : JSON.stringify(policy) });

describe('unit: agent policy', () => {
  describe('format', () => {
    it('accepts the smallest policy and defaults to allowing every request', () => {
      const p = P({ version: 1 });
      expect(p.requests).to.deep.equal({ default: 'allow', allow: [], deny: [] });
      expect(p.sha256).to.equal(policySha256(JSON.stringify({ version: 1 })));
      allowed(evaluate(p, 'ExecProcess', execReq({ args: ['sh'] })));
    });

    it('refuses malformed policies with the path of the fault', () => {
      malformed('{"version": 1,', /not valid JSON/);
      malformed([], /^policy: must be a JSON object/);
      malformed({}, /policy\.version: must be 1/);
      malformed({ version: 2 }, /policy\.version: must be 1 \(got 2\)/);
      malformed({ version: 1, exec: {} }, /policy: unknown key "exec"/);
      malformed({ version: 1, requests: { default: 'maybe' } }, /policy\.requests\.default: must be "allow" or "deny"/);
      malformed({ version: 1, requests: { deny: ['Exec'] } }, /policy\.requests\.deny\[0\]: unknown RPC "Exec"/);
      malformed({ version: 1, requests: { deny: ['CreateSandbox'] } }, /requests\.deny\[0\]: CreateSandbox cannot be allowed or denied/);
      malformed({ version: 1, requests: { allow: ['Check'] } }, /requests\.allow\[0\]: Check cannot/);
      malformed({ version: 1, requests: { allow: ['ExecProcess'], deny: ['ExecProcess'] } }, /ExecProcess is both allowed and denied/);
      malformed({ version: 1, exec_process: { process: { args: [['sh', '(']] } } }, /policy\.exec_process\.process\.args\[0\]\[1\]: invalid regular expression/);
      malformed({ version: 1, exec_process: { process: { args: [[]] } } }, /args\[0\]: a command line needs at least one pattern/);
      malformed({ version: 1, exec_process: { process: { args: [{ prefix: ['ls'] }] } } }, /args\[0\]: needs both "prefix"/);
      malformed({ version: 1, create_container: { process: { env: { allow: 'PATH=.*' } } } }, /create_container\.process\.env\.allow: must be an array/);
      malformed({ version: 1, create_container: { process: { capabilities: ['NET_ADMIN'] } } }, /capabilities\[0\]: "NET_ADMIN" is not a capability name/);
      malformed({ version: 1, create_container: { readonly_rootfs: 'yes' } }, /readonly_rootfs: must be true or false/);
      malformed({ version: 1, create_container: { mounts: [{ dest: '/x' }] } }, /mounts\[0\]: unknown key "dest"/);
      malformed({ version: 1, sandbox: { sysctls: [1] } }, /policy\.sandbox\.sysctls\[0\]: must be a string/);
    });

    it('anchors patterns: they match whole strings', () => {
      const p = P({ version: 1, exec_process: { process: { args: [['echo', 'hi']] } } });
      allowed(evaluate(p, 'ExecProcess', execReq({ args: ['echo', 'hi'] })));
      denied(evaluate(p, 'ExecProcess', execReq({ args: ['echo', 'hi; reboot'] })), 'exec_process.process.args');
      denied(evaluate(p, 'ExecProcess', execReq({ args: ['/bin/echo', 'hi'] })), 'exec_process.process.args');
    });
  });

  describe('which RPCs', () => {
    it('denies the RPCs in requests.deny and lets the others through', () => {
      const p = P({ version: 1, requests: { deny: ['ExecProcess', 'StartDebugConsole', 'UpdateInterface', 'UpdateRoutes', 'AddARPNeighbors'] } });
      denied(evaluate(p, 'ExecProcess', execReq({ args: ['ls'] })), 'requests.deny', /ExecProcess is denied/);
      denied(evaluate(p, 'StartDebugConsole', { args: [] }), 'requests.deny');
      denied(evaluate(p, 'UpdateInterface', { interface: null }), 'requests.deny');
      denied(evaluate(p, 'UpdateRoutes', { routes: null }), 'requests.deny');
      allowed(evaluate(p, 'CreateContainer', containerReq(defaultSpec({ args: ['ls'] }))));
      allowed(evaluate(p, 'ListInterfaces', {}));
      allowed(evaluate(p, 'Check', {}));
    });

    it('with default deny, serves only requests.allow (Check always)', () => {
      const p = P({ version: 1, requests: { default: 'deny', allow: ['CreateContainer', 'StartContainer', 'WaitProcess', 'ReadStdout'] } });
      allowed(evaluate(p, 'CreateContainer', containerReq(defaultSpec({ args: ['ls'] }))));
      allowed(evaluate(p, 'ReadStdout', { container_id: 'c1', exec_id: '' }));
      allowed(evaluate(p, 'Check', {}));
      denied(evaluate(p, 'ExecProcess', execReq({ args: ['ls'] })), 'requests.default', /not in requests\.allow/);
      denied(evaluate(p, 'GetGuestStats', {}), 'requests.default');
      denied(evaluate(p, 'ReadStderr', {}), 'requests.default');
    });
  });

  describe('argument rules', () => {
    const withProc = (o: Partial<ReturnType<typeof defaultProcess>>) => ({ ...defaultSpec({ args: ['ls'] }), process: { ...defaultProcess({ args: ['ls'] }), ...o } });

    it('process.args: exact command lines, and a prefix with the rest matching a pattern', () => {
      const p = P({ version: 1, create_container: { process: { args: [['sh', '-c', 'echo [a-z ]+'], { prefix: ['/app/server'], rest: '--[a-z-]+=[^;]*' }] } } });
      const cc = (args: string[]) => evaluate(p, 'CreateContainer', containerReq(defaultSpec({ args })));
      allowed(cc(['sh', '-c', 'echo hello world']));
      allowed(cc(['/app/server']));
      allowed(cc(['/app/server', '--port=80', '--log-level=debug']));
      denied(cc(['sh', '-c', 'cat /etc/shadow']), 'create_container.process.args', /\["sh","-c","cat \/etc\/shadow"\] matches none of the 2 allowed/);
      denied(cc(['sh', '-c', 'echo hi', 'extra']), 'create_container.process.args');
      denied(cc(['/app/server', '--port=80', 'rm']), 'create_container.process.args');
      denied(cc(['sh']), 'create_container.process.args');
    });

    it('process.env: deny patterns win, then every variable must match an allowed one', () => {
      const p = P({ version: 1, create_container: { process: { env: { allow: ['PATH=.*', 'HOME=/[a-z/]*', 'LD_[A-Z_]+=.*'], deny: ['LD_PRELOAD=.*'] } } } });
      const cc = (env: string[]) => evaluate(p, 'CreateContainer', containerReq(withProc({ env })));
      allowed(cc(['PATH=/bin', 'HOME=/root']));
      allowed(cc(['LD_LIBRARY_PATH=/lib']));
      denied(cc(['PATH=/bin', 'LD_PRELOAD=/tmp/evil.so']), 'create_container.process.env.deny[0]', /"LD_PRELOAD=\.\*" matches "LD_PRELOAD=\/tmp\/evil\.so"/);
      denied(cc(['SECRET=1']), 'create_container.process.env.allow', /"SECRET=1" matches no allowed pattern/);
      denied(cc(['HOME=/Root']), 'create_container.process.env.allow');
    });

    it('process.cwd, allow_root, no_new_privileges, capabilities', () => {
      const p = P({ version: 1, create_container: { process: { cwd: ['/', '/app(/.*)?'], allow_root: false, no_new_privileges: true, capabilities: ['CAP_NET_BIND_SERVICE', 'CAP_CHOWN'] } } });
      const ok = { cwd: '/app/data', user: { uid: 1000, gid: 1000 }, noNewPrivileges: true, capabilities: { bounding: ['CAP_CHOWN'], effective: ['CAP_NET_BIND_SERVICE'] } };
      const cc = (o: object) => evaluate(p, 'CreateContainer', containerReq(withProc({ ...ok, ...o })));
      allowed(cc({}));
      denied(cc({ cwd: '/etc' }), 'create_container.process.cwd', /"\/etc" matches no allowed/);
      denied(cc({ user: { uid: 0, gid: 1000 } }), 'create_container.process.allow_root', /uid 0/);
      denied(cc({ noNewPrivileges: false }), 'create_container.process.no_new_privileges');
      denied(cc({ capabilities: { bounding: ['CAP_CHOWN', 'CAP_SYS_ADMIN'] } }), 'create_container.process.capabilities', /CAP_SYS_ADMIN \(in capabilities\.bounding\)/);
    });

    it('readonly_rootfs requires root.readonly', () => {
      const p = P({ version: 1, create_container: { readonly_rootfs: true } });
      allowed(evaluate(p, 'CreateContainer', containerReq(defaultSpec({ args: ['ls'], readonlyRootfs: true }))));
      denied(evaluate(p, 'CreateContainer', containerReq(defaultSpec({ args: ['ls'] }))), 'create_container.readonly_rootfs', /root\.readonly must be true/);
    });

    it('mounts: each one must match a rule (type, source, destination, required options)', () => {
      const p = P({ version: 1, create_container: { mounts: [
        { type: 'bind', source: '/run/kata-ts/shared/[^/]+/[^/]+', destination: '/data(/.*)?', require_options: ['ro'] },
        { type: 'tmpfs', destination: '/tmp' },
      ] } });
      const cc = (mounts: OciSpec['mounts']) => evaluate(p, 'CreateContainer', containerReq({ ...defaultSpec({ args: ['ls'] }), mounts }));
      allowed(cc([]));
      allowed(cc([{ type: 'bind', source: '/run/kata-ts/shared/c1/v0', destination: '/data', options: ['rbind', 'ro'] }, { type: 'tmpfs', source: 'tmpfs', destination: '/tmp' }]));
      denied(cc([{ type: 'bind', source: '/run/kata-ts/shared/c1/v0', destination: '/data', options: ['rbind', 'rw'] }]), 'create_container.mounts', /on "\/data" matches no rule/);
      denied(cc([{ type: 'bind', source: '/', destination: '/data', options: ['ro'] }]), 'create_container.mounts', /mount of "\/"/);
      denied(cc([{ type: 'bind', source: '/run/kata-ts/shared/c1/v0', destination: '/etc', options: ['ro'] }]), 'create_container.mounts');
      denied(cc([{ type: 'proc', source: 'proc', destination: '/tmp' }]), 'create_container.mounts');
    });

    it('storages: each one must match a rule', () => {
      const p = P({ version: 1, create_container: { storages: [{ driver: 'virtiofs|blk', mount_point: '/run/kata-ts/.*' }] } });
      const spec = defaultSpec({ args: ['ls'] });
      allowed(evaluate(p, 'CreateContainer', containerReq(spec, [{ driver: 'virtiofs', source: 'kata-abc', fstype: 'virtiofs', mount_point: '/run/kata-ts/containers/c1/rootfs' }])));
      denied(evaluate(p, 'CreateContainer', containerReq(spec, [{ driver: 'blk', source: 'vda', fstype: 'ext4', mount_point: '/' }])), 'create_container.storages', /storage blk "vda" \(ext4\) on "\/" matches no rule/);
    });

    it('exec_process.process applies to ExecProcess; an exec without a user cannot pass allow_root: false', () => {
      const p = P({ version: 1, exec_process: { process: { args: [['ls', '/[a-z/]*'], ['cat', '/var/log/[a-z]+\\.log']], allow_root: false } } });
      const ex = (o: object) => evaluate(p, 'ExecProcess', execReq({ user: { uid: 1000, gid: 1000 }, cwd: '/', ...o }));
      allowed(ex({ args: ['ls', '/tmp'] }));
      allowed(ex({ args: ['cat', '/var/log/app.log'] }));
      denied(ex({ args: ['cat', '/etc/shadow'] }), 'exec_process.process.args');
      denied(ex({ args: ['sh'] }), 'exec_process.process.args');
      denied(ex({ args: ['ls', '/'], user: { uid: 0, gid: 0 } }), 'exec_process.process.allow_root');
      denied(evaluate(p, 'ExecProcess', execReq({ args: ['ls', '/'] })), 'exec_process.process.allow_root', /not given/);
      // create_container rules do not apply to exec, nor exec's to create
      allowed(evaluate(p, 'CreateContainer', containerReq(defaultSpec({ args: ['sh'] }))));
    });

    it('a request whose JSON cannot be read is denied when there are rules to check', () => {
      const p = P({ version: 1, create_container: { readonly_rootfs: true }, exec_process: { process: { args: [['ls']] } } });
      denied(evaluate(p, 'CreateContainer', { container_id: 'c', exec_id: '', storages: [], oci_spec_json: '{' }), 'create_container', /not a JSON object/);
      denied(evaluate(p, 'ExecProcess', { container_id: 'c', exec_id: 'e', process_json: '[]' }), 'exec_process', /not a JSON object/);
    });

    it('sandbox: sysctls and hostname of the CreateSandbox that carries the policy', () => {
      const p = P({ version: 1, sandbox: { sysctls: ['net\\.ipv4\\.ip_unprivileged_port_start'], hostname: ['pod-[0-9]+'] } });
      allowed(evaluate(p, 'CreateSandbox', sandboxReq('', { sysctls: { 'net.ipv4.ip_unprivileged_port_start': '0' }, hostname: 'pod-1' })));
      denied(evaluate(p, 'CreateSandbox', sandboxReq('', { sysctls: { 'kernel.core_pattern': '|/x' } })), 'sandbox.sysctls', /kernel\.core_pattern/);
      denied(evaluate(p, 'CreateSandbox', sandboxReq('', { hostname: 'evil' })), 'sandbox.hostname');
    });
  });

  describe('the gate: set once at CreateSandbox, never replaced', () => {
    const logged: string[] = [];
    const gate = (pin?: string) => new PolicyGate({ pinnedSha256: pin, log: (l) => logged.push(l) });
    const refused = (fn: () => void, kind: AgentError['kind'], re: RegExp) => {
      let err: unknown;
      try {
        fn();
      } catch (e) {
        err = e;
      }
      expect(err, 'refused').to.be.instanceOf(AgentError);
      expect((err as AgentError).kind).to.equal(kind);
      expect((err as AgentError).message).to.match(re);
    };
    const noExec = { version: 1, requests: { deny: ['ExecProcess'] } };
    beforeEach(() => (logged.length = 0));

    it('enforces the policy from CreateSandbox on, and logs each denial with its rule', () => {
      const g = gate();
      g.admit('CreateSandbox', sandboxReq(noExec));
      expect(g.current?.sha256).to.equal(policySha256(JSON.stringify(noExec)));
      g.admit('CreateContainer', containerReq(defaultSpec({ args: ['ls'] })));
      refused(() => g.admit('ExecProcess', execReq({ args: ['ls'] })), 'permission-denied', /^policy denied ExecProcess: rule requests\.deny: ExecProcess is denied$/);
      const line = JSON.parse(logged.at(-1)!);
      expect(line).to.include({ level: 'warn', msg: 'policy denied request', rpc: 'ExecProcess', rule: 'requests.deny', source: 'agent' });
    });

    it('refuses a second CreateSandbox: the policy cannot be replaced or removed', () => {
      const g = gate();
      g.admit('CreateSandbox', sandboxReq(noExec));
      refused(() => g.admit('CreateSandbox', sandboxReq({ version: 1 })), 'permission-denied', /rule create_sandbox\.once: .*cannot be replaced/);
      refused(() => g.admit('CreateSandbox', sandboxReq('')), 'permission-denied', /create_sandbox\.once/);
      refused(() => g.admit('ExecProcess', execReq({ args: ['ls'] })), 'permission-denied', /requests\.deny/);
      expect(g.current?.text).to.equal(JSON.stringify(noExec));
    });

    it('without a policy everything is served, and a policy cannot be added later either', () => {
      const g = gate();
      g.admit('ExecProcess', execReq({ args: ['ls'] })); // before CreateSandbox, no pin: as before policies existed
      g.admit('CreateSandbox', sandboxReq(''));
      expect(g.current).to.equal(undefined);
      g.admit('ExecProcess', execReq({ args: ['ls'] }));
      refused(() => g.admit('CreateSandbox', sandboxReq(noExec)), 'permission-denied', /create_sandbox\.once/);
      g.admit('ExecProcess', execReq({ args: ['ls'] }));
    });

    it('a malformed policy is INVALID_ARGUMENT, and then the agent refuses everything but Check', () => {
      const g = gate();
      refused(() => g.admit('CreateSandbox', sandboxReq({ version: 1, requests: { deny: ['Exec'] } })), 'invalid', /malformed policy: policy\.requests\.deny\[0\]: unknown RPC "Exec"/);
      refused(() => g.admit('CreateContainer', containerReq(defaultSpec({ args: ['ls'] }))), 'permission-denied', /no valid policy is in force/);
      refused(() => g.admit('CreateSandbox', sandboxReq({ version: 1 })), 'permission-denied', /create_sandbox\.once/);
      g.admit('Check', {});
    });

    it('a pinned hash: only Check before the policy arrives, only that policy is accepted', () => {
      const text = JSON.stringify(noExec);
      const pin = policySha256(text);
      expect(pinnedPolicyHash(`console=ttyS0 agent.policy_sha256=${pin} quiet`)).to.equal(pin);
      expect(pinnedPolicyHash('console=ttyS0 xagent.policy_sha256=00')).to.equal(undefined);
      const g = gate(pin);
      g.admit('Check', {});
      refused(() => g.admit('ExecProcess', execReq({ args: ['ls'] })), 'permission-denied', /rule agent\.policy_sha256: .*only Check is served/);
      g.admit('CreateSandbox', sandboxReq(text));
      g.admit('CreateContainer', containerReq(defaultSpec({ args: ['ls'] })));
      refused(() => g.admit('ExecProcess', execReq({ args: ['ls'] })), 'permission-denied', /requests\.deny/);

      const other = gate(pin);
      refused(() => other.admit('CreateSandbox', sandboxReq({ version: 1 })), 'permission-denied', /does not have the sha256 pinned/);
      refused(() => other.admit('CreateSandbox', sandboxReq(text)), 'permission-denied', /create_sandbox\.once/);
      refused(() => other.admit('CreateContainer', containerReq(defaultSpec({ args: ['ls'] }))), 'permission-denied', /no valid policy/);
      const empty = gate(pin);
      refused(() => empty.admit('CreateSandbox', sandboxReq('')), 'permission-denied', /does not have the sha256 pinned/);
    });

    it('a garbled pin is not "no pin": nothing but Check is served', () => {
      const g = gate('not-a-hash');
      refused(() => g.admit('CreateSandbox', sandboxReq({ version: 1 })), 'permission-denied', /not a sha256/);
      refused(() => g.admit('GetGuestDetails', {}), 'permission-denied', /not a sha256/);
    });

    it('a CreateSandbox its own policy denies fails, and leaves nothing served', () => {
      const g = gate();
      refused(() => g.admit('CreateSandbox', sandboxReq({ version: 1, sandbox: { hostname: ['a'] } }, { hostname: 'b' })), 'permission-denied', /rule sandbox\.hostname/);
      refused(() => g.admit('ListInterfaces', {}), 'permission-denied', /no valid policy/);
    });
  });

  describe('at the RPC edge (service.ts)', () => {
    let dir: string;
    before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-policy-'))));
    after(() => fs.rmSync(dir, { recursive: true, force: true }));

    it('answers a denied unary call and a denied stream with PERMISSION_DENIED naming the rule, before any handler runs', async () => {
      const sb = new AgentSandbox({ runtime: { version: async () => 'x' } as never, stateDir: dir });
      const h = agentHandlers(sb, new PolicyGate({ log: () => undefined }));
      const ctx = { signal: new AbortController().signal, timeoutNano: 0 };
      const unary = (rpc: string, request: object) => (h[rpc] as UnaryHandler)(request, ctx).then(
        (res) => ({ err: null, res }), (e: unknown) => ({ err: agentStatus(e), res: undefined }));
      const policy = { version: 1, requests: { deny: ['ExecProcess', 'ReadStdout'] } };
      expect((await unary('CreateSandbox', sandboxReq(policy))).err).to.equal(null);
      const ex = await unary('ExecProcess', execReq({ args: ['ls'] }));
      expect(ex.err?.code).to.equal(Code.PermissionDenied);
      expect(ex.err?.message).to.equal('policy denied ExecProcess: rule requests.deny: ExecProcess is denied');
      // an allowed call reaches its handler (and fails there: no such container)
      expect((await unary('StatsContainer', { container_id: 'nope' })).err?.code).to.equal(Code.NotFound);
      const again = await unary('CreateSandbox', sandboxReq({ version: 1 }));
      expect(again.err?.code).to.equal(Code.PermissionDenied);
      expect(again.err?.message).to.match(/create_sandbox\.once/);
      let denied: RpcStatus | undefined;
      try {
        for await (const m of (h.ReadStdout as StreamHandler)({ container_id: 'c1', exec_id: '' }, ctx)) expect.fail(`a denied stream yielded ${JSON.stringify(m)}`);
      } catch (e) {
        denied = agentStatus(e);
      }
      expect(denied?.code).to.equal(Code.PermissionDenied);
      expect(denied?.message).to.match(/rule requests\.deny: ReadStdout is denied/);
      // the host sees its own kind
      expect(new AgentCallError('ExecProcess', Code.PermissionDenied, 'x').kind).to.equal('permission-denied');
    });
  });

  describe('host side (src/runtime/policy.ts)', () => {
    let dir: string;
    before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-policy-host-'))));
    after(() => fs.rmSync(dir, { recursive: true, force: true }));

    it('reads a policy file, and names the file when it is malformed or missing', () => {
      const good = path.join(dir, 'good.json');
      fs.writeFileSync(good, '{"version": 1, "requests": {"deny": ["ExecProcess"]}}');
      const p = policyFromFile(good);
      expect(p.sha256).to.equal(policySha256(fs.readFileSync(good, 'utf8')));
      const bad = path.join(dir, 'bad.json');
      fs.writeFileSync(bad, '{"version": 1, "requests": {"deny": ["exec"]}}');
      expect(() => policyFromFile(bad)).to.throw(HostPolicyError, new RegExp(`agent policy ${bad}: policy\\.requests\\.deny\\[0\\]: unknown RPC "exec"`));
      expect(() => policyFromFile(path.join(dir, 'missing.json'))).to.throw(HostPolicyError, /missing\.json: ENOENT/);
    });

    it('reads the pod annotation (base64 JSON)', () => {
      const text = '{"version":1,"requests":{"deny":["StartDebugConsole"]}}';
      expect(policyFromAnnotations({})).to.equal(undefined);
      expect(policyFromAnnotations({ [POLICY_ANNOTATION]: Buffer.from(text).toString('base64') })?.text).to.equal(text);
      expect(() => policyFromAnnotations({ [POLICY_ANNOTATION]: '{"version":1}' })).to.throw(HostPolicyError, /not base64/);
      expect(() => policyFromAnnotations({ [POLICY_ANNOTATION]: Buffer.from('{"version":3}').toString('base64') })).to.throw(HostPolicyError, /annotation io\.katacontainers\.config\.agent\.policy: policy\.version: must be 1/);
    });
  });
});
