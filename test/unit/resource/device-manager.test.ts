/**
 * DeviceManager against a stand-in hypervisor that allocates PCI slots with
 * the real PciSlotAllocator and records every plug/unplug: reference counts
 * for shared devices, duplicate ids, bad host paths, a full bus, the
 * all-or-nothing attachAll, the builtin VMM's refusal, PCI paths, and
 * concurrent attaches of one device plugging it once.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DeviceManager, DeviceError, SANDBOX_HOLDER, type DeviceHost } from '../../../src/resource/devices/device-manager';
import { PciSlotAllocator } from '../../../src/hypervisor/pci-slots';
import type { DiskDevice, FsShare } from '../../../src/hypervisor/hypervisor';

class FakeHost implements DeviceHost {
  readonly slots: PciSlotAllocator;
  readonly at = new Map<string, number>();
  readonly log: string[] = [];
  failDisk = new Set<string>();
  constructor(readonly name: 'qemu' | 'builtin' = 'qemu', last = 0x1f) {
    this.slots = new PciSlotAllocator(8, last);
  }
  private async plug(key: string): Promise<void> {
    const slot = this.slots.take(); // throws "no free PCI slot" like QemuHypervisor
    await new Promise((r) => setTimeout(r, 5));
    this.at.set(key, slot);
  }
  private unplug(key: string): void {
    const s = this.at.get(key);
    if (s !== undefined) this.slots.release(s);
    this.at.delete(key);
  }
  async addDisk(d: DiskDevice): Promise<void> {
    this.log.push(`+blk ${d.id}`);
    if (this.failDisk.has(d.id)) throw new Error(`device_add ${d.id} refused`);
    await this.plug(`blk:${d.id}`);
  }
  async removeDisk(id: string): Promise<void> { this.log.push(`-blk ${id}`); this.unplug(`blk:${id}`); }
  async addShare(s: FsShare): Promise<void> { this.log.push(`+fs ${s.tag}`); await this.plug(`fs:${s.tag}`); }
  async removeShare(tag: string): Promise<void> { this.log.push(`-fs ${tag}`); this.unplug(`fs:${tag}`); }
  slotOf(kind: 'blk' | 'fs' | 'net', id: string): number | undefined { return this.at.get(`${kind}:${id}`); }
  freeSlots(): number { return this.slots.free; }
}

describe('unit: device manager', () => {
  let dir: string;
  let img: string;
  let share: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devmgr-'));
    img = path.join(dir, 'a.img');
    fs.writeFileSync(img, Buffer.alloc(4096));
    share = path.join(dir, 'share');
    fs.mkdirSync(share);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  async function rejects(p: Promise<unknown>): Promise<DeviceError> {
    try { await p; } catch (e) { expect(e).to.be.instanceOf(DeviceError); return e as DeviceError; }
    throw new Error('expected a DeviceError');
  }

  it('two holders share one device: plugged once, unplugged when the last lets go, its slot reused', async () => {
    const hv = new FakeHost();
    const m = new DeviceManager(hv);
    const a = await m.attach({ kind: 'fs', id: 'vol', path: share }, 'c1');
    expect(a.pciPath).to.equal('08');
    await m.attach({ kind: 'fs', id: 'vol', path: share }, 'c2');
    expect(m.get('vol')!.holders).to.deep.equal(['c1', 'c2']);
    expect(await m.detach('vol', 'c1')).to.equal(false);
    expect(hv.slots.inUse()).to.deep.equal([8]);
    expect(await m.detach('vol', 'c2')).to.equal(true);
    expect(hv.log).to.deep.equal(['+fs vol', '-fs vol']);
    expect(hv.slots.inUse()).to.deep.equal([]);
    expect(m.list()).to.deep.equal([]);
    expect((await m.attach({ kind: 'blk', id: 'd1', path: img, readonly: true }, 'c3')).pciPath).to.equal('08');
  });

  it('a duplicate id for a different device, or the same holder twice, is refused and plugs nothing', async () => {
    const hv = new FakeHost();
    const m = new DeviceManager(hv);
    await m.attach({ kind: 'blk', id: 'd1', path: img, readonly: true }, 'c1');
    const e1 = await rejects(m.attach({ kind: 'blk', id: 'd1', path: img, readonly: false }, 'c2'));
    expect(e1.kind).to.equal('duplicate');
    expect(e1.message).to.match(/already attached as disk d1/);
    const e2 = await rejects(m.attach({ kind: 'fs', id: 'd1', path: share }, 'c2'));
    expect(e2.kind).to.equal('duplicate');
    const e3 = await rejects(m.attach({ kind: 'blk', id: 'd1', path: img, readonly: true }, 'c1'));
    expect(e3.message).to.match(/c1 already holds/);
    expect(hv.log).to.deep.equal(['+blk d1']);
    expect(m.get('d1')!.holders).to.deep.equal(['c1']);
  });

  it('a missing path, a path that is not a device or image, a bad id: one error each, nothing plugged', async () => {
    const hv = new FakeHost();
    const m = new DeviceManager(hv);
    expect((await rejects(m.attach({ kind: 'blk', id: 'x', path: path.join(dir, 'nope'), readonly: true }, 'c'))).message).to.match(/does not exist/);
    expect((await rejects(m.attach({ kind: 'blk', id: 'x', path: '/dev/null', readonly: true }, 'c'))).message).to.match(/neither a block device nor an image file/);
    expect((await rejects(m.attach({ kind: 'blk', id: 'x', path: share, readonly: true }, 'c'))).message).to.match(/neither a block device/);
    expect((await rejects(m.attach({ kind: 'fs', id: 'x', path: img }, 'c'))).message).to.match(/not a directory/);
    expect((await rejects(m.attach({ kind: 'blk', id: 'bad id!', path: img, readonly: true }, 'c'))).kind).to.equal('invalid');
    expect((await rejects(m.attach({ kind: 'blk', id: 'a'.repeat(21), path: img, readonly: true }, 'c'))).kind).to.equal('invalid');
    expect(hv.log).to.deep.equal([]);
    expect(m.list()).to.deep.equal([]);
  });

  it('more devices than slots: a clear "full" error before anything is plugged', async () => {
    const hv = new FakeHost('qemu', 9);
    const m = new DeviceManager(hv);
    await m.attach({ kind: 'blk', id: 'd1', path: img, readonly: true }, 'c');
    await m.attach({ kind: 'blk', id: 'd2', path: img, readonly: true }, 'c');
    const e = await rejects(m.attach({ kind: 'blk', id: 'd3', path: img, readonly: true }, 'c'));
    expect(e.kind).to.equal('full');
    expect(e.message).to.match(/no free PCI slot/);
    expect(hv.log).to.deep.equal(['+blk d1', '+blk d2']);
    await m.detach('d1', 'c');
    expect((await m.attach({ kind: 'blk', id: 'd3', path: img, readonly: true }, 'c')).pciPath).to.equal('08');
  });

  it('attachAll is all or nothing: a refused device detaches the ones attached before it', async () => {
    const hv = new FakeHost();
    const m = new DeviceManager(hv);
    await m.attach({ kind: 'fs', id: 'shared', path: share }, SANDBOX_HOLDER);
    hv.failDisk.add('d2');
    const e = await rejects(m.attachAll([
      { kind: 'blk', id: 'd1', path: img, readonly: true },
      { kind: 'fs', id: 'shared', path: share },
      { kind: 'blk', id: 'd2', path: img, readonly: true },
    ], 'c1'));
    expect(e.kind).to.equal('attach');
    expect(e.message).to.match(/cannot attach disk d2.*device_add d2 refused/);
    expect(hv.log).to.deep.equal(['+fs shared', '+blk d1', '+blk d2', '-blk d1']);
    expect(m.list().map((d) => [d.spec.id, d.holders])).to.deep.equal([['shared', [SANDBOX_HOLDER]]]);
    expect(hv.slots.inUse()).to.deep.equal([8]);
    expect((await rejects(m.attachAll([{ kind: 'fs', id: 's', path: share }, { kind: 'fs', id: 's', path: share }], 'c'))).kind).to.equal('duplicate');
  });

  it('concurrent attaches of one device plug it once', async () => {
    const hv = new FakeHost();
    const m = new DeviceManager(hv);
    await Promise.all(['c1', 'c2', 'c3'].map((c) => m.attach({ kind: 'fs', id: 'vol', path: share }, c)));
    expect(hv.log).to.deep.equal(['+fs vol']);
    expect(m.get('vol')!.holders).to.have.length(3);
    await m.detachHolder('c2');
    await m.detachHolder('c1');
    await m.detachHolder('c3');
    expect(hv.log).to.deep.equal(['+fs vol', '-fs vol']);
  });

  it('boot-time devices are adopted with their PCI paths and unplugged by their holder', async () => {
    const hv = new FakeHost();
    hv.slots.reserve(8); hv.at.set('blk:root0', 8);
    hv.slots.reserve(9); hv.at.set('fs:rootfs-c1', 9);
    const m = new DeviceManager(hv);
    m.adoptBoot({ disks: [{ id: 'root0', path: img, readonly: true }], shares: [{ tag: 'rootfs-c1', path: share }] }, { 'rootfs-c1': 'c1' });
    expect(m.list().map((d) => [d.spec.id, d.pciPath, d.boot, d.holders])).to.deep.equal([['root0', '08', true, [SANDBOX_HOLDER]], ['rootfs-c1', '09', true, ['c1']]]);
    await m.detachHolder('c1');
    expect(hv.slots.inUse()).to.deep.equal([8]);
    expect(() => m.adoptBoot({ disks: [{ id: 'root0', path: img, readonly: true }] })).to.throw(DeviceError, /used twice/);
  });

  it('kinds and hypervisors that cannot hotplug say so plainly', async () => {
    const b = new DeviceManager(new FakeHost('builtin'));
    expect((await rejects(b.attach({ kind: 'blk', id: 'd', path: img, readonly: true }, 'c'))).message).to.match(/builtin VMM.*no ACPI/);
    const m = new DeviceManager(new FakeHost());
    expect((await rejects(m.attach({ kind: 'pmem', id: 'p', path: img }, 'c'))).kind).to.equal('unsupported');
    expect((await rejects(m.attach({ kind: 'vsock', id: 'v', cid: 4 }, 'c'))).message).to.match(/fixed from boot/);
    expect((await rejects(m.attach({ kind: 'net', id: 'n', fd: 3, mac: '02:00:00:00:00:01', mtu: 1500 }, 'c'))).message).to.match(/cannot hotplug network/);
  });
});
