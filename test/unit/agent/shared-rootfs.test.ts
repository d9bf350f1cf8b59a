/**
 * The agent's side of container roots in the sandbox share (Kata's shared
 * directory; src/agent/container.ts create): a root.path equal to this
 * container's directory in the share is the rootfs, and the storages only
 * mount the share (once, counted); a root.path in the share that is not
 * this container's is refused before anything is mounted; with no share
 * root, the last storage's mount point stays the rootfs, as before.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AgentError, Container } from '../../../src/agent/container';
import type { Mounter } from '../../../src/agent/storage';
import type { Storage } from '../../../src/protocols/agent-api';
import type { OciSpec } from '../../../src/protocols/oci';
import { SHARED_FS_TAG, SHARED_GUEST_DIR, sharedRootfsGuestPath } from '../../../src/protocols/guest-paths';
import { defaultSpec } from '../../../src/runtime/spec';
import { DirectRuntime } from '../../helpers/direct-runtime';

describe('unit: agent container roots in the sandbox share', () => {
  let dir: string;
  let calls: string[];
  const mounter: Mounter = {
    async mount(source, target, fstype) { calls.push(`mount ${fstype} ${source} ${target}`); },
    async umount(target) { calls.push(`umount ${target}`); },
  };
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-agent-shroot-'));
    calls = [];
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const spec = (root: string) => JSON.stringify({ ...defaultSpec({ args: ['/bin/true'] }), root: { path: root, readonly: false } } as OciSpec);
  const failure = async (p: Promise<unknown>): Promise<AgentError> => {
    const err = await p.then(() => undefined, (e: unknown) => e);
    expect(err).to.be.instanceOf(AgentError);
    return err as AgentError;
  };

  it('refuses another container\'s directory in the share before mounting anything', async () => {
    const c = new Container('app', path.join(dir, 'c', 'app'), new DirectRuntime(), mounter);
    const share: Storage = { driver: 'virtiofs', source: SHARED_FS_TAG, fstype: 'virtiofs', options: [], mount_point: path.join(dir, 'share') };
    for (const root of [sharedRootfsGuestPath('pause'), `${SHARED_GUEST_DIR}/app/0-hosts`]) {
      const err = await failure(c.create(spec(root), [share]));
      expect(err.kind).to.equal('invalid');
      expect(err.message).to.include(root).and.to.include(sharedRootfsGuestPath('app'));
    }
    expect(calls, 'nothing mounted').to.deep.equal([]);
  });

  it('keeps its own share path as the rootfs (the share mounted as a storage, not the root), and says so when it is missing', async () => {
    const c = new Container('app', path.join(dir, 'c', 'app'), new DirectRuntime(), mounter);
    const share: Storage = { driver: 'virtiofs', source: SHARED_FS_TAG, fstype: 'virtiofs', options: [], mount_point: path.join(dir, 'share') };
    const err = await failure(c.create(spec(sharedRootfsGuestPath('app')), [share]));
    // The fake mounter mounted nothing there: the agent looked for the rootfs at the share path, not at the storage.
    expect(calls).to.deep.equal([`mount virtiofs ${SHARED_FS_TAG} ${share.mount_point}`]);
    expect(err.kind).to.equal('failed-precondition');
    expect(err.message).to.include(`the container's rootfs ${sharedRootfsGuestPath('app')} is not a directory in the sandbox share`);
  });

  it('without a share root, the last storage\'s mount point is the rootfs, as before', async () => {
    const c = new Container('old', path.join(dir, 'c', 'old'), new DirectRuntime(), mounter);
    const rootMp = path.join(dir, 'rootfs-mp');
    await c.create(spec('/run/kata-ts/containers/old/rootfs'), [
      { driver: 'virtiofs', source: SHARED_FS_TAG, fstype: 'virtiofs', options: [], mount_point: path.join(dir, 'share') },
      { driver: 'virtiofs', source: 'kata-old', fstype: 'virtiofs', options: [], mount_point: rootMp },
    ]);
    const written = JSON.parse(fs.readFileSync(path.join(c.bundleDir, 'config.json'), 'utf8')) as OciSpec;
    expect(written.root?.path).to.equal(rootMp);
    expect(calls).to.have.length(2);
  });
});
