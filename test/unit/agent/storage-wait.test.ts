/**
 * A virtio-fs storage without a PCI path (the builtin VMM's virtio-mmio
 * shares; on PCI see storage-pci.test.ts) whose device the kernel does not
 * know yet: it answers EINVAL ("tag not found"); the agent retries by tag
 * until its deadline, then fails with one error naming the tag, and fails
 * at once on any other error.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { expect } from 'chai';
import { StorageError, StorageRegistry, type Mounter } from '../../../src/agent/storage';

describe('agent storage: waiting for a hotplugged virtio-fs device', () => {
  let tmp: string;
  beforeEach(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-storage-wait-'))));
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const share = (dir: string) => ({ driver: 'virtiofs', source: 'kata-0123', fstype: 'virtiofs', options: [], mount_point: path.join(dir, 'rootfs') });

  it('retries while the kernel does not know the tag yet, then mounts', async () => {
    let calls = 0;
    const mounter: Mounter = {
      async mount(source, target) {
        calls++;
        if (calls < 4) throw new StorageError(`mount virtiofs ${source} on ${target}: mount: mounting ${source} on ${target} failed: Invalid argument`);
      },
      async umount() {},
    };
    const t0 = Date.now();
    await new StorageRegistry(mounter).acquire(share(tmp), tmp);
    expect(calls).to.equal(4);
    expect(Date.now() - t0).to.be.lessThan(2000);
  });

  it('gives up after its deadline with one error naming the tag', async () => {
    const mounter: Mounter = {
      async mount(source, target) { throw new StorageError(`mount virtiofs ${source} on ${target}: Invalid argument`); },
      async umount() {},
    };
    const reg = new StorageRegistry(mounter, { sysPciDevices: tmp, sysBlock: tmp, devDir: '/dev', timeoutMs: 150 });
    const e = await reg.acquire(share(tmp), tmp).then(() => undefined, (x: Error) => x);
    expect(e).to.be.instanceOf(StorageError);
    expect(e!.message).to.match(/no virtio-fs device with tag kata-0123 appeared within 150 ms/);
    expect(reg.mounted).to.deep.equal([]);
  });

  it('fails at once on an error that is not "tag not found"', async () => {
    let calls = 0;
    const mounter: Mounter = {
      async mount() {
        calls++;
        throw new StorageError('mount: permission denied');
      },
      async umount() {},
    };
    let err: unknown;
    await new StorageRegistry(mounter).acquire(share(tmp), tmp).catch((e) => (err = e));
    expect(String(err)).to.match(/permission denied/);
    expect(calls).to.equal(1);
  });
});
