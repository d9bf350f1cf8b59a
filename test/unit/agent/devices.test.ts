/**
 * The agent's side of a container's devices (src/agent/devices.ts): the
 * linux.devices entry at the requested path gets the guest device's
 * major/minor, cgroup rules naming the host numbers follow, other entries
 * and rules are untouched; a missing entry, a wrong type, an unknown device
 * type or a device that never appears is one DeviceMapError. nodeNumbers
 * decodes a real block device node's dev_t.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import { applyDevices, nodeNumbers, DeviceMapError } from '../../../src/agent/devices';
import type { Device } from '../../../src/protocols/agent-api';

const dev = (over: Partial<Device> = {}): Device => ({ id: 'd1', type: 'blk', vm_path: '0a', container_path: '/dev/xvdb', options: [], ...over });

function spec() {
  return {
    linux: {
      devices: [
        { path: '/dev/fuse', type: 'c', major: 10, minor: 229 },
        { path: '/dev/xvdb', type: 'b', major: 7, minor: 3, fileMode: 0o660, uid: 0, gid: 6 },
      ],
      resources: {
        devices: [
          { allow: false, access: 'rwm' },
          { allow: true, type: 'b', major: 7, minor: 3, access: 'rw' },
          { allow: true, type: 'c', major: 10, minor: 229, access: 'rwm' },
        ],
      },
    },
  };
}

describe('unit: agent maps container devices to the guest', () => {
  it('gives the requested path the guest numbers and rewrites the matching cgroup rule', async () => {
    const s = spec();
    const seen: string[] = [];
    const nodes = await applyDevices(s, [dev()], async (d) => { seen.push(d.vm_path); return '/dev/vdc'; }, async () => ({ major: 254, minor: 32 }));
    expect(seen).to.deep.equal(['0a']);
    expect([...nodes]).to.deep.equal([['/dev/xvdb', '/dev/vdc']]);
    expect(s.linux.devices).to.deep.equal([
      { path: '/dev/fuse', type: 'c', major: 10, minor: 229 },
      { path: '/dev/xvdb', type: 'b', major: 254, minor: 32, fileMode: 0o660, uid: 0, gid: 6 },
    ]);
    expect(s.linux.resources.devices).to.deep.equal([
      { allow: false, access: 'rwm' },
      { allow: true, type: 'b', major: 254, minor: 32, access: 'rw' },
      { allow: true, type: 'c', major: 10, minor: 229, access: 'rwm' },
    ]);
  });

  it('bad requests and a device that never appears: one DeviceMapError each', async () => {
    const never = async () => { throw new Error('no block device appeared at PCI path 0a within 10 ms'); };
    const n = async () => ({ major: 254, minor: 0 });
    const cases: Array<[Device, RegExp, string]> = [
      [dev({ container_path: '/dev/none' }), /no linux.devices entry for \/dev\/none/, 'invalid'],
      [dev({ container_path: '/dev/fuse' }), /type "c" in the spec/, 'invalid'],
      [dev({ type: 'vfio' }), /type "vfio" is not supported/, 'invalid'],
      [dev(), /device d1 for \/dev\/xvdb: no block device appeared at PCI path 0a/, 'failed-precondition'],
    ];
    for (const [d, re, kind] of cases) {
      let err: unknown;
      try { await applyDevices(spec(), [d], never, n); } catch (e) { err = e; }
      expect(err, String(re)).to.be.instanceOf(DeviceMapError);
      expect((err as Error).message).to.match(re);
      expect((err as DeviceMapError).kind).to.equal(kind);
    }
    // A spec without linux.devices at all.
    let err: unknown;
    try { await applyDevices({}, [dev()], async () => '/dev/vdb', n); } catch (e) { err = e; }
    expect((err as Error).message).to.match(/no linux.devices entry/);
  });

  it('decodes the dev_t of a real block device node', async function () {
    const node = ['/dev/loop0', '/dev/vda', '/dev/sda'].find((p) => { try { return fs.statSync(p).isBlockDevice(); } catch { return false; } });
    if (!node) throw new Error('no block device node on this host to check against (/dev/loop0, /dev/vda, /dev/sda)');
    const want = fs.readFileSync(`/sys/class/block/${node.slice(5)}/dev`, 'utf8').trim();
    const got = await nodeNumbers(node);
    expect(`${got.major}:${got.minor}`).to.equal(want);
    let err: unknown;
    try { await nodeNumbers('/dev/null'); } catch (e) { err = e; }
    expect((err as Error).message).to.match(/not a block device/);
  });
});
