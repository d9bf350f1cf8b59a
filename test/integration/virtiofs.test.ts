/**
 * virtio-fs container rootfs end to end: `kata-ts run --rootfs DIR` boots
 * QEMU (TCG here) with vhost-user-fs-pci served by our device; the container
 * works on its root filesystem and every change must be visible in DIR on the
 * host afterwards — create/write/read/append/truncate/rename/unlink/mkdir/
 * rmdir/symlink/hardlink/chmod/chown/utimes, a sparse file, a 32 MiB file's
 * checksum both ways, many small files, a 10k-entry directory, and escape
 * attempts through symlinks that must stay inside. One boot does all of it
 * (a boot costs ~10 s under TCG); a second checks `--rootfs-share erofs`
 * leaves DIR untouched.
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { REPO, requireGuest, testRunDir, writeTestConfig, expectNothingLeft, copyBusyboxRootfs } from '../helpers/guest';

interface Result { code: number | null; stdout: string; stderr: string }

function kataTs(args: string[], timeoutMs = 150000): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

function md5(file: string): string {
  return crypto.createHash('md5').update(fs.readFileSync(file)).digest('hex');
}

/** Lines "key=value" the container script printed. */
function kv(stdout: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const l of stdout.split('\n')) {
    const m = /^([a-z0-9_]+)=(.*)$/.exec(l.trim());
    if (m) out[m[1]] = m[2];
  }
  return out;
}

const SCRIPT = `
set -e
cd /work
echo hello > new.txt
echo more >> new.txt
echo "read_new=$(cat new.txt | tr '\\n' ' ')"
echo "read_host=$(cat host.txt)"
printf 0123456789 > trunc.txt; truncate -s 4 trunc.txt
echo data > before-rename; mv before-rename after-rename
rm to-delete
mkdir -p made/sub; rmdir gone-dir
ln -s new.txt sym; ln new.txt hard
chmod 640 new.txt; chown 1234:5678 hard
touch -d '2001-02-03 04:05:06' stamped
dd if=/dev/zero of=sparse bs=4096 count=1 seek=2560 2>/dev/null
echo "md5_host_big=$(md5sum host-big | cut -d' ' -f1)"
dd if=/dev/urandom of=guest-big bs=1M count=32 2>/dev/null
echo "md5_guest_big=$(md5sum guest-big | cut -d' ' -f1)"
mkdir many; i=0; while [ $i -lt 300 ]; do echo $i > many/f$i; i=$((i+1)); done
echo "big_dir_count=$(ls big-dir | wc -l)"
echo "escape_abs=$(cat escape-abs 2>&1 | head -c 60)"
echo "escape_rel=$(cat escape-rel 2>&1 | head -c 60)"
(echo guest-was-here > escape-abs) 2>/dev/null || true
(echo guest-was-here > escape-rel) 2>/dev/null || true
echo "dotdot=$(ls /.. | wc -l) $(ls / | wc -l)"
sync
echo done=1
`;

describe('integration: virtio-fs rootfs (QEMU, vhost-user-fs)', function () {
  this.timeout(240000);
  let runDir: string;
  let cfgFile: string;
  let base: string;
  let rootfs: string;
  let outside: string;

  before(function () {
    requireGuest(this);
    runDir = testRunDir();
    cfgFile = writeTestConfig(runDir);
    base = fs.mkdtempSync(path.join(runDir, 'vfs-'));
    rootfs = path.join(base, 'rootfs');
    outside = path.join(base, 'outside');
    copyBusyboxRootfs(rootfs);
    fs.mkdirSync(outside);
    fs.writeFileSync(path.join(outside, 'secret'), 'host secret\n');
    const work = path.join(rootfs, 'work');
    fs.mkdirSync(work);
    fs.writeFileSync(path.join(work, 'host.txt'), 'from the host');
    fs.writeFileSync(path.join(work, 'to-delete'), 'x');
    fs.mkdirSync(path.join(work, 'gone-dir'));
    fs.writeFileSync(path.join(work, 'host-big'), crypto.randomBytes(16 << 20));
    fs.mkdirSync(path.join(work, 'big-dir'));
    for (let i = 0; i < 10000; i++) fs.writeFileSync(path.join(work, 'big-dir', `e${i}`), '');
    fs.symlinkSync(path.join(outside, 'secret'), path.join(work, 'escape-abs'));
    fs.symlinkSync(path.relative(work, path.join(outside, 'secret')), path.join(work, 'escape-rel'));
  });

  after(() => {
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  it('the container\'s file operations land in the host directory; symlinks never escape it', async () => {
    const t0 = Date.now();
    const r = await kataTs(['run', '--config', cfgFile, '--rootfs', rootfs, '--memory', '512', '--', 'sh', '-c', SCRIPT]);
    const took = Date.now() - t0;
    expect(r.stderr).to.equal('');
    expect(r.code, r.stdout).to.equal(0);
    const out = kv(r.stdout);
    expect(out.done).to.equal('1');
    const w = (p: string) => path.join(rootfs, 'work', p);
    // create / append / read, both directions
    expect(fs.readFileSync(w('new.txt'), 'utf8')).to.equal('hello\nmore\n');
    expect(out.read_new).to.equal('hello more');
    expect(out.read_host).to.equal('from the host');
    // truncate, rename, unlink, mkdir, rmdir
    expect(fs.readFileSync(w('trunc.txt'), 'utf8')).to.equal('0123');
    expect(fs.existsSync(w('before-rename'))).to.equal(false);
    expect(fs.readFileSync(w('after-rename'), 'utf8')).to.equal('data\n');
    expect(fs.existsSync(w('to-delete'))).to.equal(false);
    expect(fs.statSync(w('made/sub')).isDirectory()).to.equal(true);
    expect(fs.existsSync(w('gone-dir'))).to.equal(false);
    // symlink, hard link, chmod, chown, utimes
    expect(fs.readlinkSync(w('sym'))).to.equal('new.txt');
    expect(fs.statSync(w('hard')).ino).to.equal(fs.statSync(w('new.txt')).ino);
    expect(fs.statSync(w('new.txt')).nlink).to.equal(2);
    expect(fs.statSync(w('new.txt')).mode & 0o777).to.equal(0o640);
    expect([fs.statSync(w('new.txt')).uid, fs.statSync(w('new.txt')).gid]).to.deep.equal([1234, 5678]);
    expect(fs.statSync(w('stamped')).mtime.getUTCFullYear()).to.equal(2001);
    // sparse
    const sp = fs.statSync(w('sparse'));
    expect(sp.size).to.equal(2561 * 4096);
    expect(sp.blocks * 512).to.be.lessThan(1 << 20);
    // big files both ways
    expect(out.md5_host_big).to.equal(md5(w('host-big')));
    expect(out.md5_guest_big).to.equal(md5(w('guest-big')));
    expect(fs.statSync(w('guest-big')).size).to.equal(32 << 20);
    // many small files, a 10k directory
    expect(fs.readdirSync(w('many')).length).to.equal(300);
    expect(fs.readFileSync(w('many/f299'), 'utf8')).to.equal('299\n');
    expect(out.big_dir_count).to.equal('10000');
    // escapes: the guest resolves the links in its own namespace, where the
    // targets do not exist; the host file is neither read nor written.
    expect(out.escape_abs).to.not.contain('host secret');
    expect(out.escape_rel).to.not.contain('host secret');
    expect(fs.readFileSync(path.join(outside, 'secret'), 'utf8')).to.equal('host secret\n');
    expect(fs.readdirSync(outside)).to.deep.equal(['secret']);
    const [up, root] = out.dotdot.split(' ');
    expect(up).to.equal(root); // "/.." is "/"
    process.stdout.write(`      (boot + script: ${(took / 1000).toFixed(1)} s)\n`);
  });

  it('--rootfs-share erofs keeps the directory untouched (overlay in the guest)', async () => {
    const r = await kataTs(['run', '--config', cfgFile, '--rootfs', rootfs, '--rootfs-share', 'erofs', '--', 'sh', '-c',
      'echo x > /work/erofs-was-here && mount | grep " / " | cut -d" " -f5']);
    expect(r.stderr).to.equal('');
    expect(r.code).to.equal(0);
    expect(r.stdout.trim()).to.equal('overlay');
    expect(fs.existsSync(path.join(rootfs, 'work', 'erofs-was-here'))).to.equal(false);
  });
});
