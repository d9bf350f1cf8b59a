/**
 * Memory density on a real sandbox (QEMU, TCG here): the guest image on an
 * NVDIMM mounted with DAX (every file of its image laid out plain, the
 * only layout EROFS maps with DAX), the page scanner over live guest RAM checked
 * against an independent reference (QEMU's own pmemsave of the same paused
 * memory, hashed per page with SHA-1 by Python), its figures in `kata-ctl
 * metrics` and `kata-ctl pages`, and the balloon read and set with `kata-ctl
 * balloon` (a target beyond the VM's RAM refused). Nothing is left behind.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { requireGuest, testRunDir, testConfig, expectNothingLeft, writeTestConfig, CACHE } from '../helpers/guest';
import { skipOrFail } from '../helpers/skip';
import { until } from '../helpers/until';
import { kataCtl } from '../helpers/kata-ctl';
import { selectHypervisor } from '../../src/hypervisor';
import { Sandbox } from '../../src/runtime/sandbox';
import type { QemuHypervisor } from '../../src/hypervisor/qemu';
import { configureLogging } from '../../src/common/log';
import { memoryCtlCall, memSocketPath } from '../../src/resource/memory/ctl-socket';
import { DAX_IMAGE_NAME } from '../../src/hypervisor/memory-plan';
import type { ScanReport } from '../../src/resource/memory/service';
import { ErofsImage } from '../../src/hot/erofs';

const REFERENCE_PY = `
import hashlib, sys
zero = bytes(4096); seen = {}; zeros = 0; pages = 0
for name in sys.argv[1:]:
    with open(name, 'rb') as f:
        while True:
            b = f.read(4096)
            if not b: break
            pages += 1
            if b == zero: zeros += 1; continue
            d = hashlib.sha1(b).digest(); seen[d] = seen.get(d, 0) + 1
print(pages, zeros, len(seen), pages - zeros - len(seen))
`;

describe('integration: memory density (DAX image, page scanner, balloon)', function () {
  this.timeout(300000);
  let runDir: string;
  let cfgFile: string;
  let sandbox: Sandbox | undefined;
  let hv: QemuHypervisor;
  const ctl = (args: string[]) => kataCtl(['--config', cfgFile, ...args], { timeoutMs: 120000 });

  before(async function () {
    requireGuest(this);
    if (!fs.existsSync(path.join(CACHE, 'image', DAX_IMAGE_NAME))) skipOrFail(this, `no ${DAX_IMAGE_NAME} in the guest image cache (guest/image/build.sh makes it)`);
    if (!fs.existsSync('/usr/bin/python3')) skipOrFail(this, 'python3 (the reference tool) is not installed');
    configureLogging({ silent: true });
    runDir = testRunDir();
    const extra = '[hypervisor.qemu]\ndisable_image_nvdimm = false\nreclaim_guest_freed_memory = true\n[memory]\npage_scanner = true\nscan_interval = 3600\nscan_rate_mib = 1024\n';
    cfgFile = writeTestConfig(runDir, extra);
    const cfg = testConfig(runDir);
    cfg['hypervisor.qemu'].disable_image_nvdimm = false;
    cfg['hypervisor.qemu'].reclaim_guest_freed_memory = true;
    cfg.memory.page_scanner = true;
    cfg.memory.scan_interval = 3600;
    cfg.memory.scan_rate_mib = 1024;
    cfg.runtime.enable_debug = true; // the guest kernel then prints its EROFS mount messages
    hv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
    sandbox = new Sandbox({ id: 'mem1', config: cfg, hypervisor: hv, bootContainers: [] });
    await sandbox.start();
  });

  after(async () => {
    await sandbox?.stop();
    if (sandbox) expect(fs.existsSync(memSocketPath(sandbox.dir)), 'mem.sock removed').to.equal(false);
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  it('boots from the NVDIMM with DAX (no virtio-blk root disk)', () => {
    const log = fs.readFileSync(path.join(sandbox!.dir, 'console.log'), 'utf8');
    expect(log).to.match(/erofs: DAX enabled/);
    expect(log).to.match(/erofs: \(device pmem0\): mounted/);
    expect(log).to.not.match(/DAX unsupported/);
  });

  it('lays out every regular file of the DAX image plain (EROFS gives DAX to no other layout)', () => {
    // Before: mkfs's default inline tails, and the guest read Node through
    // its page cache although the root was mounted dax (guest Cached 49 MiB).
    const img = fs.readFileSync(path.join(CACHE, 'image', DAX_IMAGE_NAME));
    const fsImg = ErofsImage.fromBuffer(img.subarray(2 * 1024 * 1024));
    const notPlain: string[] = [];
    let files = 0;
    const walk = (dir: string) => {
      for (const e of fsImg.readdir(dir)) {
        const p = `${dir === '/' ? '' : dir}/${e.name}`;
        if (e.type === 'dir') walk(p);
        else if (e.type === 'file') {
          files++;
          const st = fsImg.lstat(p);
          if (st.layout !== 'flat-plain' && st.size > 0) notPlain.push(`${p} (${st.layout})`);
        }
      }
    };
    try { walk('/'); } finally { fsImg.close(); }
    expect(files).to.be.greaterThan(10);
    expect(notPlain.slice(0, 5), `${notPlain.length} files not plain`).to.deep.equal([]);
  });

  it('counts zero and duplicate pages of live guest RAM like SHA-1 over QEMU\'s own dump of the same memory', async () => {
    await hv.pause();
    try {
      const res = await memoryCtlCall(sandbox!.dir, { op: 'scan', fresh: true }, 120000);
      const scan = res.scan as ScanReport;
      const regions = hv.guestMemory()!.regions();
      expect(regions.length).to.be.greaterThan(0);
      const files: string[] = [];
      for (const [i, r] of regions.entries()) {
        const f = path.join(runDir, `dump-${i}`);
        await hv.memoryQmp('pmemsave', { val: Number(r.gpa), size: r.size, filename: f });
        files.push(f);
      }
      const [pages, zeros, distinct, dup] = execFileSync('/usr/bin/python3', ['-c', REFERENCE_PY, ...files], { encoding: 'utf8' }).trim().split(' ').map(Number);
      for (const f of files) fs.rmSync(f);
      expect(pages * 4096).to.equal(scan.ramBytes);
      // Pages the host never allocated read as zeros in the dump; the scanner skips them.
      expect(scan.zeroPages + (pages - scan.residentPages)).to.equal(zeros);
      expect(scan.distinctPages).to.equal(distinct);
      expect(scan.duplicatePages).to.equal(dup);
      expect(scan.residentPages).to.be.greaterThan(1000);
      expect(scan.residentPages).to.be.lessThan(pages); // an idle guest does not touch all of its RAM
    } finally {
      await hv.resume();
    }
  });

  it('kata-ctl metrics and pages show the scanner\'s figures', async () => {
    const m = await ctl(['metrics', 'mem1']);
    expect(m.code, m.stderr).to.equal(0);
    expect(m.stdout).to.match(/^kata_memory_scan_zero_bytes\{sandbox_id="mem1"\} \d+/m);
    expect(m.stdout).to.match(/^kata_memory_scan_duplicate_bytes\{sandbox_id="mem1"\} \d+/m);
    expect(m.stdout).to.match(/^kata_memory_scan_saving_bytes\{sandbox_id="mem1"\} [1-9]\d*/m);
    const p = await ctl(['pages', '--json']);
    expect(p.code, p.stderr).to.equal(0);
    const j = JSON.parse(p.stdout) as { schemaVersion: number; sandboxes: Array<{ id: string; residentPages: number; eventLoopDelayMaxMs: number }> };
    expect(j.schemaVersion).to.equal(1);
    expect(j.sandboxes.map((s) => s.id)).to.deep.equal(['mem1']);
    expect(j.sandboxes[0].residentPages).to.be.greaterThan(0);
  });

  it('kata-ctl balloon reads and sets the balloon; a target beyond RAM is refused', async () => {
    const r0 = await ctl(['balloon', 'mem1', '--json']);
    expect(r0.code, r0.stderr).to.equal(0);
    expect(JSON.parse(r0.stdout)).to.include({ schemaVersion: 1, sandbox: 'mem1', ramMiB: 512, actualMiB: 512 });
    const bad = await ctl(['balloon', 'mem1', '--set', '4096']);
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.equal('kata-ctl: balloon target 4096 MiB is beyond the VM\'s 512 MiB of RAM\n');
    const set = await ctl(['balloon', 'mem1', '--set', '384']);
    expect(set.code, set.stderr).to.equal(0);
    await until('the guest to inflate its balloon to 384 MiB', async () => {
      const r = await ctl(['balloon', 'mem1', '--json']);
      return (JSON.parse(r.stdout) as { actualMiB: number }).actualMiB === 384 ? true : undefined;
    }, 60000, 1000);
    const back = await ctl(['balloon', 'mem1', '--set', '512']);
    expect(back.code, back.stderr).to.equal(0);
  });
});
