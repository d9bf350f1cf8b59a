/**
 * Kata's single shared directory per pod (QEMU, Sandbox API as the shim
 * drives it): a pod whose sandbox container boots with its rootfs in the
 * sandbox share, then an app container with bind mounts (a file and a
 * directory, one read-only) added to it. The pod has exactly one virtio-fs
 * device — in our device manager, in QEMU (query-pci) and in the guest
 * (PCI devices with the virtio-fs id) — and the app container's start added
 * none. Its rootfs is a filesystem of its own, as containerd's snapshot is
 * (a tmpfs here): the container's writes land in it, its root and its
 * volumes have different st_dev in the guest (the share announces the
 * mount crossing, FUSE_ATTR_SUBMOUNT), the pod's containers do not see each
 * other's roots. Removal unbinds it: no mount of it is left in the sandbox
 * directory, and the share's server holds nothing in it (the snapshot
 * unmounts without MNT_DETACH). After stop nothing is left.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { startQemuSandbox, stopQemuSandbox, type QemuTestSandbox } from '../helpers/qemu-sandbox';
import { collectOutput, copyBusyboxRootfs } from '../helpers/guest';
import { defaultSpec } from '../../src/runtime/spec';
import { mountsUnder } from '../../src/runtime/volumes';
import { SHARED_FS_TAG } from '../../src/protocols/guest-paths';

/** PCI device id of virtio-fs (modern, 0x1040 + 26). */
const VIRTIO_FS_PCI_ID = 0x105a;

describe('integration: one virtio-fs share per pod for every rootfs and volume (QEMU)', function () {
  this.timeout(600000);
  let t: QemuTestSandbox | undefined;
  let snapshot = '';
  let volDir = '';
  let hostsFile = '';
  const mounted: string[] = [];

  before(async function () {
    t = await startQemuSandbox(this, 'shroot', { sandbox: (root) => ({ bootContainers: [{ id: 'pause', rootfs: root, rootfsShare: 'virtiofs' }] }) });
    // The app container's snapshot: a filesystem of its own, as containerd's overlay.
    snapshot = path.join(t.runDir, 'app-bundle', 'rootfs');
    fs.mkdirSync(snapshot, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', snapshot]);
    mounted.push(snapshot);
    copyBusyboxRootfs(snapshot);
    volDir = path.join(t.runDir, 'vol');
    fs.mkdirSync(volDir);
    fs.writeFileSync(path.join(volDir, 'in-volume'), 'vol\n');
    hostsFile = path.join(t.runDir, 'hosts');
    fs.writeFileSync(hostsFile, '127.0.0.1 localhost\n');
  });

  after(async () => {
    // The snapshot first (lazily: the VM may still hold it), then the sandbox and the run directory.
    while (mounted.length) execFileSync('umount', ['-l', mounted.pop()!]);
    await stopQemuSandbox(t);
  });

  const fsDevicesInQemu = async (): Promise<number> => {
    const buses = (await t!.hv.memoryQmp('query-pci')) as Array<{ devices: Array<{ id: { device: number } }> }>;
    return buses.flatMap((b) => b.devices).filter((d) => d.id.device === VIRTIO_FS_PCI_ID).length;
  };

  it('a pod with two containers and bind mounts has one virtio-fs device; writes land in the snapshot; removal leaves nothing mounted', async () => {
    const sb = t!.sandbox;
    const fsDevices = () => sb.devices.list().filter((d) => d.spec.kind === 'fs').map((d) => d.spec.id);
    expect(fsDevices(), 'the sandbox share came with the boot container').to.deep.equal([SHARED_FS_TAG]);
    const slots = t!.hv.slotsInUse();
    await sb.createContainer('pause', defaultSpec({ args: ['sh', '-c', 'echo pause > /pause-was-here; sleep 600'] }), t!.rootfs);
    await sb.startContainer('pause');

    const probe = [
      'echo app > /written-by-app',
      'cat /etc/hosts /data/in-volume',
      'echo x > /data/from-app',
      '(echo x > /etc/hosts) 2>/dev/null && echo hosts-writable || echo hosts-ro',
      'stat -c "dev %d" / /data | tr "\\n" " "; echo',
      'ls /pause-was-here 2>&1 | head -1',
      // The guest's virtio-fs devices (PCI id 0x105a), seen from the container.
      'echo fsdevs $(grep -l 0x105a /sys/bus/pci/devices/*/device | wc -l)',
    ].join('; ');
    const spec = defaultSpec({ args: ['sh', '-c', probe] });
    spec.mounts = [...(spec.mounts ?? []),
      { destination: '/etc/hosts', type: 'bind', source: hostsFile, options: ['rbind', 'ro'] },
      { destination: '/data', type: 'bind', source: volDir, options: ['rbind', 'rw'] }];
    await sb.createContainer('app', spec, snapshot);
    expect(fsDevices(), 'no device for the app container').to.deep.equal([SHARED_FS_TAG]);
    expect(t!.hv.slotsInUse(), 'no slot taken').to.deep.equal(slots);
    expect(await fsDevicesInQemu(), 'QEMU has one virtio-fs device').to.equal(1);
    await sb.startContainer('app');
    const r = await collectOutput(sb.agent, 'app', '');
    expect(r.status, r.out).to.equal(0);
    const lines = r.out.trim().split('\n');
    expect(lines.slice(0, 3)).to.deep.equal(['127.0.0.1 localhost', 'vol', 'hosts-ro']);
    const devs = /^dev (\d+) dev (\d+)/.exec(lines[3] ?? '');
    expect(devs, lines[3]).to.not.equal(null);
    expect(devs![1], 'the rootfs and a volume are different filesystems in the guest too').to.not.equal(devs![2]);
    expect(lines[4], 'the pause container\'s root is not the app\'s').to.match(/No such file/);
    expect(lines[5], 'the guest sees one virtio-fs device').to.equal('fsdevs 1');
    // Writes reached the host: the app's snapshot, the rw volume, the pause container's rootfs.
    expect(fs.readFileSync(path.join(snapshot, 'written-by-app'), 'utf8')).to.equal('app\n');
    expect(fs.readFileSync(path.join(volDir, 'from-app'), 'utf8')).to.equal('x\n');
    expect(fs.readFileSync(path.join(t!.rootfs, 'pause-was-here'), 'utf8')).to.equal('pause\n');
    expect(fs.readFileSync(hostsFile, 'utf8')).to.equal('127.0.0.1 localhost\n');

    await sb.removeContainer('app');
    expect(mountsUnder(path.join(sb.dir, 'mounts', 'app')), 'no mount of the app left in the share').to.deep.equal([]);
    expect(mountsUnder(path.join(sb.dir, 'shared', 'app'))).to.deep.equal([]);
    expect(mountsUnder(path.join(sb.dir, 'mounts', 'pause')).length, 'the pause container keeps its rootfs').to.equal(1);
    // The share's server let go of the snapshot: a plain umount (no MNT_DETACH) succeeds.
    execFileSync('umount', [snapshot]);
    mounted.splice(mounted.indexOf(snapshot), 1);
    expect(fsDevices(), 'the share stays for the pod').to.deep.equal([SHARED_FS_TAG]);

    // The pod goes on: another container through the same share.
    await sb.createContainer('app2', defaultSpec({ args: ['sh', '-c', 'cat /pause-was-here'] }), t!.rootfs);
    await sb.startContainer('app2');
    expect(await collectOutput(sb.agent, 'app2', '')).to.deep.equal({ status: 0, out: 'pause\n' });
    await sb.removeContainer('app2');
    expect(await fsDevicesInQemu()).to.equal(1);
  });
});
