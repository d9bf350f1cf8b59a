import { expect } from 'chai';
import { parseConfig, defaultConfig, ConfigError } from '../../../src/runtime/config';
import { templateArgs } from '../../../src/factory/qemu-template';
import { templateUnsupported, VmFactory, type FactoryTarget } from '../../../src/factory/factory';
import { TEMPLATE_WARMUP_PARAM, warmUpWanted } from '../../../src/agent/warmup';

describe('unit: [factory] configuration and the template command line', () => {
  it('defaults as Kata: templates off, /run/kata-ts/template', () => {
    const c = defaultConfig();
    expect(c.factory.enable_template).to.equal(false);
    expect(c.factory.template_path).to.equal('/run/kata-ts/template');
  });

  it('reads enable_template and template_path; a relative path is one error naming the line', () => {
    const c = parseConfig('[factory]\nenable_template = true\ntemplate_path = "/tmp/t"\n', 'f.toml');
    expect(c.factory).to.deep.equal({ enable_template: true, template_path: '/tmp/t' });
    expect(() => parseConfig('[factory]\ntemplate_path = "rel"\n', 'f.toml')).to.throw(ConfigError, /f\.toml:2: factory\.template_path must be an absolute path/);
  });

  it('vm_cache_number is accepted: 0 silently, more with one warning (no VM cache)', () => {
    expect(parseConfig('[factory]\nvm_cache_number = 0\n', 'f.toml').warnings).to.deep.equal([]);
    const w = parseConfig('[factory]\nvm_cache_number = 3\n', 'f.toml').warnings;
    expect(w).to.have.length(1);
    expect(w[0]).to.match(/vm_cache_number is not supported.*pre-started VM cache/);
  });

  it('template and clone share one device set of QEMU-migratable devices; the clone waits for its state', () => {
    const m = { kernel: '/k', image: '/i', kernelCmdline: 'quiet', vcpus: 1, memoryMiB: 512, machine: 'pc', machineAccelerators: '', accel: 'tcg' as const };
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
    expect(templateUnsupported(t({ unsupported: ['disable_image_nvdimm = false', 'reclaim_guest_freed_memory'] }))).to.match(/disable_image_nvdimm = false, reclaim_guest_freed_memory/);
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
