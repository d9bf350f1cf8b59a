/**
 * Kata 3.2's configuration vocabulary (src/runtime/config-kata.ts): a stock
 * configuration-qemu.toml loads (test/fixtures/kata, written from Kata's
 * documented contents), Kata's names are aliases of ours, unimplemented keys
 * warn once each with file:line, typos fail with "did you mean", and pod
 * annotations override only what enable_annotations allows.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseConfig, defaultConfig, loadConfig, ConfigError } from '../../../src/runtime/config';
import { annotatedConfig, UNSUPPORTED } from '../../../src/runtime/config-kata';
import { configureLogging } from '../../../src/common/log';
import { Writable } from 'node:stream';

function fixture(): string {
  for (const up of ['../../..', '../../../..']) {
    const f = path.resolve(__dirname, up, 'test', 'fixtures', 'kata', 'configuration-qemu.toml');
    if (fs.existsSync(f)) return f;
  }
  throw new Error('test/fixtures/kata/configuration-qemu.toml not found');
}

describe('unit: Kata configuration keys', () => {
  it('loads a stock Kata 3.2 configuration-qemu.toml: implemented keys take effect, one warning per unimplemented key with file:line', () => {
    const file = fixture();
    const text = fs.readFileSync(file, 'utf8');
    const cfg = parseConfig(text, file);
    const q = cfg['hypervisor.qemu'];
    expect(q.path).to.equal('/opt/kata/bin/qemu-system-x86_64');
    expect(q.machine_type).to.equal('q35');
    expect(q.default_memory).to.equal(2048);
    expect(q.enable_annotations).to.deep.equal(['enable_iommu', 'virtio_fs_extra_args', 'kernel_params']);
    expect(cfg['agent.kata'].dial_timeout).to.equal(45);
    // block_device_driver = "virtio-scsi" is Kata's; ours stays.
    expect(q.block_device_driver).to.equal('vhost-user-blk');
    // Every key set in the file that we do not implement: exactly one warning, on its own line.
    const lines = text.split('\n');
    const expected: string[] = [];
    let section = '';
    lines.forEach((l, i) => {
      const h = /^\[([^\]]+)\]/.exec(l);
      if (h) section = h[1]!;
      const k = /^([a-z_]+)\s*=\s*(.*)$/.exec(l);
      if (!k) return;
      const noop = (k[1] === 'shared_fs' && k[2] === '"virtio-fs"') || (k[1] === 'internetworking_model' && k[2] === '"tcfilter"');
      if ((k[1]! in (UNSUPPORTED[section] ?? {}) && !noop) || k[1] === 'block_device_driver') expected.push(`${file}:${i + 1}: [${section}] ${k[1]}`);
    });
    expect(expected.length).to.be.greaterThan(25);
    expect(cfg.warnings.map((w) => w.replace(/ (is|=) .*/, ''))).to.deep.equal(expected);
    for (const w of cfg.warnings) expect(w).to.match(/not supported by kata-ts/);
  });

  it('accepts Kata\'s names as aliases of ours, and refuses both at once', () => {
    const a = parseConfig('[hypervisor.qemu]\nvm_rootfs_driver = "virtio-blk-pci"\n[runtime]\nhypervisor_name = "qemu"\n', 'f');
    expect(a['hypervisor.qemu'].root_block_driver).to.equal('virtio-blk');
    expect(a.runtime.hypervisor).to.equal('qemu');
    expect(a.warnings).to.deep.equal([]);
    expect(parseConfig('[hypervisor.qemu]\nvm_rootfs_driver = "vhost-user-blk"\n', 'f')['hypervisor.qemu'].root_block_driver).to.equal('vhost-user-blk');
    expect(() => parseConfig('[runtime]\nhypervisor = "qemu"\nhypervisor_name = "qemu"\n', 'f')).to.throw(ConfigError, /^f:3: \[runtime\] hypervisor_name and hypervisor \(line 2\) are the same setting/);
    expect(() => parseConfig('[runtime]\nhypervisor_name = "firecracker"\n', 'f')).to.throw(ConfigError, /^f:2: runtime\.hypervisor_name must be one of/);
    const p = parseConfig('[hypervisor.qemu]\nvm_rootfs_driver = "virtio-pmem"\n', 'f');
    expect(p['hypervisor.qemu'].root_block_driver).to.equal('virtio-blk');
    expect(p.warnings).to.deep.equal(['f:2: [hypervisor.qemu] vm_rootfs_driver = "virtio-pmem" is not supported by kata-ts; using "virtio-blk"']);
  });

  it('machine_accelerators: QEMU machine properties, never accel', () => {
    expect(parseConfig('[hypervisor.qemu]\nmachine_accelerators = "nosmm,nosata"\n', 'f')['hypervisor.qemu'].machine_accelerators).to.equal('nosmm,nosata');
    expect(() => parseConfig('[hypervisor.qemu]\nmachine_accelerators = "accel=kvm"\n', 'f')).to.throw(ConfigError, /^f:2: .*without accel=/);
    expect(() => parseConfig('[hypervisor.qemu]\nmachine_accelerators = "a b"\n', 'f')).to.throw(ConfigError, /^f:2:/);
    expect(() => parseConfig('[hypervisor.qemu]\nenable_annotations = ["("]\n', 'f')).to.throw(ConfigError, /^f:2: .*invalid regular expression/);
    expect(() => parseConfig('[hypervisor.qemu]\nenable_annotations = "default_memory"\n', 'f')).to.throw(ConfigError, /^f:2: .*an array of strings/);
  });

  it('a typo fails with file:line and "did you mean"; unsupported sections warn once', () => {
    expect(() => parseConfig('[hypervisor.qemu]\n\ndefault_memroy = 1024\n', '/etc/k.toml')).to.throw(ConfigError, /^\/etc\/k\.toml:3: unknown key "default_memroy" in \[hypervisor\.qemu\]; did you mean "default_memory"\?/);
    expect(() => parseConfig('[runtime]\nvirtio_fs_cache = "auto"\n', 'f')).to.throw(ConfigError, /^f:2: unknown key "virtio_fs_cache" in \[runtime\]/);
    expect(() => parseConfig('[factory]\nenable_templat = true\n', 'f')).to.throw(ConfigError, /did you mean "enable_template"/);
    expect(() => parseConfig('[agent.kat]\n', 'f')).to.throw(ConfigError, /^f:1: unknown section "agent.kat"; did you mean \[agent.kata\]/);
    const c = parseConfig('[factory]\ntemplate_template = true\n\n[hypervisor.clh]\npath = "/x"\n', 'f');
    expect(c.warnings).to.deep.equal([
      'f:2: [factory] template_template is not supported by kata-ts (kata-ts keeps one template, at template_path); ignored',
      'f:4: [hypervisor.clh] is not supported by kata-ts (Cloud Hypervisor is not implemented); section ignored',
    ]);
  });

  it('malformed TOML fails with file:line', () => {
    expect(() => parseConfig('[hypervisor.qemu]\npath = "/x\n', 'f')).to.throw(ConfigError, /^f:2:/);
    expect(() => parseConfig('[runtime]\nenable_debug = true\nenable_debug = false\n', 'f')).to.throw(ConfigError, /^f:3:/);
  });

  it('loadConfig gives the same verdict as parseConfig (kata-ts, the shim and kata-ctl all load through it) and logs each warning once', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-cfg-'));
    let logged = '';
    configureLogging({ stream: new Writable({ write(chunk, _enc, cb) { logged += String(chunk); cb(); } }) });
    try {
      const f = path.join(dir, 'configuration.toml');
      fs.copyFileSync(fixture(), f);
      const c = loadConfig(f, {});
      expect(c.warnings).to.deep.equal(parseConfig(fs.readFileSync(f, 'utf8'), f).warnings);
      const msgs = logged.trim().split('\n').map((l) => JSON.parse(l) as { level: string; msg: string });
      expect(msgs.map((m) => m.msg)).to.deep.equal(c.warnings);
      expect(msgs.every((m) => m.level === 'warn')).to.equal(true);
    } finally {
      configureLogging({ silent: process.env.KATA_TS_LOG_LEVEL === undefined });
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('pod annotations', () => {
    const P = 'io.katacontainers.config.hypervisor.';
    const withAllowed = (...re: string[]) => {
      const c = defaultConfig();
      c['hypervisor.qemu'].enable_annotations = re;
      c['hypervisor.builtin'].enable_annotations = re;
      return c;
    };

    it('override only what enable_annotations allows, as in Kata', () => {
      const c = withAllowed('default_memory', 'default_vcpus', 'kernel_params');
      c['hypervisor.qemu'].kernel_params = 'quiet';
      const { config, warnings } = annotatedConfig(c, { [`${P}default_memory`]: '1024', [`${P}default_vcpus`]: '1', [`${P}kernel_params`]: 'debug', 'other.annotation': 'x' });
      expect(config['hypervisor.qemu'].default_memory).to.equal(1024);
      expect(config['hypervisor.builtin'].default_memory).to.equal(1024);
      expect(config['hypervisor.qemu'].kernel_params).to.equal('quiet debug');
      expect(warnings).to.deep.equal([]);
      // The input is not changed.
      expect(c['hypervisor.qemu'].default_memory).to.equal(512);
    });

    it('refuse what is not enabled, by default everything', () => {
      expect(() => annotatedConfig(defaultConfig(), { [`${P}default_memory`]: '1024' })).to.throw(ConfigError, /annotation io\.katacontainers\.config\.hypervisor\.default_memory is not enabled/);
      expect(() => annotatedConfig(withAllowed('default_vcpus'), { [`${P}default_memory`]: '1024' })).to.throw(ConfigError, /not enabled/);
      // No hypervisor annotation: the same object back.
      const c = defaultConfig();
      expect(annotatedConfig(c, { 'io.katacontainers.config.agent.policy': 'e30=' }).config).to.equal(c);
      expect(annotatedConfig(c, undefined).config).to.equal(c);
    });

    it('refuse bad values; warn for an enabled annotation kata-ts does not implement', () => {
      const c = withAllowed('.*');
      expect(() => annotatedConfig(c, { [`${P}default_memory`]: 'lots' })).to.throw(ConfigError, /"lots" is not a positive integer/);
      expect(() => annotatedConfig(c, { [`${P}default_memory`]: '-1' })).to.throw(ConfigError, /not a positive integer/);
      expect(() => annotatedConfig(c, { [`${P}default_memory`]: '64' })).to.throw(ConfigError, /between 128 and 3584/);
      expect(() => annotatedConfig(c, { [`${P}default_memory`]: '99999' })).to.throw(ConfigError, /between 128 and 3584/);
      expect(() => annotatedConfig(c, { [`${P}default_vcpus`]: '0' })).to.throw(ConfigError, /vCPUs, must be between 1/);
      expect(() => annotatedConfig(c, { [`${P}default_vcpus`]: '1000' })).to.throw(ConfigError, /vCPUs, must be between 1/);
      const r = annotatedConfig(c, { [`${P}enable_iommu`]: 'true' });
      expect(r.warnings).to.deep.equal([`annotation ${P}enable_iommu is not supported by kata-ts; ignored`]);
    });
  });
});
