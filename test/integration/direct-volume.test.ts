/**
 * Direct-assigned volumes in a running pod (QEMU, real guest), once per
 * block driver — the default vhost-user-blk (our virtio-blk device) and
 * QEMU's own virtio-blk: an ext4 image file registered with
 * `kata-ctl direct-volume add` is hotplugged as a disk when a container
 * names its volume path as a mount source, and the agent mounts it at the
 * container's destination. The container writes into it; `stats` (through
 * the owner's ctl channel, the agent's GetVolumeStats) shows the usage;
 * `resize` 32 → 96 MiB grows the image (vhost-user-blk: our backend and
 * CONFIG_CHANGE_MSG on the vhost-user back-end channel; virtio-blk: QMP
 * block_resize) and the filesystem online in the guest (ResizeVolume,
 * EXT4_IOC_RESIZE_FS), a smaller size is refused with nothing changed, and
 * the container then writes more than the volume first held; a second container naming the
 * same volume shares the disk and the guest mount (kept when the first
 * leaves); `remove` refuses while the sandbox uses it and succeeds after. The host checks the image afterwards
 * with e2fsck (clean) and dumpe2fs (the new block count).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { requireGuest, testRunDir, testConfig, writeTestConfig, expectNothingLeft, CACHE, collectOutput, copyBusyboxRootfs } from '../helpers/guest';
import { until } from '../helpers/until';
import { skipOrFail } from '../helpers/skip';
import { kataCtl } from '../helpers/kata-ctl';
import { selectHypervisor } from '../../src/hypervisor';
import { Sandbox } from '../../src/runtime/sandbox';
import type { QemuHypervisor } from '../../src/hypervisor/qemu';
import { defaultSpec } from '../../src/runtime/spec';
import { configureLogging } from '../../src/common/log';
import { DirectVolumeStore } from '../../src/resource/volumes/direct-volume';
import { directVolumeDiskId } from '../../src/runtime/direct-volumes';

const MiB = 1024 * 1024;

for (const driver of ['vhost-user-blk', 'virtio-blk'] as const) describe(`integration: kata-ctl direct-volume, an ext4 image mounted by the agent (QEMU, ${driver})`, function () {
  this.timeout(600000);
  let runDir = '';
  let cfgFile = '';
  let sandbox: Sandbox | undefined;
  let hv: QemuHypervisor;
  let rootfs = '';
  let image = '';
  let volPath = '';
  let dvRoot = '';
  const savedRoot = process.env.KATA_TS_DIRECT_VOLUMES_ROOT;
  const ctl = (args: string[]) => kataCtl(['--config', cfgFile, 'direct-volume', ...args], { env: { KATA_TS_DIRECT_VOLUMES_ROOT: dvRoot }, timeoutMs: 120000 });
  const stats = async () => {
    const r = await ctl(['stats', '--volume-path', volPath, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const j = JSON.parse(r.stdout) as { usage: Array<{ unit: string; total: number; used: number; available: number }> };
    return { bytes: j.usage.find((u) => u.unit === 'BYTES')!, inodes: j.usage.find((u) => u.unit === 'INODES')! };
  };

  before(async function () {
    requireGuest(this);
    const kcfg = fs.readFileSync(path.join(CACHE, 'kernel', '.config'), 'utf8');
    if (!/^CONFIG_EXT4_FS=y$/m.test(kcfg)) skipOrFail(this, 'the guest kernel has no ext4 (CONFIG_EXT4_FS=y): rebuild it with guest/kernel/build.sh');
    try { execFileSync('mkfs.ext4', ['-V'], { stdio: 'ignore' }); } catch { skipOrFail(this, 'mkfs.ext4 (e2fsprogs) is not installed on the host'); }
    configureLogging({ silent: true });
    runDir = testRunDir();
    cfgFile = writeTestConfig(runDir);
    dvRoot = path.join(runDir, 'direct-volumes');
    process.env.KATA_TS_DIRECT_VOLUMES_ROOT = dvRoot;
    rootfs = path.join(runDir, 'rootfs');
    copyBusyboxRootfs(rootfs);
    image = path.join(runDir, 'vol.img');
    execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'lazy_itable_init=0,lazy_journal_init=0', image, '32M']);
    volPath = path.join(runDir, 'volume');
    fs.mkdirSync(volPath);
    const cfg = testConfig(runDir);
    cfg['hypervisor.qemu'].block_device_driver = driver;
    hv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
    sandbox = new Sandbox({ id: 'dvol', config: cfg, hypervisor: hv, bootContainers: [] });
    await sandbox.start();
  });

  after(async () => {
    await sandbox?.stop();
    if (savedRoot === undefined) delete process.env.KATA_TS_DIRECT_VOLUMES_ROOT;
    else process.env.KATA_TS_DIRECT_VOLUMES_ROOT = savedRoot;
    if (runDir) expectNothingLeft(runDir);
  });

  it('add → a container writes → stats → online resize → remove refused in use, then done', async () => {
    const add = await ctl(['add', '--volume-path', volPath, '--mount-info', JSON.stringify({ 'volume-type': 'block', device: image, fstype: 'ext4', metadata: {}, options: ['noatime'] })]);
    expect(add.code, add.stderr).to.equal(0);

    const spec = defaultSpec({ args: ['sh', '-c', 'dd if=/dev/zero of=/data/first bs=1M count=4 2>/dev/null && sync && echo ok > /data/marker && exec sleep 600'] });
    spec.mounts = [...(spec.mounts ?? []), { destination: '/data', type: 'bind', source: volPath, options: ['rbind', 'rw'] }];
    await sandbox!.createContainer('w', spec, rootfs);
    const disk = sandbox!.devices.get(directVolumeDiskId(volPath));
    expect(disk?.holders).to.deep.equal(['w']);
    expect(new DirectVolumeStore(dvRoot).sandboxesOf(volPath)).to.deep.equal(['dvol']);
    await sandbox!.startContainer('w');

    const s1 = await until('4 MiB written and counted', async () => {
      const s = await stats();
      return s.bytes.used >= 4 * MiB ? s : undefined;
    }, 120000);
    expect(s1.bytes.total).to.be.within(24 * MiB, 32 * MiB);
    expect(s1.bytes.available).to.be.below(s1.bytes.total - 4 * MiB);
    expect(s1.inodes.total).to.be.above(0);
    expect(s1.inodes.used).to.be.above(10); // the root, lost+found, reserved inodes, our files

    const t0 = Date.now();
    const rs = await ctl(['resize', '--volume-path', volPath, '--size', '96Mi']);
    expect(rs.code, rs.stdout + rs.stderr).to.equal(0);
    console.log(`      (${driver}: resize 32 → 96 MiB through kata-ctl took ${Date.now() - t0} ms)`);
    expect(fs.statSync(image).size).to.equal(96 * MiB);
    const s2 = await stats();
    expect(s2.bytes.total, 'filesystem grew online').to.be.above(80 * MiB);
    // Shrinking would cut the mounted filesystem's tail: refused, nothing changed.
    const shrink = await ctl(['resize', '--volume-path', volPath, '--size', '64Mi']);
    expect(shrink.code).to.equal(1);
    expect(shrink.stderr).to.contain('smaller than its device').and.contain('only grow');
    expect(fs.statSync(image).size).to.equal(96 * MiB);
    expect((await stats()).bytes.total).to.equal(s2.bytes.total);

    // More than the volume first held: only fits after the online grow.
    const proc = { ...spec.process!, args: ['sh', '-c', 'dd if=/dev/zero of=/data/second bs=1M count=40 2>/dev/null && sync && cat /data/marker && ls /data'] };
    await sandbox!.exec('w', 'grow', proc);
    const out = await collectOutput(sandbox!.agent, 'w', 'grow');
    expect(out.status, out.out).to.equal(0);
    expect(out.out).to.contain('ok').and.contain('second');
    expect((await stats()).bytes.used).to.be.at.least(44 * MiB);

    // A second container naming the same volume shares the disk and the guest mount.
    const rspec = defaultSpec({ args: ['sh', '-c', 'cat /data/marker; ls /data'] });
    rspec.mounts = [...(rspec.mounts ?? []), { destination: '/data', type: 'bind', source: volPath, options: ['rbind', 'ro'] }];
    await sandbox!.createContainer('r', rspec, rootfs);
    expect(sandbox!.devices.get(directVolumeDiskId(volPath))?.holders).to.deep.equal(['w', 'r']);
    await sandbox!.startContainer('r');
    const rout = await collectOutput(sandbox!.agent, 'r', '');
    expect(rout.status, rout.out).to.equal(0);
    expect(rout.out).to.contain('ok').and.contain('second');

    const busy = await ctl(['remove', '--volume-path', volPath]);
    expect(busy.code).to.equal(1);
    expect(busy.stderr).to.contain('in use by sandbox dvol');

    await sandbox!.removeContainer('w', 1);
    expect(sandbox!.devices.get(directVolumeDiskId(volPath))?.holders, 'disk kept for r').to.deep.equal(['r']);
    expect(new DirectVolumeStore(dvRoot).sandboxesOf(volPath)).to.deep.equal(['dvol']);
    expect((await stats()).bytes.used, 'still mounted for r').to.be.at.least(44 * MiB);
    await sandbox!.removeContainer('r', 1);
    expect(sandbox!.devices.get(directVolumeDiskId(volPath)), 'disk unplugged').to.equal(undefined);
    expect(new DirectVolumeStore(dvRoot).sandboxesOf(volPath)).to.deep.equal([]);
    const st = await ctl(['stats', '--volume-path', volPath]);
    expect(st.code).to.equal(1);
    expect(st.stderr).to.contain('not used by a running sandbox');
    const rm = await ctl(['remove', '--volume-path', volPath]);
    expect(rm.code, rm.stderr).to.equal(0);
    expect(fs.readdirSync(dvRoot)).to.deep.equal([]);

    // The host's view of what the guest did: a clean ext4 of 96 MiB with our files.
    execFileSync('e2fsck', ['-fn', image], { stdio: 'ignore' });
    const blocks = /Block count:\s+(\d+)/.exec(execFileSync('dumpe2fs', ['-h', image], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }))![1];
    expect(Number(blocks)).to.equal(96 * MiB / 4096);
  });

  it('unknown volume and bad resize size: one clear error each, nothing changed', async () => {
    const un = await ctl(['stats', '--volume-path', path.join(runDir, 'nope')]);
    expect(un.code).to.equal(1);
    expect(un.stderr).to.contain('is not a registered direct volume');
    const bad = await ctl(['resize', '--volume-path', volPath, '--size', 'lots']);
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.contain('--size "lots"');
    expect(fs.existsSync(dvRoot) ? fs.readdirSync(dvRoot) : []).to.deep.equal([]);
  });
});
