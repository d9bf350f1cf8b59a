/**
 * src/resource/memory/resize: Kata's sizing rules from OCI linux.resources, the QMP
 * commands a join and a leave send (against a recording stand-in for QEMU
 * that answers query-hotpluggable-cpus like QEMU 7.2's pc machine), the
 * refusal beyond the maximum with nothing plugged, and memory returned
 * through the balloon rather than DIMM unplug.
 */
import { expect } from 'chai';
import { VmResizer, containerDemand, ResizeError } from '../../../../src/resource/memory/resize';

function fakeQemu(maxCpus: number) {
  const calls: Array<[string, Record<string, unknown> | undefined]> = [];
  const plugged = new Set<string>();
  const qmp = async (cmd: string, args?: Record<string, unknown>): Promise<unknown> => {
    calls.push([cmd, args]);
    if (cmd === 'query-hotpluggable-cpus') {
      return Array.from({ length: maxCpus }, (_, i) => ({
        type: 'max-x86_64-cpu', 'vcpus-count': 1, props: { 'socket-id': i, 'core-id': 0, 'thread-id': 0 },
        ...(i === 0 || plugged.has(`s${i}`) ? { 'qom-path': `/machine/cpu${i}` } : {}),
      }));
    }
    if (cmd === 'device_add' && args?.driver === 'max-x86_64-cpu') plugged.add(`s${args['socket-id']}`);
    return {};
  };
  return { calls, qmp };
}

describe('memory/resize', () => {
  it('sizes containers as Kata does: ceil(quota/period) vCPUs, the memory limit in MiB', () => {
    expect(containerDemand({ cpu: { quota: 150000, period: 100000 }, memory: { limit: 300 * 1048576 + 1 } })).to.deep.equal({ vcpus: 2, memoryMiB: 301 });
    expect(containerDemand({ cpu: { quota: -1, period: 100000 } })).to.deep.equal({ vcpus: 0, memoryMiB: 0 });
    expect(containerDemand(undefined)).to.deep.equal({ vcpus: 0, memoryMiB: 0 });
  });

  it('grows with vCPU and DIMM hotplug, in 128 MiB steps, and returns memory by the balloon when a container leaves', async () => {
    const q = fakeQemu(4);
    const r = new VmResizer(q.qmp, { baseVcpus: 1, maxVcpus: 4, baseMiB: 512, maxMiB: 2048 }, true);
    await r.add('a', { vcpus: 2, memoryMiB: 200 });
    expect(r.vcpus).to.equal(3);
    expect(r.memoryMiB).to.equal(512 + 256);
    const adds = q.calls.filter(([c]) => c === 'device_add').map(([, a]) => a);
    expect(adds).to.deep.equal([
      { driver: 'max-x86_64-cpu', id: 'hcpu0', 'socket-id': 1, 'core-id': 0, 'thread-id': 0 },
      { driver: 'max-x86_64-cpu', id: 'hcpu1', 'socket-id': 2, 'core-id': 0, 'thread-id': 0 },
      { driver: 'pc-dimm', id: 'dimm2', memdev: 'dimm2-mem' },
    ]);
    expect(q.calls.find(([c]) => c === 'object-add')![1]).to.deep.equal({ 'qom-type': 'memory-backend-memfd', id: 'dimm2-mem', size: 256 * 1048576, share: true });
    q.calls.length = 0;
    await r.remove('a');
    expect(r.vcpus).to.equal(1);
    expect(q.calls.filter(([c]) => c === 'device_del').map(([, a]) => a)).to.deep.equal([{ id: 'hcpu1' }, { id: 'hcpu0' }]);
    // No DIMM unplug (QEMU 7.2 aborted on it with vhost-user devices): the balloon takes the memory back.
    expect(q.calls.find(([c, a]) => c === 'device_del' && a?.id === 'dimm2')).to.equal(undefined);
    expect(q.calls.find(([c]) => c === 'balloon')![1]).to.deep.equal({ value: 512 * 1048576 });
    // Joining again reuses the plugged DIMM (balloon deflated), no new one.
    q.calls.length = 0;
    await r.add('b', { vcpus: 0, memoryMiB: 100 });
    expect(q.calls.filter(([c]) => c === 'object-add')).to.deep.equal([]);
    expect(q.calls.find(([c]) => c === 'balloon')![1]).to.deep.equal({ value: (512 + 128) * 1048576 });
  });

  it('with keepCpus (TCG) leaves hot-added vCPUs plugged when a container leaves and reuses them', async () => {
    const q = fakeQemu(4);
    const r = new VmResizer(q.qmp, { baseVcpus: 1, maxVcpus: 4, baseMiB: 512, maxMiB: 2048 }, true, undefined, true);
    await r.add('a', { vcpus: 2, memoryMiB: 0 });
    await r.remove('a');
    expect(q.calls.filter(([c]) => c === 'device_del')).to.deep.equal([]);
    expect(r.vcpus).to.equal(3);
    q.calls.length = 0;
    await r.add('b', { vcpus: 1, memoryMiB: 0 });
    expect(q.calls.filter(([c]) => c === 'device_add')).to.deep.equal([]);
    await r.add('c', { vcpus: 2, memoryMiB: 0 });
    expect(q.calls.filter(([c]) => c === 'device_add')).to.have.length(1);
    expect(r.vcpus).to.equal(4);
  });

  it('refuses a container beyond the maximum with one clear error and plugs nothing', async () => {
    const q = fakeQemu(2);
    const r = new VmResizer(q.qmp, { baseVcpus: 1, maxVcpus: 2, baseMiB: 512, maxMiB: 1024 });
    let err: unknown;
    try {
      await r.add('big', { vcpus: 1, memoryMiB: 600 });
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(ResizeError);
    expect((err as Error).message).to.equal('container big needs 1 vCPU(s) and 600 MiB: the sandbox would need 2 vCPUs / 1112 MiB, beyond its maximum of 2 vCPUs / 1024 MiB (default_maxvcpus, default_maxmemory)');
    expect(q.calls).to.deep.equal([]);
    expect(r.target()).to.deep.equal({ vcpus: 1, memoryMiB: 512 });
  });
});
