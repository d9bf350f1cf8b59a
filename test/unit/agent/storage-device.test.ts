/**
 * The agent's `device-serial=` storage option (a converted image's blob
 * device, EROFS device 1): resolved to `device=/dev/vdX` by the disk's
 * virtio-blk serial, other options kept in order, a malformed serial or a
 * missing disk refused plainly.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { StorageError, resolveDeviceSerials } from '../../../src/agent/storage';

describe('agent/storage: device-serial= for EROFS extra devices', () => {
  let sys: string;
  before(() => {
    sys = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-sysblock-'));
    for (const [dev, serial] of [['vda', 'kata-root'], ['vdb', 'immeta'], ['vdc', 'ibblob']]) {
      fs.mkdirSync(path.join(sys, dev));
      fs.writeFileSync(path.join(sys, dev, 'serial'), `${serial}\n`);
    }
  });
  after(() => fs.rmSync(sys, { recursive: true, force: true }));

  it('resolves device-serial= to the disk path and keeps the other options', async () => {
    expect(await resolveDeviceSerials(['ro', 'device-serial=ibblob', 'noatime'], sys)).to.deep.equal(['ro', 'device=/dev/vdc', 'noatime']);
    expect(await resolveDeviceSerials(['ro'], sys)).to.deep.equal(['ro']);
  });

  it('refuses a malformed serial and a disk that never appears', async () => {
    for (const bad of ['device-serial=../x', 'device-serial=', 'device-serial=a,b']) {
      const e = await resolveDeviceSerials([bad], sys).then(() => undefined, (x: Error) => x);
      expect(e, bad).to.be.instanceOf(StorageError);
    }
    const e = await resolveDeviceSerials(['device-serial=missing'], sys, 100).then(() => undefined, (x: Error) => x);
    expect(e?.message).to.match(/no block device with serial missing/);
  });
});
