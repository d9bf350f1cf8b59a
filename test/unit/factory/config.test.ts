import { expect } from 'chai';
import { parseConfig, defaultConfig, ConfigError } from '../../../src/runtime/config';
import { templateArgs } from '../../../src/factory/qemu-template';
import { templateUnsupported, VmFactory, type FactoryTarget } from '../../../src/factory/factory';
import { TEMPLATE_WARMUP_PARAM, warmUpWanted } from '../../../src/agent/warmup';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TemplateError } from '../../../src/factory/qemu-template';
import { keyDifferences, templateKey } from '../../../src/factory/template-key';
import { DAX_IMAGE_NAME, type QemuMemoryOptions } from '../../../src/hypervisor/memory-plan';
import { qemuCommandLine } from '../../../src/hypervisor/qemu-command-line';
import { memoryText } from '../../../src/ctl/commands/factory';

describe('unit: [factory] configuration and the template command line', () => {
  it('defaults as Kata: templates off, /run/kata-ts/template', () => {
    const c = defaultConfig();
    expect(c.factory.enable_template).to.equal(false);
    expect(c.factory.template_path).to.equal('/run/kata-ts/template');
  });

  it('reads enable_template and template_path; a relative path is one error naming the line', () => {
    const c = parseConfig('[factory]\nenable_template = true\ntemplate_path = "/tmp/t"\n', 'f.toml');
    expect(c.factory).to.deep.equal({ enable_template: true, template_path: '/tmp/t', vm_cache_number: 0, vm_cache_warm_container: true, vm_cache_endpoint: '' });
    expect(() => parseConfig('[factory]\ntemplate_path = "rel"\n', 'f.toml')).to.throw(ConfigError, /f\.toml:2: factory\.template_path must be an absolute path/);
  });

  it('vm_cache_number and vm_cache_endpoint (the pre-started VM cache): read without a warning; a bad value or no template is one error naming the key', () => {
    const c = parseConfig('[factory]\nenable_template = true\nvm_cache_number = 3\nvm_cache_endpoint = "/run/c"\n', 'f.toml');
    expect([c.factory.vm_cache_number, c.factory.vm_cache_endpoint, c.warnings]).to.deep.equal([3, '/run/c', []]);
    expect(parseConfig('[factory]\nvm_cache_number = 0\n', 'f.toml').warnings).to.deep.equal([]);
    expect(() => parseConfig('[factory]\nenable_template = true\nvm_cache_number = -1\n', 'f.toml')).to.throw(ConfigError, /^f\.toml:3: factory\.vm_cache_number must be between 0 and 64/);
    expect(() => parseConfig('[factory]\nenable_template = true\nvm_cache_number = "2"\n', 'f.toml')).to.throw(ConfigError, /^f\.toml:3: factory\.vm_cache_number must be/);
    expect(() => parseConfig('[factory]\nvm_cache_endpoint = "rel"\n', 'f.toml')).to.throw(ConfigError, /^f\.toml:2: factory\.vm_cache_endpoint must be an absolute path/);
    expect(() => parseConfig('[factory]\nvm_cache_number = 2\n', 'f.toml')).to.throw(ConfigError, /^f\.toml:2: \[factory\] vm_cache_number = 2 needs enable_template = true/);
  });

  it('template and clone share one device set of QEMU-migratable devices; the clone waits for its state', () => {
    const m = { kernel: '/k', image: '/i', kernelCmdline: 'quiet', vcpus: 1, memoryMiB: 512, machine: 'pc', machineAccelerators: '', accel: 'tcg' as const, memory: {} };
    const tpl = templateArgs(m, '/t/memory', '/t/console.log');
    const clone = templateArgs(m, '/proc/1/fd/9', '/s/console.log', { incoming: true });
    const devices = (a: string[]) => a.filter((_, i) => a[i - 1] === '-device');
    expect(devices(clone)).to.deep.equal(devices(tpl));
    expect(devices(tpl).some((d) => d.startsWith('vhost-user'))).to.equal(false);
    expect(devices(tpl)).to.include('vmgenid,id=vmgenid0,guid=auto');
    expect(tpl).to.include('memory-backend-file,id=mem,size=512M,mem-path=/t/memory,share=on');
    expect(clone).to.include('memory-backend-file,id=mem,size=512M,mem-path=/proc/1/fd/9,share=on');
    expect(clone.slice(-3)).to.deep.equal(['-S', '-incoming', 'defer']);
    expect(tpl).to.not.include('-incoming');
    expect(templateArgs(m, '/t/memory', '/c', { privateMem: true })).to.include('memory-backend-file,id=mem,size=512M,mem-path=/t/memory,share=off');
  });

  it('templates (and so their clones) boot without ACPI interrupt routing; the sandbox parameters follow', () => {
    const t: FactoryTarget = { config: defaultConfig(), kernelParams: 'agent.policy_sha256=ab', qemu: { binary: '/q', machine: 'pc', machineAccelerators: '', accel: 'tcg', rootBlockDriver: 'virtio-blk' } };
    const line = new VmFactory(t).machine().kernelCmdline;
    expect(line.split(' ')).to.include('acpi=noirq');
    expect(line.endsWith(' acpi=noirq agent.warmup=1 agent.policy_sha256=ab')).to.equal(true);
    // The template's agent warms its RPC paths before it is saved (src/agent/warmup.ts); a cold boot does not.
    expect(warmUpWanted(line)).to.equal(true);
    expect(line.split(' ')).to.include(TEMPLATE_WARMUP_PARAM);
    expect(line).to.not.match(/ {2}/);
  });

  it('refuses settings a template cannot reproduce, naming them', () => {
    const t = (q: Partial<FactoryTarget['qemu']>): FactoryTarget => ({ config: defaultConfig(), kernelParams: '', qemu: { binary: '/q', machine: 'pc', machineAccelerators: '', accel: 'tcg', rootBlockDriver: 'virtio-blk', ...q } });
    expect(templateUnsupported(t({}))).to.equal(undefined);
    expect(templateUnsupported(t({ machine: 'microvm' }))).to.match(/machine_type = "pc"/);
    expect(templateUnsupported(t({ rootBlockDriver: 'vhost-user-blk' }))).to.match(/root_block_driver = "virtio-blk"/);
    expect(templateUnsupported(t({ unsupported: ['some_key'] }))).to.match(/do not reproduce some_key/);
    // The memory devices are reproduced now; with the DAX image there is no root disk, so its driver does not matter.
    expect(templateUnsupported(t({ memory: { imageNvdimm: true, balloon: true, maxMemoryMiB: 2048, maxVcpus: 4 } }))).to.equal(undefined);
    expect(templateUnsupported(t({ rootBlockDriver: 'vhost-user-blk', memory: { imageNvdimm: true } }))).to.equal(undefined);
  });
});

describe('unit: a template carries the memory devices a cold boot of its configuration has', () => {
  let tmp = '';
  let image = '';
  const lean: QemuMemoryOptions = { imageNvdimm: true, balloon: true, maxMemoryMiB: 2048, memoryHotplug: 'virtio-mem', tcgTranslationCacheMiB: 16 };
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-tplmem-'));
    image = path.join(tmp, 'rootfs.erofs');
    fs.writeFileSync(image, 'img');
    // A DAX image as build.sh pads it (a 128 MiB multiple, sparse here): DIMM mode refuses anything else.
    fs.writeFileSync(path.join(tmp, DAX_IMAGE_NAME), Buffer.alloc(0));
    fs.truncateSync(path.join(tmp, DAX_IMAGE_NAME), 128 << 20);
    for (const f of ['vmlinux', 'qemu']) fs.writeFileSync(path.join(tmp, f), f);
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const factory = (memory: QemuMemoryOptions, memoryMiB = 256) => {
    const cfg = defaultConfig();
    cfg['hypervisor.qemu'].kernel = path.join(tmp, 'vmlinux');
    cfg['hypervisor.qemu'].image = image;
    return new VmFactory({ config: cfg, kernelParams: 'agent.policy_sha256=ab', memoryMiB, vcpus: 1, qemu: { binary: path.join(tmp, 'qemu'), machine: 'pc', machineAccelerators: '', accel: 'tcg', rootBlockDriver: 'virtio-blk', memory } });
  };
  /** The argument after each occurrence of `flag`. */
  const after1 = (a: string[], flag: string) => a.filter((_, i) => a[i - 1] === flag);

  it('DAX NVDIMM, balloon, virtio-mem (requested-size 0) and the hotplug room: the same as the cold command line, in template and clone', () => {
    const f = factory(lean);
    const m = f.machine();
    const tpl = templateArgs(m, '/t/memory', '/t/console.log');
    const clone = templateArgs(m, '/proc/1/fd/9', '/s/console.log', { incoming: true });
    const cold = qemuCommandLine({ binary: '/q', machine: 'pc', accel: 'tcg', memory: lean }, { id: 'x', dir: '/s', kernel: m.kernel, image, vcpus: 1, memoryMiB: 256, kernelParams: '', disks: [], debug: false });
    const memoryArgs = (a: string[]) => [...after1(a, '-device'), ...after1(a, '-object')].filter((d) => /nvdimm|imgmem|balloon|virtio-mem|vmem0/.test(d));
    expect(memoryArgs(tpl)).to.have.length(5); // the NVDIMM and its backend, virtio-mem and its memfd, the balloon
    expect(memoryArgs(tpl)).to.deep.equal(memoryArgs(cold));
    expect(memoryArgs(clone)).to.deep.equal(memoryArgs(tpl));
    expect(memoryArgs(tpl).join(' ')).to.contain('requested-size=0').and.contain('share=on,readonly=on').and.contain('free-page-reporting=on');
    for (const flag of ['-m', '-smp', '-M', '-accel']) {
      expect(after1(tpl, flag), flag).to.deep.equal(after1(cold, flag).map((v) => v.replace('kata-ts-x', 'kata-ts-template')));
      expect(after1(clone, flag), flag).to.deep.equal(after1(tpl, flag));
    }
    expect(after1(tpl, '-m')).to.deep.equal(['256M,slots=1,maxmem=2176M']);
    // No virtio-blk root disk beside the NVDIMM (as a cold boot with DAX).
    expect(after1(tpl, '-device').some((d) => d.startsWith('virtio-blk'))).to.equal(false);
    expect(tpl.join(' ')).to.not.contain(image + ',');
    // The guest mounts the NVDIMM with DAX and onlines virtio-mem memory movable, as a cold boot.
    const line = m.kernelCmdline.split(' ');
    expect(line).to.include.members(['root=/dev/pmem0', 'rootflags=dax', 'memhp_default_state=online_movable', 'acpi=noirq', 'agent.warmup=1']);
    expect(line).to.not.include('root=/dev/vda');
  });

  it('the key has the memory devices: a template without them is stale for a lean configuration and the other way round, with reasons', () => {
    const plain = factory({}, 512).inputs();
    const leanIn = factory(lean).inputs();
    expect(leanIn.memory).to.deep.include({ m: '256M,slots=1,maxmem=2176M', balloon: true, virtioMemMiB: 1792 });
    expect(leanIn.memory.daxImage?.path).to.equal(fs.realpathSync(path.join(tmp, DAX_IMAGE_NAME)));
    expect(plain.memory).to.deep.equal({ m: '512M', smp: '1', daxImage: null, balloon: false, virtioMemMiB: 0 });
    const diff = keyDifferences(plain, leanIn).join('; ');
    expect(diff).to.match(/DAX image nvdimm: template without, now .*rootfs-dax\.erofs/);
    expect(diff).to.match(/balloon \(reclaim_guest_freed_memory\): template off, now on/);
    expect(diff).to.match(/virtio-mem device: template none, now 1792 MiB/);
    expect(keyDifferences(leanIn, plain).join('; ')).to.match(/DAX image nvdimm: template .*rootfs-dax\.erofs, now without/);
    // The TCG cache is QEMU's own (not in the guest or the state): another size is the same template.
    expect(templateKey(factory({ ...lean, tcgTranslationCacheMiB: 64 }).inputs())).to.equal(templateKey(leanIn));
    // DIMM mode instead of virtio-mem: other -m (slots), no virtio-mem device.
    expect(keyDifferences(leanIn, factory({ ...lean, memoryHotplug: 'dimm', memorySlots: 4 }).inputs()).join('; ')).to.match(/virtio-mem device: template 1792 MiB, now none.*-m 256M,slots=1,maxmem=2176M → 256M,slots=5,maxmem=2176M/);
    // A rewritten DAX image makes the template stale.
    const later = factory(lean).inputs();
    later.memory.daxImage!.mtimeMs += 1000;
    expect(keyDifferences(leanIn, later)).to.deep.equal([`DAX image ${leanIn.memory.daxImage!.path} changed since the template was made`]);
  });

  it('kata-ctl factory status names the memory devices (none recorded for an older template)', () => {
    const leanIn = factory(lean).inputs();
    expect(memoryText(leanIn.memory)).to.equal(`-m 256M,slots=1,maxmem=2176M; -smp 1; DAX image ${leanIn.memory.daxImage!.path}; balloon with free page reporting; virtio-mem 1792 MiB`);
    expect(memoryText(factory({}, 512).inputs().memory)).to.equal('-m 512M; -smp 1; root on virtio-blk (no DAX); no balloon; no virtio-mem');
    expect(memoryText(undefined)).to.match(/none recorded/);
  });

  it('a configuration QEMU would refuse (no DAX image beside the guest image) is a config error of the template, not a crash', () => {
    fs.renameSync(path.join(tmp, DAX_IMAGE_NAME), path.join(tmp, 'moved'));
    try {
      expect(() => factory(lean).machine()).to.throw(TemplateError, /no DAX guest image at/);
      const st = factory(lean).status();
      expect(st.state).to.equal('stale');
      expect(st.reasons.join(' ')).to.match(/no DAX guest image/);
    } finally {
      fs.renameSync(path.join(tmp, 'moved'), path.join(tmp, DAX_IMAGE_NAME));
    }
  });
});

describe('unit: factory init refuses a template_path it does not own', () => {
  it('a directory holding other files is one clear error, and nothing in it is touched or mounted over', async () => {
    const fs = await import('node:fs');
    const os = await import('node:os');
    const path = await import('node:path');
    const { VmFactory } = await import('../../../src/factory/factory');
    const { isMountPoint } = await import('../../../src/factory/template-store');
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-tplown-'));
    try {
      const dir = path.join(tmp, 'tpl');
      fs.mkdirSync(dir);
      fs.writeFileSync(path.join(dir, 'precious.txt'), 'keep me');
      fs.writeFileSync(path.join(dir, 'memory'), 'also a name of ours');
      for (const f of ['vmlinux', 'rootfs.erofs', 'qemu']) fs.writeFileSync(path.join(tmp, f), f);
      const cfg = defaultConfig();
      cfg['hypervisor.qemu'].kernel = path.join(tmp, 'vmlinux');
      cfg['hypervisor.qemu'].image = path.join(tmp, 'rootfs.erofs');
      cfg.factory.template_path = dir;
      const f = new VmFactory({ config: cfg, kernelParams: '', qemu: { binary: path.join(tmp, 'qemu'), machine: 'pc', machineAccelerators: '', accel: 'tcg', rootBlockDriver: 'virtio-blk' } });
      const err = await f.init().then(() => undefined, (e: Error) => e);
      expect(err?.message).to.match(/template_path .* holds other files \(precious\.txt\): refusing/);
      expect(fs.readdirSync(dir).sort()).to.deep.equal(['memory', 'precious.txt']);
      expect(isMountPoint(dir)).to.equal(false);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
