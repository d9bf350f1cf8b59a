/**
 * The runtime's Sandbox API against a real VM: two containers in one
 * sandbox (one attached at boot, one added to the running sandbox with its
 * rootfs shared by virtio-fs hotplug, a third on a hotplugged EROFS disk),
 * exec, a container killed from the host (137), teardown leaving nothing
 * behind.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { requireGuest, testRunDir, testConfig, expectNothingLeft, collectOutput, copyBusyboxRootfs } from '../helpers/guest';
import { selectHypervisor } from '../../src/hypervisor';
import { Sandbox, diskIdFor } from '../../src/runtime/sandbox';
import { SHARED_FS_TAG } from '../../src/protocols/guest-paths';
import { mountsUnder } from '../../src/runtime/volumes';
import type { QemuHypervisor } from '../../src/hypervisor/qemu';
import { defaultSpec, defaultProcess } from '../../src/runtime/spec';
import { configureLogging } from '../../src/common/log';

describe('integration: sandbox with two containers (QEMU)', function () {
  this.timeout(240000);
  let runDir: string;
  let sandbox: Sandbox | undefined;
  let hv: QemuHypervisor;
  // Private copies: a virtio-fs rootfs is written in place, and the shared
  // cache's busybox tree must stay pristine for every other test.
  let rootfs1 = '';
  let rootfs2 = '';

  const collect = (cid: string, execId: string) => collectOutput(sandbox!.agent, cid, execId);

  before(async function () {
    requireGuest(this);
    configureLogging({ silent: true });
    runDir = testRunDir();
    rootfs1 = path.join(runDir, 'rootfs1');
    rootfs2 = path.join(runDir, 'rootfs2');
    for (const d of [rootfs1, rootfs2]) copyBusyboxRootfs(d);
    const cfg = testConfig(runDir);
    hv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
    sandbox = new Sandbox({ id: 'pod1', config: cfg, hypervisor: hv, bootContainers: [{ id: 'first', rootfs: rootfs1 }] });
    await sandbox.start();
  });

  after(async () => {
    await sandbox?.stop();
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  it('runs a boot-time container and a hotplugged one side by side', async () => {
    await sandbox!.createContainer('first', defaultSpec({ args: ['sh', '-c', 'echo first > /tmp/f; sleep 60'] }), rootfs1);
    await sandbox!.startContainer('first');
    await sandbox!.createContainer('second', defaultSpec({ args: ['sh', '-c', 'cat /tmp/f 2>&1; hostname; echo second | tee /second.txt'], hostname: 'two' }), rootfs2);
    // Both roots through the sandbox's one share (attached at boot for 'first'): no device of its own.
    expect(sandbox!.devices.list().filter((d) => d.spec.kind === 'fs').map((d) => d.spec.id), 'one virtio-fs device').to.deep.equal([SHARED_FS_TAG]);
    expect(mountsUnder(path.join(sandbox!.dir, 'mounts', 'second')).length, 'its rootfs bound into the share').to.equal(1);
    await sandbox!.startContainer('second');
    const r = await collect('second', '');
    expect(r.status).to.equal(0);
    // each container has its own rootfs and UTS namespace
    expect(r.out).to.equal('cat: can\'t open \'/tmp/f\': No such file or directory\ntwo\nsecond\n');
    // virtio-fs: the write landed in the host directory, as under runc
    expect(fs.readFileSync(path.join(rootfs2, 'second.txt'), 'utf8')).to.equal('second\n');
    await sandbox!.removeContainer('second');
    expect(mountsUnder(path.join(sandbox!.dir, 'mounts', 'second')), 'its rootfs unbound with it').to.deep.equal([]);
    expect(hv.servedDevice('fs', SHARED_FS_TAG), 'the share stays for the pod').to.not.equal(undefined);
  });

  it('adds a container on a hotplugged EROFS disk when asked (writes stay in the guest)', async () => {
    await sandbox!.createContainer('third', defaultSpec({ args: ['sh', '-c', 'echo x > /third.txt && cat /second.txt'] }), rootfs2, { rootfsShare: 'erofs' });
    expect(hv.servedDevice('blk', diskIdFor('third'))).to.not.equal(undefined);
    await sandbox!.startContainer('third');
    expect(await collect('third', '')).to.deep.equal({ status: 0, out: 'second\n' });
    expect(fs.existsSync(path.join(rootfs2, 'third.txt'))).to.equal(false);
    await sandbox!.removeContainer('third');
    expect(hv.servedDevice('blk', diskIdFor('third'))).to.equal(undefined);
  });

  it('execs into a running container and sees its files', async () => {
    await sandbox!.exec('first', 'e1', defaultProcess({ args: ['sh', '-c', 'cat /tmp/f; exit 7'] }));
    const r = await collect('first', 'e1');
    expect(r).to.deep.equal({ status: 7, out: 'first\n' });
  });

  it('kills a container from the host: 137', async () => {
    await sandbox!.agent.signalProcess({ container_id: 'first', exec_id: '', signal: 9 });
    const st = await sandbox!.agent.waitProcess({ container_id: 'first', exec_id: '' });
    expect(st.status).to.equal(137);
    expect(st.signal).to.equal(9);
    await sandbox!.removeContainer('first');
  });
});
