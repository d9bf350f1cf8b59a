/** OCI LinuxResources → cgroup v2 file writes (src/agent/cgroup.ts). */
import { expect } from 'chai';
import { parseKeyed, resourceWrites, sharesToWeight } from '../../../src/agent/cgroup';

describe('unit: agent cgroup v2 resources', () => {
  it('converts cpu.shares to cpu.weight as runc and crun do', () => {
    expect(sharesToWeight(2)).to.equal(1);
    expect(sharesToWeight(1024)).to.equal(39);
    expect(sharesToWeight(262144)).to.equal(10000);
  });

  it('maps memory, cpu, pids and unified onto files', () => {
    expect(resourceWrites({ memory: { limit: 1000, reservation: 10, swap: 3000 } })).to.deep.equal([['memory.low', '10'], ['memory.max', '1000'], ['memory.swap.max', '2000']]);
    expect(resourceWrites({ memory: { limit: -1 } })).to.deep.equal([['memory.max', 'max']]);
    expect(resourceWrites({ cpu: { quota: 20000 } }, '50000 250000\n')).to.deep.equal([['cpu.max', '20000 250000']]);
    expect(resourceWrites({ cpu: { quota: -1, period: 100000, cpus: '0-1' } })).to.deep.equal([['cpu.max', 'max 100000'], ['cpuset.cpus', '0-1']]);
    expect(resourceWrites({ pids: { limit: 0 }, unified: { 'memory.high': '5000' } })).to.deep.equal([['pids.max', 'max'], ['memory.high', '5000']]);
    expect(() => resourceWrites({ unified: { '../../etc/passwd': 'x' } })).to.throw(/unified/);
  });

  it('parses flat keyed files', () => {
    expect(parseKeyed('populated 1\nfrozen 0\n')).to.deep.equal({ populated: 1, frozen: 0 });
  });
});
