/**
 * Devices and direct-assigned volumes end to end, through containerd and
 * its CRI plugin to containerd-shim-kata-ts-v2 and a QEMU guest (issue 14):
 *
 *   - `ctr run --device <loop device>` (containerd writes the host device's
 *     numbers and a cgroup rule into linux.devices): the disk is at the same
 *     path in the container, a block device with the host node's mode; what
 *     the test wrote on the host reads back; the container's write reaches
 *     the host's image; another device is denied by the cgroup.
 *   - a `/dev/vfio/<group>` entry on this IOMMU-less host, cold-plug
 *     configured (`ctr run --config`, the shim) and hotplug by default
 *     (`kata-ts run --bundle`): one clear error before any VM boots, nothing
 *     left behind.
 *   - CRI CreateContainer with devices [{container_path, host_path,
 *     permissions: "r"}]: the host loop device appears at /dev/xvdb, reads
 *     back the host's bytes, and a write is refused by the device cgroup
 *     (the rule CRI wrote, moved to the guest's numbers). Run for runc too,
 *     the reference that validates the test.
 *   - a direct volume, Kata's flow: `kata-ctl direct-volume add` for an ext4
 *     image file, a pod whose container mounts that volume path: the guest
 *     mounts the block device itself (ext4 in /proc/mounts, not virtio-fs),
 *     the container writes, `stats` shows the usage, `remove` is refused
 *     while the pod lives and works once it is removed; the image is clean
 *     (e2fsck) and holds the file (debugfs).
 *
 * Loop devices, images, containerds and pods are made and removed here.
 * Under CI=true a missing prerequisite fails the suite.
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { IMAGE, RUNTIME, type TestContainerd, printContainerdLogOnFailure, startTestContainerd, stopTestContainerd } from '../helpers/containerd';
import { BUSYBOX, type CriContainerd, HANDLERS, criUnavailable, startCriContainerd, stopCriContainerd, type Handler } from '../helpers/cri-containerd';
import type { ContainerConfig, PodSandboxConfig } from '../helpers/cri';
import { CACHE, REPO, copyBusyboxRootfs, requireGuest } from '../helpers/guest';
import { kataCtl } from '../helpers/kata-ctl';
import { skipOrFail } from '../helpers/skip';
import { runCommand } from '../helpers/spawn';
import { until } from '../helpers/until';
import { defaultSpec } from '../../src/runtime/spec';

const MiB = 1024 * 1024;
const IDLE = 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done';
const md5 = (b: Buffer) => crypto.createHash('md5').update(b).digest('hex');

/** An image file of `mib` MiB whose first 64 KiB are random, on a loop device of its own. */
function makeLoop(dir: string, name: string, mib: number): { img: string; dev: string; head: Buffer } {
  const img = path.join(dir, name);
  const head = crypto.randomBytes(64 * 1024);
  fs.writeFileSync(img, head);
  fs.truncateSync(img, mib * MiB);
  const dev = execFileSync('losetup', ['-f', '--show', img], { encoding: 'utf8' }).trim();
  return { img, dev, head };
}

function detachLoop(dev: string): void {
  try { execFileSync('losetup', ['-d', dev], { stdio: 'ignore' }); } catch { /* already gone */ }
}

describe('e2e: devices and direct volumes through containerd and CRI (kata-ts)', function () {
  this.timeout(900000);
  let tmp = '';
  const loops: string[] = [];

  before(function () {
    requireGuest(this);
    for (const b of ['/usr/sbin/losetup', '/usr/sbin/mkfs.ext4', '/usr/sbin/e2fsck', '/usr/sbin/debugfs']) {
      if (!fs.existsSync(b) && !fs.existsSync(b.replace('/usr/sbin', '/sbin'))) skipOrFail(this, `${b} missing (apt-get install util-linux e2fsprogs)`);
    }
    const kcfg = fs.readFileSync(path.join(CACHE, 'kernel', '.config'), 'utf8');
    if (!/^CONFIG_EXT4_FS=y$/m.test(kcfg)) skipOrFail(this, 'the guest kernel has no ext4 (CONFIG_EXT4_FS=y): rebuild it with guest/kernel/build.sh');
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ktsdev-'));
  });

  after(() => {
    for (const d of loops) detachLoop(d);
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  describe('ctr, with the default [hypervisor.qemu] (pc machine: disks are hotplugged)', function () {
    let cd: TestContainerd;
    before(async function () {
      cd = await startTestContainerd(this, () => '');
    });
    after(async () => {
      await stopTestContainerd(cd);
    });
    afterEach(function () {
      printContainerdLogOnFailure(this, cd);
    });

    it('ctr run --device <loop device>: the disk at the same path, host bytes read back, the container\'s write reaches the host, other devices denied', async () => {
      const { img, dev, head } = makeLoop(tmp, 'ctr.img', 16);
      loops.push(dev);
      const hostMode = (fs.statSync(dev).mode & 0o777).toString(8);
      const script = [
        `[ -b ${dev} ] && echo is-block`,
        `echo mode=$(stat -c %a ${dev})`,
        `echo head=$(dd if=${dev} bs=4096 count=1 2>/dev/null | md5sum | cut -d' ' -f1)`,
        `printf written-by-container | dd of=${dev} bs=1M seek=1 conv=notrunc 2>/dev/null && sync && echo wrote`,
        // Another disk of the same major (vda or vdb: with the DAX image as the
        // guest's root there may be no root disk, and this one is then vda):
        // no rule names it, so the device cgroup refuses it.
        `maj=$((0x$(stat -c %t ${dev}))); min=$((0x$(stat -c %T ${dev}))); other=0; [ $min -eq 0 ] && other=16`,
        '(mknod /tmp/other b $maj $other && dd if=/tmp/other bs=512 count=1 of=/dev/null) 2>&1 | grep -o "Operation not permitted" | head -1',
      ].join('; ');
      const r = await cd.ctr(['run', '--runtime', RUNTIME, '--rm', '--device', dev, IMAGE, 'dev1', 'sh', '-c', script], { timeoutMs: 240000 });
      expect(r.code, r.stdout + r.stderr).to.equal(0);
      expect(r.stdout).to.contain('is-block\n');
      expect(r.stdout).to.contain(`mode=${hostMode}\n`);
      expect(r.stdout).to.contain(`head=${md5(head.subarray(0, 4096))}\n`);
      expect(r.stdout).to.contain('wrote\n');
      expect(r.stdout).to.contain('Operation not permitted');
      const back = Buffer.alloc(20);
      const fd = fs.openSync(img, 'r');
      try { fs.readSync(fd, back, 0, 20, MiB); } finally { fs.closeSync(fd); }
      expect(back.toString()).to.equal('written-by-container');
      expect(cd.qemuPids()).to.deep.equal([]);
    });

  });

  // Cold plug is a q35 root-port setting now (pc has no root ports, and bridge-port is refused), and q35 does not hotplug disks: its own containerd.
  describe('ctr, with [hypervisor.qemu] machine_type = "q35", pcie_root_port = 1, cold_plug_vfio = "root-port"', function () {
    let cd: TestContainerd;
    before(async function () {
      cd = await startTestContainerd(this, () => '[hypervisor.qemu]\nmachine_type = "q35"\npcie_root_port = 1\ncold_plug_vfio = "root-port"\n');
    });
    after(async () => {
      await stopTestContainerd(cd);
    });
    afterEach(function () {
      printContainerdLogOnFailure(this, cd);
    });

    it('a /dev/vfio/<group> entry on this IOMMU-less host: one clear error before any VM boots, nothing left (ctr run --config)', async function () {
      if (fs.readdirSync('/sys/kernel/iommu_groups').length > 0) skipOrFail(this, 'this host has an IOMMU: the no-IOMMU refusal does not apply', { hostCannot: true });
      const bundle = path.join(tmp, 'vfio-bundle');
      const rootfs = copyBusyboxRootfs(path.join(bundle, 'rootfs'));
      const spec = defaultSpec({ args: ['true'] });
      spec.root = { path: rootfs, readonly: false };
      (spec.linux as Record<string, unknown>).devices = [{ path: '/dev/vfio/0', type: 'c', major: 243, minor: 0, fileMode: 0o600, uid: 0, gid: 0 }];
      fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(spec));
      const r = await cd.ctr(['run', '--runtime', RUNTIME, '--config', path.join(bundle, 'config.json'), 'vfio1'], { timeoutMs: 120000 });
      expect(r.code).to.not.equal(0);
      expect(r.stderr).to.match(/linux\.devices: \/dev\/vfio\/0: IOMMU group 0 does not exist on this host/);
      await cd.ctr(['containers', 'rm', 'vfio1']);
      expect(cd.qemuPids()).to.deep.equal([]);
      await until('the shim of the failed task to exit', async () => (cd.shimPids().length === 0 ? true : undefined), 30000);
      const sandboxes = path.join(cd.runDir, 'sandboxes');
      expect(fs.existsSync(sandboxes) ? fs.readdirSync(sandboxes) : []).to.deep.equal([]);
    });
  });

  it('kata-ts run --bundle with a /dev/vfio/<group> entry (hotplug, the default): the same error before any VM boots, nothing left', async function () {
    if (fs.readdirSync('/sys/kernel/iommu_groups').length > 0) skipOrFail(this, 'this host has an IOMMU: the no-IOMMU refusal does not apply', { hostCannot: true });
    const runDir = path.join(tmp, 'run');
    fs.mkdirSync(runDir);
    const cfg = path.join(tmp, 'run.toml');
    fs.writeFileSync(cfg, `[runtime]\nrun_dir = "${runDir}"\ncache_dir = "${CACHE}"\n`);
    const bundle = path.join(tmp, 'cli-bundle');
    copyBusyboxRootfs(path.join(bundle, 'rootfs'));
    const spec = defaultSpec({ args: ['true'] });
    (spec.linux as Record<string, unknown>).devices = [{ path: '/dev/vfio/0', type: 'c', major: 243, minor: 0 }];
    fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(spec));
    const r = await runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), 'run', '--bundle', bundle], { env: { KATA_TS_CONFIG: cfg }, timeoutMs: 120000 });
    expect(r.code).to.not.equal(0);
    expect(r.stderr).to.match(/linux\.devices: \/dev\/vfio\/0: IOMMU group 0 does not exist on this host/);
    expect(r.stderr).to.not.match(/sandbox ready/);
    const sandboxes = path.join(runDir, 'sandboxes');
    expect(fs.existsSync(sandboxes) ? fs.readdirSync(sandboxes) : []).to.deep.equal([]);
  });

  describe('CRI (containerd\'s CRI plugin; runc as the reference, kata-ts)', function () {
    let cd: CriContainerd;
    const pods = new Map<Handler, Promise<{ id: string; config: PodSandboxConfig }>>();
    let dvRoot = '';
    let volPath = '';
    let volImg = '';
    let cfgFile = '';
    const savedRoot = process.env.KATA_TS_DIRECT_VOLUMES_ROOT;
    const ctl = (args: string[]) => kataCtl(['--config', cfgFile, 'direct-volume', ...args], { env: { KATA_TS_DIRECT_VOLUMES_ROOT: dvRoot }, timeoutMs: 120000 });
    const exec = async (id: string, script: string) => {
      const r = await cd.cri.execSync(id, ['sh', '-c', script], 60);
      return { code: r.exit_code, out: r.stdout.toString(), err: r.stderr.toString() };
    };
    const container = (name: string, extra: Partial<ContainerConfig>): ContainerConfig => ({
      metadata: { name, attempt: 0 }, image: { image: BUSYBOX }, command: ['sh', '-c', IDLE], log_path: `${name}/0.log`, linux: {}, ...extra,
    });
    /** The handler's pod, made once by the first test that needs it. */
    const thePod = (handler: Handler): Promise<{ id: string; config: PodSandboxConfig }> => {
      let p = pods.get(handler);
      if (!p) {
        p = (async () => {
          const name = `devpod-${handler}`;
          const logDir = path.join(cd.dir, 'pods', name);
          fs.mkdirSync(logDir, { recursive: true });
          const config: PodSandboxConfig = {
            metadata: { name, uid: `uid-${name}`, namespace: 'cri-dev', attempt: 0 }, hostname: name, log_directory: logDir,
            linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
          };
          return { id: await cd.cri.runPodSandbox(config, handler), config };
        })();
        pods.set(handler, p);
      }
      return p;
    };
    const startIn = async (handler: Handler, cfg: ContainerConfig): Promise<string> => {
      const pod = await thePod(handler);
      const id = await cd.cri.createContainer(pod.id, cfg, pod.config);
      await cd.cri.startContainer(id);
      return id;
    };
    /** Stops and removes the handler's pod, as a kubelet does. */
    const removePod = async (handler: Handler): Promise<void> => {
      const pod = await thePod(handler);
      await cd.cri.stopPodSandbox(pod.id);
      await cd.cri.removePodSandbox(pod.id);
    };

    before(async function () {
      for (const h of HANDLERS) {
        const why = criUnavailable(h);
        if (why) skipOrFail(this, why);
      }
      dvRoot = path.join(tmp, 'direct-volumes');
      // The shim inherits containerd's environment, which inherits ours: runtime and kata-ctl share the registry.
      process.env.KATA_TS_DIRECT_VOLUMES_ROOT = dvRoot;
      cd = await startCriContainerd(this);
      cfgFile = path.join(cd.dir, 'kata-ts.toml');
    });

    after(async () => {
      if (savedRoot === undefined) delete process.env.KATA_TS_DIRECT_VOLUMES_ROOT;
      else process.env.KATA_TS_DIRECT_VOLUMES_ROOT = savedRoot;
      await stopCriContainerd(cd);
    });

    afterEach(function () {
      printContainerdLogOnFailure(this, cd, { only: /level=(error|warning)/, lines: 15 });
    });

    // runc is the reference (it must pass, which also validates the test); kata-ts passes the same way.
    for (const handler of HANDLERS) it(`CRI devices (${handler}): a host loop device at container path /dev/xvdb, read-only by its cgroup rule, reads back the host's bytes`, async () => {
      const { dev, head } = makeLoop(tmp, `cri-${handler}.img`, 16);
      loops.push(dev);
      const id = await startIn(handler, container('dev', { devices: [{ container_path: '/dev/xvdb', host_path: dev, permissions: 'r' }] }));
      const r = await exec(id, [
        '[ -b /dev/xvdb ] && echo is-block',
        `echo head=$(dd if=/dev/xvdb bs=4096 count=1 2>/dev/null | md5sum | cut -d' ' -f1)`,
        'dd if=/dev/zero of=/dev/xvdb bs=512 count=1 2>&1 | grep -o "Operation not permitted" | head -1',
        `[ -e ${dev} ] && echo host-path-visible || echo host-path-absent`,
      ].join('; '));
      expect(r.code, r.out + r.err).to.equal(0);
      expect(r.out).to.contain('is-block\n');
      expect(r.out).to.contain(`head=${md5(head.subarray(0, 4096))}\n`);
      expect(r.out, 'write refused by the "r" rule').to.contain('Operation not permitted');
      expect(r.out).to.contain('host-path-absent');
      if (handler === 'runc') await removePod('runc');
    });

    it('a direct volume (kata-ctl direct-volume add): mounted as ext4 in the guest, written, stats, remove refused in use, allowed after the pod is gone', async () => {
      volImg = path.join(tmp, 'vol.img');
      execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'lazy_itable_init=0,lazy_journal_init=0', volImg, '32M']);
      volPath = path.join(tmp, 'vol1');
      fs.mkdirSync(volPath);
      const add = await ctl(['add', '--volume-path', volPath, '--mount-info', JSON.stringify({ 'volume-type': 'block', device: volImg, fstype: 'ext4', metadata: {}, options: ['noatime'] })]);
      expect(add.code, add.stderr).to.equal(0);
      const id = await startIn('kata-ts', container('vol', { mounts: [{ container_path: '/data', host_path: volPath }] }));
      const w = await exec(id, 'grep " /data " /proc/mounts; dd if=/dev/zero of=/data/payload bs=1M count=4 2>/dev/null && sync && echo written');
      expect(w.code, w.out + w.err).to.equal(0);
      expect(w.out).to.match(/ \/data ext4 /);
      expect(w.out).to.not.match(/ \/data virtiofs /);
      expect(w.out).to.contain('written');
      expect(fs.readdirSync(volPath), 'nothing written through the host path').to.deep.equal([]);
      const used = await until('4 MiB counted by GetVolumeStats', async () => {
        const s = await ctl(['stats', '--volume-path', volPath, '--json']);
        if (s.code !== 0) throw new Error(s.stderr);
        const bytes = (JSON.parse(s.stdout) as { usage: Array<{ unit: string; used: number; total: number }> }).usage.find((u) => u.unit === 'BYTES')!;
        return bytes.used >= 4 * MiB ? bytes : undefined;
      }, 60000);
      expect(used.total).to.be.within(24 * MiB, 32 * MiB);
      const busy = await ctl(['remove', '--volume-path', volPath]);
      expect(busy.code).to.equal(1);
      expect(busy.stderr).to.match(/in use by sandbox/);
      // The pod goes, as a kubelet removes it.
      await removePod('kata-ts');
      expect(cd.qemuPids()).to.deep.equal([]);
      const rm = await ctl(['remove', '--volume-path', volPath]);
      expect(rm.code, rm.stderr).to.equal(0);
      expect(fs.readdirSync(dvRoot)).to.deep.equal([]);
      execFileSync('e2fsck', ['-fn', volImg], { stdio: 'ignore' });
      const st = execFileSync('debugfs', ['-R', 'stat /payload', volImg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      expect(st).to.match(/Size: 4194304\b/);
    });
  });
});
