/**
 * A sandbox's vCPUs and memory come from the section of the hypervisor that
 * runs it: `[hypervisor.builtin] default_vcpus/default_memory` for the
 * builtin VMM, `[hypervisor.qemu]` for QEMU, explicit options over both.
 * Checked with a fake hypervisor that records the VmConfig it is given and
 * the state the sandbox persisted (kata-ctl list reads it).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Hypervisor, VmConfig, VmInfo } from '../../../src/hypervisor/hypervisor';
import { Sandbox } from '../../../src/runtime/sandbox';
import { defaultConfig, vmSizing } from '../../../src/runtime/config';
import { readState, type SandboxState } from '../../../src/runtime/state';
import { configureLogging } from '../../../src/common/log';

/** Starts "successfully", then never lets the agent come up; records what it saw. */
class RecordingHypervisor implements Hypervisor {
  vm: VmConfig | undefined;
  state: SandboxState | undefined;
  constructor(readonly name: 'qemu' | 'builtin') {}
  async start(cfg: VmConfig): Promise<VmInfo> {
    this.vm = cfg;
    fs.writeFileSync(path.join(cfg.dir, 'console.log'), '');
    return { hypervisor: this.name, pids: [], agentSocket: path.join(cfg.dir, 'agent.sock'), consoleLog: path.join(cfg.dir, 'console.log'), accel: 'tcg' };
  }
  async stop(): Promise<void> {}
  async pause(): Promise<void> {}
  async resume(): Promise<void> {}
  async addDisk(): Promise<void> {}
  async removeDisk(): Promise<void> {}
  exited(): Promise<string> { return new Promise(() => undefined); }
  consoleTail(): string {
    // Called when the boot wait gives up, before teardown removes the directory.
    if (this.vm) this.state = readState(this.vm.dir);
    return '';
  }
}

describe('unit: sandbox vCPUs and memory follow the hypervisor in use', function () {
  this.timeout(10000);
  let runDir: string;
  before(() => configureLogging({ silent: true }));
  beforeEach(() => (runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-sizing-'))));
  afterEach(() => fs.rmSync(runDir, { recursive: true, force: true }));

  const config = () => {
    const cfg = defaultConfig();
    cfg.runtime.run_dir = runDir;
    cfg['agent.kata'].dial_timeout = 1;
    cfg['hypervisor.qemu'].default_vcpus = 2;
    cfg['hypervisor.qemu'].default_memory = 640;
    cfg['hypervisor.builtin'].default_vcpus = 3;
    cfg['hypervisor.builtin'].default_memory = 768;
    return cfg;
  };

  const boot = async (hv: RecordingHypervisor, opts: { vcpus?: number; memoryMiB?: number } = {}) => {
    await new Sandbox({ id: `sz-${hv.name}`, config: config(), hypervisor: hv, ...opts }).start().catch(() => undefined);
    expect(hv.vm, 'hypervisor started').to.not.equal(undefined);
    expect(hv.state, 'state persisted').to.not.equal(undefined);
    return { vm: hv.vm!, state: hv.state! };
  };

  it('builtin: [hypervisor.builtin] default_vcpus/default_memory reach the VM and the persisted state', async () => {
    const { vm, state } = await boot(new RecordingHypervisor('builtin'));
    expect([vm.vcpus, vm.memoryMiB]).to.deep.equal([3, 768]);
    expect([state.vcpus, state.memoryMiB]).to.deep.equal([3, 768]);
  });

  it('qemu: [hypervisor.qemu] values', async () => {
    const { vm, state } = await boot(new RecordingHypervisor('qemu'));
    expect([vm.vcpus, vm.memoryMiB]).to.deep.equal([2, 640]);
    expect([state.vcpus, state.memoryMiB]).to.deep.equal([2, 640]);
  });

  it('explicit --cpus/--memory win over either section', async () => {
    const { vm, state } = await boot(new RecordingHypervisor('builtin'), { vcpus: 1, memoryMiB: 256 });
    expect([vm.vcpus, vm.memoryMiB]).to.deep.equal([1, 256]);
    expect([state.vcpus, state.memoryMiB]).to.deep.equal([1, 256]);
  });

  it('vmSizing reads the named section', () => {
    const cfg = config();
    expect(vmSizing(cfg, 'builtin')).to.deep.equal({ vcpus: 3, memoryMiB: 768 });
    expect(vmSizing(cfg, 'qemu')).to.deep.equal({ vcpus: 2, memoryMiB: 640 });
  });
});
