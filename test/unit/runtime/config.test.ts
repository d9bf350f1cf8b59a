import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseConfig, defaultConfig, loadConfig, findConfigFile, ConfigError, SCHEMA, guestAssets } from '../../../src/runtime/config';
import { parseToml, TomlError } from '../../../src/common/toml';
import { KataError } from '../../../src/common/errors';

describe('unit: TOML reader', () => {
  it('\\U and \\u escapes outside the Unicode scalar values are TomlErrors naming the line, in config errors with file:line', () => {
    for (const esc of ['\\UFFFFFFFF', '\\U00110000', '\\uD800', '\\UDFFF0000']) {
      const text = `# x\nname = "a${esc}b"\n`;
      let err: unknown;
      try {
        parseToml(text);
      } catch (e) {
        err = e;
      }
      expect(err, esc).to.be.instanceOf(TomlError);
      expect((err as TomlError).line, esc).to.equal(2);
      expect((err as TomlError).kind, esc).to.equal('syntax');
      expect((err as Error).message, esc).to.match(/^line 2: invalid unicode escape/);
      let cfgErr: unknown;
      try {
        parseConfig(`[runtime]\nrun_dir = "/r${esc}"\n`, '/etc/kata-ts/configuration.toml');
      } catch (e) {
        cfgErr = e;
      }
      expect(cfgErr, esc).to.be.instanceOf(ConfigError);
      expect((cfgErr as ConfigError).kind).to.equal('syntax');
      expect((cfgErr as Error).message, esc).to.match(/^\/etc\/kata-ts\/configuration\.toml:2: invalid unicode escape/);
    }
    // The largest scalar value and an astral one still read.
    expect(parseToml('a = "\\U0010FFFF\\U0001F600"\n').value.a).to.equal('\u{10FFFF}\u{1F600}');
  });

  it('TomlError is a KataError whose kind tells syntax, duplicates and unsupported TOML apart', () => {
    const kindOf = (text: string) => {
      try {
        parseToml(text);
      } catch (e) {
        expect(e).to.be.instanceOf(KataError);
        return (e as TomlError).kind;
      }
      return 'none';
    };
    expect(kindOf('a = \n')).to.equal('syntax');
    expect(kindOf('a = 1\na = 2\n')).to.equal('duplicate');
    expect(kindOf('[t]\n[t]\n')).to.equal('duplicate');
    expect(kindOf('d = 1979-05-27T07:32:00Z\n')).to.equal('unsupported');
    // Complete TOML 1.0 (smol-toml): arrays of tables and multi-line strings read.
    expect(kindOf('[[t]]\n')).to.equal('none');
    expect(kindOf('a = """x"""\n')).to.equal('none');
  });

  it('reads tables, dotted tables, strings, numbers, booleans, arrays, inline tables and comments', () => {
    const { value } = parseToml(`
# comment
title = "kata" # trailing
[hypervisor.qemu]
path = '/usr/bin/qemu'
n = 1_024
hex = 0x1F
f = 1.5e2
b = true
arr = [ "a", 'b',
  "c", ]
tbl = { x = 1, y = "z" }
"quoted key" = "\\u00e9\\t"
`);
    expect(value.title).to.equal('kata');
    expect(value.hypervisor).to.deep.equal({ qemu: { path: '/usr/bin/qemu', n: 1024, hex: 31, f: 150, b: true, arr: ['a', 'b', 'c'], tbl: { x: 1, y: 'z' }, 'quoted key': 'é\t' } });
  });

  it('names the line of every key and table, past multi-line strings and arrays, comments and quoted keys', () => {
    const { lines } = parseToml([
      '# c', // 1
      'a = """x', // 2
      '[not = a table]', // 3
      '"""', // 4
      'arr = [ "]", # ]', // 5
      '  "y" ]', // 6
      '[hypervisor.qemu] # h', // 7
      '"quoted.key" = \'#\'', // 8
      'dotted.k = { x = 1 }', // 9
      '[[t]]', // 10
      'e = 1', // 11
    ].join('\n') + '\n');
    expect(Object.fromEntries(lines)).to.deep.equal({
      a: 2, arr: 5, hypervisor: 7, 'hypervisor.qemu': 7, 'hypervisor.qemu.quoted.key': 8, 'hypervisor.qemu.dotted': 9, 'hypervisor.qemu.dotted.k': 9, t: 10, 't.e': 11,
    });
  });

  it('names the line of every syntax error', () => {
    const cases: [string, number, RegExp][] = [
      ['a = 1\nb = \n', 2, /invalid value/],
      ['a = "x\n', 1, /control characters/],
      ['[t]\na = 1\n[t]\n', 3, /redefine/],
      ['a = 1\na = 2\n', 2, /redefine/],
      ['x = yes\n', 1, /invalid value/],
      ['x = [1, 2\n', 2, /expected comma/],
      ['a = 1 b = 2\n', 1, /end-of-line/],
    ];
    for (const [text, line, re] of cases) {
      try {
        parseToml(text);
        expect.fail(`no error for ${JSON.stringify(text)}`);
      } catch (err) {
        expect(err).to.be.instanceOf(TomlError);
        expect((err as TomlError).line, text).to.equal(line);
        expect((err as Error).message).to.match(re);
      }
    }
  });
});

describe('unit: configuration', () => {
  it('has a default for every key', () => {
    const c = defaultConfig();
    for (const [sec, keys] of Object.entries(SCHEMA)) {
      for (const k of Object.keys(keys)) expect((c as unknown as Record<string, Record<string, unknown>>)[sec]![k], `${sec}.${k}`).to.not.equal(undefined);
    }
    expect(c['hypervisor.qemu'].default_memory).to.equal(512);
    expect(c.runtime.hypervisor).to.equal('auto');
    expect(c.source).to.equal('');
  });

  it('overrides defaults from a Kata-shaped file', () => {
    const c = parseConfig(`[hypervisor.qemu]\ndefault_memory = 1024\nmachine_type = "microvm"\n[agent.kata]\ndebug_console_enabled = true\n[runtime]\nhypervisor = "qemu"\n`, 'c.toml');
    expect(c['hypervisor.qemu'].default_memory).to.equal(1024);
    expect(c['hypervisor.qemu'].machine_type).to.equal('microvm');
    expect(c['hypervisor.qemu'].default_vcpus).to.equal(1);
    expect(c['agent.kata'].debug_console_enabled).to.equal(true);
    expect(c.runtime.hypervisor).to.equal('qemu');
    expect(c.source).to.equal('c.toml');
  });

  it('rejects unknown sections and keys with file and line', () => {
    expect(() => parseConfig('[hypervisor.qemu]\nmemory = 5\n', '/etc/x.toml')).to.throw(ConfigError, /^\/etc\/x\.toml:2: unknown key "memory" in \[hypervisor\.qemu\]/);
    expect(() => parseConfig('\n[hypervisor.qemuu]\npath = "x"\n', 'f')).to.throw(ConfigError, /f:2: unknown section "hypervisor.qemuu"; did you mean \[hypervisor.qemu\]\?/);
    expect(() => parseConfig('top = 1\n', 'f')).to.throw(ConfigError, /f:1: unknown key "top"/);
  });

  it('rejects bad values with file and line', () => {
    expect(() => parseConfig('[hypervisor.qemu]\n\ndefault_memory = "big"\n', 'f')).to.throw(ConfigError, /^f:3: hypervisor\.qemu\.default_memory must be an integer/);
    expect(() => parseConfig('[hypervisor.qemu]\ndefault_vcpus = 0\n', 'f')).to.throw(ConfigError, /f:2: .*between 1 and 64/);
    expect(() => parseConfig('[runtime]\nhypervisor = "firecracker"\n', 'f')).to.throw(ConfigError, /must be one of "auto", "qemu", "builtin"/);
    expect(() => parseConfig('[runtime]\nrun_dir = "relative"\n', 'f')).to.throw(ConfigError, /absolute path/);
    expect(() => parseConfig('[agent.kata]\nenable_debug = 1\n', 'f')).to.throw(ConfigError, /true or false/);
    expect(() => parseConfig('[runtime\n', 'f')).to.throw(ConfigError, /^f:1:/);
  });

  it('finds the file at --config, then $KATA_TS_CONFIG, then the system path', () => {
    expect(findConfigFile('/a.toml', { KATA_TS_CONFIG: '/b.toml' })).to.equal('/a.toml');
    expect(findConfigFile(undefined, { KATA_TS_CONFIG: '/b.toml' })).to.equal('/b.toml');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-cfg-'));
    try {
      const f = path.join(dir, 'c.toml');
      fs.writeFileSync(f, '[runtime]\nstop_timeout = 3\n');
      expect(loadConfig(undefined, { KATA_TS_CONFIG: f }).runtime.stop_timeout).to.equal(3);
      expect(() => loadConfig(path.join(dir, 'missing.toml'), {})).to.throw(ConfigError, /cannot read configuration/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('resolves guest assets against the cache unless configured', () => {
    const c = defaultConfig();
    c.runtime.cache_dir = '/cache';
    expect(guestAssets(c, 'qemu')).to.deep.equal({ kernel: '/cache/kernel/vmlinux', image: '/cache/image/rootfs.erofs' });
    c['hypervisor.qemu'].kernel = '/k';
    expect(guestAssets(c, 'qemu').kernel).to.equal('/k');
  });
});
