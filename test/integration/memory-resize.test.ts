/**
 * Pod resizing on a real sandbox (QEMU, TCG here): booted with 1 vCPU,
 * room to 2; a container with a 1-CPU quota makes the VM hotplug a vCPU,
 * onlined by the agent's OnlineCPUMem and seen from inside the container;
 * one asking beyond the maximum is refused with one clear error; removing
 * the container unplugs the vCPU. Memory hotplug is off (it left the vsock
 * agent channel dead here; src/resource/memory/service.ts): a memory limit does not
 * plug a DIMM. Nothing is left behind.
 */
import { expect } from 'chai';
import * as path from 'node:path';
import { requireGuest, testRunDir, testConfig, expectNothingLeft, collectOutput, copyBusyboxRootfs } from '../helpers/guest';
import { selectHypervisor } from '../../src/hypervisor';
import { Sandbox } from '../../src/runtime/sandbox';
import type { QemuHypervisor } from '../../src/hypervisor/qemu';
import { defaultSpec } from '../../src/runtime/spec';
import { configureLogging } from '../../src/common/log';

const MIB = 1024 * 1024;

describe('integration: pod resizing (vCPU and memory hotplug)', function () {
  this.timeout(300000);
  let runDir: string;
  let sandbox: Sandbox | undefined;
  let hv: QemuHypervisor;
  let rootfs = '';
  let rootfs2 = '';

  before(async function () {
    requireGuest(this);
    configureLogging({ silent: true });
    runDir = testRunDir();
    rootfs = path.join(runDir, 'rootfs');
    rootfs2 = path.join(runDir, 'rootfs2');
    for (const d of [rootfs, rootfs2]) copyBusyboxRootfs(d);
    const cfg = testConfig(runDir);
    cfg['hypervisor.qemu'].default_maxvcpus = 2;
    cfg['hypervisor.qemu'].default_maxmemory = 1024;
    hv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
    sandbox = new Sandbox({ id: 'rs1', config: cfg, hypervisor: hv, bootContainers: [] });
    await sandbox.start();
  });

  after(async () => {
    await sandbox?.stop();
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  it('grows by a vCPU for a container\'s CPU quota (online in the guest), refuses beyond the maximum, unplugs it when the container leaves', async () => {
    // The guest kernel has no CFS bandwidth control, so crun cannot start a
    // container with a CPU quota here: c1 is created (that resizes the VM)
    // and a probe container without limits looks at the CPUs.
    const spec = defaultSpec({ args: ['true'] });
    spec.linux = { ...spec.linux, resources: { cpu: { quota: 100000, period: 100000 }, memory: { limit: 200 * MIB } } };
    await sandbox!.createContainer('c1', spec, rootfs);
    const plugged = await hv.memoryQmp('query-memory-size-summary') as { 'plugged-memory'?: number };
    expect(plugged['plugged-memory'] ?? 0).to.equal(0);
    expect(((await hv.memoryQmp('query-cpus-fast')) as unknown[]).length).to.equal(2);
    // /proc/cpuinfo lists the online CPUs only: 2 once OnlineCPUMem has run.
    await sandbox!.createContainer('probe', defaultSpec({ args: ['sh', '-c', 'grep -c ^processor /proc/cpuinfo'] }), rootfs2);
    await sandbox!.startContainer('probe');
    const r = await collectOutput(sandbox!.agent, 'probe', '');
    expect(r.out.trim()).to.equal('2');
    expect(r.status).to.equal(0);
    await sandbox!.removeContainer('probe');

    const big = defaultSpec({ args: ['true'] });
    big.linux = { ...big.linux, resources: { cpu: { quota: 200000, period: 100000 } } };
    let err: unknown;
    try {
      await sandbox!.createContainer('c2', big, rootfs);
    } catch (e) { err = e; }
    expect((err as Error).message).to.equal('container c2 needs 2 vCPU(s) and 0 MiB: the sandbox would need 4 vCPUs / 512 MiB, beyond its maximum of 2 vCPUs / 1024 MiB (default_maxvcpus, default_maxmemory)');

    await sandbox!.removeContainer('c1');
    const deadline = Date.now() + 30000;
    while (((await hv.memoryQmp('query-cpus-fast')) as unknown[]).length !== 1) {
      if (Date.now() > deadline) throw new Error('the hot-added vCPU was not unplugged within 30 s');
      await new Promise((res) => setTimeout(res, 500));
    }
  });
});
