/**
 * Passfd IO's configuration: Kata runtime-rs's keys ([runtime]
 * use_passfd_io, off by default as in Kata; passfd_listener_port, 1027),
 * bad values refused with the file and line, and the guest kernel parameter
 * the sandbox adds — which is part of a VM template's key (the factory
 * builds its command line from sandboxKernelParams), so a template made
 * with another setting is never cloned for this one.
 */
import { expect } from 'chai';
import { ConfigError, defaultConfig, parseConfig } from '../../../src/runtime/config';
import { sandboxKernelParams } from '../../../src/runtime/sandbox';
import { passfdPortFromCmdline } from '../../../src/agent/passfd';

describe('unit: passfd IO configuration', () => {
  it('is off by default, on port 1027 (Kata runtime-rs\'s defaults)', () => {
    const c = defaultConfig();
    expect(c.runtime.use_passfd_io).to.equal(false);
    expect(c.runtime.passfd_listener_port).to.equal(1027);
    expect(sandboxKernelParams(c, undefined)).to.not.match(/passfd/);
  });

  it('puts the listener port on the guest kernel command line when on, as the agent reads it', () => {
    const c = parseConfig('[runtime]\nuse_passfd_io = true\npassfd_listener_port = 2000\n', 'c.toml');
    const params = sandboxKernelParams(c, undefined);
    expect(params).to.match(/(^| )agent\.passfd_listener_port=2000( |$)/);
    expect(passfdPortFromCmdline(params)).to.equal(2000);
    // Another setting, another command line: another template key.
    expect(sandboxKernelParams(defaultConfig(), undefined)).to.not.equal(params);
  });

  it('refuses the agent API port and out-of-range ports with the file and line', () => {
    expect(() => parseConfig('[runtime]\npassfd_listener_port = 1024\n', 'c.toml')).to.throw(ConfigError, /c\.toml:2: .*passfd_listener_port.*1024/);
    expect(() => parseConfig('[runtime]\n\npassfd_listener_port = 0\n', 'c.toml')).to.throw(ConfigError, /c\.toml:3: .*passfd_listener_port/);
    expect(() => parseConfig('[runtime]\nuse_passfd_io = "yes"\n', 'c.toml')).to.throw(ConfigError, /c\.toml:2: .*use_passfd_io/);
  });
});
