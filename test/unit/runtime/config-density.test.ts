/**
 * The memory-density defaults of [hypervisor.qemu] (DAX image, balloon,
 * virtio-mem room; issue 13) and how they yield to a file's explicit keys:
 * a configuration valid before they were defaults never becomes an error.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseConfig, defaultConfig, ConfigError, type Config } from '../../../src/runtime/config';
import { annotatedConfig } from '../../../src/runtime/config-kata';
import { qemuMemoryPlan, MemoryPlanError } from '../../../src/hypervisor/memory-plan';
import { qemuMemoryOptions } from '../../../src/hypervisor/index';

/** The plan QEMU would get from the section (the options selectHypervisor passes). */
function planFor(c: Config, image: string) {
  const q = c['hypervisor.qemu'];
  return qemuMemoryPlan({ memoryMiB: q.default_memory, vcpus: q.default_vcpus, image }, qemuMemoryOptions(q), q.machine_type === 'microvm');
}

describe('unit: configuration, memory-density defaults', () => {
  let dir: string;
  let image: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-cfg-density-'));
    image = path.join(dir, 'rootfs.erofs');
    fs.writeFileSync(image, '');
    fs.writeFileSync(path.join(dir, 'rootfs-dax.erofs'), Buffer.alloc(2 * 1024 * 1024));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('defaults: DAX image, balloon with free page reporting, virtio-mem room to 2048 MiB, 512 MiB at boot, QEMU\'s TCG cache', () => {
    for (const c of [defaultConfig(), parseConfig('', '/f.toml')]) {
      const q = c['hypervisor.qemu'];
      expect([q.disable_image_nvdimm, q.reclaim_guest_freed_memory, q.default_maxmemory, q.default_memory, q.tcg_translation_cache, q.machine_type])
        .to.deep.equal([false, true, 2048, 512, 0, 'pc']);
      expect(c.notes).to.deep.equal([]);
      const plan = planFor(c, image);
      expect(plan.daxImage).to.equal(path.join(dir, 'rootfs-dax.erofs'));
      expect(plan.virtioMem).to.deep.equal({ id: plan.virtioMem!.id, sizeMiB: 1536 });
      expect(plan.args.join(' ')).to.include('free-page-reporting=on');
      expect(plan.accel).to.equal(undefined);
      expect(plan.m).to.equal('512M,slots=1,maxmem=2050M');
    }
  });

  it('microvm without the keys set: virtio-blk root and no virtio-mem room, with a note, not an error', () => {
    const c = parseConfig('[hypervisor.qemu]\nmachine_type = "microvm"\n', '/f.toml');
    const q = c['hypervisor.qemu'];
    expect([q.disable_image_nvdimm, q.default_maxmemory, q.reclaim_guest_freed_memory]).to.deep.equal([true, 0, true]);
    expect(c.notes.join('\n')).to.match(/disable_image_nvdimm = true: the microvm machine has no NVDIMM/).and.match(/default_maxmemory = 0: the microvm machine/);
    const plan = planFor(c, image);
    expect(plan.daxImage).to.equal(undefined);
    expect(plan.virtioMem).to.equal(undefined);
    expect(plan.m).to.equal('512M');
    expect(plan.args.join(' ')).to.include('virtio-balloon-device');
  });

  it('microvm with disable_image_nvdimm = false set explicitly stays one clear error naming the line', () => {
    let err: unknown;
    try {
      parseConfig('[hypervisor.qemu]\nmachine_type = "microvm"\ndisable_image_nvdimm = false\n', '/f.toml');
    } catch (e) { err = e; }
    expect(err).to.be.instanceOf(ConfigError);
    expect((err as Error).message).to.match(/^\/f\.toml:3: \[hypervisor\.qemu\] disable_image_nvdimm = false needs machine_type = "pc" or "q35"/);
    // And a hand-built section reaching the plan is refused there too.
    const c = defaultConfig();
    c['hypervisor.qemu'].machine_type = 'microvm';
    expect(() => planFor(c, image)).to.throw(MemoryPlanError, /microvm machine has no NVDIMM/);
  });

  it('an explicit root_block_driver (or Kata\'s vm_rootfs_driver) keeps the root disk; explicit disable_image_nvdimm = false wins over it', () => {
    for (const line of ['root_block_driver = "vhost-user-blk"', 'vm_rootfs_driver = "virtio-blk-pci"']) {
      const c = parseConfig(`[hypervisor.qemu]\n${line}\n`, '/f.toml');
      expect(c['hypervisor.qemu'].disable_image_nvdimm, line).to.equal(true);
      expect(c.notes.join('\n'), line).to.match(/root_block_driver = ".*" is set/);
      expect(planFor(c, image).daxImage, line).to.equal(undefined);
    }
    const c = parseConfig('[hypervisor.qemu]\nroot_block_driver = "vhost-user-blk"\ndisable_image_nvdimm = false\n', '/f.toml');
    expect(c['hypervisor.qemu'].disable_image_nvdimm).to.equal(false);
  });

  it('an explicit image without rootfs-dax.erofs beside it keeps the root disk; with one, DAX', () => {
    const bare = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-cfg-density-bare-'));
    try {
      const c = parseConfig(`[hypervisor.qemu]\nimage = "${bare}/rootfs.erofs"\n`, '/f.toml');
      expect(c['hypervisor.qemu'].disable_image_nvdimm).to.equal(true);
      expect(c.notes.join('\n')).to.include(`no ${bare}/rootfs-dax.erofs beside the configured image`);
    } finally {
      fs.rmSync(bare, { recursive: true, force: true });
    }
    expect(parseConfig(`[hypervisor.qemu]\nimage = "${image}"\n`, '/f.toml')['hypervisor.qemu'].disable_image_nvdimm).to.equal(false);
  });

  it('default_memory (file or pod annotation) at or above the default ceiling leaves no room; an odd size rounds the room to whole 2 MiB blocks', () => {
    const big = parseConfig('[hypervisor.qemu]\ndefault_memory = 3072\n', '/f.toml');
    expect(big['hypervisor.qemu'].default_maxmemory).to.equal(0);
    expect(planFor(big, image).virtioMem).to.equal(undefined);
    const odd = parseConfig('[hypervisor.qemu]\ndefault_memory = 1001\n', '/f.toml');
    expect(odd['hypervisor.qemu'].default_maxmemory).to.equal(2047);
    expect(planFor(odd, image).virtioMem!.sizeMiB).to.equal(1046);
    // A pod annotation resizing the VM moves the defaulted ceiling the same way.
    const c = parseConfig('[hypervisor.qemu]\nenable_annotations = ["default_memory"]\n', '/f.toml');
    const key = 'io.katacontainers.config.hypervisor.default_memory';
    expect(annotatedConfig(c, { [key]: '3000' }).config['hypervisor.qemu'].default_maxmemory).to.equal(0);
    expect(annotatedConfig(c, { [key]: '257' }).config['hypervisor.qemu'].default_maxmemory).to.equal(2047);
    expect(planFor(annotatedConfig(c, { [key]: '257' }).config, image).virtioMem!.sizeMiB).to.equal(1790);
  });

  it('explicit keys are kept as written: default_maxmemory = 0, old defaults, and a ceiling that does not fit stays an error at start', () => {
    const old = parseConfig('[hypervisor.qemu]\ndisable_image_nvdimm = true\nreclaim_guest_freed_memory = false\ndefault_maxmemory = 0\n', '/f.toml');
    const q = old['hypervisor.qemu'];
    expect([q.disable_image_nvdimm, q.reclaim_guest_freed_memory, q.default_maxmemory]).to.deep.equal([true, false, 0]);
    expect(old.explicit).to.include.members(['hypervisor.qemu.disable_image_nvdimm', 'hypervisor.qemu.reclaim_guest_freed_memory', 'hypervisor.qemu.default_maxmemory']);
    const plan = planFor(old, image);
    expect([plan.daxImage, plan.virtioMem, plan.m]).to.deep.equal([undefined, undefined, '512M']);
    expect(plan.args.join(' ')).to.not.include('balloon');
    // memory_hotplug = "dimm" set explicitly: the root disk as before, DIMM slots under the default ceiling, no error.
    const dimmCfg = parseConfig('[hypervisor.qemu]\nmemory_hotplug = "dimm"\n', '/f.toml');
    expect(dimmCfg.notes.join('\n')).to.match(/memory_hotplug = "dimm" is set/);
    const dimm = planFor(dimmCfg, image);
    expect([dimm.daxImage, dimm.virtioMem, dimm.m]).to.deep.equal([undefined, undefined, '512M,slots=10,maxmem=2048M']);
  });
});
