/**
 * The settings src/hypervisor reads, in its own type: the hypervisor layer
 * must not import src/runtime (imports point down, ARCHITECTURE.md), so
 * selectHypervisor() takes this shape instead of the runtime's Config. The
 * runtime's parsed configuration file has these sections with these keys, so
 * it is passed as is; anything else (a test, the factory) can build one
 * directly.
 */

/** [hypervisor.qemu] keys the QEMU hypervisor is built from. */
export interface QemuSettings {
  path: string;
  machine_type: string;
  accel: string;
  block_device_driver: string;
  root_block_driver: string;
  machine_accelerators: string;
  disable_image_nvdimm: boolean;
  reclaim_guest_freed_memory: boolean;
  default_memory: number;
  default_maxmemory: number;
  memory_slots: number;
  /** How memory grows: "virtio-mem" (default; can shrink) or "dimm". Absent: "virtio-mem". */
  memory_hotplug?: string;
  default_vcpus: number;
  default_maxvcpus: number;
  tcg_translation_cache: number;
  /** VFIO on q35 (Kata's keys): root ports at boot, and where hot/cold-plugged devices go. Absent: 0 / "no-port". */
  pcie_root_port?: number;
  hot_plug_vfio?: string;
  cold_plug_vfio?: string;
}

/** [hypervisor.builtin] keys. */
export interface BuiltinSettings {
  allow_emulated_kvm: boolean;
  net_tap: string;
  /** A virtio-balloon with free page reporting (src/virtio/balloon). Optional: configs built before it lack it. */
  reclaim_guest_freed_memory?: boolean;
}

export interface HypervisorSettings {
  runtime: { run_dir: string; hypervisor: string };
  /** [memory]: ksm_throttler makes the builtin VMM's guest RAM mergeable. Optional for callers without it. */
  memory?: { ksm_throttler: boolean };
  'hypervisor.qemu': QemuSettings;
  'hypervisor.builtin': BuiltinSettings;
}
