/**
 * The memory side of a QEMU command line (issue 13), kept out of
 * src/hypervisor/qemu.ts so that file only splices it in:
 *
 *   DAX guest image   the root image as an NVDIMM, as Kata does: a read-only
 *                     memory-backend-file (share=on, readonly=on) mapping the
 *                     uncompressed image (rootfs-dax.erofs, next to the
 *                     compressed one), `-device nvdimm,unarmed=on`,
 *                     `-machine nvdimm=on`; the guest mounts /dev/pmem0 with
 *                     `rootflags=dax`, so file pages are the host's page
 *                     cache pages, one copy for every sandbox.
 *   hotplug room      `-m base,slots=N,maxmem=M` (the NVDIMM takes a slot
 *                     and its size of maxmem) and `-smp base,maxcpus=N`.
 *   virtio-mem        (memoryHotplug 'virtio-mem', the default) instead of
 *                     DIMM slots: one virtio-mem-pci device at boot (slot 7)
 *                     over its own memory-backend-memfd (share=on: our
 *                     vhost-user back-ends map it; the whole device region
 *                     is in the first memory table, so resizing never sends
 *                     a new one) of maxmem - base, requested-size=0. The
 *                     runtime grows and shrinks it with qom-set
 *                     requested-size (src/resource/memory/resize.ts); the
 *                     guest driver plugs and onlines blocks itself
 *                     (memhp_default_state=online_movable: movable memory
 *                     can be unplugged again), and QEMU punches unplugged
 *                     blocks out of the memfd, so the host gets them back.
 *                     No prealloc (pages cost the host when the guest first
 *                     touches them); reserve=off (no swap reservation for a
 *                     mostly unplugged region; a no-op for shared memfd).
 *   balloon           virtio-balloon-pci with free-page-reporting (pages the
 *                     guest frees are punched out of the memfd) and
 *                     deflate-on-oom.
 *   TCG cache         `-accel tcg,tb-size=N`: QEMU 7.2 reserves a 1 GiB
 *                     translation cache under TCG and fills it as the guest
 *                     runs — private memory of every VM, the largest part of
 *                     an idle VM's footprint besides guest RAM (measured in
 *                     README "Memory density").
 *   KSM               QEMU's -machine mem-merge is on by default: guest RAM
 *                     gets MADV_MERGEABLE. Ours is a shared memfd (vhost-user
 *                     needs it) and KSM skips VM_SHARED mappings, so guest
 *                     RAM never merges; what merges is QEMU's private
 *                     anonymous memory (TCG translation buffers, heap).
 *                     README "Memory density" has the numbers.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError } from '../common/errors';
import { DAX_FILE_ALIGN } from './dax-image';

export class MemoryPlanError extends KataError<'config'> {}

/** The uncompressed DAX image beside the (compressed) guest image. */
export const DAX_IMAGE_NAME = 'rootfs-dax.erofs';
const NVDIMM_ALIGN = 2 * 1024 * 1024;
const MIB = 1024 * 1024;

export interface QemuMemoryOptions {
  /** The root image as an NVDIMM with DAX (Kata: !disable_image_nvdimm). */
  imageNvdimm?: boolean;
  /** virtio-balloon with free page reporting (Kata: reclaim_guest_freed_memory). */
  balloon?: boolean;
  /** Memory hotplug ceiling in MiB (Kata: default_maxmemory); 0/undefined: no hotplug room. */
  maxMemoryMiB?: number;
  /** DIMM slots for hotplug (Kata: memory_slots; DIMM mode only). */
  memorySlots?: number;
  /** How memory grows: one virtio-mem device (default; can shrink) or pc-dimm DIMMs (growth only). */
  memoryHotplug?: MemoryHotplugMode;
  /** vCPU ceiling (Kata: default_maxvcpus); 0/undefined: the boot count. */
  maxVcpus?: number;
  /** TCG translation cache in MiB (QEMU's tb-size); 0/undefined: QEMU's default. Ignored under KVM. */
  tcgTranslationCacheMiB?: number;
}

export type MemoryHotplugMode = 'virtio-mem' | 'dimm';
export const MEMORY_HOTPLUG_MODES: readonly MemoryHotplugMode[] = ['virtio-mem', 'dimm'];
/** The virtio-mem device's QOM id and PCI slot (7: free below FIRST_DYNAMIC_SLOT, src/hypervisor/pci-slots.ts). */
export const VIRTIO_MEM_ID = 'vmem0';
export const VIRTIO_MEM_SLOT = 7;
/** virtio-mem block size: the unit the guest plugs; 2 MiB (the x86 THP size) is QEMU's smallest for a memfd. */
export const VIRTIO_MEM_BLOCK_MIB = 2;

export interface QemuMemoryPlan {
  /** Extra -machine properties. */
  machineProps: string[];
  /** The -m argument. */
  m: string;
  /** The -smp argument. */
  smp: string;
  /** Devices/objects to add (the NVDIMM, the balloon). */
  args: string[];
  /** Replaces root=/dev/vda on the kernel command line when the image is an NVDIMM. */
  rootParams?: string;
  /** The image the NVDIMM maps. */
  daxImage?: string;
  /** Bytes of the NVDIMM (counted in maxmem). */
  nvdimmBytes: number;
  /** An -accel argument replacing -machine accel= (TCG with a cache size). */
  accel?: string;
  /** Guest kernel parameters the plan needs (hotplugged memory onlined by the guest kernel itself). */
  kernelParams: string[];
  /** The virtio-mem device's id and size when planned (memory grows through it, not DIMMs). */
  virtioMem?: { id: string; sizeMiB: number };
  /** Guest RAM the VM can reach at most (boot RAM + hotplug room, without the NVDIMM): what vhost-user backends must be able to map. */
  maxRamMiB: number;
}

/** Where the DAX image for `image` lives. */
export function daxImageFor(image: string): string {
  return path.join(path.dirname(image), DAX_IMAGE_NAME);
}

export function qemuMemoryPlan(vm: { memoryMiB: number; vcpus: number; image: string }, o: QemuMemoryOptions, mmio: boolean, accel: 'kvm' | 'tcg' = 'tcg'): QemuMemoryPlan {
  const plan: QemuMemoryPlan = { machineProps: [], m: `${vm.memoryMiB}M`, smp: String(vm.vcpus), args: [], nvdimmBytes: 0, kernelParams: [], maxRamMiB: vm.memoryMiB };
  if (accel === 'tcg' && o.tcgTranslationCacheMiB) plan.accel = `tcg,tb-size=${o.tcgTranslationCacheMiB}`;
  const mode = o.memoryHotplug ?? 'virtio-mem';
  if (!MEMORY_HOTPLUG_MODES.includes(mode)) throw new MemoryPlanError('config', `memory_hotplug "${String(mode)}": expected one of ${MEMORY_HOTPLUG_MODES.map((m) => `"${m}"`).join(', ')}`);
  const maxMiB = o.maxMemoryMiB ?? 0;
  const virtioMem = mode === 'virtio-mem' && maxMiB > vm.memoryMiB;
  // virtio-mem needs no DIMM slots (memory_slots is DIMM mode's).
  let slots = virtioMem ? 0 : o.memorySlots ?? 0;
  if (maxMiB && maxMiB < vm.memoryMiB) throw new MemoryPlanError('config', `default_maxmemory ${maxMiB} MiB is below default_memory ${vm.memoryMiB} MiB`);
  if (o.imageNvdimm) {
    if (mmio) throw new MemoryPlanError('config', 'the microvm machine has no NVDIMM (ACPI NFIT); set disable_image_nvdimm = true or machine_type = "pc"');
    const img = daxImageFor(vm.image);
    let size: number;
    try {
      size = fs.statSync(img).size;
    } catch {
      throw new MemoryPlanError('config', `no DAX guest image at ${img} (guest/image/build.sh makes it); or set [hypervisor.qemu] disable_image_nvdimm = true`);
    }
    if (size === 0 || size % NVDIMM_ALIGN !== 0) throw new MemoryPlanError('config', `${img}: ${size} bytes is not a multiple of 2 MiB, as an NVDIMM backend must be; rebuild it with guest/image/build.sh`);
    // A DIMM goes right behind the NVDIMM (dax-image.ts): the guest onlines it only at a 128 MiB-aligned address.
    if (!virtioMem && maxMiB > vm.memoryMiB && size % DAX_FILE_ALIGN !== 0) {
      throw new MemoryPlanError('config', `${img}: ${size} bytes is not a multiple of 128 MiB, so a DIMM hotplugged behind it could not be onlined by the guest; rebuild it with guest/image/build.sh (or use memory_hotplug = "virtio-mem")`);
    }
    plan.daxImage = img;
    plan.nvdimmBytes = size;
    plan.machineProps.push('nvdimm=on');
    plan.args.push(
      '-object', `memory-backend-file,id=imgmem,mem-path=${img},size=${size},share=on,readonly=on`,
      // unarmed: the guest sees the region read-only (it cannot write the image).
      '-device', 'nvdimm,id=nv0,memdev=imgmem,unarmed=on',
    );
    plan.rootParams = 'root=/dev/pmem0 rootflags=dax';
    slots += 1;
  }
  if (virtioMem) {
    if (mmio) throw new MemoryPlanError('config', 'the microvm machine has no memory device area for virtio-mem; set default_maxmemory = 0 or machine_type = "pc"');
    const sizeMiB = maxMiB - vm.memoryMiB;
    if (sizeMiB % VIRTIO_MEM_BLOCK_MIB !== 0) throw new MemoryPlanError('config', `default_maxmemory ${maxMiB} - default_memory ${vm.memoryMiB} = ${sizeMiB} MiB is not a multiple of the ${VIRTIO_MEM_BLOCK_MIB} MiB virtio-mem block`);
    plan.virtioMem = { id: VIRTIO_MEM_ID, sizeMiB };
    plan.args.push(
      '-object', `memory-backend-memfd,id=${VIRTIO_MEM_ID}-mem,size=${sizeMiB}M,share=on,reserve=off`,
      '-device', `virtio-mem-pci,id=${VIRTIO_MEM_ID},memdev=${VIRTIO_MEM_ID}-mem,requested-size=0,block-size=${VIRTIO_MEM_BLOCK_MIB}M,addr=0x${VIRTIO_MEM_SLOT.toString(16)}`,
    );
    // Memory the driver plugs is onlined by the guest kernel into ZONE_MOVABLE, so it can be unplugged again.
    plan.kernelParams.push('memhp_default_state=online_movable');
    plan.maxRamMiB = maxMiB;
    // No DIMM slots (only the NVDIMM's): maxmem without slots is virtio-mem's room.
    const total = maxMiB + Math.ceil(plan.nvdimmBytes / MIB);
    plan.m = slots > 0 ? `${vm.memoryMiB}M,slots=${slots},maxmem=${total}M` : `${vm.memoryMiB}M,maxmem=${total}M`;
  } else if (slots > 0 || maxMiB > 0) {
    if (slots === 0) slots = 1;
    const total = Math.max(maxMiB, vm.memoryMiB) + Math.ceil(plan.nvdimmBytes / MIB);
    plan.m = `${vm.memoryMiB}M,slots=${slots},maxmem=${total}M`;
    if (maxMiB > vm.memoryMiB) {
      plan.maxRamMiB = maxMiB;
      // DIMMs come up online without a guest helper (src/resource/memory/resize.ts).
      plan.kernelParams.push('memhp_default_state=online');
    }
  }
  const maxCpus = o.maxVcpus ?? 0;
  if (maxCpus) {
    if (maxCpus < vm.vcpus) throw new MemoryPlanError('config', `default_maxvcpus ${maxCpus} is below default_vcpus ${vm.vcpus}`);
    plan.smp = `${vm.vcpus},maxcpus=${maxCpus}`;
  }
  if (o.balloon) {
    plan.args.push('-device', mmio
      ? 'virtio-balloon-device,id=balloon0,free-page-reporting=on,deflate-on-oom=on'
      : 'virtio-balloon-pci,id=balloon0,free-page-reporting=on,deflate-on-oom=on,addr=0x6');
  }
  return plan;
}
