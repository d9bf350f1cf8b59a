/**
 * Our virtio-blk device (src/virtio/blk, virtio 1.2 §5.2) in a QEMU (TCG)
 * guest through vhost-user-blk-pci: the container's EROFS disk at boot, a
 * writable raw disk hotplugged into the running sandbox (QMP chardev-add +
 * device_add) read, written and flushed from inside a container with the
 * bytes checked on the host file, read-only honoured, and hot-unplug.
 *
 * The container reaches the raw disk as a block node it makes itself
 * (mknod; the spec's device cgroup allows it), found by the serial our
 * device answers to VIRTIO_BLK_T_GET_ID.
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { requireGuest, testRunDir, testConfig, expectNothingLeft, copyBusyboxRootfs } from '../helpers/guest';
import { selectHypervisor } from '../../src/hypervisor';
import { QemuHypervisor } from '../../src/hypervisor/qemu';
import { Sandbox, diskIdFor } from '../../src/runtime/sandbox';
import { defaultSpec, defaultProcess } from '../../src/runtime/spec';
import { attachProcess } from '../../src/runtime/stdio';
import { configureLogging } from '../../src/common/log';
import type { BlkDevice } from '../../src/virtio/blk/device';

const MiB = 1 << 20;

describe('integration: vhost-user-blk in the guest (QEMU)', function () {
  this.timeout(180000);
  let runDir = '';
  let sandbox: Sandbox | undefined;
  let hv: QemuHypervisor;
  let execSeq = 0;

  /** Runs a shell script in the container; returns its status and output. */
  const sh = async (script: string) => {
    const execId = `e${execSeq++}`;
    await sandbox!.exec('c1', execId, defaultProcess({ args: ['sh', '-c', script] }));
    const out = new PassThrough();
    let o = '';
    out.on('data', (d) => (o += d));
    const st = await attachProcess(sandbox!.agent, 'c1', execId, { stdout: out, stderr: out, terminal: false }).done;
    return { status: st.status, out: o };
  };
  /** Shell: a node at /tmp/<serial> for the disk with that serial, waiting up to 10 s for hotplug to reach the guest. */
  const node = (serial: string) =>
    `for i in $(seq 100); do for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = ${serial} ] && [ ! -b /tmp/${serial} ] && ` +
    `mknod /tmp/${serial} b $(cut -d: -f1 $d/dev) $(cut -d: -f2 $d/dev); done; [ -b /tmp/${serial} ] && break; sleep 0.1; done; [ -b /tmp/${serial} ]`;

  before(async function () {
    requireGuest(this);
    configureLogging({ silent: true });
    runDir = testRunDir();
    const cfg = testConfig(runDir);
    cfg['hypervisor.qemu'].block_device_driver = 'vhost-user-blk';
    hv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
    // A copy of the busybox tree: the cached tree itself is in the guest
    // image, so a container on it gets no disk (src/runtime/guest-rootfs.ts).
    const rootfs = copyBusyboxRootfs(path.join(runDir, 'rootfs'));
    sandbox = new Sandbox({ id: 'blk1', config: cfg, hypervisor: hv, bootContainers: [{ id: 'c1', rootfs, rootfsShare: 'erofs' }] });
    await sandbox.start();
    const spec = defaultSpec({ args: ['sleep', '600'] });
    // Device cgroup: let the container open the block nodes it makes.
    (spec.linux as Record<string, unknown>).resources = { devices: [{ allow: true, access: 'rwm' }] };
    await sandbox.createContainer('c1', spec, rootfs);
    await sandbox.startContainer('c1');
  });

  after(async () => {
    await sandbox?.stop();
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  it('serves the boot-time container disk read-only through our device', async () => {
    const serial = diskIdFor('c1');
    const served = hv.servedDevice('blk', serial);
    expect(served, 'the EROFS disk is served by our device').to.not.equal(undefined);
    const blk = served!.device as BlkDevice;
    expect(blk.metrics.reads).to.be.greaterThan(0); // the rootfs was mounted from it
    const r = await sh(`${node(serial)} && cat /sys/block/*/ro | sort | uniq -c; dd if=/dev/zero of=/tmp/${serial} bs=512 count=1 conv=fsync 2>&1; echo rc=$?`);
    expect(r.out).to.match(/rc=1\s*$/);
    expect(blk.metrics.writes + blk.metrics.writeBytes).to.equal(0);
  });

  it('reads, writes and flushes a hotplugged writable disk; the bytes land in the host file', async () => {
    const file = path.join(runDir, 'data.raw');
    const initial = crypto.randomBytes(8 * MiB);
    fs.writeFileSync(file, initial);
    await hv.addDisk({ id: 'wdisk', path: file, readonly: false });
    const blk = hv.servedDevice('blk', 'wdisk')!.device as BlkDevice;
    // Read: the guest's checksum of the first 4 MiB equals the host's.
    const md5 = crypto.createHash('md5').update(initial.subarray(0, 4 * MiB)).digest('hex');
    let r = await sh(`${node('wdisk')} && dd if=/tmp/wdisk bs=1M count=4 2>/dev/null | md5sum`);
    expect(r.status, r.out).to.equal(0);
    expect(r.out.split(/\s/)[0]).to.equal(md5);
    // Write 2 MiB of a pattern at 5 MiB, with fsync (VIRTIO_BLK_T_FLUSH).
    const flushes = blk.metrics.flushes;
    r = await sh(`yes kata-ts-blk | head -c 2097152 > /tmp/pat && dd if=/tmp/pat of=/tmp/wdisk bs=64k seek=80 conv=fsync,notrunc 2>&1 && echo ok`);
    expect(r.out, r.out).to.match(/ok\s*$/);
    expect(blk.metrics.flushes).to.be.greaterThan(flushes);
    const host = fs.readFileSync(file);
    const pattern = Buffer.from('kata-ts-blk\n'.repeat(Math.ceil((2 * MiB) / 12))).subarray(0, 2 * MiB);
    expect(host.subarray(5 * MiB, 7 * MiB).equals(pattern)).to.equal(true);
    // Everything around it untouched.
    expect(host.subarray(0, 5 * MiB).equals(initial.subarray(0, 5 * MiB))).to.equal(true);
    expect(host.subarray(7 * MiB).equals(initial.subarray(7 * MiB))).to.equal(true);
  });

  it('hot-unplugs the disk: gone from the guest and no longer served', async () => {
    await hv.removeDisk('wdisk');
    expect(hv.servedDevice('blk', 'wdisk')).to.equal(undefined);
    const r = await sh('cat /sys/block/*/serial; echo');
    expect(r.out).to.not.contain('wdisk');
  });
});
