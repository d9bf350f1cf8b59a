import { expect } from 'chai';
import { adaptSpecForGuest, DEFAULT_MOUNTS } from '../../../src/agent/bundle';
import { validateSpec, BundleError, type OciSpec } from '../../../src/protocols/oci';
import { defaultSpec } from '../../../src/runtime/spec';
import { KataError } from '../../../src/common/errors';

describe('unit: OCI spec -> guest crun bundle', () => {
  const base = (): OciSpec => defaultSpec({ args: ['sh'], env: ['A=1'], cwd: '/w', uid: 5, gid: 6, terminal: true, hostname: 'h' });

  it('keeps process, hostname, rlimits and capabilities; points root at the guest rootfs', () => {
    const s = base();
    s.process!.rlimits = [{ type: 'RLIMIT_NOFILE', hard: 10, soft: 9 }];
    const g = adaptSpecForGuest(s, { containerId: 'c1', rootfs: '/run/r' });
    expect(g.root).to.deep.equal({ path: '/run/r', readonly: false });
    expect(g.process!.args).to.deep.equal(['sh']);
    expect(g.process!.env).to.include('A=1');
    expect(g.process!.cwd).to.equal('/w');
    expect(g.process!.user).to.deep.equal({ uid: 5, gid: 6 });
    expect(g.process!.terminal).to.equal(true);
    expect(g.process!.rlimits).to.deep.equal([{ type: 'RLIMIT_NOFILE', hard: 10, soft: 9 }]);
    expect(g.process!.capabilities!.bounding).to.include('CAP_CHOWN');
    expect(g.hostname).to.equal('h');
    expect(g.linux!.cgroupsPath).to.equal('/kata-ts/c1');
    expect(s.root!.path, 'input untouched').to.equal('rootfs');
  });

  it('honours a read-only root', () => {
    const s = base();
    s.root = { path: 'x', readonly: true };
    expect(adaptSpecForGuest(s, { containerId: 'c', rootfs: '/r' }).root).to.deep.equal({ path: '/r', readonly: true });
  });

  it('drops host-only parts: namespace paths, the network namespace, hooks, labels, bind mounts', () => {
    const s = base();
    s.linux!.namespaces = [{ type: 'pid' }, { type: 'network', path: '/proc/1/ns/net' }, { type: 'uts', path: '/proc/9/ns/uts' }];
    s.hooks = { prestart: [{ path: '/usr/bin/true' }] };
    s.process!.apparmorProfile = 'docker-default';
    s.process!.selinuxLabel = 'x';
    s.mounts = [{ destination: '/data', type: 'bind', source: '/host/data', options: ['rbind'] }, { destination: '/scratch', type: 'tmpfs', source: 'tmpfs' }];
    const g = adaptSpecForGuest(s, { containerId: 'c', rootfs: '/r' });
    expect(g.linux!.namespaces).to.deep.equal([{ type: 'pid' }, { type: 'uts' }, { type: 'mount' }]);
    expect(g.hooks).to.equal(undefined);
    expect(g.process!.apparmorProfile).to.equal(undefined);
    expect(g.process!.selinuxLabel).to.equal(undefined);
    const dests = g.mounts!.map((m) => m.destination);
    expect(dests).to.not.include('/data');
    expect(dests).to.include('/scratch');
  });

  it('keeps bind mounts from the volume share and the pod shm as the host gave them; drops other bind sources', () => {
    const s = base();
    s.mounts = [
      { destination: '/cfg', type: 'bind', source: '/run/kata-ts/shared/c/0-cfg', options: ['rbind', 'ro', 'rprivate'] },
      { destination: '/etc/hosts', type: 'bind', source: '/run/kata-ts/shared/c/1-hosts', options: ['rbind', 'rshared'] },
      { destination: '/dev/shm', type: 'bind', source: '/run/kata-ts/sandbox/shm', options: ['rbind', 'rslave'] },
      { destination: '/esc', type: 'bind', source: '/run/kata-ts/shared/c/../../containers', options: ['rbind'] },
      { destination: '/host', type: 'bind', source: '/var/lib/x', options: ['rbind'] },
      { destination: '/prefix', type: 'bind', source: '/run/kata-ts/sharedX/y', options: ['rbind'] },
    ];
    const g = adaptSpecForGuest(s, { containerId: 'c', rootfs: '/r' });
    const find = (d: string) => g.mounts!.find((m) => m.destination === d);
    expect(find('/cfg')).to.deep.equal(s.mounts[0]);
    expect(find('/etc/hosts')).to.deep.equal(s.mounts[1]);
    expect(find('/dev/shm')).to.deep.equal(s.mounts[2]);
    expect(g.mounts!.filter((m) => m.destination === '/dev/shm'), 'no default tmpfs on top').to.have.length(1);
    expect(find('/esc'), '.. out of the share').to.equal(undefined);
    expect(find('/host')).to.equal(undefined);
    expect(find('/prefix')).to.equal(undefined);
  });

  it('adds the default mounts, cgroup v2, parents before children', () => {
    const g = adaptSpecForGuest(base(), { containerId: 'c', rootfs: '/r' });
    for (const d of DEFAULT_MOUNTS) expect(g.mounts!.map((m) => m.destination)).to.include(d.destination);
    const cg = g.mounts!.find((m) => m.destination === '/sys/fs/cgroup')!;
    expect(cg.type).to.equal('cgroup2');
    const idx = (d: string) => g.mounts!.findIndex((m) => m.destination === d);
    expect(idx('/dev')).to.be.lessThan(idx('/dev/pts'));
    expect(idx('/sys')).to.be.lessThan(idx('/sys/fs/cgroup'));
  });

  it('rejects invalid specs with a reason', () => {
    const bad: [unknown, RegExp][] = [
      [null, /JSON object/],
      [[], /JSON object/],
      [{ process: {} }, /ociVersion/],
      [{ ociVersion: '1.0.2' }, /process is required/],
      [{ ociVersion: '1.0.2', process: { args: [], cwd: '/', user: { uid: 0, gid: 0 } } }, /args/],
      [{ ociVersion: '1.0.2', process: { args: ['a', 1], cwd: '/', user: { uid: 0, gid: 0 } } }, /args/],
      [{ ociVersion: '1.0.2', process: { args: ['a'], cwd: 'rel', user: { uid: 0, gid: 0 } } }, /cwd/],
      [{ ociVersion: '1.0.2', process: { args: ['a'], cwd: '/', user: { uid: 'root', gid: 0 } } }, /uid and gid/],
      [{ ociVersion: '1.0.2', process: { args: ['a'], cwd: '/', user: { uid: 0, gid: 0 }, env: ['NOEQUALS'] } }, /KEY=VALUE/],
      [{ ociVersion: '1.0.2', process: { args: ['a'], cwd: '/', user: { uid: 0, gid: 0 } }, mounts: [{ destination: 'rel' }] }, /absolute destination/],
    ];
    for (const [spec, re] of bad) expect(() => validateSpec(spec), JSON.stringify(spec)).to.throw(BundleError, re);
    // a KataError whose kind the agent answers as INVALID_ARGUMENT
    expect(() => validateSpec(null)).to.throw(KataError).with.property('kind', 'invalid');
  });
});
