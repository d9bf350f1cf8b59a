/**
 * The agent's service end to end over an in-process transport: the real
 * server (handlers + ttrpc server, as in the guest) and the real host
 * client (AgentClient over ttrpc), connected through a unix socket in a temp
 * dir that answers the hybrid-vsock handshake, with the DirectRuntime test
 * double instead of crun.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { dialAgent } from '../../../src/protocols/agent-dialer';
import { AgentSandbox } from '../../../src/agent/sandbox';
import { agentHandlers } from '../../../src/agent/service';
import { AgentClient, AgentCallError } from '../../../src/runtime/agent-client';
import { attachProcess } from '../../../src/runtime/stdio';
import { defaultSpec } from '../../../src/runtime/spec';
import { DirectRuntime } from '../../helpers/direct-runtime';
import { serveAgentOnUnix, type AgentRig } from '../../helpers/agent-rig';

describe('unit: agent service over an in-process transport', function () {
  this.timeout(20000);
  let dir: string;
  let rig: AgentRig;
  let client: AgentClient;
  let sandbox: AgentSandbox;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-agent-'));
    sandbox = new AgentSandbox({ runtime: new DirectRuntime(), stateDir: path.join(dir, 'state'), cgroupRoot: path.join(dir, 'cgroup') });
    rig = await serveAgentOnUnix(agentHandlers(sandbox), path.join(dir, 'agent.sock'));
    client = new AgentClient(dialAgent(rig.socket));
    await client.check(5000);
  });

  after(async () => {
    await sandbox?.destroySandbox();
    client?.close();
    await rig?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const spec = (args: string[], env: string[] = []) => JSON.stringify({ ...defaultSpec({ args, env }), root: { path: '/' } });

  async function runToEnd(id: string, args: string[], input?: string, env: string[] = []) {
    await client.createContainer({ container_id: id, exec_id: '', storages: [], oci_spec_json: spec(args, env) });
    const pid = await client.startContainer(id);
    const out = new PassThrough();
    const err = new PassThrough();
    let o = '';
    let e = '';
    out.on('data', (d) => (o += d));
    err.on('data', (d) => (e += d));
    const stdin = input === undefined ? undefined : (() => { const p = new PassThrough(); p.end(input); return p; })();
    const st = await attachProcess(client, id, '', { stdin, stdout: out, stderr: err, terminal: false }).done;
    return { pid, status: st.status, signal: st.signal, out: o, err: e };
  }

  it('answers Check and GetGuestDetails', async () => {
    const d = await client.guestDetails();
    expect(d.agent_version).to.match(/^\d+\.\d+\.\d+$/);
    expect(d.kernel_release).to.equal(os.release());
    expect(d.crun_version).to.equal('direct-test-double');
  });

  it('runs a container: stdout, stderr, exit status, env', async () => {
    const r = await runToEnd('c-status', ['sh', '-c', 'echo out $X; echo err >&2; exit 3'], undefined, ['X=ex']);
    expect(r.pid).to.be.greaterThan(0);
    expect(r.status).to.equal(3);
    expect(r.out).to.equal('out ex\n');
    expect(r.err).to.equal('err\n');
  });

  it('forwards stdin and its end', async () => {
    const r = await runToEnd('c-stdin', ['sh', '-c', 'wc -c'], 'x'.repeat(100000));
    expect(r.out.trim()).to.equal('100000');
  });

  it('delivers a signal and reports 128+signal', async () => {
    await client.createContainer({ container_id: 'c-kill', exec_id: '', storages: [], oci_spec_json: spec(['sleep', '30']) });
    await client.startContainer('c-kill');
    await client.signalProcess({ container_id: 'c-kill', exec_id: '', signal: 9 });
    const st = await client.waitProcess({ container_id: 'c-kill', exec_id: '' });
    expect(st.status).to.equal(137);
    expect(st.signal).to.equal(9);
    expect(st.exited_at_ms).to.be.closeTo(Date.now(), 10000);
  });

  it('execs a second process into a running container', async () => {
    await client.createContainer({ container_id: 'c-exec', exec_id: '', storages: [], oci_spec_json: spec(['sleep', '30']) });
    await client.startContainer('c-exec');
    const pid = await client.execProcess({ container_id: 'c-exec', exec_id: 'e1', process_json: JSON.stringify({ args: ['sh', '-c', 'echo from exec; exit 4'], cwd: '/', user: { uid: 0, gid: 0 } }) });
    expect(pid).to.be.greaterThan(0);
    const out = new PassThrough();
    let o = '';
    out.on('data', (d) => (o += d));
    const st = await attachProcess(client, 'c-exec', 'e1', { stdout: out, stderr: new PassThrough(), terminal: false }).done;
    expect(st.status).to.equal(4);
    expect(o).to.equal('from exec\n');
    await client.removeContainer('c-exec', 0);
    expect(sandbox.containers.has('c-exec')).to.equal(false);
  });

  /**
   * A plain directory stands in for /sys/fs/cgroup/kata-ts/<id>; a fake
   * kernel mirrors cgroup.freeze into cgroup.events as the freezer does.
   */
  function fakeCgroup(id: string): { dir: string; stop: () => void } {
    const cg = path.join(dir, 'cgroup', id);
    fs.mkdirSync(cg, { recursive: true });
    const files: Record<string, string> = {
      'cgroup.freeze': '0\n', 'cgroup.events': 'populated 1\nfrozen 0\n', 'memory.max': 'max\n', 'memory.low': '0\n',
      'cpu.max': 'max 100000\n', 'cpu.weight': '100\n', 'pids.max': 'max\n', 'pids.current': '2\n', 'memory.current': '4096\n',
      'memory.events': 'low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n', 'cpu.stat': 'usage_usec 10\nuser_usec 6\nsystem_usec 4\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n',
    };
    for (const [f, v] of Object.entries(files)) fs.writeFileSync(path.join(cg, f), v);
    const t = setInterval(() => {
      const frozen = fs.readFileSync(path.join(cg, 'cgroup.freeze'), 'utf8').trim();
      fs.writeFileSync(path.join(cg, 'cgroup.events'), `populated 1\nfrozen ${frozen}\n`);
    }, 20);
    return { dir: cg, stop: () => clearInterval(t) };
  }

  it('pauses and resumes a container through its cgroup freezer', async () => {
    const cg = fakeCgroup('c-pause');
    try {
      await client.createContainer({ container_id: 'c-pause', exec_id: '', storages: [], oci_spec_json: spec(['sleep', '30']) });
      await client.startContainer('c-pause');
      await client.pauseContainer('c-pause');
      expect(fs.readFileSync(path.join(cg.dir, 'cgroup.events'), 'utf8')).to.include('frozen 1');
      const kind = (p: Promise<unknown>) => p.then(() => 'ok', (e: AgentCallError) => e.kind);
      expect(await kind(client.pauseContainer('c-pause')), 'twice').to.equal('failed-precondition');
      expect(await kind(client.execProcess({ container_id: 'c-pause', exec_id: 'x', process_json: JSON.stringify({ args: ['true'] }) }))).to.equal('failed-precondition');
      await client.resumeContainer('c-pause');
      expect(fs.readFileSync(path.join(cg.dir, 'cgroup.freeze'), 'utf8')).to.equal('0');
      expect(fs.readFileSync(path.join(cg.dir, 'cgroup.events'), 'utf8')).to.include('frozen 0');
      expect(await kind(client.resumeContainer('c-pause')), 'not paused').to.equal('failed-precondition');
      expect(await kind(client.pauseContainer('nope'))).to.equal('not-found');
      await client.removeContainer('c-pause', 0);
    } finally {
      cg.stop();
    }
  });

  it('updates cgroup v2 resources from OCI LinuxResources and reports them in stats', async () => {
    const cg = fakeCgroup('c-upd');
    try {
      await client.createContainer({ container_id: 'c-upd', exec_id: '', storages: [], oci_spec_json: spec(['sleep', '30']) });
      await client.startContainer('c-upd');
      const res = { memory: { limit: 64 << 20, reservation: 1 << 20 }, cpu: { shares: 1024, quota: 50000, period: 100000 }, pids: { limit: 42 } };
      await client.updateContainer({ container_id: 'c-upd', resources_json: JSON.stringify(res) });
      const rd = (f: string) => fs.readFileSync(path.join(cg.dir, f), 'utf8');
      expect(rd('memory.max')).to.equal(String(64 << 20));
      expect(rd('memory.low')).to.equal(String(1 << 20));
      expect(rd('cpu.max')).to.equal('50000 100000');
      expect(rd('cpu.weight')).to.equal('39');
      expect(rd('pids.max')).to.equal('42');
      // A period alone keeps the quota; -1 lifts a limit.
      await client.updateContainer({ container_id: 'c-upd', resources_json: JSON.stringify({ cpu: { period: 200000 }, pids: { limit: -1 } }) });
      expect(rd('cpu.max')).to.equal('50000 200000');
      expect(rd('pids.max')).to.equal('max');
      const st = await client.statsContainer('c-upd');
      expect(st).to.include({ memory_limit_bytes: 64 << 20, memory_usage_bytes: 4096, pids_current: 2, pids_limit: 0, cpu_usage_usec: 10 });
      const kind = (p: Promise<unknown>) => p.then(() => 'ok', (e: AgentCallError) => e.kind);
      expect(await kind(client.updateContainer({ container_id: 'c-upd', resources_json: '{nope' }))).to.equal('invalid');
      expect(await kind(client.updateContainer({ container_id: 'c-upd', resources_json: JSON.stringify({ unified: { '../x': '1' } }) }))).to.equal('invalid');
      fs.rmSync(path.join(cg.dir, 'pids.max'));
      expect(await kind(client.updateContainer({ container_id: 'c-upd', resources_json: JSON.stringify({ pids: { limit: 5 } }) })), 'no controller file').to.equal('failed-precondition');
      await client.removeContainer('c-upd', 0);
    } finally {
      cg.stop();
    }
  });

  it('reports an OOM kill through the GetOOMEvent long poll', async () => {
    const cg = fakeCgroup('c-oom');
    try {
      await client.createContainer({ container_id: 'c-oom', exec_id: '', storages: [], oci_spec_json: spec(['sleep', '30']) });
      await client.startContainer('c-oom');
      const ev = client.getOomEvent();
      let got = '';
      void ev.then((e) => (got = e.container_id));
      await new Promise((r) => setTimeout(r, 200));
      expect(got, 'nothing before an OOM kill').to.equal('');
      fs.writeFileSync(path.join(cg.dir, 'memory.events'), 'low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n');
      expect((await ev).container_id).to.equal('c-oom');
      expect((await client.statsContainer('c-oom')).memory_oom_kill).to.equal(1);
      await client.removeContainer('c-oom', 0);
    } finally {
      cg.stop();
    }
  });

  it('maps errors onto gRPC codes', async () => {
    const code = async (p: Promise<unknown>) => {
      try {
        await p;
      } catch (err) {
        expect(err).to.be.instanceOf(AgentCallError);
        return (err as AgentCallError).kind;
      }
      return 'no error';
    };
    expect(await code(client.startContainer('nope'))).to.equal('not-found');
    expect(await code(client.waitProcess({ container_id: 'c-status', exec_id: 'nope' }))).to.equal('not-found');
    expect(await code(client.createContainer({ container_id: 'c-status', exec_id: '', storages: [], oci_spec_json: spec(['true']) }))).to.equal('already-exists');
    expect(await code(client.createContainer({ container_id: 'bad json', exec_id: '', storages: [], oci_spec_json: '{' }))).to.equal('invalid');
    expect(await code(client.createContainer({ container_id: 'c-badspec', exec_id: '', storages: [], oci_spec_json: '{"ociVersion":"1"}' }))).to.equal('invalid');
    expect(await code(client.createContainer({ container_id: 'c-store', exec_id: '', storages: [{ driver: 'nfs', source: 'x', fstype: '', options: [], mount_point: path.join(dir, 'm') }], oci_spec_json: spec(['true']) }))).to.equal('failed-precondition');
    await client.createContainer({ container_id: 'c-nocmd', exec_id: '', storages: [], oci_spec_json: spec(['definitely-not-a-command-xyz']) });
    const e = await client.startContainer('c-nocmd').catch((x: AgentCallError) => x);
    expect((e as AgentCallError).kind).to.equal('not-found');
    expect((e as AgentCallError).message).to.match(/executable file `definitely-not-a-command-xyz` not found/);
    expect(await code(client.signalProcess({ container_id: 'c-status', exec_id: '', signal: 0 }))).to.equal('invalid');
    expect(await code(client.startContainer('c-status'))).to.equal('failed-precondition');
    // failed creations leave no container behind
    expect([...sandbox.containers.keys()]).to.not.include.members(['c-badspec', 'c-store']);
  });
});
