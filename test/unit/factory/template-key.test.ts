import { expect } from 'chai';
import { keyDifferences, templateKey, TEMPLATE_FORMAT, type TemplateInputs } from '../../../src/factory/template-key';

function inputs(): TemplateInputs {
  const f = (p: string) => ({ path: p, ino: 7, size: 100, mtimeMs: 1000 });
  return {
    format: TEMPLATE_FORMAT, kernel: f('/k/vmlinux'), image: f('/i/rootfs.erofs'), qemu: f('/usr/bin/qemu'),
    kernelCmdline: 'console=ttyS0 quiet', vcpus: 1, memoryMiB: 512, machine: 'pc', machineAccelerators: '', accel: 'tcg',
    memory: { m: '512M', smp: '1', daxImage: null, balloon: false, virtioMemMiB: 0 },
  };
}

describe('unit: factory template key', () => {
  it('is a pure function of the inputs (same inputs, same key; property order does not matter)', () => {
    const a = inputs();
    const b = JSON.parse(JSON.stringify({ ...inputs(), accel: 'tcg', format: TEMPLATE_FORMAT })) as TemplateInputs;
    expect(templateKey(a)).to.match(/^[0-9a-f]{16}$/).and.equal(templateKey(b));
    expect(keyDifferences(a, b)).to.deep.equal([]);
  });

  it('changes, with a reason naming it, when anything a clone depends on changes', () => {
    const changes: [string, (i: TemplateInputs) => void, RegExp][] = [
      ['kernel file', (i) => { i.kernel.mtimeMs += 1; }, /^kernel \/k\/vmlinux changed/],
      ['kernel path', (i) => { i.kernel.path = '/k2/vmlinux'; }, /^kernel is now \/k2\/vmlinux/],
      ['image', (i) => { i.image.size += 4096; }, /^image .* changed/],
      ['qemu binary', (i) => { i.qemu.ino += 1; }, /^qemu .* changed/],
      ['policy hash on the command line', (i) => { i.kernelCmdline += ' agent.policy_sha256=ab'; }, /kernel command line differs/],
      ['vcpus', (i) => { i.vcpus = 2; }, /^vcpus 1 → 2$/],
      ['memory', (i) => { i.memoryMiB = 1024; }, /^memoryMiB 512 → 1024$/],
      ['machine', (i) => { i.machine = 'q35'; }, /^machine "pc" → "q35"$/],
      ['accel', (i) => { i.accel = 'kvm'; }, /^accel "tcg" → "kvm"$/],
      ['format', (i) => { i.format += 1; }, /^template format/],
      ['DAX image', (i) => { i.memory.daxImage = { path: '/i/rootfs-dax.erofs', ino: 8, size: 2 << 20, mtimeMs: 1 }; }, /^DAX image nvdimm: template without, now \/i\/rootfs-dax\.erofs/],
      ['balloon', (i) => { i.memory.balloon = true; }, /^balloon \(reclaim_guest_freed_memory\): template off, now on$/],
      ['virtio-mem', (i) => { i.memory.virtioMemMiB = 1536; }, /^virtio-mem device: template none, now 1536 MiB$/],
      ['hotplug room', (i) => { i.memory.m = '512M,slots=2,maxmem=1024M'; }, /^-m 512M → 512M,slots=2,maxmem=1024M/],
      ['vCPU ceiling', (i) => { i.memory.smp = '1,maxcpus=4'; }, /^-smp 1 → 1,maxcpus=4/],
    ];
    const base = inputs();
    for (const [what, change, reason] of changes) {
      const other = inputs();
      change(other);
      expect(templateKey(other), what).to.not.equal(templateKey(base));
      const diff = keyDifferences(base, other);
      expect(diff, what).to.have.length(1);
      expect(diff[0], what).to.match(reason);
    }
  });

  it('a manifest from before the memory devices (format 5, no memory field) is stale by its format, and a lean configuration says why', () => {
    const old = inputs() as Partial<TemplateInputs>;
    delete old.memory;
    old.format = 5;
    const now = inputs();
    now.memory = { ...now.memory, balloon: true };
    const diff = keyDifferences(old as TemplateInputs, now);
    expect(diff[0]).to.match(/^template format 5 → /);
    expect(diff.slice(1)).to.deep.equal(['balloon (reclaim_guest_freed_memory): template off, now on']);
  });
});
