/**
 * What Sandbox.stop() asks of the agent before the VM goes (README
 * containerd, Teardown): nothing while every container's files are on
 * virtio-fs (write-through: already on the host), DestroySandbox (the guest
 * unmounts, flushing its page cache) while a container has a filesystem on
 * a guest block device, here a linux.devices disk. A stand-in VM serves the
 * agent's ttrpc API (test/helpers/agent-rig.ts) with recording handlers.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { DiskDevice, Hypervisor, VmConfig, VmInfo } from '../../../src/hypervisor/hypervisor';
import { Sandbox } from '../../../src/runtime/sandbox';
import { defaultConfig } from '../../../src/runtime/config';
import { defaultSpec } from '../../../src/runtime/spec';
import { AGENT_READY_MARKER } from '../../../src/protocols/agent-dialer';
import { configureLogging } from '../../../src/common/log';
import { serveAgentOnUnix, type AgentRig } from '../../helpers/agent-rig';

/**
 * A VM that is only an agent socket: boots at once, records disks and stop.
 * Named qemu (disk hotplug is allowed), with the little of QemuHypervisor
 * the sandbox's memory service reads: no guest memory to scan, no virtio-mem.
 */
class AgentOnlyVm implements Hypervisor {
  readonly name = 'qemu' as const;
  readonly settings = { accel: 'tcg' };
  guestMemory(): undefined { return undefined; }
  virtioMemDevice(): undefined { return undefined; }
  async memoryQmp(): Promise<unknown> { throw new Error('no QMP in this stand-in'); }
  calls: string[] = [];
  private resolveExit!: (r: string) => void;
  private readonly exit = new Promise<string>((r) => (this.resolveExit = r));
  constructor(private readonly agentSocket: string) {}
  async start(cfg: VmConfig): Promise<VmInfo> {
    this.calls.push('start');
    fs.writeFileSync(path.join(cfg.dir, 'console.log'), `${AGENT_READY_MARKER}\n`);
    return { hypervisor: 'qemu', pids: [], agentSocket: this.agentSocket, consoleLog: path.join(cfg.dir, 'console.log'), accel: 'tcg' };
  }
  async stop(): Promise<void> {
    this.calls.push('stop');
    this.resolveExit('stopped');
  }
  async pause(): Promise<void> {}
  async resume(): Promise<void> {}
  async addDisk(d: DiskDevice): Promise<void> {
    this.calls.push(`addDisk ${d.path}`);
  }
  async removeDisk(): Promise<void> {}
  exited(): Promise<string> {
    return this.exit;
  }
  consoleTail(): string {
    return '';
  }
}

describe('unit: what Sandbox.stop asks of the agent', function () {
  this.timeout(20000);
  let dir: string;
  let rig: AgentRig;
  let rpcs: string[];

  before(() => configureLogging({ silent: true }));
  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-stop-'));
    rpcs = [];
    const ok = (name: string) => async () => (rpcs.push(name), {});
    rig = await serveAgentOnUnix({
      Check: async () => (rpcs.push('Check'), { status: 1 }),
      CreateSandbox: ok('CreateSandbox'), CreateContainer: ok('CreateContainer'),
      DestroySandbox: ok('DestroySandbox'), RemoveContainer: ok('RemoveContainer'),
    }, path.join(dir, 'agent.sock'));
  });
  afterEach(async () => {
    await rig.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const make = (hv: Hypervisor) => {
    const cfg = defaultConfig();
    cfg.runtime.run_dir = path.join(dir, 'run');
    cfg['hypervisor.qemu'].kernel = '/k';
    cfg['hypervisor.qemu'].image = '/i';
    return new Sandbox({ id: 'sb', config: cfg, hypervisor: hv });
  };
  const rootfs = () => {
    const r = path.join(dir, 'rootfs');
    fs.mkdirSync(r, { recursive: true });
    return r;
  };

  it('a container without a writable guest block filesystem: the VM is stopped without DestroySandbox', async () => {
    const hv = new AgentOnlyVm(rig.socket);
    const sb = make(hv);
    await sb.start();
    // Its rootfs is a read-only EROFS disk under a guest tmpfs overlay: nothing to flush.
    await sb.createContainer('c', defaultSpec({ args: ['true'] }), rootfs(), { rootfsShare: 'erofs' });
    await sb.stop();
    expect(rpcs).to.deep.equal(['Check', 'CreateSandbox', 'CreateContainer']);
    expect(hv.calls[0]).to.equal('start');
    expect(hv.calls.at(-1)).to.equal('stop');
    expect(fs.existsSync(sb.dir)).to.equal(false);
  });

  it('a container with a linux.devices disk: DestroySandbox first (the guest flushes), then the VM; none once it is removed', async () => {
    const img = path.join(dir, 'disk.img');
    fs.writeFileSync(img, Buffer.alloc(1024 * 1024));
    const spec = defaultSpec({ args: ['true'] });
    spec.linux = { ...spec.linux, devices: [{ path: img, type: 'b' }] } as typeof spec.linux;
    for (const removeFirst of [false, true]) {
      rpcs.length = 0;
      const hv = new AgentOnlyVm(rig.socket);
      const sb = make(hv);
      await sb.start();
      await sb.createContainer('c', spec, rootfs(), { rootfsShare: 'erofs' });
      expect(hv.calls).to.include(`addDisk ${img}`);
      if (removeFirst) await sb.removeContainer('c', 1);
      await sb.stop();
      expect(rpcs.filter((r) => r === 'DestroySandbox'), `removeFirst=${removeFirst}`).to.have.length(removeFirst ? 0 : 1);
      expect(hv.calls.at(-1)).to.equal('stop');
    }
  });
});
