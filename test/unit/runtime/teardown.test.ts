/**
 * Sandbox teardown bookkeeping with a fake hypervisor: every failure path
 * stops the VM and removes the sandbox directory; stop() is idempotent.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { DiskDevice, Hypervisor, VmConfig, VmInfo } from '../../../src/hypervisor/hypervisor';
import { Sandbox, SandboxError } from '../../../src/runtime/sandbox';
import { defaultConfig } from '../../../src/runtime/config';
import { readState } from '../../../src/runtime/state';
import { configureLogging } from '../../../src/common/log';

class FakeHypervisor implements Hypervisor {
  readonly name = 'qemu' as const;
  calls: string[] = [];
  /** When set, stop() waits for it: the test decides when the VM is gone. */
  stopGate: Promise<void> | undefined;
  private resolveExit!: (r: string) => void;
  private readonly exit = new Promise<string>((r) => (this.resolveExit = r));
  constructor(private readonly behaviour: 'silent' | 'dies' | 'fails-start') {}
  async start(cfg: VmConfig): Promise<VmInfo> {
    this.calls.push('start');
    if (this.behaviour === 'fails-start') throw new Error('cannot start');
    fs.writeFileSync(path.join(cfg.dir, 'console.log'), 'Linux version 6.1\nKernel panic - not syncing: no init found\n');
    if (this.behaviour === 'dies') setTimeout(() => this.resolveExit('QEMU exited (status 0)'), 50);
    return { hypervisor: 'qemu', pids: [], agentSocket: path.join(cfg.dir, 'agent.sock'), consoleLog: path.join(cfg.dir, 'console.log'), accel: 'tcg' };
  }
  async stop(): Promise<void> {
    this.calls.push('stop');
    await this.stopGate;
    this.calls.push('stopped');
    this.resolveExit('stopped');
  }
  async pause(): Promise<void> {}
  async resume(): Promise<void> {}
  async addDisk(_d: DiskDevice): Promise<void> {}
  async removeDisk(_id: string): Promise<void> {}
  exited(): Promise<string> {
    return this.exit;
  }
  consoleTail(): string {
    return 'Kernel panic - not syncing: no init found';
  }
}

describe('unit: sandbox teardown bookkeeping', function () {
  this.timeout(10000);
  let runDir: string;
  before(() => configureLogging({ silent: true }));
  beforeEach(() => (runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-teardown-'))));
  afterEach(() => fs.rmSync(runDir, { recursive: true, force: true }));

  const make = (hv: FakeHypervisor, dialTimeout = 1) => {
    const cfg = defaultConfig();
    cfg.runtime.run_dir = runDir;
    cfg['agent.kata'].dial_timeout = dialTimeout;
    cfg['hypervisor.qemu'].kernel = '/k';
    cfg['hypervisor.qemu'].image = '/i';
    return new Sandbox({ id: 'sb', config: cfg, hypervisor: hv });
  };

  it('a guest that never comes up: error names the timeout and console tail; VM stopped; dir removed', async () => {
    const hv = new FakeHypervisor('silent');
    const sb = make(hv);
    const err = await sb.start().catch((e: Error) => e);
    expect(err).to.be.instanceOf(SandboxError);
    expect((err as Error).message).to.match(/did not come up within 1 s/);
    expect((err as Error).message).to.match(/Kernel panic/);
    expect(hv.calls).to.deep.equal(['start', 'stop', 'stopped']);
    expect(fs.existsSync(sb.dir)).to.equal(false);
  });

  it('a VM that dies during boot is reported as such', async () => {
    const hv = new FakeHypervisor('dies');
    const sb = make(hv, 30);
    const t0 = Date.now();
    const err = await sb.start().catch((e: Error) => e);
    expect(Date.now() - t0).to.be.lessThan(5000);
    expect((err as Error).message).to.match(/VM stopped before the agent came up: QEMU exited/);
    expect(fs.existsSync(sb.dir)).to.equal(false);
  });

  it('a hypervisor that fails to start still gets stop() and leaves no directory', async () => {
    const hv = new FakeHypervisor('fails-start');
    const sb = make(hv);
    await sb.start().catch(() => undefined);
    expect(hv.calls).to.deep.equal(['start', 'stop', 'stopped']);
    expect(fs.existsSync(sb.dir)).to.equal(false);
  });

  it('stop() after a failed start is idempotent: the VM is stopped once', async () => {
    const hv = new FakeHypervisor('silent');
    const sb = make(hv);
    await sb.start().catch(() => undefined);
    await sb.stop();
    await sb.stop();
    expect(hv.calls.filter((c) => c === 'stop')).to.have.length(1);
  });

  it('concurrent stop() calls, all in flight at once, share one teardown and all wait for it', async () => {
    const hv = new FakeHypervisor('silent');
    let release!: () => void;
    hv.stopGate = new Promise<void>((r) => (release = r));
    const sb = make(hv);
    fs.mkdirSync(sb.dir, { recursive: true });
    const settled = [false, false, false];
    const calls = settled.map((_, i) => sb.stop().then(() => { settled[i] = true; }));
    // Let the first teardown reach the hypervisor and block there.
    for (let i = 0; i < 20 && !hv.calls.includes('stop'); i++) await new Promise((r) => setImmediate(r));
    expect(hv.calls, 'the hypervisor is being stopped').to.deep.equal(['stop']);
    // A fourth call while the teardown is still blocked.
    calls.push(sb.stop().then(() => { settled.push(true); }));
    await new Promise((r) => setTimeout(r, 50));
    expect(settled, 'no caller returns before the VM is gone').to.deep.equal([false, false, false]);
    expect(fs.existsSync(sb.dir), 'the directory outlives the VM').to.equal(true);
    release();
    await Promise.all(calls);
    expect(settled).to.deep.equal([true, true, true, true]);
    expect(hv.calls, 'one hypervisor stop for four callers').to.deep.equal(['stop', 'stopped']);
    expect(fs.existsSync(sb.dir)).to.equal(false);
  });

  it('refuses a second sandbox with the same id while the first exists', async () => {
    fs.mkdirSync(path.join(runDir, 'sandboxes', 'sb'), { recursive: true });
    const hv = new FakeHypervisor('silent');
    const err = await make(hv).start().catch((e: Error) => e);
    expect((err as Error).message).to.match(/already exists/);
    expect(hv.calls).to.deep.equal([]);
    expect(fs.existsSync(path.join(runDir, 'sandboxes', 'sb')), 'the other sandbox is left alone').to.equal(true);
  });

  it('persists state while starting', async () => {
    const hv = new FakeHypervisor('silent');
    const sb = make(hv, 2);
    const p = sb.start().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    const st = readState(sb.dir);
    expect(st?.id).to.equal('sb');
    expect(st?.phase).to.equal('creating');
    expect(st?.ownerPid).to.equal(process.pid);
    await p;
  });
});
