/**
 * src/agent/online-cpu-mem (Kata's OnlineCPUMem) on a fake sysfs tree:
 * offline vCPUs and memory blocks are onlined (movable where the block may
 * be), cpu0 (no online file) and
 * online ones left alone, `wait` retries until a late vCPU appears and
 * times out with how many it found, bad counts refused.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { onlineCpuMem, OnlineError } from '../../../src/agent/online-cpu-mem';

describe('agent: OnlineCPUMem', () => {
  let sys: string;
  const cpu = (n: number, online?: string) => {
    fs.mkdirSync(path.join(sys, 'devices/system/cpu', `cpu${n}`), { recursive: true });
    if (online !== undefined) fs.writeFileSync(path.join(sys, 'devices/system/cpu', `cpu${n}`, 'online'), `${online}\n`);
  };
  const mem = (n: number, state: string) => {
    fs.mkdirSync(path.join(sys, 'devices/system/memory', `memory${n}`), { recursive: true });
    fs.writeFileSync(path.join(sys, 'devices/system/memory', `memory${n}`, 'state'), `${state}\n`);
  };
  const read = (rel: string) => fs.readFileSync(path.join(sys, rel), 'utf8').trim();
  beforeEach(() => { sys = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-sys-')); });
  afterEach(() => fs.rmSync(sys, { recursive: true, force: true }));

  it('onlines offline vCPUs (up to nb_cpus) and offline memory blocks', async () => {
    cpu(0); cpu(1, '1'); cpu(2, '0'); cpu(3, '0'); cpu(10, '0');
    mem(0, 'online'); mem(8, 'offline'); mem(9, 'offline');
    const r = await onlineCpuMem({ wait: true, nb_cpus: 2, cpu_only: false }, sys);
    expect(r).to.deep.equal({ cpus: 2, memoryBlocks: 2 });
    expect([read('devices/system/cpu/cpu2/online'), read('devices/system/cpu/cpu3/online'), read('devices/system/cpu/cpu10/online')]).to.deep.equal(['1', '1', '0']);
    expect(read('devices/system/memory/memory8/state')).to.equal('online');
  });

  it('onlines a block that may be movable into ZONE_MOVABLE (so it can be unplugged again), others plainly', async () => {
    mem(8, 'offline'); mem(9, 'offline'); mem(10, 'offline');
    fs.writeFileSync(path.join(sys, 'devices/system/memory/memory8/valid_zones'), 'Normal Movable\n');
    fs.writeFileSync(path.join(sys, 'devices/system/memory/memory9/valid_zones'), 'Normal\n');
    const r = await onlineCpuMem({ wait: false, nb_cpus: 0, cpu_only: false }, sys);
    expect(r.memoryBlocks).to.equal(3);
    expect([read('devices/system/memory/memory8/state'), read('devices/system/memory/memory9/state'), read('devices/system/memory/memory10/state')]).to.deep.equal(['online_movable', 'online', 'online']);
  });

  it('waits for a vCPU that appears late; times out naming the count', async () => {
    cpu(0); cpu(1, '0');
    setTimeout(() => cpu(2, '0'), 150);
    expect(await onlineCpuMem({ wait: true, nb_cpus: 2, cpu_only: true }, sys, 3000)).to.deep.equal({ cpus: 2, memoryBlocks: 0 });
    let err: unknown;
    try {
      await onlineCpuMem({ wait: true, nb_cpus: 1, cpu_only: true }, sys, 200);
    } catch (e) { err = e; }
    expect(err).to.be.instanceOf(OnlineError);
    expect((err as Error).message).to.equal('OnlineCPUMem: onlined 0 of 1 vCPUs within 200 ms (no more offline vCPUs appeared)');
    let bad: unknown;
    try {
      await onlineCpuMem({ wait: false, nb_cpus: -1, cpu_only: true }, sys);
    } catch (e) { bad = e; }
    expect((bad as Error).message).to.match(/nb_cpus -1 out of 0..256/);
  });
});
