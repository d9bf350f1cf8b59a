/**
 * VM templates for the builtin VMM ([factory] with the builtin hypervisor;
 * src/factory/builtin-template.ts), with the test guest (test/fixtures/
 * vmm-guest, `test=count ready`: it prints the agent's ready line, then
 * counts on COM1 with its running checksum in RAM):
 *  - init boots the template, waits for the ready line, snapshots into
 *    template_path (a tmpfs of its own), writes the manifest; status: valid;
 *  - a sandbox start (startFromTemplate) restores it: the clone's console
 *    starts at the snapshot (no boot lines) and the count runs on with a
 *    consistent checksum; a second clone starts from the very same line,
 *    and both map the template's memory.bin MAP_PRIVATE and share its
 *    pages;
 *  - another kernel: stale, one warning, cold boot (nothing started);
 *    a truncated state file: corrupt, one warning;
 *  - destroy leaves neither files, nor the tmpfs, nor the directory;
 *  - the same through `kata-ctl factory init|status|destroy` with
 *    `[runtime] hypervisor = "builtin"`.
 *  - Full Linux (our kernel, image and agent) only where KVM runs guests in
 *    hardware; skipped here with the reason (this host's KVM is PVM).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { probeKvm, type KvmProbe } from '../../src/hypervisor/capabilities';
import { BuiltinHypervisor } from '../../src/hypervisor/builtin';
import type { VmConfig } from '../../src/hypervisor/hypervisor';
import { defaultConfig, guestAssets, type Config } from '../../src/runtime/config';
import type { Logger } from '../../src/common/log';
import { BuiltinFactory } from '../../src/factory/builtin-template';
import { startFromTemplate } from '../../src/factory/sandbox-clone';
import { mountSource, TMPFS_SOURCE } from '../../src/factory/template-store';
import { sandboxKernelParams } from '../../src/runtime/sandbox';
import { buildGuest } from '../unit/vmm/guest-build';
import { countLines, type CountLine } from '../unit/vmm/count-guest';
import { until } from '../helpers/until';
import { skipOrFail } from '../helpers/skip';
import { kataCtl } from '../helpers/kata-ctl';

const PARAMS = 'test=count n=1000000 ready';

/** Undefined when each line's checksum follows from the one before (a run that continued, not restarted). */
function chained(lines: CountLine[]): string | undefined {
  for (let k = 1; k < lines.length; k++) {
    const a = lines[k - 1];
    const b = lines[k];
    if (b.i !== a.i + 1) return `count ${a.i} then ${b.i}`;
    const acc = BigInt.asUintN(64, a.acc * 31n + BigInt(b.i) * 7n + BigInt(b.tag.charCodeAt(0)));
    if (acc !== b.acc) return `count ${b.i}: acc 0x${b.acc.toString(16)}, expected 0x${acc.toString(16)}`;
  }
  return undefined;
}

function warnLog(): { log: Logger; warns: string[] } {
  const warns: string[] = [];
  const log = { warn: (m: string) => { warns.push(m); }, info: () => undefined, debug: () => undefined, error: () => undefined } as unknown as Logger;
  return { log, warns };
}

/** Bytes of pages mapped from `file` that more than one mapping uses (smaps Shared_*). */
function sharedKiB(file: string): { mappings: number; sharedKiB: number } {
  let mappings = 0;
  let shared = 0;
  let inFile = false;
  for (const l of fs.readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(l)) {
      inFile = l.endsWith(` ${file}`);
      if (inFile) mappings++;
    } else if (inFile) {
      const m = /^Shared_(?:Clean|Dirty):\s+(\d+) kB/.exec(l);
      if (m) shared += Number(m[1]);
    }
  }
  return { mappings, sharedKiB: shared };
}

describe('integration: VM templates for the builtin VMM', function () {
  this.timeout(180000);
  let probe: KvmProbe;
  let runDir: string;

  before(async function () {
    runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-factory-builtin-'));
    probe = await probeKvm(undefined, runDir);
    console.log(`    host check: ${probe.reason}`);
  });
  after(() => fs.rmSync(runDir, { recursive: true, force: true }));

  function config(): Config {
    const cfg = defaultConfig();
    cfg.runtime.run_dir = runDir;
    cfg.runtime.hypervisor = 'builtin';
    cfg.factory.enable_template = true;
    cfg.factory.template_path = path.join(runDir, 'template');
    cfg['agent.kata'].dial_timeout = 60;
    return cfg;
  }

  it('test guest: init → manifest → two clones via restore run on from the snapshot and share its pages; stale and corrupt → one warning, cold boot; destroy leaves nothing', async function () {
    const g = buildGuest();
    if (!probe.devKvm) skipOrFail(this, probe.reason, { hostCannot: true });
    if (!g.elf) skipOrFail(this, g.reason ?? 'test guest not built');
    const cfg = config();
    const image = path.join(runDir, 'root.raw');
    fs.writeFileSync(image, Buffer.alloc(1 << 20));
    const vm = (id: string, kernel = g.elf!): VmConfig => ({ id, dir: path.join(runDir, id), kernel, image, vcpus: 1, memoryMiB: 64, kernelParams: PARAMS, disks: [], debug: false });
    const factory = new BuiltinFactory({ config: cfg, kernelParams: PARAMS, vcpus: 1, memoryMiB: 64, kernel: g.elf!, image });
    const tpl = cfg.factory.template_path;
    expect(factory.status().state).to.equal('missing');

    const progress: string[] = [];
    const hvs: BuiltinHypervisor[] = [];
    try {
      const st = await factory.init((l) => progress.push(l));
      console.log(`    ${progress.join('\n    ')}`);
      expect(st.state, st.reasons.join('; ')).to.equal('valid');
      expect(fs.readdirSync(tpl).sort()).to.deep.equal(['manifest.json', 'memory.bin', 'state.bin']);
      expect(mountSource(tpl)).to.equal(TMPFS_SOURCE);
      const m = st.manifest!;
      expect(m.inputs.machine).to.match(/^builtin \(kata-ts-builtin-vmm\/\d+\)$/);
      expect(m.inputs.kernelCmdline).to.contain(PARAMS);
      expect(m.memoryBytes).to.equal(64 << 20);
      expect(m.memoryDataBytes).to.be.above(0).and.below(m.memoryBytes);

      // Two sandbox starts: clones by restore.
      const starts = [];
      for (const id of ['clone0', 'clone1']) {
        const hv = new BuiltinHypervisor();
        hvs.push(hv);
        const { log, warns } = warnLog();
        const r = await startFromTemplate(hv, cfg, vm(id), PARAMS, log);
        expect(warns).to.deep.equal([]);
        expect(r, 'a clone').to.not.equal(undefined);
        expect(r!.copyMs).to.equal(0);
        starts.push(r!);
      }
      console.log(`    clone (restore) ${starts.map((s) => `${s.cloneMs} ms`).join(', ')}`);
      const firsts: CountLine[] = [];
      for (const hv of hvs) {
        await until('10 count lines in the clone', () => (countLines(hv.consoleTail(1000)).length >= 10 ? true : undefined), 30000, 20);
        const out = hv.consoleTail(1000);
        // It continued: no boot, no ready line again, the checksum runs on from the template's.
        expect(out).to.not.contain('hello from the test guest');
        expect(out).to.not.contain('KATA_TS_AGENT_READY');
        const lines = countLines(out);
        expect(chained(lines)).to.equal(undefined);
        firsts.push(lines[0]);
      }
      // Both clones resumed the same saved guest: the same first line (or the next, if the cut fell mid-line).
      expect(Math.abs(firsts[0].i - firsts[1].i)).to.be.at.most(1);
      if (firsts[0].i === firsts[1].i) expect(firsts[0].acc).to.equal(firsts[1].acc);
      // MAP_PRIVATE of the template's memory.bin: two mappings in this process, pages in common.
      const share = sharedKiB(fs.realpathSync(path.join(tpl, 'memory.bin')));
      console.log(`    memory.bin: ${share.mappings} mappings, ${share.sharedKiB} KiB shared`);
      expect(share.mappings).to.be.at.least(2);
      expect(share.sharedKiB).to.be.above(0);

      // Another kernel (same bytes, another path): stale, one warning, nothing started.
      const otherKernel = path.join(runDir, 'other-guest.elf');
      fs.copyFileSync(g.elf!, otherKernel);
      const staleHv = new BuiltinHypervisor();
      const stale = warnLog();
      expect(await startFromTemplate(staleHv, cfg, vm('stale', otherKernel), PARAMS, stale.log)).to.equal(undefined);
      expect(stale.warns).to.have.length(1);
      expect(stale.warns[0]).to.match(/^VM template stale: template key \S+ ≠ \S+; kernel is now .*other-guest\.elf .*; cold boot$/);
      expect(staleHv.vmm).to.equal(undefined);

      // A truncated state file: corrupt, one warning.
      fs.truncateSync(path.join(tpl, 'state.bin'), 100);
      const bad = warnLog();
      expect(await startFromTemplate(new BuiltinHypervisor(), cfg, vm('corrupt'), PARAMS, bad.log)).to.equal(undefined);
      expect(bad.warns).to.have.length(1);
      expect(bad.warns[0]).to.match(/^VM template corrupt: state\.bin holds 100 bytes, the manifest says \d+ .*; cold boot$/);
    } finally {
      for (const hv of hvs) await hv.stop();
      const removed = factory.destroy();
      if (progress.length) expect(removed).to.include(`tmpfs at ${tpl}`);
    }
    expect(fs.existsSync(tpl)).to.equal(false);
    expect(mountSource(tpl)).to.equal(undefined);
  });

  it('kata-ctl factory init | status | destroy with [runtime] hypervisor = "builtin" (the test guest as kernel)', async function () {
    const g = buildGuest();
    if (!probe.devKvm) skipOrFail(this, probe.reason, { hostCannot: true });
    if (!g.elf) skipOrFail(this, g.reason ?? 'test guest not built');
    const dir = path.join(runDir, 'ctl');
    fs.mkdirSync(dir);
    const image = path.join(dir, 'root.raw');
    fs.writeFileSync(image, Buffer.alloc(1 << 20));
    const tpl = path.join(dir, 'template');
    const conf = path.join(dir, 'config.toml');
    // sandboxKernelParams takes [hypervisor.qemu] kernel_params for either hypervisor.
    fs.writeFileSync(conf, [
      '[runtime]', 'hypervisor = "builtin"', `run_dir = "${path.join(dir, 'run')}"`,
      '[hypervisor.qemu]', `kernel_params = "${PARAMS}"`,
      '[hypervisor.builtin]', `kernel = "${g.elf}"`, `image = "${image}"`, 'default_vcpus = 1', 'default_memory = 128', 'allow_emulated_kvm = true',
      '[factory]', 'enable_template = true', `template_path = "${tpl}"`, '',
    ].join('\n'));
    const env = { KATA_TS_CONFIG: conf };
    try {
      const init = await kataCtl(['factory', 'init'], { env });
      expect(init.code, init.stderr).to.equal(0);
      expect(init.stderr).to.contain('booting the template VM with the builtin VMM (1 vCPU, 128 MiB)');
      expect(init.stdout).to.match(/state: +valid/);
      expect(init.stdout).to.contain('mapped copy-on-write by each clone');
      const st = await kataCtl(['factory', 'status', '--json'], { env });
      expect(st.code, st.stderr).to.equal(0);
      const j = JSON.parse(st.stdout) as { state: string; manifest: { inputs: { machine: string; memoryMiB: number } } };
      expect(j.state).to.equal('valid');
      expect(j.manifest.inputs.machine).to.match(/^builtin /);
      expect(j.manifest.inputs.memoryMiB).to.equal(128);
    } finally {
      const d = await kataCtl(['factory', 'destroy'], { env });
      expect(d.code, d.stderr).to.equal(0);
    }
    expect(fs.existsSync(tpl)).to.equal(false);
    expect(mountSource(tpl)).to.equal(undefined);
  });

  it('full Linux: factory init with our kernel, image and agent, then a clone by restore', async function () {
    if (!probe.hardware) skipOrFail(this, `full Linux does not run in the builtin VMM here: ${probe.reason}`, { hostCannot: true });
    const cfg = config();
    const assets = guestAssets(cfg, 'builtin');
    for (const f of [assets.kernel, assets.image]) if (!fs.existsSync(f)) skipOrFail(this, `${f} not built (scripts/setup.sh)`);
    const params = sandboxKernelParams(cfg, undefined);
    const factory = new BuiltinFactory({ config: cfg, kernelParams: params });
    const hv = new BuiltinHypervisor();
    try {
      const st = await factory.init((l) => console.log(`    ${l}`));
      expect(st.state, st.reasons.join('; ')).to.equal('valid');
      const m = factory.machine();
      const { log, warns } = warnLog();
      const r = await startFromTemplate(hv, cfg, { id: 'linux-clone', dir: path.join(runDir, 'linux-clone'), kernel: m.kernel, image: m.image, vcpus: m.vcpus, memoryMiB: m.memoryMiB, kernelParams: params, disks: [], debug: m.debug }, params, log);
      expect(warns).to.deep.equal([]);
      expect(r).to.not.equal(undefined);
      expect(fs.existsSync(r!.info.agentSocket)).to.equal(true);
    } finally {
      await hv.stop();
      factory.destroy();
    }
  });
});
