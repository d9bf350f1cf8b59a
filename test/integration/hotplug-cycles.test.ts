/**
 * One pod, many containers over its life: 50 containers added to a running
 * sandbox and removed again, one after the other (rootfs by virtio-fs
 * hotplug, every tenth on a hotplugged EROFS disk). Each runs and exits 0;
 * every unplug gives its PCI slot back, so the pod never runs out (it used
 * to refuse containers after ~20 hotplugs).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { requireGuest, testRunDir, testConfig, expectNothingLeft, CACHE } from '../helpers/guest';
import { selectHypervisor } from '../../src/hypervisor';
import { Sandbox } from '../../src/runtime/sandbox';
import type { QemuHypervisor } from '../../src/hypervisor/qemu';
import { defaultSpec } from '../../src/runtime/spec';
import { attachProcess } from '../../src/runtime/stdio';
import { configureLogging } from '../../src/common/log';

const CYCLES = 50;

describe('integration: 50 containers added to and removed from one pod (QEMU)', function () {
  // Bounded: a cycle takes a few seconds under TCG.
  this.timeout(CYCLES * 15000 + 120000);
  let runDir: string;
  let sandbox: Sandbox | undefined;
  let hv: QemuHypervisor;
  let rootfs = '';

  before(async function () {
    requireGuest(this);
    configureLogging({ silent: true });
    runDir = testRunDir();
    rootfs = path.join(runDir, 'rootfs');
    fs.cpSync(path.join(CACHE, 'rootfs', 'busybox'), rootfs, { recursive: true, verbatimSymlinks: true });
    const cfg = testConfig(runDir);
    hv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
    sandbox = new Sandbox({ id: 'cycles', config: cfg, hypervisor: hv, bootContainers: [] });
    await sandbox.start();
  });

  after(async () => {
    await sandbox?.stop();
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  it(`adds, runs and removes ${CYCLES} containers; the PCI slots in use return to the boot set each time`, async () => {
    const boot = hv.slotsInUse();
    const t0 = Date.now();
    for (let i = 0; i < CYCLES; i++) {
      const id = `c${i}`;
      const rootfsShare = i % 10 === 9 ? 'erofs' as const : 'virtiofs' as const;
      await sandbox!.createContainer(id, defaultSpec({ args: ['sh', '-c', `echo run ${i}`] }), rootfs, { rootfsShare });
      expect(hv.slotsInUse().length, `container ${i} holds one slot`).to.equal(boot.length + 1);
      await sandbox!.startContainer(id);
      const out = new PassThrough();
      let o = '';
      out.on('data', (d) => (o += d));
      const st = await attachProcess(sandbox!.agent, id, '', { stdout: out, stderr: out, terminal: false }).done;
      expect({ status: st.status, out: o }, `container ${i} (${rootfsShare})`).to.deep.equal({ status: 0, out: `run ${i}\n` });
      await sandbox!.removeContainer(id);
      expect(hv.slotsInUse(), `after removing container ${i}`).to.deep.equal(boot);
    }
    process.stdout.write(`      ${CYCLES} cycles in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
  });
});
