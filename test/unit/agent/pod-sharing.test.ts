/**
 * What CRI asks of the agent for the containers of one pod, checked on
 * AgentSandbox with the DirectRuntime test double (no VM, no crun):
 * - pod namespaces: a container whose spec gives pid/ipc/uts namespace
 *   paths (the sandbox container's, on the host) gets the sandbox
 *   container's guest namespaces in its crun bundle;
 * - net.* sysctls are applied guest-wide and taken out of the bundle;
 * - console sockets fit sun_path whatever the ids (64-hex CRI ids).
 * critest's "PodPID", "HostIpc is false", "sysctls" and "exec with tty=true
 * and stdin=true" specs exercise the same paths in a VM.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { AgentSandbox, writeGuestSysctl } from '../../../src/agent/sandbox';
import { AgentError } from '../../../src/agent/container';
import { adaptSpecForGuest, takeGuestSysctls, isNetworkSysctl } from '../../../src/agent/bundle';
import { consoleSocketPath } from '../../../src/agent/process';
import type { SpawnOptions } from '../../../src/agent/oci-runtime';
import type { OciSpec } from '../../../src/protocols/oci';
import { defaultSpec } from '../../../src/runtime/spec';
import { DirectRuntime } from '../../helpers/direct-runtime';

const hex = (c: string) => c.repeat(64);

/**
 * DirectRuntime plus a terminal: for an exec with a console socket it does
 * what crun does — opens a pty, sends the master over the socket, runs the
 * process on the slave (here: python's pty module, which prints and exits).
 */
class TtyRuntime extends DirectRuntime {
  sockets: string[] = [];
  override exec(id: string, processFile: string, opts: SpawnOptions): ChildProcess {
    if (!opts.consoleSocket) return super.exec(id, processFile, opts);
    this.sockets.push(opts.consoleSocket);
    const py = [
      'import os, pty, socket, sys',
      'm, s = pty.openpty()',
      'c = socket.socket(socket.AF_UNIX)',
      'c.connect(sys.argv[1])',
      'socket.send_fds(c, [b"x"], [m])',
      'os.write(s, b"on a tty: " + str(os.isatty(s)).encode() + b"\\n")',
    ].join('\n');
    const child = spawn('python3', ['-c', py, opts.consoleSocket], { stdio: ['ignore', 'ignore', 'pipe'] });
    if (opts.pidFile) fs.writeFileSync(opts.pidFile, String(child.pid));
    return child;
  }
}

describe('unit: agent pod sharing (namespaces, sysctls, console sockets)', function () {
  this.timeout(20000);
  let dir: string;
  let sandbox: AgentSandbox;
  let runtime: TtyRuntime;
  let written: [string, string][];

  const spec = (extra: (s: OciSpec) => void = () => undefined) => {
    const s = { ...defaultSpec({ args: ['sleep', '30'] }), root: { path: '/' } } as OciSpec;
    extra(s);
    return JSON.stringify(s);
  };
  const bundle = (id: string) => JSON.parse(fs.readFileSync(path.join(dir, 'state', id, 'bundle', 'config.json'), 'utf8')) as OciSpec;
  // CRI's spec of a pod's container: the pause container's namespaces on the host
  const criNamespaces = (s: OciSpec, pid: boolean) => {
    s.linux!.namespaces = [
      { type: 'pid', ...(pid ? { path: '/proc/4242/ns/pid' } : {}) },
      { type: 'ipc', path: '/proc/4242/ns/ipc' },
      { type: 'uts', path: '/proc/4242/ns/uts' },
      { type: 'mount' },
      { type: 'network', path: '/var/run/netns/cni-1' },
    ];
  };

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-podshare-'));
    runtime = new TtyRuntime();
    written = [];
    sandbox = new AgentSandbox({
      runtime, stateDir: path.join(dir, 'state'), cgroupRoot: path.join(dir, 'cgroup'),
      writeSysctl: async (k, v) => void written.push([k, v]),
    });
  });
  afterEach(async () => {
    await sandbox.destroySandbox();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the first container is the sandbox; later ones join its pid/ipc/uts namespaces in the guest', async () => {
    const pause = hex('a');
    await sandbox.createContainer({ container_id: pause, exec_id: '', storages: [], oci_spec_json: spec() });
    expect(sandbox.sandboxContainerId).to.equal(pause);
    const pid = await sandbox.startContainer(pause);
    expect(pid).to.be.greaterThan(0);
    // shareProcessNamespace: pid path too; otherwise ipc and uts only
    await sandbox.createContainer({ container_id: 'shared-pid', exec_id: '', storages: [], oci_spec_json: spec((s) => criNamespaces(s, true)) });
    await sandbox.createContainer({ container_id: 'own-pid', exec_id: '', storages: [], oci_spec_json: spec((s) => criNamespaces(s, false)) });
    expect(bundle('shared-pid').linux!.namespaces).to.deep.equal([
      { type: 'pid', path: `/proc/${pid}/ns/pid` }, { type: 'ipc', path: `/proc/${pid}/ns/ipc` },
      { type: 'uts', path: `/proc/${pid}/ns/uts` }, { type: 'mount' },
    ]);
    expect(bundle('own-pid').linux!.namespaces).to.deep.equal([
      { type: 'pid' }, { type: 'ipc', path: `/proc/${pid}/ns/ipc` }, { type: 'uts', path: `/proc/${pid}/ns/uts` }, { type: 'mount' },
    ]);
    // the sandbox container's own namespaces are new ones, whatever paths its spec held
    expect(bundle(pause).linux!.namespaces!.every((n) => !n.path)).to.equal(true);
  });

  it("StartContainer answers with the container's pid once crun has recorded it (not crun's own)", async () => {
    let calls = 0;
    runtime.pid = async () => (++calls < 4 ? 0 : 999999); // crun state: not yet, then the init's pid
    await sandbox.createContainer({ container_id: 'sb', exec_id: '', storages: [], oci_spec_json: spec() });
    expect(await sandbox.startContainer('sb')).to.equal(999999);
    expect(calls).to.equal(4);
    await sandbox.createContainer({ container_id: 'c2', exec_id: '', storages: [], oci_spec_json: spec((s) => criNamespaces(s, false)) });
    expect(bundle('c2').linux!.namespaces).to.deep.include({ type: 'ipc', path: '/proc/999999/ns/ipc' });
  });

  it('a container without namespace paths gets its own namespaces (kata-ts run, ctr)', async () => {
    await sandbox.createContainer({ container_id: 'sb', exec_id: '', storages: [], oci_spec_json: spec() });
    await sandbox.startContainer('sb');
    await sandbox.createContainer({ container_id: 'c2', exec_id: '', storages: [], oci_spec_json: spec() });
    expect(bundle('c2').linux!.namespaces!.every((n) => !n.path)).to.equal(true);
  });

  it('refuses to join the pod namespaces while the sandbox container is not running, and leaves nothing', async () => {
    await sandbox.createContainer({ container_id: 'sb', exec_id: '', storages: [], oci_spec_json: spec() });
    let err: unknown;
    try {
      await sandbox.createContainer({ container_id: 'c2', exec_id: '', storages: [], oci_spec_json: spec((s) => criNamespaces(s, true)) });
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(AgentError);
    expect((err as AgentError).kind).to.equal('failed-precondition');
    expect((err as Error).message).to.match(/sandbox container sb is not running/);
    expect(sandbox.containers.has('c2')).to.equal(false);
    expect(fs.existsSync(path.join(dir, 'state', 'c2'))).to.equal(false);
    expect(sandbox.sandboxContainerId, 'still the first').to.equal('sb');
  });

  it('applies net.* sysctls guest-wide and gives crun only the others', async () => {
    const sysctl = { 'net.ipv4.ip_unprivileged_port_start': '0', 'net/ipv4/ping_group_range': '0 2147483647', 'kernel.shm_rmid_forced': '1', 'fs.mqueue.msg_max': '100' };
    await sandbox.createContainer({ container_id: 'sb', exec_id: '', storages: [], oci_spec_json: spec((s) => (s.linux!.sysctl = { ...sysctl })) });
    expect(written).to.deep.equal([['net.ipv4.ip_unprivileged_port_start', '0'], ['net/ipv4/ping_group_range', '0 2147483647']]);
    expect(bundle('sb').linux!.sysctl).to.deep.equal({ 'kernel.shm_rmid_forced': '1', 'fs.mqueue.msg_max': '100' });
  });

  it('a failing guest sysctl fails CreateContainer and leaves nothing', async () => {
    const sb = new AgentSandbox({
      runtime, stateDir: path.join(dir, 'state2'), cgroupRoot: path.join(dir, 'cgroup'),
      writeSysctl: async (k) => { throw new AgentError('invalid', `sysctl ${k}: no such file`); },
    });
    const bad = spec((s) => (s.linux!.sysctl = { 'net.nope': '1' }));
    await sb.createContainer({ container_id: 'sb', exec_id: '', storages: [], oci_spec_json: bad }).then(
      () => expect.fail('created'),
      (e: AgentError) => expect(e.message).to.match(/sysctl net\.nope/),
    );
    expect(sb.containers.size).to.equal(0);
    expect(sb.sandboxContainerId).to.equal('');
  });

  it('writes guest sysctls by dotted or slashed name, and refuses names that leave /proc/sys', async () => {
    const root = path.join(dir, 'sys');
    fs.mkdirSync(path.join(root, 'net', 'ipv4', 'conf', 'eth0.1'), { recursive: true });
    await writeGuestSysctl('net.ipv4.ip_forward', '1', root);
    await writeGuestSysctl('net/ipv4/conf/eth0.1/rp_filter', '2', root);
    expect(fs.readFileSync(path.join(root, 'net', 'ipv4', 'ip_forward'), 'utf8')).to.equal('1');
    expect(fs.readFileSync(path.join(root, 'net', 'ipv4', 'conf', 'eth0.1', 'rp_filter'), 'utf8')).to.equal('2');
    for (const bad of ['net/../../etc/passwd', 'net..x', 'net/./x', 'net x', '']) {
      await writeGuestSysctl(bad, '1', root).then(() => expect.fail(bad), (e: AgentError) => expect(e.message).to.match(/bad sysctl name/));
    }
    await writeGuestSysctl('net.nope.x', '1', root).then(() => expect.fail('written'), (e: AgentError) => expect(e.message).to.match(/sysctl net\.nope\.x=1: ENOENT/));
  });

  it('an exec with a terminal in a container with a 64-hex id gets its pty (console socket fits sun_path)', async () => {
    const id = hex('b');
    await sandbox.createContainer({ container_id: id, exec_id: '', storages: [], oci_spec_json: spec() });
    await sandbox.startContainer(id);
    const execId = hex('c');
    await sandbox.execProcess({ container_id: id, exec_id: execId, process_json: JSON.stringify({ args: ['sh'], cwd: '/', terminal: true, user: { uid: 0, gid: 0 } }) });
    const p = sandbox.process({ container_id: id, exec_id: execId });
    let out = '';
    for (let b = await p.stdout.read(); b !== null; b = await p.stdout.read()) out += b.toString();
    expect(out).to.include('on a tty: True');
    expect(runtime.sockets).to.have.length(1);
    const sock = runtime.sockets[0]!;
    expect(Buffer.byteLength(sock)).to.be.lessThan(108);
    expect(path.dirname(sock)).to.equal(path.join(dir, 'cs'));
    expect(fs.existsSync(sock), 'socket removed once the pty arrived').to.equal(false);
  });
});

describe('unit: bundle pod parts (pure)', () => {
  const base = (): OciSpec => defaultSpec({ args: ['sh'] });

  it('console socket paths: short and distinct whatever the ids', () => {
    const a = consoleSocketPath('/run/kata-ts/cs', hex('d'), hex('e'));
    const b = consoleSocketPath('/run/kata-ts/cs', hex('e'), hex('d'));
    const init = consoleSocketPath('/run/kata-ts/cs', '', hex('e'));
    expect(new Set([a, b, init]).size).to.equal(3);
    for (const p of [a, b, init]) {
      expect(path.dirname(p)).to.equal('/run/kata-ts/cs');
      expect(Buffer.byteLength(p)).to.be.at.most(48);
    }
  });

  it('namespace paths without a sandbox pid are dropped; with one, only pid/ipc/uts are pointed at it', () => {
    const s = base();
    s.linux!.namespaces = [{ type: 'pid', path: '/p' }, { type: 'ipc', path: '/i' }, { type: 'uts', path: '/u' }, { type: 'cgroup', path: '/c' }, { type: 'network', path: '/n' }];
    expect(adaptSpecForGuest(s, { containerId: 'c', rootfs: '/r' }).linux!.namespaces!.some((n) => n.path)).to.equal(false);
    expect(adaptSpecForGuest(s, { containerId: 'c', rootfs: '/r', sandboxPid: 7 }).linux!.namespaces).to.deep.equal([
      { type: 'pid', path: '/proc/7/ns/pid' }, { type: 'ipc', path: '/proc/7/ns/ipc' }, { type: 'uts', path: '/proc/7/ns/uts' },
      { type: 'cgroup' }, { type: 'mount' },
    ]);
  });

  it('takeGuestSysctls takes net.* only and drops an emptied map', () => {
    const s = base();
    s.linux!.sysctl = { 'net.core.somaxconn': '1024' };
    expect(takeGuestSysctls(s)).to.deep.equal({ 'net.core.somaxconn': '1024' });
    expect(s.linux!.sysctl).to.equal(undefined);
    expect(isNetworkSysctl('kernel.shm_rmid_forced')).to.equal(false);
    expect(isNetworkSysctl('network.x')).to.equal(false);
  });
});
