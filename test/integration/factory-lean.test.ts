/**
 * VM templates with the memory density features (issues 13 and 16): a
 * `lean` configuration — the guest image as a DAX NVDIMM, the balloon with
 * free page reporting, virtio-mem, a VM that starts at 256 MiB — makes its
 * template with `kata-ctl factory init`, and a sandbox starts from it (a
 * clone: its QEMU ran with -incoming, never booted). In the clone the root
 * is the NVDIMM (the guest reads the image through QEMU's mapping of
 * rootfs-dax.erofs), `kata-ctl balloon` answers, the page scanner reads
 * the clone's RAM (`kata-ctl pages`), and a container with a
 * memory limit grows the VM by virtio-mem and shrinks it back when it
 * leaves. A lean configuration against a plain template, and a plain one
 * against a lean template: one warning naming the memory devices, a cold boot.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runCommand, type CommandResult } from '../helpers/spawn';
import { REPO, CACHE, requireGuest, testRunDir, writeTestConfig, expectNothingLeft, leftoverQemu, testConfig, copyBusyboxRootfs, collectOutput } from '../helpers/guest';
import { skipOrFail } from '../helpers/skip';
import { kataCtl } from '../helpers/kata-ctl';
import { isMountPoint } from '../../src/factory/template-store';
import { guestAssets, loadConfig } from '../../src/runtime/config';
import { DAX_IMAGE_NAME } from '../../src/hypervisor/memory-plan';
import { selectHypervisor } from '../../src/hypervisor';
import type { QemuHypervisor } from '../../src/hypervisor/qemu';
import { Sandbox } from '../../src/runtime/sandbox';
import { defaultSpec, defaultProcess } from '../../src/runtime/spec';
import { configureLogging } from '../../src/common/log';
import type { VmResizer } from '../../src/resource/memory/resize';

const MIB = 1024 * 1024;
/** The plain configuration: the defaults before DAX, balloon and virtio-mem room became defaults, set explicitly. */
const PLAIN = 'disable_image_nvdimm = true\nreclaim_guest_freed_memory = false\ndefault_maxmemory = 0\n';
const LEAN = 'disable_image_nvdimm = false\nreclaim_guest_freed_memory = true\ntcg_translation_cache = 16\ndefault_memory = 256\ndefault_maxmemory = 2048\n';

function node(bin: string, args: string[], timeoutMs = 240000): Promise<CommandResult> {
  return runCommand(process.execPath, [path.join(REPO, 'bin', bin), ...args], { timeoutMs });
}

/** The JSON log lines of a run's stderr (--log-level info). */
function logJson(stderr: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const l of stderr.split('\n').filter(Boolean)) {
    try { out.push(JSON.parse(l) as Record<string, unknown>); } catch { /* the container's stderr */ }
  }
  return out;
}
const warnings = (stderr: string) => logJson(stderr).filter((j) => j.level === 'warn').map((j) => String(j.msg));
const fromTemplate = (stderr: string) => ((logJson(stderr).find((j) => j.msg === 'sandbox ready')?.guest ?? {}) as { template?: boolean }).template === true;

/** The resizer's record of its last virtio-mem resize. */
const lastResize = (sb: Sandbox) => (sb as unknown as { memory: { resizer: VmResizer } }).memory.resizer.lastMemoryResize!;

describe('integration: VM templates with DAX, balloon, virtio-mem and a 256 MiB start (lean)', function () {
  this.timeout(900000);
  let runDir: string;
  let plainCfg: string;
  let leanCfg: string;
  let tplPlain: string;
  let tplLean: string;
  let pinned: string;
  let sandbox: Sandbox | undefined;
  let hv: QemuHypervisor;
  let qemuPid = 0;
  let execSeq = 0;
  const figures: string[] = [];
  const ctl = (args: string[], cfg: string) => node('kata-ctl', ['--config', cfg, ...args]);
  const run = (args: string[], cfg: string) => node('kata-ts', ['run', '--config', cfg, '--log-level', 'info', ...args]);
  // The lean configuration also runs the page scanner (one pass on demand): it reads the clone's RAM through our vsock backend's mapping.
  const config = (lean: boolean, tpl: string) => `[hypervisor.qemu]\n${pinned}${lean ? `${LEAN}[memory]\npage_scanner = true\nscan_interval = 3600\nscan_rate_mib = 1024\n` : PLAIN}[factory]\nenable_template = true\ntemplate_path = "${tpl}"\n`;
  const writeConfig = (name: string, text: string) => {
    const f = path.join(runDir, name);
    fs.writeFileSync(f, fs.readFileSync(writeTestConfig(runDir, text), 'utf8'));
    return f;
  };

  const sh = async (cid: string, script: string) => {
    const execId = `e${execSeq++}`;
    await sandbox!.exec(cid, execId, defaultProcess({ args: ['sh', '-c', script] }));
    return await collectOutput(sandbox!.agent, cid, execId);
  };
  const qom = async (property: string) => await hv.memoryQmp('qom-get', { path: '/machine/peripheral/vmem0', property }) as number;
  const memTotalMiB = async () => Number(/MemTotal:\s+(\d+)/.exec((await sh('c0', 'cat /proc/meminfo')).out)![1]) / 1024;
  /** Resident KiB of QEMU's mapping of the DAX image (the guest's file reads through the NVDIMM). */
  const daxRssKiB = () => {
    let kib = 0;
    let inDax = false;
    for (const l of fs.readFileSync(`/proc/${qemuPid}/smaps`, 'utf8').split('\n')) {
      if (/^[0-9a-f]+-[0-9a-f]+ /.test(l)) inDax = l.endsWith(DAX_IMAGE_NAME);
      else if (inDax && l.startsWith('Rss:')) kib += Number(l.split(/\s+/)[1]);
    }
    return kib;
  };

  before(async function () {
    requireGuest(this);
    if (process.getuid?.() !== 0) skipOrFail(this, 'VM templates mount a tmpfs: run as root');
    const assets = guestAssets(testConfig('/nonexistent'), 'qemu');
    const dax = path.join(path.dirname(assets.image), DAX_IMAGE_NAME);
    if (!fs.existsSync(dax)) skipOrFail(this, `no ${DAX_IMAGE_NAME} beside the guest image (guest/image/build.sh makes it)`);
    configureLogging({ silent: true });
    runDir = testRunDir();
    tplPlain = path.join(runDir, 'tpl-plain');
    tplLean = path.join(runDir, 'tpl-lean');
    // Pinned copies (kernel, image and the DAX image beside it): a guest image rebuilt meanwhile must not stale the templates.
    for (const [src, name] of [[assets.kernel, 'vmlinux'], [assets.image, 'rootfs.erofs'], [dax, DAX_IMAGE_NAME]] as const) fs.copyFileSync(src, path.join(runDir, name));
    pinned = `kernel = "${path.join(runDir, 'vmlinux')}"\nimage = "${path.join(runDir, 'rootfs.erofs')}"\n`;
    plainCfg = writeConfig('plain.toml', config(false, tplPlain));
    leanCfg = writeConfig('lean.toml', config(true, tplLean));
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && hv) console.log(hv.consoleTail(30));
  });

  after(async () => {
    for (const f of figures) console.log(`      ${f}`);
    await sandbox?.stop();
    if (!runDir) return;
    for (const [cfg, tpl] of [[plainCfg, tplPlain], [leanCfg, tplLean]]) {
      await ctl(['factory', 'destroy'], cfg).catch(() => undefined);
      expect(leftoverQemu(tpl), 'template qemu left running').to.deep.equal([]);
      expect(isMountPoint(tpl), 'template tmpfs left mounted').to.equal(false);
    }
    expectNothingLeft(runDir);
  });

  it('factory init with the lean configuration makes a valid template of 256 MiB', async () => {
    const init = await ctl(['factory', 'init', '--json'], leanCfg);
    expect(init.code, init.stderr).to.equal(0);
    const st = JSON.parse((await ctl(['factory', 'status', '--json'], leanCfg)).stdout);
    expect(st.state, JSON.stringify(st.reasons)).to.equal('valid');
    expect(st.manifest.inputs.memory).to.deep.include({ balloon: true, virtioMemMiB: 2048 - 256 });
    expect(st.manifest.inputs.memory.daxImage.path).to.equal(path.join(fs.realpathSync(runDir), DAX_IMAGE_NAME));
    expect(st.manifest.memoryBytes).to.equal(256 * MIB);
    expect(leftoverQemu(tplLean)).to.deep.equal([]);
  });

  it('a sandbox starts from it (a clone, not a boot) with the NVDIMM root, DAX reads, and the clone\'s own devices', async () => {
    const cfg = loadConfig(leanCfg);
    hv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
    sandbox = new Sandbox({ id: 'lean1', config: cfg, hypervisor: hv, bootContainers: [{ id: 'c0', rootfs: path.join(CACHE, 'rootfs', 'busybox'), rootfsShare: 'erofs' }] });
    const t0 = Date.now();
    await sandbox.start();
    const startMs = Date.now() - t0;
    const ps = leftoverQemu(runDir);
    expect(ps, 'one QEMU').to.have.length(1);
    qemuPid = Number(ps[0]!.trim().split(/\s+/)[0]);
    const argv = fs.readFileSync(`/proc/${qemuPid}/cmdline`, 'utf8').split('\0');
    // A clone: QEMU waited for the template's state, its RAM is the runtime's memfd copy; a cold boot has neither.
    expect(argv.slice(argv.indexOf('-incoming'), argv.indexOf('-incoming') + 2)).to.deep.equal(['-incoming', 'defer']);
    expect(argv.some((a) => /^memory-backend-file,id=mem,size=256M,mem-path=\/proc\/\d+\/fd\/\d+,share=on$/.test(a)), argv.join(' ')).to.equal(true);
    // The memory devices as a cold boot of this configuration has them, and no virtio-blk root disk.
    const joined = argv.join(' ');
    expect(joined).to.contain(`nvdimm,id=nv0,memdev=imgmem,unarmed=on`).and.contain('virtio-balloon-pci,id=balloon0,free-page-reporting=on')
      .and.contain('virtio-mem-pci,id=vmem0,memdev=vmem0-mem,requested-size=0').and.contain('-m 256M,slots=1,maxmem=');
    expect(joined).to.not.contain('drive=rootimg');
    const c0 = defaultSpec({ args: ['sleep', '600'] });
    await sandbox.createContainer('c0', c0, path.join(CACHE, 'rootfs', 'busybox'));
    await sandbox.startContainer('c0');
    // The guest's block devices: the NVDIMM, the container's disks (hotplugged), no vda root.
    const blocks = (await sh('c0', 'ls /sys/block')).out.split(/\s+/).filter(Boolean);
    expect(blocks).to.include('pmem0');
    expect(Number((await sh('c0', 'cat /sys/block/pmem0/size')).out.trim())).to.be.above(0);
    // crun, the agent and Node run from the image: their pages are QEMU's mapping of the DAX file, not guest RAM.
    const daxKiB = daxRssKiB();
    expect(daxKiB, 'resident KiB of the DAX image mapping in QEMU').to.be.above(4096);
    expect(await memTotalMiB()).to.be.within(200, 256);
    figures.push(`lean clone: sandbox start ${startMs} ms (the VM from the template), DAX image resident in QEMU ${(daxKiB / 1024).toFixed(1)} MiB`);
  });

  it('kata-ctl balloon answers for the clone (256 MiB, nothing inflated) and sets a target', async () => {
    const r0 = await kataCtl(['--config', leanCfg, 'balloon', 'lean1', '--json'], { timeoutMs: 120000 });
    expect(r0.code, r0.stderr).to.equal(0);
    expect(JSON.parse(r0.stdout)).to.include({ sandbox: 'lean1', ramMiB: 256, actualMiB: 256 });
    const set = await kataCtl(['--config', leanCfg, 'balloon', 'lean1', '--set', '224'], { timeoutMs: 120000 });
    expect(set.code, set.stderr).to.equal(0);
    const deadline = Date.now() + 60000;
    let actual = 0;
    while (Date.now() < deadline) {
      actual = (JSON.parse((await kataCtl(['--config', leanCfg, 'balloon', 'lean1', '--json'])).stdout) as { actualMiB: number }).actualMiB;
      if (actual === 224) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    expect(actual, 'the clone\'s guest inflated its balloon').to.equal(224);
    expect((await kataCtl(['--config', leanCfg, 'balloon', 'lean1', '--set', '256'])).code).to.equal(0);
  });

  it('the page scanner reads the clone\'s RAM (kata-ctl pages)', async () => {
    const p = await kataCtl(['--config', leanCfg, 'pages', 'lean1', '--fresh', '--json'], { timeoutMs: 120000 });
    expect(p.code, p.stderr).to.equal(0);
    const j = JSON.parse(p.stdout) as { sandboxes: Array<{ id: string; residentPages: number }> };
    expect(j.sandboxes.map((x) => x.id)).to.deep.equal(['lean1']);
    // The clone's copy of the template's RAM is resident (~40 MiB), not 0 and not the whole 256 MiB.
    expect(j.sandboxes[0]!.residentPages * 4096 / MIB).to.be.within(8, 256);
  });

  it('a container with a 128 MiB limit grows the clone by virtio-mem; it leaves and the VM shrinks back', async () => {
    const before = await memTotalMiB();
    expect(await qom('size')).to.equal(0);
    const spec = defaultSpec({ args: ['sleep', '600'] });
    spec.linux = { ...spec.linux, resources: { memory: { limit: 128 * MIB } } };
    await sandbox!.createContainer('m1', spec, copyBusyboxRootfs(path.join(runDir, 'rootfs-m1')));
    const grow = lastResize(sandbox!);
    expect(grow).to.deep.include({ fromMiB: 0, toMiB: 128, reached: true });
    expect(await qom('size')).to.equal(128 * MIB);
    expect((await memTotalMiB()) - before).to.be.within(120, 128);
    await sandbox!.startContainer('m1');
    expect((await sh('m1', 'echo in-m1')).out).to.equal('in-m1\n');
    await sandbox!.removeContainer('m1');
    const shrink = lastResize(sandbox!);
    expect(shrink).to.deep.include({ fromMiB: 128, toMiB: 0, reached: true });
    expect(await qom('size')).to.equal(0);
    expect(await memTotalMiB()).to.be.within(before - 1, before + 1);
    figures.push(`lean clone: virtio-mem grow 0 → 128 MiB ${grow.ms} ms, shrink ${shrink.ms} ms`);
    expect((await sh('c0', 'echo alive')).out).to.equal('alive\n');
    await sandbox!.stop();
    sandbox = undefined;
    expect(leftoverQemu(runDir)).to.deep.equal([]);
  });

  it('kata-ts run from the lean template: output, no warning', async () => {
    const r = await run(['--', 'sh', '-c', 'echo MARK; ls /sys/block | grep -c pmem0'], leanCfg);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.equal('MARK\n1\n');
    expect(fromTemplate(r.stderr), r.stderr).to.equal(true);
    expect(warnings(r.stderr)).to.deep.equal([]);
  });

  it('a lean configuration with a plain template, and a plain one with the lean template: one warning naming the memory devices, a cold boot', async () => {
    const init = await ctl(['factory', 'init'], plainCfg);
    expect(init.code, init.stderr).to.equal(0);
    // Lean configuration → the plain template.
    const leanOnPlain = writeConfig('lean-on-plain.toml', config(true, tplPlain));
    const a = await run(['--', 'echo', 'cold-a'], leanOnPlain);
    expect(a.code, a.stderr).to.equal(0);
    expect(a.stdout).to.equal('cold-a\n');
    expect(fromTemplate(a.stderr)).to.equal(false);
    const wa = warnings(a.stderr);
    expect(wa, a.stderr).to.have.length(1);
    expect(wa[0]).to.match(/^VM template stale: .*DAX image nvdimm: template without, now .*rootfs-dax\.erofs.*balloon \(reclaim_guest_freed_memory\): template off, now on.*virtio-mem device: template none, now 1792 MiB.*; cold boot$/);
    // Plain configuration → the lean template.
    const plainOnLean = writeConfig('plain-on-lean.toml', config(false, tplLean));
    const b = await run(['--', 'echo', 'cold-b'], plainOnLean);
    expect(b.code, b.stderr).to.equal(0);
    expect(b.stdout).to.equal('cold-b\n');
    expect(fromTemplate(b.stderr)).to.equal(false);
    const wb = warnings(b.stderr);
    expect(wb, b.stderr).to.have.length(1);
    expect(wb[0]).to.match(/^VM template stale: .*DAX image nvdimm: template .*rootfs-dax\.erofs, now without.*; cold boot$/);
    expect(leftoverQemu(runDir)).to.deep.equal([]);
  });
});
