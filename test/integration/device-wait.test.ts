/**
 * Issue 14: the agent finds every device by the PCI path the device manager
 * gives it, in a real guest (QEMU): the sandbox's virtio-fs share,
 * hotplugged for the first container with a shared rootfs (a second one
 * goes through the same device), and a hotplugged EROFS disk each sit at
 * their manager PCI path with the right virtio driver bound (virtiofs,
 * virtio_blk), and their containers run. Storages that name a PCI path wrongly are one clear
 * error from the agent naming the path: an empty slot (the 10 s timeout,
 * for a share and for a converted image's blob disk) and a slot holding
 * the other kind of device (at once).
 */
import { expect } from 'chai';
import { collectOutput } from '../helpers/guest';
import { startQemuSandbox, stopQemuSandbox, type QemuTestSandbox } from '../helpers/qemu-sandbox';
import { type Sandbox, diskIdFor } from '../../src/runtime/sandbox';
import { SHARED_FS_TAG } from '../../src/protocols/guest-paths';
import { defaultSpec } from '../../src/runtime/spec';
import { virtiofsStorage } from '../../src/runtime/volumes';
import type { Storage } from '../../src/protocols/agent-api';

describe('integration: the agent finds shares and disks by PCI path (QEMU)', function () {
  this.timeout(600000);
  let t: QemuTestSandbox | undefined;
  let sandbox: Sandbox | undefined;
  let rootfs = '';

  before(async function () {
    t = await startQemuSandbox(this, 'devwait');
    ({ sandbox, rootfs } = t);
  });

  after(() => stopQemuSandbox(t));

  /** Each PCI device the guest has and the virtio driver bound under it. */
  const probe = 'for d in /sys/bus/pci/devices/*; do echo "${d##*/} $(basename "$(readlink $d/virtio*/driver)")"; done';

  it('the hotplugged sandbox share (used twice) and a hotplugged disk: each at its PCI path, with its driver, and the container runs', async () => {
    const sb = sandbox!;
    const cases: [string, 'virtiofs' | 'erofs', string, string][] = [['a', 'virtiofs', SHARED_FS_TAG, 'virtiofs'], ['b', 'virtiofs', SHARED_FS_TAG, 'virtiofs'], ['c', 'erofs', diskIdFor('c'), 'virtio_blk']];
    for (const [id, share, devId, driver] of cases) {
      await sb.createContainer(id, defaultSpec({ args: ['sh', '-c', probe] }), rootfs, { rootfsShare: share });
      const pci = sb.devices.get(devId)?.pciPath;
      expect(pci, `${id}: the manager knows where ${devId} is`).to.match(/^[0-9a-f]{2}$/);
      await sb.startContainer(id);
      const r = await collectOutput(sb.agent, id, '');
      expect(r.status, r.out).to.equal(0);
      const line = r.out.split('\n').find((l) => l.startsWith(`0000:00:${pci}.0 `));
      expect(line, `${id}: the guest's devices: ${r.out}`).to.equal(`0000:00:${pci}.0 ${driver}`);
    }
  });

  it('a storage naming an empty slot or a slot with the other kind of device is one error naming the path', async () => {
    const sb = sandbox!;
    const share = sb.devices.get(SHARED_FS_TAG)!.pciPath!;
    const disk = sb.devices.get(diskIdFor('c'))!.pciPath!;
    const root = '/run/kata-ts/containers/x/rootfs';
    const create = async (storages: Storage[]) => {
      const t0 = Date.now();
      const err = await sb.agent.createContainer({ container_id: 'x', exec_id: '', storages, oci_spec_json: JSON.stringify({ ...defaultSpec({ args: ['true'] }), root: { path: root, readonly: false } }) }).then(() => undefined, (e: Error) => e);
      return { err, ms: Date.now() - t0 };
    };
    let r = await create([virtiofsStorage('kata-none', root, '1f')]);
    expect(r.err?.message).to.match(/no virtio-fs device appeared at PCI path 1f within 10000 ms \(no PCI device there\)/);
    r = await create([{ driver: 'blk', source: disk, fstype: 'erofs', options: ['ro', 'device-pci=1f'], mount_point: '/run/kata-ts/storage/x' }]);
    expect(r.err?.message).to.match(/no block device appeared at PCI path 1f within 10000 ms/);
    r = await create([virtiofsStorage('kata-none', root, disk)]);
    expect(r.err?.message).to.match(new RegExp(`the device at PCI path ${disk} \\(0000:00:${disk}\\.0\\) is bound to the virtio_blk driver, not virtiofs`));
    expect(r.ms, 'a wrong driver fails at once').to.be.below(5000);
    r = await create([{ driver: 'blk', source: share, fstype: 'erofs', options: ['ro'], mount_point: '/run/kata-ts/storage/x' }]);
    expect(r.err?.message).to.match(new RegExp(`the device at PCI path ${share} \\(0000:00:${share}\\.0\\) is bound to the virtiofs driver, not virtio_blk`));
    // The sandbox still works after the refusals.
    for (const id of ['a', 'b', 'c']) await sb.removeContainer(id);
  });
});
