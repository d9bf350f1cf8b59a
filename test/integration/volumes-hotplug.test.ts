/**
 * Volumes added to a running sandbox that did not boot with the volume
 * share (Sandbox API, real QEMU; the volumes carry rshared and rslave, which
 * crun applies in the guest): the first container with a bind mount
 * hotplugs the `kataShared` share, the agent mounts it once for both
 * containers and keeps it while one still uses it, each container's mounts
 * are undone at its removal, and nothing is left mounted after stop.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { requireGuest, testRunDir, testConfig, expectNothingLeft, CACHE, collectOutput } from '../helpers/guest';
import { selectHypervisor } from '../../src/hypervisor';
import { Sandbox } from '../../src/runtime/sandbox';
import { defaultSpec, defaultProcess } from '../../src/runtime/spec';
import { mountsUnder } from '../../src/runtime/volumes';
import { configureLogging } from '../../src/common/log';

describe('integration: volume share hotplugged into a running sandbox (QEMU)', function () {
  this.timeout(240000);
  let runDir: string;
  let sandbox: Sandbox | undefined;
  const busybox = path.join(CACHE, 'rootfs', 'busybox');

  const collect = (cid: string, execId: string) => collectOutput(sandbox!.agent, cid, execId);

  before(async function () {
    requireGuest(this);
    configureLogging({ silent: true });
    runDir = testRunDir();
    const cfg = testConfig(runDir);
    const hv = (await selectHypervisor(cfg, 'qemu')).hv;
    // EROFS roots: the cache's busybox tree is shared by every test and must not change.
    sandbox = new Sandbox({ id: 'vhot', config: cfg, hypervisor: hv, bootContainers: [{ id: 'a', rootfs: busybox, rootfsShare: 'erofs' }] });
    await sandbox.start();
  });

  after(async () => {
    await sandbox?.stop();
    if (!runDir) return;
    expect(mountsUnder(runDir), 'mounts left').to.deep.equal([]);
    expectNothingLeft(runDir);
  });

  it('hotplugs the share for the first volume; two containers use it; removal undoes each one\'s host mounts', async () => {
    const data = path.join(runDir, 'data');
    fs.mkdirSync(data);
    fs.writeFileSync(path.join(data, 'in'), 'from host\n');
    const shared = path.join(runDir, 'sandboxes', 'vhot', 'shared');
    // CRI's pod /dev/shm: a bind of a host tmpfs, which becomes one guest tmpfs for the pod.
    const shm = { destination: '/dev/shm', type: 'bind', source: '/run/containerd/sandboxes/vhot/shm', options: ['rbind'] };
    const specA = defaultSpec({ args: ['sh', '-c', 'cat /data/in; echo from-a > /data/a; echo pod-shm > /dev/shm/x; sleep 600'] });
    specA.mounts = [{ destination: '/data', type: 'bind', source: data, options: ['rbind', 'rshared'] }, shm];
    await sandbox!.createContainer('a', specA, busybox, { rootfsShare: 'erofs' });
    await sandbox!.startContainer('a');
    const specB = defaultSpec({ args: ['sleep', '600'] });
    specB.mounts = [{ destination: '/ro', type: 'bind', source: data, options: ['rbind', 'ro', 'rslave'] }, shm];
    await sandbox!.createContainer('b', specB, busybox, { rootfsShare: 'erofs' });
    await sandbox!.startContainer('b');
    const tries = async (cid: string, cmd: string, want: string) => {
      for (let i = 0; ; i++) {
        const id = `x${i}-${Date.now()}`;
        await sandbox!.exec(cid, id, defaultProcess({ args: ['sh', '-c', cmd] }));
        const r = await collect(cid, id);
        if (r.out === want || i >= 30) return r.out;
        await new Promise((res) => setTimeout(res, 200));
      }
    };
    expect(await tries('b', 'cat /ro/a; touch /ro/x 2>/dev/null && echo RO-WRITE || echo ro-refused', 'from-a\nro-refused\n')).to.equal('from-a\nro-refused\n');
    expect(fs.readFileSync(path.join(data, 'a'), 'utf8')).to.equal('from-a\n');
    expect(await tries('b', 'cat /dev/shm/x', 'pod-shm\n'), "b sees a's /dev/shm").to.equal('pod-shm\n');
    expect(mountsUnder(path.join(shared, 'a')).length).to.equal(1);
    await sandbox!.removeContainer('a', 0);
    expect(mountsUnder(path.join(shared, 'a')), "a's volume unmounted on the host").to.deep.equal([]);
    expect(await tries('b', 'cat /ro/in', 'from host\n'), 'b keeps the share after a is gone').to.equal('from host\n');
    await sandbox!.removeContainer('b', 0);
    expect(mountsUnder(shared).map((m) => m.target), 'only the share root itself').to.deep.equal([fs.realpathSync(shared)]);
  });
});
