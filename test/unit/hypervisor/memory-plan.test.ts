/**
 * src/hypervisor/memory-plan (the memory part of QEMU's command line: NVDIMM DAX
 * image, hotplug room, balloon) and src/resource/memory/dax-image (the pfn info block
 * Linux validates before it maps the NVDIMM with struct pages).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { qemuMemoryPlan, MemoryPlanError, DAX_IMAGE_NAME } from '../../../src/hypervisor/memory-plan';
import { DAX_ALIGN, DAX_FILE_ALIGN, DaxImageError, fletcher64, pfnInfoBlock, writeDaxImage } from '../../../src/hypervisor/dax-image';
import { QemuHypervisor } from '../../../src/hypervisor/qemu';

describe('hypervisor/memory-plan and dax-image', () => {
  let dir: string;
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-memplan-')); });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const vm = () => ({ memoryMiB: 512, vcpus: 1, image: path.join(dir, 'rootfs.erofs') });

  it('without options changes nothing: plain -m and -smp, no devices', () => {
    const p = qemuMemoryPlan(vm(), {}, false);
    expect(p).to.deep.include({ m: '512M', smp: '1', args: [], machineProps: [], nvdimmBytes: 0 });
    expect(p.rootParams).to.equal(undefined);
  });

  it('puts the DAX image on a read-only, unarmed NVDIMM and counts it in maxmem', () => {
    fs.writeFileSync(path.join(dir, DAX_IMAGE_NAME), Buffer.alloc(0));
    fs.truncateSync(path.join(dir, DAX_IMAGE_NAME), DAX_FILE_ALIGN);
    const p = qemuMemoryPlan(vm(), { imageNvdimm: true, maxMemoryMiB: 1024, memorySlots: 4, maxVcpus: 4, balloon: true, memoryHotplug: 'dimm' }, false);
    expect(p.machineProps).to.deep.equal(['nvdimm=on']);
    expect(p.m).to.equal('512M,slots=5,maxmem=1152M');
    expect(p.smp).to.equal('1,maxcpus=4');
    expect(p.args.join(' ')).to.include(`memory-backend-file,id=imgmem,mem-path=${path.join(dir, DAX_IMAGE_NAME)},size=${DAX_FILE_ALIGN},share=on,readonly=on`);
    expect(p.args.join(' ')).to.include('nvdimm,id=nv0,memdev=imgmem,unarmed=on');
    expect(p.args.join(' ')).to.include('virtio-balloon-pci,id=balloon0,free-page-reporting=on,deflate-on-oom=on');
    expect(p.rootParams).to.equal('root=/dev/pmem0 rootflags=dax');
  });

  it('DIMM hotplug behind the NVDIMM needs a 128 MiB multiple (the guest onlines only aligned memory blocks); virtio-mem or no room does not', () => {
    fs.writeFileSync(path.join(dir, DAX_IMAGE_NAME), Buffer.alloc(0));
    fs.truncateSync(path.join(dir, DAX_IMAGE_NAME), 60 * DAX_ALIGN);
    expect(() => qemuMemoryPlan(vm(), { imageNvdimm: true, maxMemoryMiB: 1024, memoryHotplug: 'dimm' }, false)).to.throw(MemoryPlanError, /not a multiple of 128 MiB.*DIMM/);
    expect(qemuMemoryPlan(vm(), { imageNvdimm: true, maxMemoryMiB: 1152 }, false).virtioMem?.sizeMiB).to.equal(640);
    expect(qemuMemoryPlan(vm(), { imageNvdimm: true, memoryHotplug: 'dimm' }, false).nvdimmBytes).to.equal(60 * DAX_ALIGN);
  });

  it('virtio-mem (the default): one virtio-mem-pci on slot 7 over a shared memfd of maxmem - memory, requested-size 0, no DIMM slots, movable onlining', () => {
    const p = qemuMemoryPlan(vm(), { maxMemoryMiB: 1152, memorySlots: 10 }, false);
    expect(p.m).to.equal('512M,maxmem=1152M');
    expect(p.virtioMem).to.deep.equal({ id: 'vmem0', sizeMiB: 640 });
    expect(p.maxRamMiB).to.equal(1152);
    expect(p.args).to.deep.equal([
      '-object', 'memory-backend-memfd,id=vmem0-mem,size=640M,share=on,reserve=off',
      '-device', 'virtio-mem-pci,id=vmem0,memdev=vmem0-mem,requested-size=0,block-size=2M,addr=0x7',
    ]);
    expect(p.kernelParams).to.deep.equal(['memhp_default_state=online_movable']);
    // With the DAX NVDIMM: its slot only, its size in maxmem.
    fs.writeFileSync(path.join(dir, DAX_IMAGE_NAME), Buffer.alloc(0));
    fs.truncateSync(path.join(dir, DAX_IMAGE_NAME), 3 * DAX_ALIGN);
    expect(qemuMemoryPlan(vm(), { imageNvdimm: true, maxMemoryMiB: 1152, memorySlots: 10 }, false).m).to.equal('512M,slots=1,maxmem=1158M');
    // DIMM mode: slots, online (not movable), no virtio-mem.
    const d = qemuMemoryPlan(vm(), { maxMemoryMiB: 1152, memorySlots: 10, memoryHotplug: 'dimm' }, false);
    expect(d).to.deep.include({ m: '512M,slots=10,maxmem=1152M', args: [], kernelParams: ['memhp_default_state=online'] });
    expect(d.virtioMem).to.equal(undefined);
    // No room, no device.
    expect(qemuMemoryPlan(vm(), { maxMemoryMiB: 512 }, false).virtioMem).to.equal(undefined);
    // The command line carries it; the VM's device is what the resizer drives.
    const line = new QemuHypervisor({ binary: '/bin/true', machine: 'pc', accel: 'tcg', memory: { maxMemoryMiB: 1152 } })
      .commandLine({ id: 'x', dir, kernel: '/k', image: vm().image, vcpus: 1, memoryMiB: 512, kernelParams: '', disks: [], debug: false }).join(' ');
    expect(line).to.include('-m 512M,maxmem=1152M');
    expect(line).to.include('virtio-mem-pci,id=vmem0');
    expect(line).to.include('memhp_default_state=online_movable');
  });

  it('virtio-mem refuses what cannot work: microvm, a size off the 2 MiB block, an unknown mode', () => {
    expect(() => qemuMemoryPlan(vm(), { maxMemoryMiB: 1024 }, true)).to.throw(MemoryPlanError, /microvm.*virtio-mem/);
    expect(() => qemuMemoryPlan(vm(), { maxMemoryMiB: 1025 }, false)).to.throw(MemoryPlanError, /513 MiB is not a multiple of the 2 MiB virtio-mem block/);
    expect(() => qemuMemoryPlan(vm(), { maxMemoryMiB: 1024, memoryHotplug: 'acpi' as 'dimm' }, false)).to.throw(MemoryPlanError, /memory_hotplug "acpi": expected one of "virtio-mem", "dimm"/);
  });

  it('a TCG translation cache size moves the accelerator to -accel (QEMU refuses both); KVM ignores it', () => {
    expect(qemuMemoryPlan(vm(), { tcgTranslationCacheMiB: 32 }, false, 'tcg').accel).to.equal('tcg,tb-size=32');
    expect(qemuMemoryPlan(vm(), { tcgTranslationCacheMiB: 32 }, false, 'kvm').accel).to.equal(undefined);
    const line = new QemuHypervisor({ binary: '/bin/true', machine: 'pc', accel: 'tcg', memory: { tcgTranslationCacheMiB: 32 } })
      .commandLine({ id: 'x', dir, kernel: '/k', image: vm().image, vcpus: 1, memoryMiB: 512, kernelParams: '', disks: [], debug: false }).join(' ');
    expect(line).to.include('-M pc -accel tcg,tb-size=32 -cpu');
    expect(line).to.not.include('accel=tcg');
  });

  it('refuses what cannot work with one clear error', () => {
    expect(() => qemuMemoryPlan(vm(), { imageNvdimm: true }, false)).to.throw(MemoryPlanError, /no DAX guest image.*disable_image_nvdimm/);
    fs.writeFileSync(path.join(dir, DAX_IMAGE_NAME), Buffer.alloc(4096));
    expect(() => qemuMemoryPlan(vm(), { imageNvdimm: true }, false)).to.throw(MemoryPlanError, /not a multiple of 2 MiB/);
    expect(() => qemuMemoryPlan(vm(), { imageNvdimm: true }, true)).to.throw(MemoryPlanError, /microvm/);
    expect(() => qemuMemoryPlan(vm(), { maxMemoryMiB: 256 }, false)).to.throw(MemoryPlanError, /below default_memory/);
    expect(() => qemuMemoryPlan(vm(), { maxVcpus: 0.5 as number }, false)).to.throw(MemoryPlanError, /below default_vcpus/);
  });

  it('QEMU\'s command line gets the plan: no virtio-blk root disk, root on /dev/pmem0 with DAX', () => {
    fs.writeFileSync(path.join(dir, DAX_IMAGE_NAME), Buffer.alloc(0));
    fs.truncateSync(path.join(dir, DAX_IMAGE_NAME), DAX_ALIGN);
    const hv = new QemuHypervisor({ binary: '/bin/true', machine: 'pc', accel: 'tcg', memory: { imageNvdimm: true } });
    const args = hv.commandLine({ id: 'x', dir, kernel: '/k', image: vm().image, vcpus: 1, memoryMiB: 512, kernelParams: '', disks: [], debug: false });
    const line = args.join(' ');
    expect(line).to.include('-M pc,accel=tcg,nvdimm=on');
    expect(line).to.include('root=/dev/pmem0 rootflags=dax');
    expect(line).to.not.include('root=/dev/vda');
    expect(line).to.not.include('rootimg');
    const plain = new QemuHypervisor({ binary: '/bin/true', machine: 'pc', accel: 'tcg' })
      .commandLine({ id: 'x', dir, kernel: '/k', image: vm().image, vcpus: 1, memoryMiB: 512, kernelParams: '', disks: [], debug: false }).join(' ');
    expect(plain).to.include('root=/dev/vda');
    expect(plain).to.include('-m 512M ');
  });

  it('writes the pfn info block Linux checks (nd_pfn_validate): fields, fletcher64 checksum, data at 2 MiB', () => {
    // fletcher64 of little-endian u32 words: lo = Σw, hi = Σ running lo.
    const b = Buffer.alloc(12);
    b.writeUInt32LE(1, 0); b.writeUInt32LE(2, 4); b.writeUInt32LE(3, 8);
    expect(fletcher64(b)).to.equal((BigInt(1 + 3 + 6) << 32n) | 6n);
    const total = 10 * DAX_ALIGN;
    const sb = pfnInfoBlock(total, Buffer.alloc(16, 7));
    expect(sb.length).to.equal(4096);
    expect(sb.subarray(0, 16).toString('latin1')).to.equal('NVDIMM_PFN_INFO\0');
    expect(sb.subarray(32, 48).equals(Buffer.alloc(16))).to.equal(true); // parent uuid of an io namespace
    expect(sb.readBigUInt64LE(56)).to.equal(BigInt(DAX_ALIGN)); // dataoff
    expect(sb.readBigUInt64LE(64)).to.equal(BigInt((total - DAX_ALIGN) / 4096)); // npfns
    expect(sb.readUInt32LE(72)).to.equal(1); // PFN_MODE_RAM
    const sum = sb.readBigUInt64LE(4088);
    const zeroed = Buffer.from(sb);
    zeroed.writeBigUInt64LE(0n, 4088);
    expect(fletcher64(zeroed)).to.equal(sum);
  });

  it('wraps an EROFS image (data at 2 MiB, padded to a 128 MiB multiple) and refuses anything else', () => {
    const erofs = path.join(dir, 'flat.erofs');
    const img = Buffer.alloc(5000);
    img.writeUInt32LE(0xe0f5e1e2, 1024);
    img.write('payload', 4000);
    fs.writeFileSync(erofs, img);
    const out = path.join(dir, 'dax.img');
    const n = writeDaxImage(erofs, out);
    expect(n).to.equal(DAX_FILE_ALIGN);
    const got = fs.readFileSync(out);
    expect(got.length).to.equal(n);
    expect(got.subarray(DAX_ALIGN, DAX_ALIGN + 5000).equals(img)).to.equal(true);
    expect(got.subarray(4096, 4112).toString('latin1')).to.equal('NVDIMM_PFN_INFO\0');
    fs.writeFileSync(erofs, Buffer.alloc(5000));
    expect(() => writeDaxImage(erofs, path.join(dir, 'bad.img'))).to.throw(DaxImageError, /not an EROFS image/);
    expect(fs.readdirSync(dir).filter((f) => f.startsWith('bad.img'))).to.deep.equal([]);
  });
});
