/**
 * Our virtio-blk device on a host block device (a container's
 * linux.devices disk): its capacity comes from the kernel
 * (/sys/dev/block/M:m/size), not fstat, which says 0 for a block device —
 * the guest saw an empty disk before. Uses a loop device over a 3 MiB file.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { BlkDevice } from '../../../src/virtio/blk/device';
import { skipOrFail } from '../../helpers/skip';

describe('unit: virtio-blk on a host block device', () => {
  let dir = '';
  let loop = '';
  before(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blkdev-'));
    const file = path.join(dir, 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(3 << 20));
    try {
      loop = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8' }).trim();
    } catch (err) {
      skipOrFail(this, `no loop device: ${(err as Error).message}`);
    }
  });
  after(() => {
    if (loop) execFileSync('losetup', ['-d', loop]);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('reports the block device capacity (fstat would say 0)', () => {
    expect(fs.statSync(loop).size).to.equal(0);
    const dev = new BlkDevice({ path: loop, readonly: true, id: 'loopdisk' });
    try {
      expect(dev.capacitySectors).to.equal(BigInt((3 << 20) / 512));
    } finally {
      dev.close?.();
    }
  });

  it('online resize (grow): a host block device is not enlarged by us; beyond its size is refused, up to it is taken', () => {
    const dev = new BlkDevice({ path: loop, readonly: false, id: 'loopdisk' });
    try {
      expect(() => dev.grow(4 << 20)).to.throw(/the host block device has 3145728 bytes, fewer than 4194304; grow it on the host first/);
      expect(dev.capacitySectors).to.equal(BigInt((3 << 20) / 512));
      expect(() => dev.grow(2 << 20)).to.throw(/smaller than the disk/);
      dev.grow(3 << 20);
      expect(dev.capacitySectors).to.equal(BigInt((3 << 20) / 512));
      const ro = new BlkDevice({ path: loop, readonly: true, id: 'loopro' });
      try { expect(() => ro.grow(3 << 20)).to.throw(/read-only: it cannot be resized/); } finally { ro.close?.(); }
    } finally {
      dev.close?.();
    }
  });
});

