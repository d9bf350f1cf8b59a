/**
 * A guest that lies in its balloon figures (issue 13, bad input): QEMU
 * passes on what the guest's balloon driver reports — the balloon size
 * (query-balloon "actual") and its memory statistics (qom-get guest-stats) —
 * and a broken or hostile guest can report anything. Fed through a fake QMP:
 * sizes outside the VM's RAM, statistics beyond it, free above total,
 * garbage shapes and a failing qom-get give warnings and no figure, never a
 * throw; a bad target is one error and nothing is sent; a guest that grew
 * by a DIMM may report up to its new size; a container beyond the maximum
 * is one error with nothing plugged.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SandboxMemory } from '../../../../src/resource/memory/service';
import { configureLogging } from '../../../../src/common/log';

const MIB = 1024 * 1024;

describe('memory: balloon figures from a lying guest', () => {
  let dir: string;
  const open: SandboxMemory[] = [];
  before(() => configureLogging({ silent: true }));
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-balloon-')); });
  afterEach(async () => {
    for (const m of open.splice(0)) await m.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A SandboxMemory of 512 MiB (room to 1024) over a fake QMP answering from `answers`. */
  async function sandbox(answers: Record<string, (args?: Record<string, unknown>) => unknown>) {
    const sent: Array<{ cmd: string; args?: Record<string, unknown> }> = [];
    const qmp = async (cmd: string, args?: Record<string, unknown>) => {
      sent.push({ cmd, args });
      const a = answers[cmd];
      if (a) return a(args);
      if (cmd === 'qom-set' || cmd === 'balloon' || cmd === 'object-add' || cmd === 'device_add') return {};
      throw new Error(`fake QMP: ${cmd} not expected`);
    };
    const m = await SandboxMemory.start({
      id: 'b1', dir, memoryMiB: 512, qmp, balloon: true, memoryHotplug: true,
      scanner: { enabled: false, rateMiB: 64, intervalSec: 60 },
      resize: { baseVcpus: 1, maxVcpus: 1, baseMiB: 512, maxMiB: 1024 },
    });
    open.push(m);
    return { m, sent };
  }

  it('ignores a balloon size outside the VM\'s RAM (beyond, zero, negative, not a number, missing) with a warning', async () => {
    for (const actual of [4096 * MIB, 0, -MIB, '512', undefined, 1.8446744073709552e19]) {
      const { m } = await sandbox({ 'query-balloon': () => ({ actual }), 'qom-get': () => ({ stats: {} }) });
      const r = await m.balloon();
      expect(r.actualMiB, String(actual)).to.equal(undefined);
      expect(r.warnings as string[], String(actual)).to.have.length(1);
      expect((r.warnings as string[])[0]).to.match(/guest reported a balloon size of .* outside the VM's 512 MiB: ignored/);
      await m.close();
    }
    const { m } = await sandbox({ 'query-balloon': () => null, 'qom-get': () => ({ stats: {} }) });
    expect((await m.balloon()).actualMiB).to.equal(undefined);
  });

  it('drops statistics beyond the RAM, all of them when free > total, and survives garbage shapes', async () => {
    let stats: unknown = { 'stat-total-memory': 8 * 1024 * MIB, 'stat-free-memory': 100 * MIB, 'stat-swap-in': 7, 'stat-major-faults': -1 };
    const { m } = await sandbox({ 'query-balloon': () => ({ actual: 512 * MIB }), 'qom-get': () => ({ stats }) });
    let r = await m.balloon();
    expect(r.actualMiB).to.equal(512);
    expect(r.stats).to.deep.equal({ 'stat-free-memory': 100 * MIB, 'stat-swap-in': 7 });
    expect((r.warnings as string[]).join()).to.match(/stat-total-memory = 8589934592 bytes exceeds the VM's RAM: ignored/);
    stats = { 'stat-total-memory': 400 * MIB, 'stat-free-memory': 500 * MIB };
    r = await m.balloon();
    expect(r.stats).to.deep.equal({});
    expect((r.warnings as string[]).join()).to.match(/more free memory than total/);
    for (const bad of ['x', null, [1, 2], 42, { 'stat-free-memory': 'lots' }, { 'stat-free-memory': { n: 1 } }]) {
      stats = bad;
      r = await m.balloon();
      expect(r.stats, JSON.stringify(bad)).to.deep.equal({});
      expect(r.actualMiB).to.equal(512);
    }
  });

  it('answers with the balloon size when guest-stats cannot be read at all', async () => {
    const { m } = await sandbox({ 'query-balloon': () => ({ actual: 300 * MIB }), 'qom-get': () => { throw new Error('Property not found'); } });
    const r = await m.balloon();
    expect(r.actualMiB).to.equal(300);
    expect(r.stats).to.deep.equal({});
  });

  it('refuses a target beyond the RAM or not positive with one error and sends nothing', async () => {
    const { m, sent } = await sandbox({ 'query-balloon': () => ({ actual: 512 * MIB }) });
    for (const [t, re] of [[600, /balloon target 600 MiB is beyond the VM's 512 MiB of RAM/], [0, /positive/], [NaN, /positive/]] as const) {
      let err: unknown;
      try { await m.balloon(t); } catch (e) { err = e; }
      expect((err as Error).message).to.match(re);
    }
    expect(sent.filter((s) => s.cmd === 'balloon')).to.deep.equal([]);
  });

  it('after a DIMM hotplug the guest may report up to its new size; beyond the maximum is one error and nothing plugged', async () => {
    const { m, sent } = await sandbox({ 'query-balloon': () => ({ actual: 768 * MIB }), 'qom-get': () => ({ stats: { 'stat-total-memory': 760 * MIB } }) });
    await m.containerJoins('c1', { memory: { limit: 200 * MIB } });
    expect(sent.filter((s) => s.cmd === 'device_add')).to.have.length(1);
    const r = await m.balloon();
    expect(r.ramMiB).to.equal(768);
    expect(r.actualMiB).to.equal(768);
    expect(r.warnings).to.deep.equal([]);
    const before = sent.length;
    let err: unknown;
    try { await m.containerJoins('c2', { memory: { limit: 600 * MIB } }); } catch (e) { err = e; }
    expect((err as Error).message).to.equal('container c2 needs 0 vCPU(s) and 600 MiB: the sandbox would need 1 vCPUs / 1312 MiB, beyond its maximum of 1 vCPUs / 1024 MiB (default_maxvcpus, default_maxmemory)');
    expect(sent.slice(before)).to.deep.equal([]);
  });
});
