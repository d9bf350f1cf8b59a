/**
 * planContainerDevices (src/resource/devices/container-devices.ts): block
 * entries of linux.devices become disks (id from the host path, shared by
 * containers) and agent Devices; an allow rule is added unless one names
 * the device; character entries are left alone; bad entries are one
 * DeviceError.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { planContainerDevices, deviceDiskId } from '../../../src/resource/devices/container-devices';
import { DeviceError } from '../../../src/resource/devices/device-manager';

describe('unit: container linux.devices plan', () => {
  let dir: string;
  let img: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cdev-'));
    img = path.join(dir, 'd.img');
    fs.writeFileSync(img, Buffer.alloc(4096));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('turns a block entry into a disk, a Device and an allow rule; leaves character entries', () => {
    const spec = { linux: { devices: [{ path: '/dev/fuse', type: 'c', major: 10, minor: 229 }, { path: img, type: 'b', major: 7, minor: 99 }], resources: { devices: [{ allow: false, access: 'rwm' }] as unknown[] } } };
    const plan = planContainerDevices(spec);
    const id = deviceDiskId(img);
    expect(id).to.match(/^x[0-9a-f]{19}$/);
    expect(plan.disks).to.deep.equal([{ kind: 'blk', id, path: img, readonly: false }]);
    expect(plan.devices).to.deep.equal([{ id, type: 'blk', vm_path: '', container_path: img, options: [] }]);
    expect(spec.linux.resources.devices).to.deep.equal([{ allow: false, access: 'rwm' }, { allow: true, type: 'b', major: 7, minor: 99, access: 'rwm' }]);
    // An existing allow rule is not doubled.
    planContainerDevices(spec);
    expect(spec.linux.resources.devices).to.have.length(2);
    expect(planContainerDevices({}).disks).to.deep.equal([]);
  });

  it('a privileged container (allow-all device rule) gets none of the host devices in the VM, as privileged_without_host_devices', () => {
    const devices = [{ path: img, type: 'b', major: 7, minor: 99 }, { path: '/dev/does-not-exist', type: 'b', major: 8, minor: 0 }, { path: '/dev/vfio/7', type: 'c', major: 243, minor: 0 }, { path: '/dev/null', type: 'c', major: 1, minor: 3 }];
    const spec = { linux: { devices, resources: { devices: [{ allow: true, access: 'rwm' }] as unknown[] } } };
    const plan = planContainerDevices(spec);
    expect(plan.disks).to.deep.equal([]);
    expect(plan.devices).to.deep.equal([]);
    expect(plan.hostDevicesLeftOut).to.equal(3);
    // The spec is left as it was for the guest's runtime.
    expect(spec.linux.devices).to.equal(devices);
    expect(spec.linux.resources.devices).to.deep.equal([{ allow: true, access: 'rwm' }]);
    // A rule allowing one type or one device is not privileged: the entries are planned (and checked) as usual.
    expect(() => planContainerDevices({ linux: { devices: [devices[1]], resources: { devices: [{ allow: true, type: 'b', access: 'rwm' }] } } })).to.throw(DeviceError, /does not exist/);
  });

  it('bad entries are one DeviceError each', () => {
    const loop0 = fs.existsSync('/dev/loop0') && fs.statSync('/dev/loop0').isBlockDevice();
    const cases: Array<[unknown, RegExp]> = [
      [{ linux: { devices: {} } }, /must be an array/],
      [{ linux: { devices: [null] } }, /not an object/],
      [{ linux: { devices: [{ path: 'dev/x', type: 'b' }] } }, /not an absolute path/],
      [{ linux: { devices: [{ path: '/dev/null', type: 'b', major: 1, minor: 3 }] } }, /neither a block device nor an image file/],
      [{ linux: { devices: [{ path: path.join(dir, 'nope'), type: 'b', major: 1, minor: 3 }] } }, /does not exist on the host/],
      [{ linux: { devices: [{ path: img, type: 'b' }, { path: img, type: 'b' }] } }, /twice/],
    ];
    // Numbers that name no host device (else that device is taken, as Kata does: see unit/runtime/hypervisor-choice) and a path that is another one.
    if (loop0) cases.push([{ linux: { devices: [{ path: '/dev/loop0', type: 'b', major: 7, minor: 1048575 }] } }, /7:0 on the host, not 7:1048575/]);
    for (const [spec, re] of cases) {
      expect(() => planContainerDevices(spec as never), String(re)).to.throw(DeviceError, re);
    }
  });
});
