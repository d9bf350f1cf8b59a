/**
 * containerd end to end: a private containerd drives containerd-shim-kata-ts-v2
 * through `ctr`, every container in a QEMU VM (TCG here). One containerd
 * for the whole file; VM boots are the cost (~10 s each), so checks that can
 * share one container do: one test each, the container started and removed
 * by their describe's hooks. 6 VMs in all.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { IMAGE, RUNTIME, TestContainerd, USER_IMAGE, startTestContainerd, stopTestContainerd } from '../helpers/containerd';
import { TtrpcClient } from '../../src/protocols/ttrpc/client';
import { encodeFrame } from '../../src/protocols/ttrpc/frame';
import { decode, encode } from '../../src/protocols/ttrpc/messages';
import { until } from '../helpers/until';

const TASK = 'containerd.task.v2.Task';

describe('e2e: ctr with io.containerd.kata-ts.v2', function () {
  this.timeout(240000);
  let cd: TestContainerd;
  const run = (args: string[], o: { input?: string } = {}) => cd.ctr(['run', '--runtime', RUNTIME, ...args], o);
  const taskStatus = async (id: string) => {
    const ls = await cd.ctr(['task', 'ls']);
    const line = ls.stdout.split('\n').find((l) => l.split(/\s+/)[0] === id);
    return line?.split(/\s+/)[2];
  };
  const bundleOf = (id: string) => path.join(cd.dir, 'state', 'io.containerd.runtime.v2.task', cd.namespace, id);

  before(async function () {
    cd = await startTestContainerd(this);
  });

  after(async () => {
    await stopTestContainerd(cd);
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') process.stdout.write(`containerd log tail:\n${cd.log.split('\n').slice(-25).join('\n')}\n`);
  });

  it('runs in the guest kernel with exit status and both streams (ctr run --rm)', async () => {
    const r = await run(['--rm', IMAGE, 'rm1', 'sh', '-c', 'uname -r; echo to-stderr >&2; exit 3']);
    expect(r.stderr).to.equal('to-stderr\n');
    expect(r.code).to.equal(3);
    expect(r.stdout.trim()).to.match(/^6\.1\./);
    expect(r.stdout.trim()).to.not.equal(os.release());
    expect(cd.shimPids(), 'shim exits after --rm').to.deep.equal([]);
    expect(cd.qemuPids()).to.deep.equal([]);
  });

  it('takes the handler\'s configuration file from containerd\'s runtime options (ConfigPath: ctr run --runtime-config-path)', async () => {
    const base = fs.readFileSync(path.join(cd.dir, 'kata-ts.toml'), 'utf8');
    expect(base).to.not.include('[hypervisor.qemu]');
    const file = path.join(cd.dir, 'handler.toml');
    fs.writeFileSync(file, `${base}\n[hypervisor.qemu]\nkernel_params = "kts_handler_config=1"\n`);
    const r = await run(['--rm', '--runtime-config-path', file, IMAGE, 'cfgpath1', 'cat', '/proc/cmdline']);
    expect(r.stderr).to.equal('');
    expect(r.code).to.equal(0);
    expect(r.stdout.split(' ').map((w) => w.trim())).to.include('kts_handler_config=1');
    // A path the shim cannot load fails the start with the option named, and leaves nothing.
    const bad = await run(['--rm', '--runtime-config-path', path.join(cd.dir, 'missing.toml'), IMAGE, 'cfgpath2', 'true']);
    expect(bad.code).to.not.equal(0);
    expect(bad.stderr).to.match(/ConfigPath ".*missing.toml": no such file/);
    expect(cd.shimPids()).to.deep.equal([]);
    expect(cd.qemuPids()).to.deep.equal([]);
    await cd.ctr(['containers', 'rm', 'cfgpath2']);
  });

  it('takes env, user and working dir from the image config', async () => {
    const r = await run(['--rm', '--env', 'EXTRA=from-ctr', USER_IMAGE, 'user1', 'sh', '-c', 'id -u; id -g; echo $FROM_IMAGE $EXTRA; pwd']);
    expect(r.stderr).to.equal('');
    expect(r.stdout).to.equal('1000\n1000\nimage-env from-ctr\n/home\n');
    expect(r.code).to.equal(0);
  });

  it('passes stdin through (ctr run attaches it) and sees its end', async () => {
    const input = Array.from({ length: 500 }, (_, i) => `line ${i}`).join('\n') + '\n';
    const r = await run(['--rm', IMAGE, 'stdin1', 'sh', '-c', 'wc -l; echo done'], { input });
    expect(r.stdout).to.equal('500\ndone\n');
    expect(r.code).to.equal(0);
  });

  // One detached container (one VM) shared by the tests below, each checking
  // one feature, so one failure does not hide the others. The hooks start it
  // and make sure it is gone whatever failed; each test leaves it running and
  // unpaused for the next.
  describe('a detached container (ctr run -d)', function () {
    const ID = 'd1';
    let events: ReturnType<typeof spawn> | undefined;
    let evs = '';
    const sawEvent = (topic: string) => until(`${topic} event`, async () => (evs.includes(`${topic} {"container_id":"${ID}"}`) ? true : undefined), 15000);
    const cgFile = (f: string) => `cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/${f}`;
    /** containerd's Update request (LinuxResources JSON in an Any), sent to the shim: ctr 1.6 has no `task update`. */
    const update = async (resources: Record<string, unknown>) => {
      const tc = await TtrpcClient.connect(fs.readFileSync(path.join(bundleOf(ID), 'address'), 'utf8'));
      try {
        const any = { type_url: 'types.containerd.io/opencontainers/runtime-spec/1/LinuxResources', value: Buffer.from(JSON.stringify(resources)) };
        await tc.request(TASK, 'Update', 'containerd.task.v2.UpdateTaskRequest', 'google.protobuf.Empty', { id: ID, resources: any });
      } finally {
        tc.close();
      }
    };

    before(async function () {
      events = spawn('ctr', ['--address', cd.socket, 'events'], { stdio: ['ignore', 'pipe', 'ignore'] });
      events.stdout!.on('data', (b: Buffer) => (evs += b.toString()));
      const d = await run(['-d', IMAGE, ID, 'sh', '-c', 'trap "exit 42" TERM; while :; do sleep 0.1; done']);
      expect(d.code, d.stderr).to.equal(0);
    });

    after(async function () {
      events?.kill();
      if (!cd) return;
      // Whatever the tests left: no task, no container, no shim, no VM.
      const st = await taskStatus(ID);
      if (st === 'PAUSED') await cd.ctr(['task', 'resume', ID]);
      if (st && st !== 'STOPPED') {
        await cd.ctr(['task', 'kill', '-s', 'SIGKILL', ID]);
        await until(`${ID} stopped`, async () => ((await taskStatus(ID)) === 'STOPPED' ? true : undefined)).catch(() => undefined);
      }
      if (st) await cd.ctr(['task', 'delete', ID]);
      await cd.ctr(['container', 'delete', ID]);
      await until('shim gone', async () => (cd.shimPids().length === 0 ? true : undefined), 15000);
      expect(cd.qemuPids()).to.deep.equal([]);
    });

    it('is listed RUNNING by task ls', async () => {
      expect(await taskStatus(ID)).to.equal('RUNNING');
    });

    it('exec with pipes: both streams and the exit status', async () => {
      const ex = await cd.ctr(['task', 'exec', '--exec-id', 'e1', ID, 'sh', '-c', 'echo exec-out; echo exec-err >&2; exit 5']);
      expect(ex).to.include({ code: 5, stdout: 'exec-out\n', stderr: 'exec-err\n' });
    });

    it('exec with a terminal', async () => {
      // A terminal needs a tty on ctr's side too: script(1) provides one.
      const tty = await new Promise<{ code: number | null; out: string }>((resolve) => {
        const ctrCmd = `ctr --address ${cd.socket} -n ${cd.namespace} task exec -t --exec-id t1 ${ID} sh -c 'tty'`;
        const p = spawn('script', ['-qec', ctrCmd, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
        let out = '';
        p.stdout.on('data', (b: Buffer) => (out += b.toString()));
        p.on('exit', (code) => resolve({ code, out }));
        p.stdin.end();
      });
      expect(tty.code, tty.out).to.equal(0);
      expect(tty.out).to.match(/\/dev\/pts\/\d+/);
    });

    it('task ps lists its processes', async () => {
      const ps = await cd.ctr(['task', 'ps', ID]);
      expect(ps.code).to.equal(0);
      expect(ps.stdout.split('\n').filter((l) => /^\s*\d+/.test(l)).length).to.be.at.least(1);
    });

    it('task metrics report no pids limit before any update (unlimited as containerd says it)', async () => {
      const m = await cd.ctr(['task', 'metrics', ID]);
      expect(m.code, m.stderr).to.equal(0);
      expect(m.stdout).to.match(/pids\.limit\s+18446744073709551615\b/);
    });

    it('pause freezes the container (PAUSED, no exec), resume thaws it; both events reach containerd', async () => {
      // Pause freezes the container's cgroup in the guest (cgroup.freeze).
      const pause = await cd.ctr(['task', 'pause', ID]);
      try {
        expect(pause.code, pause.stderr).to.equal(0);
        expect(await taskStatus(ID)).to.equal('PAUSED');
        const frozenExec = await cd.ctr(['task', 'exec', '--exec-id', 'p1', ID, 'true']);
        expect(frozenExec.code, 'no exec into a frozen container').to.not.equal(0);
        expect(frozenExec.stderr).to.match(/paused/);
      } finally {
        const resume = await cd.ctr(['task', 'resume', ID]);
        expect(resume.code, resume.stderr).to.equal(0);
      }
      expect(await taskStatus(ID)).to.equal('RUNNING');
      await sawEvent('/tasks/paused');
      await sawEvent('/tasks/resumed');
      // The container sees the guest's cgroup tree (no cgroup namespace): its own is /proc/self/cgroup's path.
      const thawed = await cd.ctr(['task', 'exec', '--exec-id', 'p2', ID, 'sh', '-c', cgFile('cgroup.events')]);
      expect(thawed.stdout).to.match(/frozen 0/);
    });

    it('update sets memory.max and pids.max in the guest, and metrics report them', async () => {
      await update({ memory: { limit: 64 << 20 }, pids: { limit: 77 } });
      const lim = await cd.ctr(['task', 'exec', '--exec-id', 'u1', ID, 'sh', '-c', `${cgFile('memory.max')}; ${cgFile('pids.max')}`]);
      expect(lim.stdout).to.equal(`${64 << 20}\n77\n`);
      const metrics = await cd.ctr(['task', 'metrics', ID]);
      expect(metrics.code, metrics.stderr).to.equal(0);
      expect(metrics.stdout).to.match(new RegExp(`memory\\.usage_limit\\s+${64 << 20}\\b`));
      expect(metrics.stdout).to.match(/pids\.limit\s+77\b/);
      expect(Number(/memory\.usage\s+(\d+)/.exec(metrics.stdout)?.[1] ?? 0), metrics.stdout).to.be.greaterThan(0);
      expect(Number(/pids\.current\s+(\d+)/.exec(metrics.stdout)?.[1] ?? 0)).to.be.at.least(1);
    });

    it('past its memory limit the guest OOM-kills the biggest task (137) and containerd gets TaskOOM', async () => {
      await update({ memory: { limit: 64 << 20 } }); // its own limit: does not rely on the update test
      const oom = await cd.ctr(['task', 'exec', '--exec-id', 'o1', ID, 'tail', '/dev/zero']);
      expect(oom.code, 'OOM-killed').to.equal(137);
      await sawEvent('/tasks/oom');
    });

    it('kill (SIGTERM) runs the trap: delete reports exit code 42; the shim and the VM go away', async () => {
      expect((await cd.ctr(['task', 'kill', ID])).code).to.equal(0);
      await until(`${ID} stopped`, async () => ((await taskStatus(ID)) === 'STOPPED' ? true : undefined));
      const del = await cd.ctr(['task', 'delete', ID]);
      expect(del.stderr, 'ctr task delete reports the exit status').to.match(/exit code 42/);
      expect((await cd.ctr(['container', 'delete', ID])).code).to.equal(0);
      await until('shim gone', async () => (cd.shimPids().length === 0 ? true : undefined), 15000);
      expect(cd.qemuPids()).to.deep.equal([]);
    });
  });

  it('runs a pod: two containers in one VM through the CRI annotations; SIGKILL gives 137', async () => {
    const pod = ['--annotation', 'io.kubernetes.cri.sandbox-id=pod1'];
    const a = await run(['-d', ...pod, '--annotation', 'io.kubernetes.cri.container-type=sandbox', IMAGE, 'pod1', 'sleep', '600']);
    expect(a.code, a.stderr).to.equal(0);
    const b = await run(['-d', ...pod, '--annotation', 'io.kubernetes.cri.container-type=container', IMAGE, 'pod1-app', 'sh', '-c', 'echo app > /tmp/who; sleep 600']);
    expect(b.code, b.stderr).to.equal(0);
    expect(cd.shimPids(), 'one shim for the pod').to.have.length(1);
    expect(cd.qemuPids(), 'one VM for the pod').to.have.length(1);
    const bootA = await cd.ctr(['task', 'exec', '--exec-id', 'b1', 'pod1', 'cat', '/proc/sys/kernel/random/boot_id']);
    const bootB = await cd.ctr(['task', 'exec', '--exec-id', 'b2', 'pod1-app', 'cat', '/proc/sys/kernel/random/boot_id']);
    expect(bootA.stdout).to.match(/^[0-9a-f-]{36}\n$/);
    expect(bootB.stdout).to.equal(bootA.stdout);
    // Separate root filesystems all the same.
    const who = await cd.ctr(['task', 'exec', '--exec-id', 'w1', 'pod1', 'sh', '-c', 'cat /tmp/who 2>/dev/null || echo none']);
    expect(who.stdout).to.equal('none\n');
    expect((await cd.ctr(['task', 'kill', '-s', 'SIGKILL', 'pod1-app'])).code).to.equal(0);
    await until('pod1-app stopped', async () => ((await taskStatus('pod1-app')) === 'STOPPED' ? true : undefined));
    expect((await cd.ctr(['task', 'delete', 'pod1-app'])).stderr).to.match(/exit code 137/);
    expect((await cd.ctr(['container', 'delete', 'pod1-app'])).code).to.equal(0);
    expect(cd.qemuPids(), 'the pod VM outlives one member').to.have.length(1);
    expect((await cd.ctr(['task', 'kill', '-s', 'SIGKILL', 'pod1'])).code).to.equal(0);
    await until('pod1 stopped', async () => ((await taskStatus('pod1')) === 'STOPPED' ? true : undefined));
    expect((await cd.ctr(['task', 'delete', 'pod1'])).stderr).to.match(/exit code 137/);
    expect((await cd.ctr(['container', 'delete', 'pod1'])).code).to.equal(0);
    await until('pod shim gone', async () => (cd.shimPids().length === 0 ? true : undefined), 15000);
    expect(cd.qemuPids()).to.deep.equal([]);
  });

  it('answers bad input with proper errors and keeps serving; a killed shim is cleaned up by containerd', async () => {
    const d = await run(['-d', IMAGE, 'crash1', 'sleep', '600']);
    expect(d.code, d.stderr).to.equal(0);
    const address = fs.readFileSync(path.join(bundleOf('crash1'), 'address'), 'utf8');
    const sockPath = address.replace(/^unix:\/\//, '');
    // Raw garbage, an even stream id, an undecodable request.
    const raw = net.createConnection(sockPath);
    await new Promise((r) => raw.once('connect', r));
    const replies: Buffer[] = [];
    raw.on('data', (b: Buffer) => replies.push(b));
    raw.write(encodeFrame(2, 1, 0, encode('ttrpc.Request', { service: TASK, method: 'State', payload: Buffer.alloc(0) })));
    raw.write(encodeFrame(3, 1, 0, Buffer.from([0x0a, 0x05, 0x41])));
    await until('two replies', async () => (Buffer.concat(replies).length >= 20 ? true : undefined), 5000);
    const all = Buffer.concat(replies);
    const first = decode<{ status: { code: number } }>('ttrpc.Response', all.subarray(10, 10 + all.readUInt32BE(0)));
    expect(first.status.code).to.equal(3); // InvalidArgument
    raw.destroy();
    const c = await TtrpcClient.connect(address);
    try {
      const err = (p: Promise<unknown>) => p.then(() => expect.fail('should have failed'), (e: Error & { kind: string }) => e.kind);
      expect(await err(c.call('no.such.Service', 'X', Buffer.alloc(0)))).to.equal('Unimplemented');
      expect(await err(c.call(TASK, 'NoSuchMethod', Buffer.alloc(0)))).to.equal('Unimplemented');
      const req = (m: string, t: string, v: Record<string, unknown>, res = 'google.protobuf.Empty') => c.request(TASK, m, `containerd.task.v2.${t}`, res, v);
      expect(await err(req('State', 'StateRequest', { id: 'nope' }, 'containerd.task.v2.StateResponse'))).to.equal('NotFound');
      expect(await err(req('Kill', 'KillRequest', { id: 'crash1', exec_id: 'nope', signal: 9 }))).to.equal('NotFound');
      expect(await err(req('Create', 'CreateTaskRequest', { id: 'bad1', bundle: '/nonexistent/bundle' }, 'containerd.task.v2.CreateTaskResponse'))).to.equal('InvalidArgument');
      expect(await err(req('Create', 'CreateTaskRequest', { id: 'crash1', bundle: bundleOf('crash1') }, 'containerd.task.v2.CreateTaskResponse'))).to.equal('AlreadyExists');
      expect(await err(req('Checkpoint', 'CheckpointTaskRequest', { id: 'crash1' }))).to.equal('Unimplemented');
      expect(await err(req('Delete', 'DeleteRequest', { id: 'crash1' }, 'containerd.task.v2.DeleteResponse'))).to.equal('FailedPrecondition');
      const st = await req('State', 'StateRequest', { id: 'crash1' }, 'containerd.task.v2.StateResponse') as { status: string };
      expect(st.status).to.equal('RUNNING');
    } finally {
      c.close();
    }
    // Now kill the shim outright: containerd notices, runs `shim delete`, which kills the VM.
    const [shim] = cd.shimPids();
    expect(shim).to.be.a('number');
    expect(cd.qemuPids()).to.have.length(1);
    process.kill(shim!, 'SIGKILL');
    await until('qemu cleaned up', async () => (cd.qemuPids().length === 0 ? true : undefined), 20000);
    await until('crash1 stopped', async () => ((await taskStatus('crash1')) !== 'RUNNING' ? true : undefined), 20000);
    await cd.ctr(['task', 'delete', 'crash1']);
    expect((await cd.ctr(['container', 'delete', 'crash1'])).code).to.equal(0);
    // QEMU dies with its shim now (parent-death signal), so the VM being gone no
    // longer means `shim delete` has run: wait for it to remove the sandbox dir.
    await until('shim delete to remove the sandbox dir', async () => (fs.readdirSync(path.join(cd.runDir, 'sandboxes')).length === 0 ? true : undefined), 15000);
    // containerd runs `shim delete` after each disconnect; under load the last may still be finishing.
    await until('shim delete processes gone', async () => (cd.shimPids().length === 0 ? true : undefined), 15000);
  });
});
