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
  /** DIMM slots for hotplug (Kata: memory_slots). */
  memorySlots?: number;
  /** vCPU ceiling (Kata: default_maxvcpus); 0/undefined: the boot count. */
  maxVcpus?: number;
  /** TCG translation cache in MiB (QEMU's tb-size); 0/undefined: QEMU's default. Ignored under KVM. */
  tcgTranslationCacheMiB?: number;
}

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
  let slots = o.memorySlots ?? 0;
  let maxMiB = o.maxMemoryMiB ?? 0;
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
  if (slots > 0 || maxMiB > 0) {
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
