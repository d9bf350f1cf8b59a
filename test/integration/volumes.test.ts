/**
 * Volumes through `kata-ts run -v HOST:GUEST[:ro]` (real QEMU, TCG here):
 * file and directory bind mounts reach the container through the sandbox's
 * volume share, read-only holds from the guest and is enforced by the
 * host's mount, host updates (in place, and a kubelet-style `..data` swap)
 * show up in the running container, escapes through `..` and symlinks land
 * in the container's own root, CRI-style /etc files and /dev/shm work, a
 * host mount added under a shared source reaches the container, bad
 * volumes fail before a VM boots — and no mount is left afterwards.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { runCommand, type CommandResult } from '../helpers/spawn';
import { REPO, requireGuest, testRunDir, writeTestConfig, expectNothingLeft, leftoverQemu } from '../helpers/guest';
import { mountsUnder } from '../../src/runtime/volumes';
import { until } from '../helpers/until';

function kataTs(args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<CommandResult> {
  return runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), ...args], opts);
}

describe('integration: kata-ts run --volume (QEMU)', function () {
  this.timeout(240000);
  let runDir: string;
  let cfgFile: string;
  let host: string;
  const run = (args: string[], o: { timeoutMs?: number } = {}) => kataTs(['run', '--config', cfgFile, '--hypervisor', 'qemu', ...args], o);

  before(function () {
    requireGuest(this);
    runDir = testRunDir();
    cfgFile = writeTestConfig(runDir);
    host = path.join(runDir, 'host');
    fs.mkdirSync(host);
  });

  after(() => {
    if (!runDir) return;
    expect(mountsUnder(runDir), 'mounts left').to.deep.equal([]);
    expectNothingLeft(runDir);
  });

  it('file and directory volumes: rw lands on the host, ro is refused (and ro on the host), host updates show, escapes stay inside', async () => {
    const data = path.join(host, 'data');
    const ro = path.join(host, 'ro');
    const cm = path.join(host, 'cm');
    fs.mkdirSync(data);
    fs.mkdirSync(ro);
    fs.writeFileSync(path.join(data, 'in.txt'), 'host data\n');
    fs.writeFileSync(path.join(ro, 'keep.txt'), 'keep\n');
    fs.writeFileSync(path.join(host, 'outside-secret'), 'SECRET\n');
    fs.symlinkSync(path.join(host, 'outside-secret'), path.join(data, 'link-abs'));
    fs.symlinkSync('../outside-secret', path.join(data, 'link-rel'));
    fs.symlinkSync(host, path.join(data, 'link-dir'));
    // A configMap as kubelet writes it: files behind a ..data symlink.
    fs.mkdirSync(path.join(cm, '..2024_01'), { recursive: true });
    fs.writeFileSync(path.join(cm, '..2024_01', 'key'), 'v1');
    fs.symlinkSync('..2024_01', path.join(cm, '..data'));
    fs.symlinkSync('..data/key', path.join(cm, 'key'));
    const file = path.join(host, 'app.conf');
    fs.writeFileSync(file, 'conf-v1\n');
    const hosts = path.join(host, 'hosts');
    fs.writeFileSync(hosts, '127.0.0.1 localhost\n10.1.2.3 volume-test\n');
    const shm = path.join(host, 'shm');
    fs.mkdirSync(shm);

    const script = [
      'cat /app.conf /data/in.txt',
      'grep volume-test /etc/hosts',
      'echo from-guest > /data/out.txt && echo rw-ok',
      'touch /ro/new 2>/dev/null && echo RO-WRITE || echo ro-refused',
      'echo x 2>/dev/null > /app.conf && echo RO-FILE-WRITE || echo ro-file-refused',
      'rm /ro/keep.txt 2>/dev/null && echo RO-RM || echo ro-rm-refused',
      // escapes: .. is the container's root; host symlinks resolve in the container's root
      'cat /data/../outside-secret 2>/dev/null || echo dotdot-contained',
      'cat /data/link-abs 2>/dev/null || echo abs-link-contained',
      'cat /data/link-rel 2>/dev/null || echo rel-link-contained',
      'ls /data/link-dir/ 2>/dev/null | grep -q outside-secret && echo DIR-LINK-ESCAPED || echo dir-link-contained',
      'ln -s / /data/made-in-guest && cat /data/made-in-guest/outside-secret 2>/dev/null || echo guest-link-contained',
      'mount | grep -q " /dev/shm type tmpfs" && echo shm > /dev/shm/x && cat /dev/shm/x',
      'echo ready > /data/ready',
      // wait for the host's updates (the share caches for 1 s)
      'i=0; until [ "$(cat /cm/key)" = v2 ] && [ "$(cat /app.conf)" = conf-v2 ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done',
      'echo "cm=$(cat /cm/key) conf=$(cat /app.conf)"',
    ].join('\n');
    const name = 'vol1';
    const pending = run(['--name', name, '-v', `${file}:/app.conf:ro`, '-v', `${data}:/data`, '-v', `${ro}:/ro:ro`, '-v', `${cm}:/cm:ro`,
      '-v', `${hosts}:/etc/hosts`, '-v', `${shm}:/dev/shm`, '--', 'sh', '-c', script]);
    let result: CommandResult | undefined;
    void pending.then((r) => (result = r));
    await until('the container to get ready', () => (fs.existsSync(path.join(data, 'ready')) ? true : result ? (() => { throw new Error(`kata-ts run ended early: ${JSON.stringify(result)}`); })() : undefined), 180000, 100);
    // Read-only is the host's mount, not only the guest's flag.
    const shared = path.join(runDir, 'sandboxes', name, 'shared');
    const ms = mountsUnder(shared);
    const vol = (n: string) => ms.find((m) => m.target.endsWith(`/${name}/${n}`));
    expect(vol('0-app.conf')?.readonly, 'file volume ro on the host').to.equal(true);
    expect(vol('1-data')?.readonly, 'rw volume').to.equal(false);
    expect(vol('2-ro')?.readonly, 'dir volume ro on the host').to.equal(true);
    expect(vol('3-cm')?.readonly).to.equal(true);
    expect(() => fs.writeFileSync(path.join(vol('2-ro')!.target, 'x'), 'x')).to.throw(/EROFS/);
    // The host updates: kubelet's atomic swap, and an in-place edit of the file volume.
    fs.mkdirSync(path.join(cm, '..2024_02'));
    fs.writeFileSync(path.join(cm, '..2024_02', 'key'), 'v2');
    fs.symlinkSync('..2024_02', path.join(cm, '..data_tmp'));
    fs.renameSync(path.join(cm, '..data_tmp'), path.join(cm, '..data'));
    fs.writeFileSync(file, 'conf-v2\n');
    const r = await pending;
    expect(r.stderr).to.equal('');
    expect(r.code).to.equal(0);
    expect(r.stdout.split('\n')).to.deep.equal([
      'conf-v1', 'host data', '10.1.2.3 volume-test', 'rw-ok', 'ro-refused', 'ro-file-refused', 'ro-rm-refused',
      'dotdot-contained', 'abs-link-contained', 'rel-link-contained', 'dir-link-contained', 'guest-link-contained', 'shm',
      'cm=v2 conf=conf-v2', '',
    ]);
    expect(fs.readFileSync(path.join(data, 'out.txt'), 'utf8')).to.equal('from-guest\n');
    expect(fs.readlinkSync(path.join(data, 'made-in-guest'))).to.equal('/');
    expect(fs.readdirSync(ro)).to.deep.equal(['keep.txt']);
    expect(fs.readdirSync(shm), 'the host shm dir is not shared').to.deep.equal([]);
    expect(fs.readFileSync(path.join(host, 'outside-secret'), 'utf8')).to.equal('SECRET\n');
    expect(mountsUnder(runDir), 'mounts left after the run').to.deep.equal([]);
  });

  it('HostToContainer: a mount the host adds under a shared-propagation source reaches the running container', async () => {
    // As kubelet prepares a HostToContainer volume: the source is a shared mount.
    const src = path.join(host, 'prop');
    fs.mkdirSync(path.join(src, 'sub'), { recursive: true });
    execFileSync('mount', ['--bind', src, src]);
    execFileSync('mount', ['--make-rshared', src]);
    try {
      const sig = path.join(host, 'sig');
      fs.mkdirSync(sig);
      const pending = run(['--name', 'vol2', '-v', `${src}:/vol:ro`, '-v', `${sig}:/sig`, '--', 'sh', '-c',
        'echo "before: $(ls /vol/sub)"; echo ready > /sig/ready; i=0; until [ -e /vol/sub/NEW ] || [ $i -gt 300 ]; do i=$((i+1)); sleep 0.1; done; echo "after: $(ls /vol/sub)"']);
      await until('the container to look once', () => (fs.existsSync(path.join(sig, 'ready')) ? true : undefined), 180000, 100);
      execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', path.join(src, 'sub')]);
      fs.writeFileSync(path.join(src, 'sub', 'NEW'), '');
      const r = await pending;
      expect(r.stderr).to.equal('');
      expect(r.code).to.equal(0);
      expect(r.stdout).to.equal('before: \nafter: NEW\n');
    } finally {
      execFileSync('umount', ['-R', '-l', src]);
    }
    expect(mountsUnder(runDir), 'mounts left after the run').to.deep.equal([]);
  });

  it('refuses a missing source, a socket and a path with .. in one line, before any VM starts', async () => {
    const sock = path.join(host, 'api.sock');
    const srv = net.createServer().listen(sock);
    await new Promise((r) => srv.once('listening', r));
    try {
      for (const [v, re] of [
        [`${host}/nope:/x`, /bind mount source .*\/nope \(for \/x\) does not exist/],
        [`${sock}:/x`, /is a unix socket/],
        [`${host}/../host:/x`, /has a "\.\." component/],
        [`${host}:relative`, /container path must be absolute/],
      ] as const) {
        const r = await run(['-v', v, '--', 'true'], { timeoutMs: 30000 });
        expect(r.code, v).to.equal(125);
        expect(r.stderr.trim().split('\n'), v).to.have.length(1);
        expect(r.stderr, v).to.match(re);
      }
    } finally {
      srv.close();
    }
    expect(leftoverQemu(runDir)).to.deep.equal([]);
    expect(mountsUnder(runDir)).to.deep.equal([]);
  });
});
