/**
 * How the agent starts, signals and removes a container around crun without
 * a VM (src/agent/container.ts, oci-runtime.ts): StartContainer answers with
 * crun's only child as soon as crun has cloned it when the spec makes that
 * child the init, and with crun's record otherwise; exec and pod joins wait
 * for the record; the init is signalled by pid while crun lives; `crun
 * delete` runs only when crun left state behind. The runtime here is the
 * real CrunRuntime with a scripted `crun` binary and state root, and a `run`
 * that spawns a shell whose one child stands for the container's init.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { Container, initIsFirstClone } from '../../../src/agent/container';
import { CrunRuntime, onlyChild, type SpawnOptions } from '../../../src/agent/oci-runtime';
import { defaultSpec } from '../../../src/runtime/spec';
import type { OciSpec } from '../../../src/protocols/oci';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The child pids of `pid`, as /proc lists them. */
function childrenOf(pid: number): number[] {
  return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
}

async function until<T>(f: () => T | undefined, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error('timed out');
    await sleep(10);
  }
}

/** CrunRuntime whose `run` is a shell with one child (the "init"), and whose `crun` records its arguments. */
class ScriptedCrun extends CrunRuntime {
  readonly deletes: string[] = [];
  last: ChildProcess | undefined;
  constructor(binary: string, root: string, private readonly script = 'sleep 30 & wait $!') {
    super(binary, root);
  }

  override run(_id: string, _bundleDir: string, opts: SpawnOptions): ChildProcess {
    this.last = spawn('/bin/sh', ['-c', this.script], { stdio: opts.stdio ?? ['pipe', 'pipe', 'pipe'] });
    return this.last;
  }

  override async delete(id: string): Promise<void> {
    this.deletes.push(id);
  }
}

/** SIGKILL to a pid read from /proc a moment ago: it may have exited since (ESRCH is no error here). */
function killGone(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

describe('unit: container start, signal and remove around crun', function () {
  this.timeout(20000);
  let dir: string;
  let root: string;
  let fakeCrun: string;
  let argLog: string;
  const spawned: ChildProcess[] = [];

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-cstart-'));
    root = path.join(dir, 'crun-root');
    fs.mkdirSync(root);
    argLog = path.join(dir, 'crun-args');
    fakeCrun = path.join(dir, 'crun');
    fs.writeFileSync(fakeCrun, `#!/bin/sh\necho "$@" >> ${argLog}\n`, { mode: 0o755 });
  });
  afterEach(() => {
    for (const c of spawned) {
      if (c.exitCode !== null || c.signalCode !== null) continue;
      for (const k of childrenOf(c.pid!)) killGone(k);
      c.kill('SIGKILL');
    }
    spawned.length = 0;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function created(rt: ScriptedCrun, id: string, edit: (s: OciSpec) => void = () => undefined): Promise<Container> {
    const c = new Container(id, path.join(dir, 'containers', id), rt);
    const spec = { ...defaultSpec({ args: ['/bin/true'] }), root: { path: '/' } } as OciSpec;
    edit(spec);
    await c.create(JSON.stringify(spec), []);
    return c;
  }

  function writeStatus(id: string, pid: number): void {
    fs.mkdirSync(path.join(root, id), { recursive: true });
    fs.writeFileSync(path.join(root, id, 'status'), JSON.stringify({ pid }));
  }

  it('onlyChild: one pid in a children file, 0 for none, several or junk', () => {
    expect(onlyChild('123 ')).to.equal(123);
    expect(onlyChild('')).to.equal(0);
    expect(onlyChild('12 13 ')).to.equal(0);
    expect(onlyChild('x')).to.equal(0);
    expect(onlyChild('-5')).to.equal(0);
  });

  it('initIsFirstClone: not with a user namespace, a joined pid or time namespace, or hooks', () => {
    const base = (): OciSpec => ({ ...defaultSpec({ args: ['/bin/true'] }), root: { path: '/' } }) as OciSpec;
    expect(initIsFirstClone(base())).to.equal(true);
    const joinedIpc = base();
    joinedIpc.linux!.namespaces = [{ type: 'ipc', path: '/proc/1/ns/ipc' }, { type: 'pid' }];
    expect(initIsFirstClone(joinedIpc)).to.equal(true);
    const user = base();
    user.linux!.namespaces!.push({ type: 'user' });
    expect(initIsFirstClone(user)).to.equal(false);
    for (const type of ['pid', 'time']) {
      const joined = base();
      joined.linux!.namespaces = [{ type, path: `/proc/1/ns/${type}` }];
      expect(initIsFirstClone(joined), type).to.equal(false);
    }
    const hooked = base();
    hooked.hooks = { createRuntime: [{ path: '/bin/true' }] };
    expect(initIsFirstClone(hooked)).to.equal(false);
    const emptyHooks = base();
    emptyHooks.hooks = { prestart: [] };
    expect(initIsFirstClone(emptyHooks)).to.equal(true);
  });

  it('childPid names the only child of a process, 0 with two or none', async () => {
    const rt = new CrunRuntime(fakeCrun, root);
    const one = spawn('/bin/sh', ['-c', 'sleep 30 & wait']);
    const two = spawn('/bin/sh', ['-c', 'sleep 30 & sleep 30 & wait']);
    spawned.push(one, two);
    const kid = await until(() => childrenOf(one.pid!)[0]);
    expect(await rt.childPid(one.pid!)).to.equal(kid);
    await until(() => (childrenOf(two.pid!).length === 2 ? true : undefined));
    expect(await rt.childPid(two.pid!)).to.equal(0);
    expect(await rt.childPid(kid)).to.equal(0); // sleep has no child
    expect(await rt.childPid(2 ** 22 + 1)).to.equal(0); // no such process
    for (const p of [...childrenOf(one.pid!), ...childrenOf(two.pid!)]) killGone(p);
  });

  it('kill: by pid without a crun process when the caller knows the init; `crun kill` otherwise; ESRCH is no error', async () => {
    const rt = new CrunRuntime(fakeCrun, root);
    const victim = spawn('sleep', ['30']);
    spawned.push(victim);
    const gone = new Promise<NodeJS.Signals | null>((r) => victim.once('exit', (_c, s) => r(s)));
    await rt.kill('c1', 15, victim.pid);
    expect(await gone).to.equal('SIGTERM');
    expect(fs.existsSync(argLog)).to.equal(false);
    await rt.kill('c1', 15, victim.pid); // exited and reaped: ESRCH
    await rt.kill('c1', 9);
    expect(fs.readFileSync(argLog, 'utf8').trim()).to.equal(`--root ${root} kill c1 9`);
  });

  it('hasState: crun\'s state directory present or not', async () => {
    const rt = new CrunRuntime(fakeCrun, root);
    expect(await rt.hasState('c1')).to.equal(false);
    fs.mkdirSync(path.join(root, 'c1'));
    expect(await rt.hasState('c1')).to.equal(true);
  });

  it('start answers with crun\'s only child before crun records it; `recorded` (what exec waits for) resolves with the record', async () => {
    const rt = new ScriptedCrun(fakeCrun, root);
    const c = await created(rt, 'c1');
    const proc = await c.start();
    spawned.push(rt.last!);
    expect(fs.existsSync(path.join(root, 'c1', 'status'))).to.equal(false);
    expect(proc.pid).to.equal(childrenOf(rt.last!.pid!)[0]);
    expect(proc.pid).to.not.equal(rt.last!.pid);
    let recorded = false;
    void c.recorded.then(() => (recorded = true));
    await sleep(100);
    expect(recorded).to.equal(false);
    writeStatus('c1', proc.pid);
    await c.recorded;
    expect(recorded).to.equal(true);
    expect(proc.pid).to.equal(childrenOf(rt.last!.pid!)[0]);
  });

  it('start waits for crun\'s record when the init is not crun\'s first clone (a user namespace)', async () => {
    const rt = new ScriptedCrun(fakeCrun, root);
    const c = await created(rt, 'c1', (s) => s.linux!.namespaces!.push({ type: 'user' }));
    let started = false;
    const p = c.start().then((proc) => ((started = true), proc));
    await until(() => rt.last);
    spawned.push(rt.last!);
    const kid = await until(() => childrenOf(rt.last!.pid!)[0]);
    await sleep(150);
    expect(started).to.equal(false);
    writeStatus('c1', kid + 1000);
    expect((await p).pid).to.equal(kid + 1000);
    process.kill(kid, 'SIGKILL');
  });

  it('signals the init by pid, and remove runs no `crun delete` once crun has exited and removed its state', async () => {
    const rt = new ScriptedCrun(fakeCrun, root);
    const c = await created(rt, 'c1');
    const proc = await c.start();
    spawned.push(rt.last!);
    const init = proc.pid;
    await c.signal('', 15);
    const st = await proc.wait();
    expect(st.status).to.equal(143); // sh's wait: the child died of SIGTERM
    expect(() => process.kill(init, 0)).to.throw(/ESRCH/);
    expect(fs.existsSync(argLog)).to.equal(false); // no `crun kill`
    await c.remove(0);
    expect(rt.deletes).to.deep.equal([]);
    expect(fs.existsSync(path.join(dir, 'containers', 'c1'))).to.equal(false);
  });

  it('remove runs `crun delete` only when crun left its state behind (crun killed)', async () => {
    const rt = new ScriptedCrun(fakeCrun, root);
    const a = await created(rt, 'a');
    const pa = await a.start();
    spawned.push(rt.last!);
    rt.last!.kill('SIGKILL'); // crun killed: its state stays behind
    await pa.wait();
    fs.mkdirSync(path.join(root, 'a'));
    await a.remove(0);
    expect(rt.deletes).to.deep.equal(['a']);
    process.kill(pa.pid, 'SIGKILL');

    // running: remove SIGKILLs the init by pid, crun exits with it and has removed its state
    const b = await created(rt, 'b');
    const pb = await b.start();
    spawned.push(rt.last!);
    await b.remove(0);
    expect(pb.exitStatus).to.not.equal(undefined);
    expect(rt.deletes).to.deep.equal(['a']);

    // never started: crun never ran, nothing to delete
    const n = await created(rt, 'n');
    await n.remove(0);
    expect(rt.deletes).to.deep.equal(['a']);
  });
});
