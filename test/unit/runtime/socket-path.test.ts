/**
 * A sandbox whose directory cannot hold its unix sockets (a socket address
 * is 107 bytes; Node silently cuts longer paths, and the cut names collide)
 * is refused at construction with a message naming the limit, while a CRI
 * sandbox id (64 hex digits) under the default run_dir fits.
 */
import { expect } from 'chai';
import { Sandbox, SandboxError } from '../../../src/runtime/sandbox';
import { defaultConfig } from '../../../src/runtime/config';
import type { Hypervisor } from '../../../src/hypervisor/hypervisor';

const criId = 'a'.repeat(64);
const hv = { name: 'qemu' } as unknown as Hypervisor;

describe('sandbox directory vs unix socket paths', () => {
  it('accepts a 64-hex CRI id under the default run_dir and one of 15 bytes', () => {
    const c = defaultConfig();
    expect(() => new Sandbox({ id: criId, config: c, hypervisor: hv })).to.not.throw();
    c.runtime.run_dir = '/run/kc-abcdefg'; // 15 bytes
    expect(() => new Sandbox({ id: criId, config: c, hypervisor: hv })).to.not.throw();
  });

  it('refuses a run_dir that would cut the socket paths short, saying how long it may be', () => {
    const c = defaultConfig();
    c.runtime.run_dir = '/tmp/kts-suite-run-dir-xyz';
    expect(() => new Sandbox({ id: criId, config: c, hypervisor: hv })).to.throw(SandboxError, /too long for its unix sockets \(118 > 107 bytes\).*at most 15 bytes/);
  });
});
