/**
 * src/resource/memory/resize with a virtio-mem device: the QMP sequence of a
 * grow and a shrink (qom-set requested-size, then qom-get size until the
 * guest reached it) against a stand-in for QEMU whose "guest" plugs after a
 * few polls; a grow the guest never finishes (one error, request set back);
 * a shrink it cannot finish (a warning, the request stays and is set again
 * until the guest gets there; stop() ends that); beyond the
 * maximum (one error, no QMP at all); a refused qom-set; and that no DIMM or
 * balloon command is ever sent.
 */
import { expect } from 'chai';
import { VmResizer, ResizeError } from '../../../../src/resource/memory/resize';

const MIB = 1024 * 1024;
const PATH = '/machine/peripheral/vmem0';

/** QEMU's virtio-mem as seen over QMP; the guest follows the request after `lag` polls, or stops at `floorMiB` when shrinking. */
function fakeVirtioMem(o: { lag?: number; floorMiB?: number; ceilMiB?: number; maxMiB?: number } = {}) {
  const calls: Array<[string, Record<string, unknown> | undefined]> = [];
  let requested = 0;
  let size = 0;
  let polls = 0;
  const qmp = async (cmd: string, args?: Record<string, unknown>): Promise<unknown> => {
    calls.push([cmd, args]);
    if (cmd === 'qom-set' && args?.path === PATH && args.property === 'requested-size') {
      const v = args.value as number;
      if (v > (o.maxMiB ?? 640) * MIB) throw new Error(`Can't set requested size: larger than max-size`);
      requested = v;
      polls = 0;
      return {};
    }
    if (cmd === 'qom-get' && args?.path === PATH && args.property === 'size') {
      if (++polls > (o.lag ?? 2)) size = Math.min(Math.max(requested, (o.floorMiB ?? 0) * MIB), (o.ceilMiB ?? Infinity) * MIB);
      return size;
    }
    throw new Error(`unexpected QMP ${cmd}`);
  };
  return { calls, qmp, get size() { return size; }, get requested() { return requested; } };
}

const limits = { baseVcpus: 1, maxVcpus: 1, baseMiB: 512, maxMiB: 512 + 640 };
const vm = (q: ReturnType<typeof fakeVirtioMem>, extra: Record<string, number> = {}) =>
  new VmResizer(q.qmp, limits, true, undefined, false, { virtioMem: { id: 'vmem0', sizeMiB: 640 }, pollMs: 1, ...extra });

describe('memory/resize with virtio-mem', () => {
  it('grows by qom-set requested-size and waits for the guest\'s size; shrinks the same way; no DIMM, no balloon', async () => {
    const q = fakeVirtioMem({ lag: 3 });
    const r = vm(q);
    await r.add('a', { vcpus: 0, memoryMiB: 200 });
    // 128 MiB steps: 200 → 256.
    expect(q.size).to.equal(256 * MIB);
    expect(r.memoryMiB).to.equal(512 + 256);
    expect(q.calls[0]).to.deep.equal(['qom-set', { path: PATH, property: 'requested-size', value: 256 * MIB }]);
    expect(q.calls.slice(1).every(([c, a]) => c === 'qom-get' && a?.property === 'size')).to.equal(true);
    expect(q.calls.length).to.equal(1 + 4);
    await r.add('b', { vcpus: 0, memoryMiB: 300 });
    expect(q.size).to.equal(512 * MIB);
    q.calls.length = 0;
    await r.remove('a');
    expect(q.calls[0]).to.deep.equal(['qom-set', { path: PATH, property: 'requested-size', value: 384 * MIB }]);
    expect(q.size).to.equal(384 * MIB);
    await r.remove('b');
    expect(q.size).to.equal(0);
    expect(r.memoryMiB).to.equal(512);
    expect(q.calls.map(([c]) => c).filter((c) => c !== 'qom-set' && c !== 'qom-get')).to.deep.equal([]);
  });

  it('a demand that rounds past the device is clamped to its size', async () => {
    const q = fakeVirtioMem({ lag: 0 });
    const r = new VmResizer(q.qmp, { baseVcpus: 1, maxVcpus: 1, baseMiB: 512, maxMiB: 512 + 600 }, false, undefined, false, { virtioMem: { id: 'vmem0', sizeMiB: 600 }, pollMs: 1 });
    await r.add('a', { vcpus: 0, memoryMiB: 590 });
    expect(q.requested).to.equal(600 * MIB);
  });

  it('beyond the maximum: one error, no QMP command, the next container still fits', async () => {
    const q = fakeVirtioMem();
    const r = vm(q);
    let err: unknown;
    try {
      await r.add('big', { vcpus: 0, memoryMiB: 700 });
    } catch (e) { err = e; }
    expect(err).to.be.instanceOf(ResizeError);
    expect((err as ResizeError).message).to.equal('container big needs 0 vCPU(s) and 700 MiB: the sandbox would need 1 vCPUs / 1212 MiB, beyond its maximum of 1 vCPUs / 1152 MiB (default_maxvcpus, default_maxmemory)');
    expect(q.calls).to.deep.equal([]);
    await r.add('ok', { vcpus: 0, memoryMiB: 640 });
    expect(q.size).to.equal(640 * MIB);
  });

  it('a grow the guest does not finish in time: one timeout error, the request set back, the container\'s demand dropped', async () => {
    const q = fakeVirtioMem({ lag: 0, ceilMiB: 128 });
    const r = vm(q, { growTimeoutMs: 30 });
    await r.add('a', { vcpus: 0, memoryMiB: 100 });
    let err: unknown;
    try {
      await r.add('b', { vcpus: 0, memoryMiB: 256 });
    } catch (e) { err = e; }
    expect((err as ResizeError).kind).to.equal('timeout');
    expect((err as Error).message).to.match(/^virtio-mem: the guest plugged 128 of the 384 MiB requested within 30 ms .*; request set back to 128 MiB$/);
    expect(q.requested).to.equal(128 * MIB);
    expect(r.target().memoryMiB).to.equal(512 + 100);
  });

  it('a shrink the guest cannot finish: no error (the container leaves), the lower request stays', async () => {
    const q = fakeVirtioMem({ lag: 0, floorMiB: 256 });
    const r = vm(q, { shrinkTimeoutMs: 30 });
    await r.add('a', { vcpus: 0, memoryMiB: 512 });
    await r.remove('a');
    expect(q.requested).to.equal(0);
    expect(q.size).to.equal(256 * MIB);
    // What the VM still has counts for the balloon's bounds.
    expect(r.memoryMiB).to.equal(512 + 256);
  });

  it('an unfinished shrink is set again every retryMs until the guest gets there (it acts only on a config change); stop() ends the retries', async () => {
    let requested = 0;
    let size = 0;
    let canUnplug = true;
    let sets = 0;
    // Like Linux's driver after it gave up: it looks again only when the request is set (a config change).
    const qmp = async (cmd: string, args?: Record<string, unknown>): Promise<unknown> => {
      if (cmd === 'qom-set') {
        sets++;
        requested = args!.value as number;
        size = requested >= size || canUnplug ? requested : size;
        return {};
      }
      if (cmd === 'qom-get') return size;
      throw new Error(`unexpected QMP ${cmd}`);
    };
    const wait = (ms: number) => new Promise((res) => setTimeout(res, ms));
    const r = new VmResizer(qmp, limits, false, undefined, false, { virtioMem: { id: 'vmem0', sizeMiB: 640 }, pollMs: 1, shrinkTimeoutMs: 10, retryMs: 10 });
    await r.add('a', { vcpus: 0, memoryMiB: 512 });
    canUnplug = false;
    await r.remove('a');
    expect([requested, size]).to.deep.equal([0, 512 * MIB]);
    const before = sets;
    await wait(80);
    expect(sets - before, 'the request set again while the guest is stuck').to.be.at.least(2);
    canUnplug = true;
    await wait(80);
    expect(size).to.equal(0);
    expect(r.memoryMiB).to.equal(512);
    const done = sets;
    await wait(50);
    expect(sets, 'no more sets once the size is reached').to.equal(done);
    // Stuck again, then the sandbox stops: the retries end.
    await r.add('b', { vcpus: 0, memoryMiB: 256 });
    canUnplug = false;
    await r.remove('b');
    r.stop();
    const stopped = sets;
    await wait(50);
    expect(sets).to.equal(stopped);
  });

  it('QEMU refusing the request is one error naming the device; nothing is recorded as plugged', async () => {
    const q = fakeVirtioMem({ maxMiB: 100 });
    const r = vm(q);
    let err: unknown;
    try {
      await r.add('a', { vcpus: 0, memoryMiB: 200 });
    } catch (e) { err = e; }
    expect((err as ResizeError).kind).to.equal('qmp');
    expect((err as Error).message).to.equal('virtio-mem: setting vmem0 requested-size to 256 MiB failed: Can\'t set requested size: larger than max-size');
    expect(r.memoryMiB).to.equal(512);
    expect(r.target().memoryMiB).to.equal(512);
  });

  it('joins and leaves at the same time run one after the other', async () => {
    const q = fakeVirtioMem({ lag: 2 });
    const r = vm(q);
    await Promise.all([r.add('a', { vcpus: 0, memoryMiB: 128 }), r.add('b', { vcpus: 0, memoryMiB: 128 }), r.remove('a')]);
    const sets = q.calls.filter(([c]) => c === 'qom-set').map(([, a]) => (a!.value as number) / MIB);
    // Each set is waited for before the next.
    expect(q.size).to.equal(128 * MIB);
    expect(sets[sets.length - 1]).to.equal(128);
  });
});
