/**
 * Faults, each in the middle of an operation (issue 11, "Figures"): a
 * detached container (`ctr run -d`) with an exec in flight, then one of
 *
 *   - SIGKILL of QEMU,
 *   - a guest kernel panic, raised from inside: a privileged container sets
 *     vm.panic_on_oom=2 and then runs out of its memory limit, so the memcg
 *     OOM panics the kernel ("compulsory panic_on_oom"); the guest boots with
 *     panic=-1 and QEMU with -no-reboot, so the panic ends QEMU. (The guest
 *     kernel has no CONFIG_MAGIC_SYSRQ, and kata-init as PID 1 cannot be
 *     killed from inside; this is a real panic(), checked on the console.)
 *   - SIGKILL of the shim (containerd.test.ts kills an idle one; here it dies
 *     while an exec runs, and kata-ctl cleanup is checked too).
 *
 * Each time containerd must see the task exit (/tasks/exit event, STOPPED,
 * the exec's client returns), `ctr task delete` / `container delete` (and
 * containerd's `shim delete` where the shim died) and then `kata-ctl
 * cleanup` must leave nothing: no shim, no QEMU, no sandbox dir, no mount
 * under containerd's dir, no socket file or bound socket under kata-ts's run
 * dir or the shims' socket dir. SIGKILL of the runtime (`kata-ts run`) is
 * test/integration/owner-death.test.ts. One containerd for the file, one VM
 * per test.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { kataCtl } from '../helpers/kata-ctl';
import { IMAGE, RUNTIME, TestContainerd, startTestContainerd, stopTestContainerd } from '../helpers/containerd';
import { until } from '../helpers/until';

function socketsUnder(dir: string, out: string[] = []): string[] {
  let entries: fs.Dirent[] = [];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) socketsUnder(p, out);
    else if (e.isSocket()) out.push(p);
  }
  return out;
}

/** Bound unix sockets (any process) whose path is under `dir`. */
function boundSocketsUnder(dir: string): string[] {
  return fs.readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1).map((l) => l.trim().split(/\s+/)[7] ?? '').filter((p) => p.startsWith(dir + '/'));
}

/** A `ctr task exec` left running in the background. */
interface BgExec { proc: ChildProcess; out: () => string; exit: Promise<number | null> }

describe('e2e: faults mid-operation (ctr, kata-ts shim, QEMU)', function () {
  this.timeout(300000);
  let cd: TestContainerd;
  let events: ChildProcess | undefined;
  let evs = '';
  const bgExecs: BgExec[] = [];

  const taskStatus = async (id: string) => {
    const ls = await cd.ctr(['task', 'ls']);
    return ls.stdout.split('\n').find((l) => l.split(/\s+/)[0] === id)?.split(/\s+/)[2];
  };
  const sandboxDirs = () => {
    const d = path.join(cd.runDir, 'sandboxes');
    return fs.existsSync(d) ? fs.readdirSync(d) : [];
  };
  /** containerd's /tasks/exit event for process `id` of container `cid`: its exit_status. */
  const exitEvent = (cid: string, id: string) => until(`/tasks/exit of ${id}`, () => {
    const line = evs.split('\n').find((l) => l.includes(`/tasks/exit {"container_id":"${cid}","id":"${id}"`));
    return line ? Number(/"exit_status":(\d+)/.exec(line)?.[1] ?? 0) : undefined;
  }, 30000);

  /** The shim logs why its VM went ("sandbox VM exited"), after the agent connection dropped. */
  const shimSaw = (sandbox: string, why: RegExp) => until(`the shim of ${sandbox} to log its VM's exit`, () => {
    for (const l of cd.log.split('\n')) {
      if (!l.includes('"msg":"sandbox VM exited"') || !l.includes(`"sandbox":"${sandbox}"`)) continue;
      return (JSON.parse(l) as { why: string }).why;
    }
    return undefined;
  }, 15000).then((w) => expect(w).to.match(why));

  /** The test's container, removed by afterEach whatever the test left. */
  let current = '';
  const runDetached = async (id: string, extra: string[] = []) => {
    current = id;
    const d = await cd.ctr(['run', '--runtime', RUNTIME, '-d', ...extra, IMAGE, id, 'sh', '-c', 'trap "exit 42" TERM; while :; do sleep 0.1; done']);
    expect(d.code, d.stderr).to.equal(0);
    expect(await taskStatus(id)).to.equal('RUNNING');
    expect(cd.qemuPids(), 'one VM').to.have.length(1);
  };

  /** Starts `ctr task exec` in the background and waits for its first output line `started`. */
  const startExec = async (id: string, execId: string, script: string): Promise<BgExec> => {
    const proc = spawn('ctr', ['--address', cd.socket, '-n', cd.namespace, 'task', 'exec', '--exec-id', execId, id, 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    proc.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    const exit = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    const bg = { proc, out: () => out, exit };
    bgExecs.push(bg);
    await until(`exec ${execId} to start`, () => (out.includes('started') ? true : proc.exitCode !== null ? Promise.reject(new Error(`exec ${execId} ended: ${out}`)) : undefined), 60000);
    return bg;
  };

  /** The exec's client returns (no hang), with a failure status. */
  const execEnds = async (bg: BgExec): Promise<number | null> => {
    const code = await Promise.race([bg.exit, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 30000))]);
    expect(code, `ctr task exec still waiting 30 s after the fault: ${bg.out()}`).to.not.equal('hung');
    expect(code, 'the exec does not report success').to.not.equal(0);
    return code as number | null;
  };

  /**
   * Delete the task (unless containerd already did: it deletes the task of a
   * dead shim itself) and the container, then: nothing left, and kata-ctl
   * cleanup finds nothing either.
   */
  const deleteAndExpectNothingLeft = async (id: string, exitCode: number | 'deleted by containerd') => {
    if (exitCode === 'deleted by containerd') {
      expect(await taskStatus(id), 'task already deleted').to.equal(undefined);
    } else {
      const del = await cd.ctr(['task', 'delete', id]);
      expect(del.stderr, 'ctr task delete reports the exit status').to.match(new RegExp(`exit code ${exitCode}\\b`));
    }
    expect((await cd.ctr(['container', 'delete', id])).code).to.equal(0);
    await until('shim gone', () => (cd.shimPids().length === 0 ? true : undefined), 20000);
    await until('sandbox dir removed', () => (sandboxDirs().length === 0 ? true : undefined), 20000);
    const left = () => ({
      shims: cd.shimPids(), qemu: cd.qemuPids(), sandboxes: sandboxDirs(), mounts: cd.mountsBelow(),
      sockets: [...socketsUnder(cd.runDir), ...socketsUnder(path.join(cd.dir, 's'))],
      bound: [...boundSocketsUnder(cd.runDir), ...boundSocketsUnder(path.join(cd.dir, 's'))],
    });
    const none = { shims: [], qemu: [], sandboxes: [], mounts: [], sockets: [], bound: [] };
    expect(left(), 'left after task and container delete').to.deep.equal(none);
    const clean = await kataCtl(['--config', path.join(cd.dir, 'kata-ts.toml'), 'cleanup'], { timeoutMs: 60000 });
    expect(clean.code, clean.stderr).to.equal(0);
    expect(clean.stdout, 'nothing was left for kata-ctl cleanup').to.equal('no stale sandboxes\n');
    expect(left(), 'left after kata-ctl cleanup').to.deep.equal(none);
  };

  before(async function () {
    cd = await startTestContainerd(this);
    events = spawn('ctr', ['--address', cd.socket, 'events'], { stdio: ['ignore', 'pipe', 'ignore'] });
    events.stdout!.on('data', (b: Buffer) => (evs += b.toString()));
  });

  afterEach(async function () {
    for (const b of bgExecs.splice(0)) if (b.proc.exitCode === null) b.proc.kill('SIGKILL');
    if (this.currentTest?.state === 'failed') process.stdout.write(`containerd log tail:\n${cd.log.split('\n').slice(-30).join('\n')}\nevents:\n${evs.split('\n').slice(-15).join('\n')}\n`);
    // A failed test must not leave its VM to the next one.
    const id = current;
    current = '';
    if (!id || !cd) return;
    const st = await taskStatus(id);
    if (st && st !== 'STOPPED') {
      await cd.ctr(['task', 'kill', '-s', 'SIGKILL', id]);
      await until(`${id} stopped`, async () => ((await taskStatus(id)) === 'STOPPED' ? true : undefined)).catch(() => undefined);
    }
    if (st) await cd.ctr(['task', 'delete', id]);
    await cd.ctr(['container', 'delete', id]);
    await until('shim gone', () => (cd.shimPids().length === 0 ? true : undefined), 20000).catch(() => undefined);
  });

  after(async () => {
    events?.kill();
    await stopTestContainerd(cd);
  });

  it('SIGKILL of QEMU during an exec: containerd sees both exit (255), delete and cleanup leave nothing', async () => {
    const ID = 'fq1';
    await runDetached(ID);
    const ex = await startExec(ID, 'x1', 'echo started; sleep 600');
    const [qemu] = cd.qemuPids();
    process.kill(qemu!, 'SIGKILL');
    await execEnds(ex);
    expect(await exitEvent(ID, 'x1')).to.equal(255);
    expect(await exitEvent(ID, ID)).to.equal(255);
    await until(`${ID} stopped`, async () => ((await taskStatus(ID)) === 'STOPPED' ? true : undefined));
    // The shim lives on (its VM is gone) and says so instead of hanging.
    expect(cd.shimPids(), 'the shim survives its VM').to.have.length(1);
    const late = await cd.ctr(['task', 'exec', '--exec-id', 'x2', ID, 'true']);
    expect(late.code, 'no exec into a dead VM').to.not.equal(0);
    await shimSaw(ID, /QEMU exited \(SIGKILL\)/);
    await deleteAndExpectNothingLeft(ID, 255);
  });

  it('guest kernel panic during an exec (panic_on_oom in a privileged container): QEMU ends, containerd sees the exit, nothing left', async () => {
    const ID = 'fp1';
    await runDetached(ID, ['--privileged', '--memory-limit', String(64 << 20)]);
    const [qemu] = cd.qemuPids();
    const bystander = await startExec(ID, 'x1', 'echo started; sleep 600');
    // Raise the panic from inside: vm.panic_on_oom=2 panics on any OOM, a
    // memcg's included; the container's 64 MiB limit is then exceeded.
    const panicker = await startExec(ID, 'x2', 'echo 2 > /proc/sys/vm/panic_on_oom && echo started && tail /dev/zero');
    await execEnds(panicker);
    await execEnds(bystander);
    await until('QEMU to end', () => (cd.qemuPids().length === 0 ? true : undefined), 30000);
    expect(fs.existsSync(`/proc/${qemu}`) && !/\) Z/.test(fs.readFileSync(`/proc/${qemu}/stat`, 'utf8')), 'QEMU gone').to.equal(false);
    expect(await exitEvent(ID, 'x1')).to.equal(255);
    expect(await exitEvent(ID, 'x2')).to.equal(255);
    expect(await exitEvent(ID, ID)).to.equal(255);
    await until(`${ID} stopped`, async () => ((await taskStatus(ID)) === 'STOPPED' ? true : undefined));
    // It was a kernel panic, not a power-off: the guest console says so.
    const [sb] = sandboxDirs();
    const consoleLog = fs.readFileSync(path.join(cd.runDir, 'sandboxes', sb!, 'console.log'), 'utf8');
    expect(consoleLog).to.match(/Kernel panic - not syncing: Out of memory: compulsory panic_on_oom is enabled/);
    // The guest rebooted on panic (panic=-1) and -no-reboot turned that into QEMU's exit.
    await shimSaw(ID, /QEMU exited \(status 0\)/);
    await deleteAndExpectNothingLeft(ID, 255);
  });

  it('SIGKILL of the shim during an exec: containerd sees the exit (137), shim delete and cleanup leave nothing', async () => {
    const ID = 'fs1';
    await runDetached(ID);
    const ex = await startExec(ID, 'x1', 'echo started; sleep 600');
    const [shim] = cd.shimPids();
    expect(cd.shimPids()).to.have.length(1);
    process.kill(shim!, 'SIGKILL');
    await execEnds(ex);
    // containerd ran `shim delete` (137, as its own shims report a task
    // killed with its shim), published the exit and deleted the task itself.
    expect(await exitEvent(ID, ID)).to.equal(137);
    await until(`${ID} deleted by containerd`, async () => ((await taskStatus(ID)) === undefined ? true : undefined));
    expect(evs).to.include(`/tasks/delete {"container_id":"${ID}","exit_status":137`);
    await until('qemu gone', () => (cd.qemuPids().length === 0 ? true : undefined), 20000);
    await deleteAndExpectNothingLeft(ID, 'deleted by containerd');
  });
});
