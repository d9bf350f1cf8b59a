/**
 * The agent's own mount calls (src/agent/mount-options.ts, storage.ts
 * syscallMounter over native/src/mount.cc): option words become the
 * mount(2) flags, data, bind remount and propagation calls that
 * `mount -o …` makes; failures become one StorageError with the errno's
 * words (the virtio-fs tag retry matches them); an addon without the calls
 * falls back to busybox mount. A fake addon records the calls; the real
 * addon is checked on an unprivileged error path only (no mount is made).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { expect } from 'chai';
import { MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, parseMountOptions } from '../../../src/agent/mount-options';
import { StorageError, syscallMounter } from '../../../src/agent/storage';
import { setNativeForTests, type NativeAddon } from '../../../src/common/native';

describe('agent mount options → mount(2)', () => {
  it('flag words set and clear flags; the rest is the filesystem data, in order', () => {
    const o = parseMountOptions(['ro', 'nosuid,nodev', 'size=65536k', 'mode=1777', 'noexec']);
    expect(o.flags).to.equal(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
    expect(o.data).to.equal('size=65536k,mode=1777');
    expect(o.bindRemountFlags).to.equal(0);
    expect(o.propagation).to.equal(0);
    expect(parseMountOptions(['ro', 'rw']).flags).to.equal(0);
    expect(parseMountOptions(['defaults']).flags).to.equal(0);
  });

  it('an overlay keeps its dirs as data', () => {
    const o = parseMountOptions(['lowerdir=/a', 'upperdir=/b/upper', 'workdir=/b/work']);
    expect(o).to.deep.equal({ flags: 0, data: 'lowerdir=/a,upperdir=/b/upper,workdir=/b/work', bindRemountFlags: 0, propagation: 0 });
  });

  it('a read-only bind is a bind, then a remount with ro; rbind is recursive', () => {
    const o = parseMountOptions(['bind', 'ro']);
    expect(o.flags).to.equal(MS_BIND | MS_RDONLY);
    expect(o.bindRemountFlags).to.equal(MS_RDONLY);
    const r = parseMountOptions(['rbind', 'ro', 'nosuid', 'nodev', 'noexec']);
    expect(r.flags & (MS_BIND | MS_REC)).to.equal(MS_BIND | MS_REC);
    expect(r.bindRemountFlags).to.equal(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
    expect(parseMountOptions(['bind']).bindRemountFlags).to.equal(0);
    expect(parseMountOptions(['remount', 'bind', 'ro']).bindRemountFlags).to.equal(0);
  });

  it('propagation words are a call of their own', () => {
    const o = parseMountOptions(['bind', 'rprivate']);
    expect(o.flags).to.equal(MS_BIND);
    expect(o.propagation).to.equal(MS_PRIVATE | MS_REC);
  });
});

describe('agent syscallMounter', () => {
  const calls: unknown[][] = [];
  let fail: Record<number, number> = {};
  const fake = {
    mountFs: (...a: unknown[]) => { calls.push(['mount', ...a]); return fail[calls.length] ?? 0; },
    umountFs: (...a: unknown[]) => { calls.push(['umount', ...a]); return 0; },
  } as unknown as NativeAddon;
  beforeEach(() => { calls.length = 0; fail = {}; setNativeForTests(fake); });
  after(() => setNativeForTests(undefined));

  it('mounts with the parsed flags and data', async () => {
    await syscallMounter.mount('/dev/vda', '/run/x', 'erofs', ['ro']);
    expect(calls).to.deep.equal([['mount', '/dev/vda', '/run/x', 'erofs', MS_RDONLY, null]]);
  });

  it('remounts a read-only bind, then sets the propagation', async () => {
    await syscallMounter.mount('/', '/run/r', 'none', ['bind', 'ro', 'private']);
    expect(calls).to.deep.equal([
      ['mount', '/', '/run/r', 'none', MS_BIND | MS_RDONLY, null],
      ['mount', null, '/run/r', null, MS_REMOUNT | MS_BIND | MS_RDONLY, null],
      ['mount', null, '/run/r', null, MS_PRIVATE, null],
    ]);
  });

  it('a failed mount is one StorageError with the errno words; a failed remount undoes the bind', async () => {
    fail = { 1: -22 };
    const err = await syscallMounter.mount('kata-0', '/run/s', 'virtiofs', []).catch((e: Error) => e);
    expect(err).to.be.instanceOf(StorageError);
    expect((err as Error).message).to.equal('mount virtiofs kata-0 on /run/s: Invalid argument (EINVAL)');
    calls.length = 0;
    fail = { 2: -1 };
    const err2 = await syscallMounter.mount('/a', '/run/b', 'none', ['bind', 'ro']).catch((e: Error) => e);
    expect((err2 as Error).message).to.match(/\(read-only remount of the bind\): Operation not permitted \(EPERM\)/);
    expect(calls[2]).to.deep.equal(['umount', '/run/b', MNT_DETACH]);
  });

  it('umount detaches (umount -l)', async () => {
    await syscallMounter.umount('/run/x');
    expect(calls).to.deep.equal([['umount', '/run/x', MNT_DETACH]]);
  });

  it('the real addon has the calls and reports errno without mounting', function () {
    const addon = path.join(__dirname, '..', '..', '..', '..', 'native', 'build', 'Release', 'kata_native.node');
    if (!fs.existsSync(addon)) throw new Error(`native addon not built: ${addon} (run scripts/setup.sh)`);
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const real = require(addon) as NativeAddon;
    expect(real.umountFs!('/nonexistent/kata-ts-mount-test', 0)).to.equal(-2); // ENOENT
    expect(real.mountFs!(null, '/nonexistent/kata-ts-mount-test', null, MS_BIND, null)).to.be.lessThan(0);
  });
});
