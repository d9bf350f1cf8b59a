/**
 * OCI linux.devices in a running pod (QEMU): a host image file and a host
 * loop device become virtio-blk disks hotplugged through the device
 * manager; each container sees a block device at the requested path, with
 * the guest's major/minor, readable under a default-deny device cgroup
 * (the runtime adds the allow rule, the agent rewrites it to the guest
 * numbers). Two containers naming the same loop device share one disk:
 * removing the first keeps it for the second; removing the second unplugs
 * it and the PCI slots return to the boot set. Bad entries (a character
 * device given as "b", a missing path, major/minor that do not match the
 * host device) are one DeviceError with nothing attached.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { requireGuest, testRunDir, expectNothingLeft, collectOutput } from '../helpers/guest';
import { startQemuSandbox, type QemuTestSandbox } from '../helpers/qemu-sandbox';
import { until } from '../helpers/until';
import { skipOrFail } from '../helpers/skip';
import type { Sandbox } from '../../src/runtime/sandbox';
import type { QemuHypervisor } from '../../src/hypervisor/qemu';
import { defaultSpec } from '../../src/runtime/spec';
import type { OciSpec } from '../../src/protocols/oci';
import { DeviceError } from '../../src/resource/devices/device-manager';
import { deviceDiskId } from '../../src/resource/devices/container-devices';

function withDevices(args: string[], devices: Array<{ path: string; major: number; minor: number }>): OciSpec {
  const spec = defaultSpec({ args });
  spec.linux!.devices = devices.map((d) => ({ path: d.path, type: 'b', major: d.major, minor: d.minor, fileMode: 0o660, uid: 0, gid: 0 }));
  // Default deny: the device is reachable only through the rule the runtime adds.
  spec.linux!.resources = { devices: [{ allow: false, access: 'rwm' }] };
  return spec;
}

describe('integration: OCI linux.devices become hotplugged disks (QEMU)', function () {
  this.timeout(600000);
  let runDir: string;
  let t: QemuTestSandbox | undefined;
  let sandbox: Sandbox | undefined;
  let hv: QemuHypervisor;
  let rootfs = '';
  let image = '';
  let backing = '';
  let loop = '';
  let loopNums = { major: 0, minor: 0 };

  before(async function () {
    requireGuest(this);
    runDir = testRunDir();
    image = path.join(runDir, 'disk.img');
    fs.writeFileSync(image, Buffer.concat([Buffer.from('IMAGE-FILE-DISK!'), Buffer.alloc(1024 * 1024 - 16)]));
    backing = path.join(runDir, 'loop.img');
    fs.writeFileSync(backing, Buffer.concat([Buffer.from('LOOP-DEVICE-DISK'), Buffer.alloc(1024 * 1024 - 16)]));
    try {
      loop = execFileSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' }).trim();
    } catch (err) {
      skipOrFail(this, `no loop device: ${(err as Error).message}`);
    }
    const [ma, mi] = fs.readFileSync(`/sys/class/block/${path.basename(loop)}/dev`, 'utf8').trim().split(':').map(Number);
    loopNums = { major: ma, minor: mi };
    t = await startQemuSandbox(this, 'devices', { runDir });
    ({ sandbox, hv, rootfs } = t);
  });

  after(async () => {
    await t?.sandbox.stop();
    if (loop) execFileSync('losetup', ['-d', loop]);
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  it('an image file and a loop device appear at the requested paths; two containers share the loop disk', async () => {
    // The pod's one virtio-fs share comes with its first container and stays
    // for the sandbox's life (Kata's layout): part of the set the slots return to.
    await sandbox!.attachSandboxShare();
    const boot = hv.slotsInUse();
    // Type letter, major:minor in hex as the container sees them, the first 16 bytes.
    const show = (p: string) => `set -e; ls -l ${p} | cut -c1; stat -c '%t:%T' ${p}; head -c 16 ${p}; echo`;
    const guestNums = (line: string) => line.split(':').map((x) => parseInt(x, 16));
    await sandbox!.createContainer('a', withDevices(['sh', '-c', `${show(image)}; ${show(loop)}`], [{ path: image, major: 7, minor: 200 }, { path: loop, ...loopNums }]), rootfs);
    await sandbox!.createContainer('b', withDevices(['sh', '-c', show(loop)], [{ path: loop, ...loopNums }]), rootfs);
    const loopDisk = sandbox!.devices.get(deviceDiskId(loop))!;
    expect(loopDisk.holders).to.deep.equal(['a', 'b']);
    expect(sandbox!.devices.get(deviceDiskId(image))!.holders).to.deep.equal(['a']);
    expect(loopDisk.pciPath).to.match(/^[0-9a-f]{2}$/);

    await sandbox!.startContainer('a');
    const a = await collectOutput(sandbox!.agent, 'a', '');
    expect(a.status, a.out).to.equal(0);
    const la = a.out.trim().split('\n');
    expect(la, a.out).to.have.length(6);
    expect(la[0]).to.equal('b');
    expect(la[2]).to.equal('IMAGE-FILE-DISK!');
    expect(la[3]).to.equal('b');
    expect(la[5]).to.equal('LOOP-DEVICE-DISK');
    // The guest's virtio-blk numbers (one major, two minors), not the host's loop ones.
    const [ni, nl] = [guestNums(la[1]), guestNums(la[4])];
    expect(ni[0], `guest major ${la[1]}`).to.equal(nl[0]);
    expect(ni[0]).to.not.equal(loopNums.major);
    expect(ni[1]).to.not.equal(nl[1]);

    await sandbox!.removeContainer('a');
    expect(sandbox!.devices.get(deviceDiskId(image)), 'image disk after a').to.equal(undefined);
    expect(sandbox!.devices.get(deviceDiskId(loop))!.holders, 'loop disk after a').to.deep.equal(['b']);

    await sandbox!.startContainer('b');
    const b = await collectOutput(sandbox!.agent, 'b', '');
    expect(b.status, b.out).to.equal(0);
    expect(b.out.trim().split('\n')[2]).to.equal('LOOP-DEVICE-DISK');
    await sandbox!.removeContainer('b');
    expect(sandbox!.devices.get(deviceDiskId(loop))).to.equal(undefined);
    await until('the PCI slots back at the boot set', () => (JSON.stringify(hv.slotsInUse()) === JSON.stringify(boot) ? true : undefined), 60000);
  });

  it('bad linux.devices entries: one DeviceError each, nothing attached, no container', async () => {
    const boot = hv.slotsInUse();
    const before = sandbox!.devices.list().length;
    const cases: Array<[Array<{ path: string; major: number; minor: number }>, RegExp]> = [
      [[{ path: '/dev/null', major: 1, minor: 3 }], /neither a block device nor an image file/],
      // Numbers that name no host block device (numbers that do would name that device, as Kata's GetHostPath).
      [[{ path: path.join(runDir, 'missing.img'), major: 7, minor: 1048574 }], /does not exist on the host/],
      [[{ path: loop, major: loopNums.major, minor: 1048575 }], /is \d+:\d+ on the host, not/],
      [[{ path: image, major: 7, minor: 1048573 }, { path: image, major: 7, minor: 1048573 }], /names .* twice/],
    ];
    for (const [devs, re] of cases) {
      let err: unknown;
      try { await sandbox!.createContainer('bad', withDevices(['true'], devs), rootfs); } catch (e) { err = e; }
      expect(err, String(re)).to.be.instanceOf(DeviceError);
      expect((err as Error).message).to.match(re);
      expect(hv.slotsInUse()).to.deep.equal(boot);
      expect(sandbox!.devices.list().length).to.equal(before);
    }
  });
});
