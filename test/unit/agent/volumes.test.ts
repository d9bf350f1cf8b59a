/**
 * The agent's direct-volume RPCs (src/agent/volumes.ts) refuse any path that
 * is not a direct volume this sandbox mounted — they reach kata-ctl through
 * the owner and must not statfs or resize anything else — and a size that
 * is not a positive byte count; each is one VolumeError. (The statfs and the
 * EXT4_IOC_RESIZE_FS grow run for real in integration/direct-volume: root on
 * this host lacks CAP_SYS_RESOURCE, which the ioctl needs.)
 */
import { expect } from 'chai';
import { checkVolumePath, resizeVolume, volumeStats, VolumeError } from '../../../src/agent/volumes';
import { DIRECT_VOLUME_GUEST_DIR, isDirectVolumeGuestPath } from '../../../src/protocols/guest-paths';

async function kindOf(p: Promise<unknown>): Promise<string> {
  try { await p; } catch (err) {
    expect(err).to.be.instanceOf(VolumeError);
    return (err as VolumeError).kind;
  }
  throw new Error('expected a VolumeError');
}

describe('unit: agent direct volumes (GetVolumeStats / ResizeVolume guards)', () => {
  const ok = `${DIRECT_VOLUME_GUEST_DIR}/L3gveQ==`;

  it('accepts only one component below the direct-volume dir, and only mounted ones', () => {
    expect(isDirectVolumeGuestPath(ok)).to.equal(true);
    for (const bad of ['/', '/etc', `${DIRECT_VOLUME_GUEST_DIR}`, `${DIRECT_VOLUME_GUEST_DIR}/`, `${DIRECT_VOLUME_GUEST_DIR}/a/b`, `${DIRECT_VOLUME_GUEST_DIR}/..`, `${DIRECT_VOLUME_GUEST_DIR}/a b`]) {
      expect(isDirectVolumeGuestPath(bad), bad).to.equal(false);
      expect(() => checkVolumePath(bad, [bad])).to.throw(VolumeError, 'is not under');
    }
    expect(checkVolumePath(ok, [ok])).to.equal(ok);
    expect(() => checkVolumePath(ok, [])).to.throw(VolumeError, 'no direct volume is mounted');
  });

  it('stats and resize: one error before touching anything', async () => {
    expect(await kindOf(volumeStats('/etc', ['/etc']))).to.equal('invalid');
    expect(await kindOf(volumeStats(ok, []))).to.equal('not-found');
    expect(await kindOf(resizeVolume(ok, 1 << 20, []))).to.equal('not-found');
    for (const size of [0, -1, 1.5, Number.MAX_VALUE]) expect(await kindOf(resizeVolume(ok, size, [ok])), String(size)).to.equal('invalid');
  });
});
