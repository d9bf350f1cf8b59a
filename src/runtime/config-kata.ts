/**
 * Kata Containers 3.2's configuration vocabulary, as kata-ts reads it
 * (src/runtime/config/configuration-qemu.toml.in of the Go runtime and the
 * runtime-rs keys vm_rootfs_driver / hypervisor_name).
 *
 * Three kinds of Kata key:
 * - ALIASES: Kata's name for a setting kata-ts implements under its own
 *   (older) name; either name is accepted, both at once is an error.
 * - KATA_VALUES: Kata's values for a key we implement, mapped onto ours, or
 *   `null` where Kata knows the value and kata-ts does not implement it (a
 *   warning; the built-in default stays).
 * - UNSUPPORTED: keys (and whole sections) Kata knows and kata-ts does not
 *   implement: one warning each, naming file and line; the value is ignored.
 * Anything else is a typo: an error with file:line and "did you mean".
 *
 * Pod annotations (io.katacontainers.config.hypervisor.*) are applied by
 * annotatedConfig, only where the hypervisor section's enable_annotations
 * allows them, as Kata's oci.addHypervisorConfigOverrides does.
 */
import * as os from 'node:os';
import type { Config } from './config';
import { ConfigError, resolveDefaultMaxMemory } from './config';

/** Kata name → our key in the same section. */
export const ALIASES: Record<string, Record<string, string>> = {
  'hypervisor.qemu': { vm_rootfs_driver: 'root_block_driver' },
  'hypervisor.builtin': {},
  'agent.kata': {},
  runtime: { hypervisor_name: 'hypervisor' },
};

/** Kata's value → ours (null: known to Kata, not implemented here). */
export const KATA_VALUES: Record<string, Record<string, Record<string, string | null>>> = {
  'hypervisor.qemu': {
    root_block_driver: { 'virtio-blk-pci': 'virtio-blk', 'virtio-blk-mmio': 'virtio-blk', 'virtio-blk-ccw': null, 'virtio-pmem': null, 'virtio-scsi': null, nvdimm: null },
    block_device_driver: { 'virtio-blk-pci': 'virtio-blk', 'virtio-mmio': 'virtio-blk', 'virtio-scsi': null, 'virtio-blk-ccw': null, nvdimm: null },
  },
};

const NO_VIRTIOFSD = 'kata-ts serves virtio-fs itself (src/virtio/fs over vhost-user), no virtiofsd';
const NO_HOTPLUG = 'kata-ts does not hotplug vCPUs or memory';

/** Keys Kata knows that kata-ts does not implement: key → why. */
export const UNSUPPORTED: Record<string, Record<string, string>> = {
  'hypervisor.qemu': {
    initrd: 'the guest boots from its EROFS image', confidential_guest: 'no confidential guests', sev_snp_guest: 'no confidential guests',
    rootless: 'QEMU runs as the shim\'s user', valid_hypervisor_paths: 'the path annotation is not implemented',
    firmware: 'QEMU\'s default firmware only', firmware_volume: 'QEMU\'s default firmware only', seccompsandbox: 'no QEMU seccomp sandbox',
    cpu_features: 'the CPU model is host (KVM) or max (TCG)', default_bridges: 'hotplug uses the root bus',
    memory_offset: NO_HOTPLUG, enable_virtio_mem: 'virtio-mem is kata-ts\'s default way to resize memory: [hypervisor.qemu] memory_hotplug = "virtio-mem" | "dimm"', disable_block_device_use: 'container roots follow [runtime] rootfs_share',
    virtio_fs_daemon: NO_VIRTIOFSD, valid_virtio_fs_daemon_paths: NO_VIRTIOFSD, virtio_fs_cache_size: `${NO_VIRTIOFSD}; no DAX window`,
    virtio_fs_queue_size: 'the virtio-fs queue size is fixed (1024)', virtio_fs_extra_args: NO_VIRTIOFSD, virtio_fs_cache: NO_VIRTIOFSD,
    block_device_aio: 'our block device does its own I/O', block_device_cache_set: 'no QEMU drive cache options', block_device_cache_direct: 'no QEMU drive cache options',
    block_device_cache_noflush: 'no QEMU drive cache options', block_device_logical_sector_size: '512-byte sectors', block_device_physical_sector_size: '512-byte sectors',
    enable_iothreads: 'no QEMU iothreads', indep_iothreads: 'no QEMU iothreads', enable_mem_prealloc: 'guest RAM is a memfd mapped on demand',
    enable_hugepages: 'no hugepages', enable_vhost_user_store: 'vhost-user devices are ours',
    vhost_user_store_path: 'vhost-user devices are ours', valid_vhost_user_store_paths: 'vhost-user devices are ours', vhost_user_reconnect_timeout_sec: 'vhost-user devices are ours',
    enable_iommu: 'no vIOMMU', enable_iommu_platform: 'no vIOMMU', enable_numa: 'no guest NUMA', numa_mapping: 'no guest NUMA',
    file_mem_backend: 'guest RAM is a memfd', valid_file_mem_backends: 'guest RAM is a memfd', pflashes: 'no pflash images',
    enable_debug: 'use [runtime] enable_debug', extra_monitor_socket: 'QMP is the shim\'s own', disable_nesting_checks: 'KVM capability is probed (kata-ctl check)',
    hotplug_vfio_on_root_bus: 'use hot_plug_vfio = "no-port" (root bus, pc) or "root-port" (q35)',
    disable_vhost_net: 'networking is a tap mirrored with tc',
    entropy_source: 'virtio-rng reads /dev/urandom', valid_entropy_sources: 'virtio-rng reads /dev/urandom', guest_hook_path: 'no OCI hooks in the guest',
    rx_rate_limiter_max_rate: 'no rate limiter', tx_rate_limiter_max_rate: 'no rate limiter', guest_memory_dump_path: 'no guest memory dumps',
    guest_memory_dump_paging: 'no guest memory dumps', enable_guest_swap: 'no guest swap', use_legacy_serial: 'the console is the serial port already',
    disable_selinux: 'no SELinux', disable_guest_selinux: 'no SELinux',
    shared_fs: 'kata-ts shares by virtio-fs only', rootfs_type: 'the guest image is EROFS',
  },
  'agent.kata': {
    enable_tracing: 'no tracing', kernel_modules: 'the guest kernel has no modules', cdh_api_timeout: 'no confidential data hub',
  },
  runtime: {
    internetworking_model: 'networking is the pod interface mirrored to a tap with tc (tcfilter)', disable_guest_seccomp: 'seccomp follows the container spec', enable_vcpus_pinning: 'no vCPU pinning',
    guest_selinux_label: 'no SELinux', enable_tracing: 'no tracing', jaeger_endpoint: 'no tracing', jaeger_user: 'no tracing', jaeger_password: 'no tracing',
    disable_new_netns: 'the pod netns comes from CNI', sandbox_cgroup_only: 'no sandbox cgroup management', static_sandbox_resource_mgmt: `${NO_HOTPLUG}: the VM has default_vcpus/default_memory (or the pod's annotations)`,
    sandbox_bind_mounts: 'no sandbox bind mounts', disable_guest_empty_dir: 'emptyDir volumes are host directories shared by virtio-fs',
    emptydir_mode: 'emptyDir volumes are host directories shared by virtio-fs', experimental: 'no experimental features', enable_pprof: 'no pprof',
    create_container_timeout: 'use [agent.kata] dial_timeout', dan_conf: 'no DAN', kubelet_root_dir: 'not needed', pod_resource_api_sock: 'not needed', agent_name: 'the agent is kata-ts\'s own',
  },
  factory: {
    template_template: 'kata-ts keeps one template, at template_path',
  },
  image: { service_offload: 'images are pulled by containerd', provision: 'images are pulled by containerd' },
};

/** Sections Kata has that kata-ts ignores as a whole (one warning). */
export const UNSUPPORTED_SECTIONS: Record<string, string> = {
  'hypervisor.clh': 'Cloud Hypervisor', 'hypervisor.firecracker': 'Firecracker', 'hypervisor.dragonball': 'Dragonball',
  'hypervisor.acrn': 'ACRN', 'hypervisor.stratovirt': 'StratoVirt', 'hypervisor.remote': 'remote hypervisors',
};

/** Keys that only select what we already do when they hold this value (no warning). */
export const NO_OP_VALUES: Record<string, unknown> = {
  'hypervisor.qemu.shared_fs': 'virtio-fs',
  'hypervisor.qemu.rootfs_type': 'erofs',
  'runtime.internetworking_model': 'tcfilter',
};

/** Levenshtein distance, for "did you mean". */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length]![b.length]!;
}

/** The closest candidate within a third of the name's length (at least 2 edits), or undefined. */
export function didYouMean(name: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestD = Math.max(2, Math.floor(name.length / 3)) + 1;
  for (const c of candidates) {
    const dd = distance(name, c);
    if (dd < bestD) { best = c; bestD = dd; }
  }
  return best;
}

export const HYPERVISOR_ANNOTATION_PREFIX = 'io.katacontainers.config.hypervisor.';

/** Annotations kata-ts applies (the suffix after HYPERVISOR_ANNOTATION_PREFIX). */
const APPLIED = ['default_vcpus', 'default_memory', 'kernel_params'] as const;

/**
 * The configuration a pod asks for: `cfg` with the pod's
 * io.katacontainers.config.hypervisor.* annotations applied to both
 * hypervisor sections. An annotation the section's enable_annotations does
 * not match is refused, as in Kata ("annotation ... is not enabled"); an
 * allowed one kata-ts does not implement is returned as a warning; a bad value
 * is refused. Other annotations are left to their readers.
 */
export function annotatedConfig(cfg: Config, annotations: Record<string, string> | undefined): { config: Config; warnings: string[] } {
  const warnings: string[] = [];
  const entries = Object.entries(annotations ?? {}).filter(([k]) => k.startsWith(HYPERVISOR_ANNOTATION_PREFIX));
  if (entries.length === 0) return { config: cfg, warnings };
  const out: Config = JSON.parse(JSON.stringify(cfg)) as Config;
  for (const sec of ['hypervisor.qemu', 'hypervisor.builtin'] as const) {
    const s = out[sec];
    const allowed = s.enable_annotations;
    for (const [key, value] of entries) {
      const name = key.slice(HYPERVISOR_ANNOTATION_PREFIX.length);
      const enabled = allowed.some((re) => {
        try { return new RegExp(re).test(name); } catch { return false; }
      });
      if (!enabled) {
        if (sec === 'hypervisor.qemu') throw new ConfigError('bad-value', `annotation ${key} is not enabled ([hypervisor.qemu] enable_annotations in ${cfg.source || 'the built-in configuration'})`);
        continue;
      }
      if (!(APPLIED as readonly string[]).includes(name)) {
        if (sec === 'hypervisor.qemu') warnings.push(`annotation ${key} is not supported by kata-ts; ignored`);
        continue;
      }
      if (name === 'kernel_params') {
        // Appended, as Kata does; the builtin VMM has no kernel_params setting.
        if ('kernel_params' in s) s.kernel_params = [s.kernel_params, value].filter((p) => p.trim() !== '').join(' ');
        continue;
      }
      if (!/^\d+$/.test(value)) throw new ConfigError('bad-value', `annotation ${key}: "${value}" is not a positive integer`);
      const n = Number(value);
      if (name === 'default_vcpus') {
        const max = Math.min(64, os.cpus().length || 64);
        if (n < 1 || n > max) throw new ConfigError('bad-value', `annotation ${key}: ${n} vCPUs, must be between 1 and ${max} (the host's CPUs, at most 64)`);
        s.default_vcpus = n;
      } else {
        if (n < 128 || n > 3584) throw new ConfigError('bad-value', `annotation ${key}: ${n} MiB, must be between 128 and 3584`);
        s.default_memory = n;
      }
    }
  }
  // A pod's own memory size moves the defaulted hotplug ceiling with it (config.ts).
  resolveDefaultMaxMemory(out);
  return { config: out, warnings };
}
