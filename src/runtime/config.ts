/**
 * kata-ts configuration: a TOML file shaped like Kata's configuration.toml.
 *
 *   [hypervisor.qemu]   QEMU path, machine, acceleration, guest kernel/image
 *   [hypervisor.builtin] the in-process VMM (own issue)
 *   [agent.kata]        agent dial timeout, debug console
 *   [runtime]           which hypervisor, run/cache dirs, logging
 *   [factory]           VM templates (src/factory)
 *   [image]             converted-image store, lazy fetch (src/image)
 *
 * Every key has a built-in default (SCHEMA), so no file is needed. The file
 * is found at --config, then $KATA_TS_CONFIG, then
 * /etc/kata-ts/configuration.toml (optional). Kata 3.2's key names are
 * accepted (src/runtime/config-kata.ts): its names for settings we implement
 * are aliases of ours, keys it knows and we do not implement are one warning
 * each (Config.warnings, logged by loadConfig). Unknown sections/keys (with a
 * "did you mean") and values of the wrong type or range are errors naming the
 * file and line.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseToml, TomlError, type TomlTable, type TomlValue } from '../common/toml';
import { KataError } from '../common/errors';
import { logger } from '../common/log';
import { ALIASES, KATA_VALUES, NO_OP_VALUES, UNSUPPORTED, UNSUPPORTED_SECTIONS, didYouMean } from './config-kata';

export class ConfigError extends KataError<'syntax' | 'unknown-key' | 'bad-value' | 'unreadable'> {}

type Kind = 'string' | 'int' | 'bool' | 'string[]';
interface KeySpec<T> {
  kind: Kind;
  default: T;
  describe: string;
  /** Returns an error text when the value is not acceptable. */
  check?: (v: T) => string | undefined;
}

const oneOf = (...allowed: string[]) => (v: string) => (allowed.includes(v) ? undefined : `must be one of ${allowed.map((a) => `"${a}"`).join(', ')}`);
const range = (lo: number, hi: number) => (v: number) => (v >= lo && v <= hi ? undefined : `must be between ${lo} and ${hi}`);
const absOrEmpty = (v: string) => (v === '' || path.isAbsolute(v) ? undefined : 'must be an absolute path');
const validRegexes = (v: string[]) => {
  for (const re of v) {
    try { new RegExp(re); } catch { return `holds an invalid regular expression ${JSON.stringify(re)}`; }
  }
  return undefined;
};
/** QEMU -machine properties after machine_type,accel=…: "opt=value,opt,…" (not accel, which kata-ts sets). */
const machineProps = (v: string) => (v === '' || (/^[A-Za-z0-9_.-]+(=[A-Za-z0-9_.:-]+)?(,[A-Za-z0-9_.-]+(=[A-Za-z0-9_.:-]+)?)*$/.test(v) && !/(^|,)accel=/.test(v)) ? undefined : 'must be comma-separated QEMU machine properties (name or name=value), without accel=');

export const DEFAULT_CACHE_DIR = '/var/cache/kata-ts';

export const SCHEMA = {
  'hypervisor.qemu': {
    path: { kind: 'string', default: '/usr/bin/qemu-system-x86_64', describe: 'QEMU binary', check: absOrEmpty } as KeySpec<string>,
    kernel: { kind: 'string', default: '', describe: 'guest kernel (default: the set-up build, <cache>/kernel/vmlinux)', check: absOrEmpty } as KeySpec<string>,
    image: { kind: 'string', default: '', describe: 'guest root image, EROFS (default: <cache>/image/rootfs.erofs)', check: absOrEmpty } as KeySpec<string>,
    machine_type: { kind: 'string', default: 'pc', describe: 'QEMU machine: pc (PCI with ACPI hotplug on the root bus), q35 or microvm (virtio-mmio; neither hotplugs disks here)', check: oneOf('pc', 'q35', 'microvm') } as KeySpec<string>,
    accel: { kind: 'string', default: 'auto', describe: 'acceleration: auto (KVM only where it runs guests in hardware), kvm, tcg', check: oneOf('auto', 'kvm', 'tcg') } as KeySpec<string>,
    default_vcpus: { kind: 'int', default: 1, describe: 'vCPUs per sandbox', check: range(1, 64) } as KeySpec<number>,
    default_memory: { kind: 'int', default: 512, describe: 'guest memory in MiB', check: range(128, 3584) } as KeySpec<number>,
    kernel_params: { kind: 'string', default: '', describe: 'extra guest kernel command line' } as KeySpec<string>,
    block_device_driver: { kind: 'string', default: 'vhost-user-blk', describe: 'container disks: vhost-user-blk (our virtio-blk device over vhost-user) or virtio-blk (QEMU\'s own)', check: oneOf('vhost-user-blk', 'virtio-blk') } as KeySpec<string>,
    root_block_driver: { kind: 'string', default: 'virtio-blk', describe: 'the guest root image: virtio-blk (QEMU\'s own) or vhost-user-blk (ours); Kata\'s name vm_rootfs_driver (virtio-blk-pci, virtio-blk-mmio) is an alias', check: oneOf('vhost-user-blk', 'virtio-blk') } as KeySpec<string>,
    machine_accelerators: { kind: 'string', default: '', describe: 'extra QEMU -machine properties, as in Kata (e.g. "nosmm,nosata"); accel stays ours', check: machineProps } as KeySpec<string>,
    enable_annotations: { kind: 'string[]', default: [], describe: 'pod annotations io.katacontainers.config.hypervisor.<name> allowed to override this section: regular expressions matched against <name>, as in Kata (kata-ts applies default_vcpus, default_memory, kernel_params)', check: validRegexes } as KeySpec<string[]>,
    // Memory density (issue 13; src/hypervisor/memory-plan.ts, README "Memory density").
    disable_image_nvdimm: { kind: 'bool', default: false, describe: 'as Kata (same default): false puts the guest image on an NVDIMM mounted with DAX (rootfs-dax.erofs beside the image; pc/q35 only); true keeps the virtio-blk root disk. Left unset, it is true with machine_type = "microvm", an explicit root_block_driver or memory_hotplug = "dimm", or an explicit image without rootfs-dax.erofs beside it', } as KeySpec<boolean>,
    reclaim_guest_freed_memory: { kind: 'bool', default: true, describe: 'as Kata: a virtio-balloon with free page reporting (pages the guest frees go back to the host) and deflate-on-oom; kata-ctl balloon reads/sets it' } as KeySpec<boolean>,
    default_maxmemory: { kind: 'int', default: 2048, describe: 'as Kata: memory hotplug ceiling in MiB (0: no hotplug room). Left unset, it is 0 with machine_type = "microvm" and no room when default_memory reaches it', check: range(0, 3584) } as KeySpec<number>,
    memory_slots: { kind: 'int', default: 10, describe: 'as Kata: DIMM slots for memory hotplug (used when default_maxmemory > default_memory and memory_hotplug = "dimm")', check: range(1, 64) } as KeySpec<number>,
    memory_hotplug: { kind: 'string', default: 'virtio-mem', describe: 'how the VM grows for containers\' memory limits: virtio-mem (one device of default_maxmemory - default_memory; grows and shrinks, the host gets unplugged memory back; Kata: enable_virtio_mem) or dimm (pc-dimm hotplug, growth only, the balloon returns memory)', check: oneOf('virtio-mem', 'dimm') } as KeySpec<string>,
    default_maxvcpus: { kind: 'int', default: 0, describe: 'as Kata: vCPU hotplug ceiling (0: the boot count)', check: range(0, 64) } as KeySpec<number>,
    // VFIO (issue 14; src/runtime/hypervisor-choice.ts, src/hypervisor/pci-slots.ts): Kata's keys and values. no-port: the root bus (pc);
    // root-port: each device behind its own pcie-root-port (q35, pcie_root_port > 0); bridge-port: a pci-bridge (pc); switch-port is refused (not implemented).
    pcie_root_port: { kind: 'int', default: 0, describe: 'as Kata: pcie-root-port devices created at boot (q35 only), each holding one VFIO device in root-port mode', check: range(0, 16) } as KeySpec<number>,
    hot_plug_vfio: { kind: 'string', default: 'no-port', describe: 'as Kata: VFIO devices of a container\'s linux.devices (/dev/vfio/<group>) are hotplugged when the container is created: no-port on the root bus (pc), bridge-port behind a pci-bridge (pc), root-port on a free PCIe root port (q35, pcie_root_port > 0); switch-port is not supported', check: oneOf('no-port', 'bridge-port', 'root-port', 'switch-port') } as KeySpec<string>,
    cold_plug_vfio: { kind: 'string', default: 'no-port', describe: 'as Kata: anything but no-port cold-plugs the /dev/vfio/<group> devices of the sandbox\'s first container on QEMU\'s command line; root-port puts each behind its own PCIe root port (q35; pcie_root_port must cover them), bridge-port behind a pci-bridge (pc); switch-port is not supported; cannot be set together with hot_plug_vfio', check: oneOf('no-port', 'bridge-port', 'root-port', 'switch-port') } as KeySpec<string>,
    tcg_translation_cache: { kind: 'int', default: 0, describe: 'MiB of QEMU\'s TCG translation cache (tb-size; 0: QEMU\'s default, 1 GiB reserved and filled as the guest runs); smaller saves host memory per VM and costs guest speed', check: range(0, 4096) } as KeySpec<number>,
  },
  memory: {
    ksm_throttler: { kind: 'bool', default: false, describe: 'drive host KSM like Kata\'s ksm-throttler: aggressive while sandboxes start, backing off when idle (needs /sys/kernel/mm/ksm)' } as KeySpec<boolean>,
    page_scanner: { kind: 'bool', default: false, describe: 'run the WASM page scanner over each sandbox\'s guest RAM (zero/duplicate pages, kata-ctl metrics)' } as KeySpec<boolean>,
    scan_rate_mib: { kind: 'int', default: 256, describe: 'guest RAM the page scanner reads per second, MiB (bounds its CPU cost)', check: range(1, 65536) } as KeySpec<number>,
    scan_interval: { kind: 'int', default: 60, describe: 'seconds between page scanner passes', check: range(1, 86400) } as KeySpec<number>,
  },
  'hypervisor.builtin': {
    kernel: { kind: 'string', default: '', describe: 'guest kernel for the builtin VMM', check: absOrEmpty } as KeySpec<string>,
    image: { kind: 'string', default: '', describe: 'guest root image for the builtin VMM', check: absOrEmpty } as KeySpec<string>,
    default_vcpus: { kind: 'int', default: 1, describe: 'vCPUs per sandbox', check: range(1, 64) } as KeySpec<number>,
    default_memory: { kind: 'int', default: 512, describe: 'guest memory in MiB', check: range(128, 3584) } as KeySpec<number>,
    allow_emulated_kvm: { kind: 'bool', default: false, describe: 'run even where KVM only emulates guests (PVM hosts): very slow' } as KeySpec<boolean>,
    net_tap: { kind: 'string', default: '', describe: 'tap interface (name or pattern like kts%d) for a virtio-net device; empty: no network device' } as KeySpec<string>,
    reclaim_guest_freed_memory: { kind: 'bool', default: false, describe: 'as [hypervisor.qemu]: a virtio-balloon with free page reporting on virtio-mmio (src/virtio/balloon); kata-ctl balloon reads/sets it' } as KeySpec<boolean>,
    enable_annotations: { kind: 'string[]', default: [], describe: 'as in [hypervisor.qemu], for the builtin VMM', check: validRegexes } as KeySpec<string[]>,
  },
  'agent.kata': {
    dial_timeout: { kind: 'int', default: 90, describe: 'seconds to wait for the guest agent after boot', check: range(1, 3600) } as KeySpec<number>,
    enable_debug: { kind: 'bool', default: false, describe: 'agent debug logging' } as KeySpec<boolean>,
    debug_console_enabled: { kind: 'bool', default: false, describe: 'allow kata-ctl exec (a shell in the guest VM)' } as KeySpec<boolean>,
    policy_file: { kind: 'string', default: '', describe: 'agent policy (JSON, README "Agent policy") every sandbox gets unless given another (kata-ts run --policy, the pod annotation io.katacontainers.config.agent.policy); empty: none', check: absOrEmpty } as KeySpec<string>,
  },
  factory: {
    enable_template: { kind: 'bool', default: false, describe: 'start sandboxes by cloning a VM template (kata-ctl factory init) instead of booting; QEMU, pc machine only; a missing or stale template means a cold boot and one warning' } as KeySpec<boolean>,
    template_path: { kind: 'string', default: '/run/kata-ts/template', describe: 'where the VM template lives (kata-ctl factory init mounts a tmpfs there)', check: (v: string) => (path.isAbsolute(v) ? undefined : 'must be an absolute path') } as KeySpec<string>,
    // The pre-started VM cache (src/factory/vm-cache*.ts, README "VM templates (QEMU factory)").
    vm_cache_number: { kind: 'int', default: 0, describe: 'as Kata: pre-started VMs (clones of the template, each held by a waiting shim) that the shim claims instead of cloning; kata-ctl factory init fills the cache, every claim starts a replacement; needs enable_template', check: range(0, 64) } as KeySpec<number>,
    vm_cache_warm_container: { kind: 'bool', default: true, describe: 'a cached VM runs the container start path once (a throwaway /bin/true container from the guest\'s own root, removed again) before it is ready, so the claimed pod\'s crun finds it translated in that live QEMU; not with an agent policy pinned (the agent serves only Check before CreateSandbox then)' } as KeySpec<boolean>,
    vm_cache_endpoint: { kind: 'string', default: '', describe: 'where cached VMs register (a directory, one unix socket per ready VM; Kata\'s key, a socket there); empty: <run_dir>/vm-cache', check: absOrEmpty } as KeySpec<string>,
  },
  image: {
    store_dir: { kind: 'string', default: '/var/lib/kata-ts/images', describe: 'converted-image store (kata-ts image convert, kata-ts run --image, kata-ctl image): EROFS metadata, chunk tables, content-addressed blobs', check: absOrEmpty } as KeySpec<string>,
    registry_url: { kind: 'string', default: '', describe: 'lazy source for chunks not in the store: an OCI-distribution-like server (http[s]://host:port) answering range GETs of /v2/<registry_name>/blobs/sha256:<hex>; empty: every blob must be local', check: (v: string) => (v === '' || /^https?:\/\/[^/]/.test(v) ? undefined : 'must be empty or an http(s) URL') } as KeySpec<string>,
    registry_name: { kind: 'string', default: '', describe: 'repository name the lazy source fetches blobs under (/v2/<name>/blobs/…)' } as KeySpec<string>,
    fetch_timeout: { kind: 'int', default: 10, describe: 'seconds a lazy range fetch may go without a byte before it is retried (3 tries in all), then the guest read fails with EIO', check: range(1, 600) } as KeySpec<number>,
    chunk_cache_mib: { kind: 'int', default: 64, describe: 'verified, decoded chunks kept in memory per image device', check: range(0, 4096) } as KeySpec<number>,
    containerd_images: { kind: 'bool', default: false, describe: 'the shim runs CRI containers from converted images (keyed by the io.kubernetes.cri.image-name annotation; converted from containerd\'s content store on first use) instead of sharing containerd\'s snapshot; the io.kata-ts.image annotation asks for it per container either way' } as KeySpec<boolean>,
    containerd_content_dir: { kind: 'string', default: '', describe: 'containerd\'s content store for conversions by the shim (default /var/lib/containerd/io.containerd.content.v1.content)', check: absOrEmpty } as KeySpec<string>,
  },
  runtime: {
    hypervisor: { kind: 'string', default: 'auto', describe: 'auto, qemu or builtin; Kata\'s name hypervisor_name is an alias', check: oneOf('auto', 'qemu', 'builtin') } as KeySpec<string>,
    enable_debug: { kind: 'bool', default: false, describe: 'debug logging' } as KeySpec<boolean>,
    run_dir: { kind: 'string', default: '/run/kata-ts', describe: 'sandbox state directory', check: absOrEmpty } as KeySpec<string>,
    cache_dir: { kind: 'string', default: DEFAULT_CACHE_DIR, describe: 'guest kernel/image cache', check: absOrEmpty } as KeySpec<string>,
    stop_timeout: { kind: 'int', default: 10, describe: 'seconds a container gets after SIGTERM before SIGKILL on teardown', check: range(0, 600) } as KeySpec<number>,
    vfio_mode: { kind: 'string', default: 'guest-kernel', describe: 'VFIO devices (linux.devices /dev/vfio/<group>) in the guest, as Kata: guest-kernel (left to the guest\'s driver; the container sees it in sysfs only) or vfio (bound to the guest\'s vfio-pci in no-IOMMU mode; the container gets /dev/vfio/noiommu-N and /dev/vfio/vfio)', check: oneOf('guest-kernel', 'vfio') } as KeySpec<string>,
    use_passfd_io: { kind: 'bool', default: false, describe: 'as Kata runtime-rs: container stdio (no terminal) on vsock streams of its own that the agent gives to the process as its stdin/stdout/stderr (no agent copy; README Performance); off by default as in Kata: with a socket as stdout, reopening /dev/stdout in the container fails (ENXIO)' } as KeySpec<boolean>,
    passfd_listener_port: { kind: 'int', default: 1027, describe: 'as Kata runtime-rs: the guest vsock port of the agent\'s passfd listener (agent.passfd_listener_port on the kernel command line), with use_passfd_io', check: (v: number) => (v === 1024 ? 'must not be the agent\'s API port 1024' : range(1, 0xfffffffe)(v)) } as KeySpec<number>,
    rootfs_share: { kind: 'string', default: 'virtiofs', describe: 'how the shim gives containerd\'s container roots to the guest: virtiofs (the snapshot shared as it is; writes land in it, as under runc) or erofs (an image of it + a guest tmpfs overlay)', check: oneOf('virtiofs', 'erofs') } as KeySpec<string>,
  },
} as const;

type Section = keyof typeof SCHEMA;
type ValueOf<S> = S extends KeySpec<infer T> ? T : never;
export type Config = { -readonly [S in Section]: { -readonly [K in keyof (typeof SCHEMA)[S]]: ValueOf<(typeof SCHEMA)[S][K]> } } & {
  /** The file the values came from, or "" for built-in defaults only. */
  source: string;
  /** "file:line: …" for each Kata key kata-ts knows and does not implement. */
  warnings: string[];
  /** "section.key" of every key the file set (an alias counts as its key): defaults may yield to them, never the reverse. */
  explicit: string[];
  /** Why a default was adjusted to the file's explicit keys (logged at info by loadConfig; never an error). */
  notes: string[];
};

export function defaultConfig(): Config {
  const out: Record<string, unknown> = { source: '', warnings: [], explicit: [], notes: [] };
  for (const [sec, keys] of Object.entries(SCHEMA)) {
    const o: Record<string, unknown> = {};
    for (const [k, spec] of Object.entries(keys)) o[k] = Array.isArray(spec.default) ? [...spec.default] : spec.default;
    out[sec] = o;
  }
  return out as Config;
}

function typeOk(kind: Kind, v: TomlValue): boolean {
  switch (kind) {
    case 'string': return typeof v === 'string';
    case 'int': return typeof v === 'number' && Number.isInteger(v);
    case 'bool': return typeof v === 'boolean';
    case 'string[]': return Array.isArray(v) && v.every((x) => typeof x === 'string');
  }
}

/** Parse configuration text; `file` is used in error messages. */
export function parseConfig(text: string, file: string): Config {
  let parsed;
  try {
    parsed = parseToml(text);
  } catch (err) {
    if (err instanceof TomlError) throw new ConfigError('syntax', `${file}:${err.line}: ${err.message.replace(/^line \d+: /, '')}`);
    throw err;
  }
  const cfg = defaultConfig();
  cfg.source = file;
  const { value, lines } = parsed;
  const where = (key: string) => `${file}:${lines.get(key) ?? 1}`;
  const store = cfg as unknown as Record<string, Record<string, unknown>>;
  const sections = [...Object.keys(SCHEMA), ...Object.keys(UNSUPPORTED).filter((s) => !(s in SCHEMA)), ...Object.keys(UNSUPPORTED_SECTIONS)];
  const kindText = (k: Kind) => (k === 'int' ? 'an integer' : k === 'bool' ? 'true or false' : k === 'string[]' ? 'an array of strings' : `a ${k}`);
  const readSection = (name: string, table: TomlTable): void => {
    const keys = (SCHEMA as Record<string, Record<string, KeySpec<unknown>>>)[name] ?? {};
    const aliases = ALIASES[name] ?? {};
    const unsupported = UNSUPPORTED[name] ?? {};
    /** our key → the name it was set by (Kata's alias and ours both given is an error). */
    const setBy = new Map<string, string>();
    for (const [kk, vv] of Object.entries(table)) {
      const full = `${name}.${kk}`;
      const ours = keys[kk] ? kk : aliases[kk];
      if (ours) {
        const spec = keys[ours]!;
        const prev = setBy.get(ours);
        if (prev) throw new ConfigError('bad-value', `${where(full)}: [${name}] ${kk} and ${prev} (line ${lines.get(`${name}.${prev}`) ?? '?'}) are the same setting; give one`);
        setBy.set(ours, kk);
        if (!typeOk(spec.kind, vv)) throw new ConfigError('bad-value', `${where(full)}: ${full} must be ${kindText(spec.kind)}`);
        let v: unknown = vv;
        const kata = KATA_VALUES[name]?.[ours];
        if (typeof vv === 'string' && kata && vv in kata) {
          const mapped = kata[vv];
          if (mapped === null) {
            cfg.warnings.push(`${where(full)}: [${name}] ${kk} = "${vv}" is not supported by kata-ts; using "${String(spec.default)}"`);
            continue;
          }
          v = mapped;
        }
        const msg = spec.check?.(v);
        if (msg) throw new ConfigError('bad-value', `${where(full)}: ${full} ${msg} (got ${JSON.stringify(vv)})`);
        store[name]![ours] = v;
        cfg.explicit.push(`${name}.${ours}`);
      } else if (kk in unsupported) {
        if (full in NO_OP_VALUES && NO_OP_VALUES[full] === vv) continue;
        cfg.warnings.push(`${where(full)}: [${name}] ${kk} is not supported by kata-ts (${unsupported[kk]}); ignored`);
      } else {
        const hint = didYouMean(kk, [...Object.keys(keys), ...Object.keys(aliases), ...Object.keys(unsupported)]);
        throw new ConfigError('unknown-key', `${where(full)}: unknown key "${kk}" in [${name}]${hint ? `; did you mean "${hint}"?` : ''} (known: ${[...Object.keys(keys), ...Object.keys(aliases)].join(', ')})`);
      }
    }
  };
  const visit = (table: TomlTable, prefix: string): void => {
    for (const [k, v] of Object.entries(table)) {
      const name = prefix ? `${prefix}.${k}` : k;
      const isTable = typeof v === 'object' && !Array.isArray(v);
      if (name in UNSUPPORTED_SECTIONS) {
        cfg.warnings.push(`${where(name)}: [${name}] is not supported by kata-ts (${UNSUPPORTED_SECTIONS[name]} is not implemented); section ignored`);
      } else if (name in SCHEMA || name in UNSUPPORTED) {
        if (!isTable) throw new ConfigError('bad-value', `${where(name)}: [${name}] must be a table`);
        readSection(name, v);
      } else if (isTable && sections.some((s) => s.startsWith(name + '.'))) {
        visit(v, name);
      } else {
        const hint = didYouMean(name, sections);
        throw new ConfigError('unknown-key', `${where(name)}: unknown ${isTable ? 'section' : 'key'} "${name}"${hint ? `; did you mean [${hint}]?` : ''} (sections: ${Object.keys(SCHEMA).map((s) => `[${s}]`).join(', ')})`);
      }
    }
  };
  visit(value, '');
  applyDensityDefaults(cfg);
  if (cfg.explicit.includes('hypervisor.qemu.disable_image_nvdimm') && !q0(cfg).disable_image_nvdimm && q0(cfg).machine_type === 'microvm') {
    throw new ConfigError('bad-value', `${where('hypervisor.qemu.disable_image_nvdimm')}: [hypervisor.qemu] disable_image_nvdimm = false needs machine_type = "pc" or "q35" (the microvm machine has no NVDIMM, ACPI NFIT)`);
  }
  // As Kata's checkPCIeConfig: VFIO devices are either hot- or cold-plugged.
  const q = cfg['hypervisor.qemu'];
  if (q.hot_plug_vfio !== 'no-port' && q.cold_plug_vfio !== 'no-port') {
    throw new ConfigError('bad-value', `${where('hypervisor.qemu.cold_plug_vfio')}: [hypervisor.qemu] hot_plug_vfio = "${q.hot_plug_vfio}" and cold_plug_vfio = "${q.cold_plug_vfio}": only one of them can be set`);
  }
  // Root ports are PCI Express (q35 only); root-port mode needs ports; bridge-port is a pci-bridge on pc; switch-port is not built.
  if (q.pcie_root_port > 0 && q.machine_type !== 'q35') {
    throw new ConfigError('bad-value', `${where('hypervisor.qemu.pcie_root_port')}: [hypervisor.qemu] pcie_root_port = ${q.pcie_root_port} needs machine_type = "q35" (the ${q.machine_type} machine has no PCI Express root complex)`);
  }
  // As Kata: cached VMs are clones of the template (kata-ts does not pre-start cold-booted VMs).
  if (cfg.factory.vm_cache_number > 0 && !cfg.factory.enable_template) {
    throw new ConfigError('bad-value', `${where('factory.vm_cache_number')}: [factory] vm_cache_number = ${cfg.factory.vm_cache_number} needs enable_template = true (cached VMs are clones of the VM template)`);
  }
  for (const key of ['hot_plug_vfio', 'cold_plug_vfio'] as const) {
    const v = q[key];
    if (v === 'switch-port') throw new ConfigError('bad-value', `${where(`hypervisor.qemu.${key}`)}: [hypervisor.qemu] ${key} = "switch-port" is not supported by kata-ts (use "root-port" on q35, "bridge-port" or "no-port" on pc)`);
    if (v === 'bridge-port' && q.machine_type !== 'pc') throw new ConfigError('bad-value', `${where(`hypervisor.qemu.${key}`)}: [hypervisor.qemu] ${key} = "bridge-port" needs machine_type = "pc" (a pci-bridge on its root bus; on q35 use "root-port")`);
    if (v === 'root-port' && (q.machine_type !== 'q35' || q.pcie_root_port === 0)) {
      throw new ConfigError('bad-value', `${where(`hypervisor.qemu.${key}`)}: [hypervisor.qemu] ${key} = "root-port" needs machine_type = "q35" and pcie_root_port > 0 (got ${q.machine_type}, ${q.pcie_root_port} ports)`);
    }
  }
  return cfg;
}

/**
 * The memory-density defaults (DAX image, balloon, virtio-mem room) yield to
 * what the file sets explicitly, so a configuration that was valid before
 * they became defaults never turns into an error: a default that conflicts
 * is adjusted, with a note saying why. Explicit settings that conflict stay
 * errors (memory-plan.ts).
 */
const q0 = (cfg: Config) => cfg['hypervisor.qemu'];

export function applyDensityDefaults(cfg: Config): void {
  const q = cfg['hypervisor.qemu'];
  const set = (k: string) => (cfg.explicit ?? []).includes(`hypervisor.qemu.${k}`);
  const note = (m: string) => (cfg.notes ??= []).push(`[hypervisor.qemu] ${m}`);
  if (!set('disable_image_nvdimm') && !q.disable_image_nvdimm) {
    const daxBeside = q.image ? path.join(path.dirname(q.image), 'rootfs-dax.erofs') : '';
    if (q.machine_type === 'microvm') {
      q.disable_image_nvdimm = true;
      note('disable_image_nvdimm = true: the microvm machine has no NVDIMM (ACPI NFIT), so the guest image stays a virtio-blk root disk');
    } else if (set('root_block_driver')) {
      q.disable_image_nvdimm = true;
      note(`disable_image_nvdimm = true: root_block_driver = "${q.root_block_driver}" is set, so the guest image stays a root disk (set disable_image_nvdimm = false for DAX)`);
    } else if (set('memory_hotplug') && q.memory_hotplug === 'dimm') {
      // DIMMs hotplugged behind the NVDIMM must start on a 128 MiB boundary (memory-plan.ts); the old root disk has no such limit.
      q.disable_image_nvdimm = true;
      note('disable_image_nvdimm = true: memory_hotplug = "dimm" is set, so the guest image stays a root disk (set disable_image_nvdimm = false for DAX)');
    } else if (daxBeside && set('image') && !fs.existsSync(daxBeside)) {
      q.disable_image_nvdimm = true;
      note(`disable_image_nvdimm = true: no ${daxBeside} beside the configured image, so it stays a virtio-blk root disk`);
    }
  }
  if (!set('default_maxmemory')) resolveDefaultMaxMemory(cfg);
}

/**
 * default_maxmemory left unset: 0 on microvm (no memory device area for
 * virtio-mem); else no room when default_memory (the file's or a pod
 * annotation's) reaches it, and the room rounded down to whole virtio-mem
 * blocks (2 MiB) so an odd default_memory is not an error.
 */
export function resolveDefaultMaxMemory(cfg: Config): void {
  const q = cfg['hypervisor.qemu'];
  if ((cfg.explicit ?? []).includes('hypervisor.qemu.default_maxmemory')) return;
  if (q.machine_type === 'microvm') {
    q.default_maxmemory = 0;
    (cfg.notes ??= []).push('[hypervisor.qemu] default_maxmemory = 0: the microvm machine has no memory device area for virtio-mem (containers\' limits do not grow the VM)');
    return;
  }
  const want = SCHEMA['hypervisor.qemu'].default_maxmemory.default;
  if (q.default_memory >= want) {
    q.default_maxmemory = 0;
    return;
  }
  q.default_maxmemory = q.default_memory + Math.floor((want - q.default_memory) / 2) * 2;
}

export const SYSTEM_CONFIG = '/etc/kata-ts/configuration.toml';

/** The configuration file in effect: explicit, $KATA_TS_CONFIG, the system file, or none. */
export function findConfigFile(explicit?: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (explicit) return explicit;
  if (env.KATA_TS_CONFIG) return env.KATA_TS_CONFIG;
  return fs.existsSync(SYSTEM_CONFIG) ? SYSTEM_CONFIG : undefined;
}

export function loadConfig(explicit?: string, env: NodeJS.ProcessEnv = process.env): Config {
  const file = findConfigFile(explicit, env);
  if (!file) return defaultConfig();
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError('unreadable', `cannot read configuration ${file}: ${(err as Error).message}`, { cause: err });
  }
  const cfg = parseConfig(text, file);
  // A warning never stops a sandbox: logged once per process that loads the file.
  for (const w of cfg.warnings) logger('config').warn(w);
  for (const n of cfg.notes) logger('config').info(n);
  return cfg;
}

/** Guest kernel and image paths, defaults resolved against the cache. */
/** vCPUs and memory (MiB) of a sandbox: default_vcpus/default_memory of the section of the hypervisor that runs it. */
export function vmSizing(cfg: Config, which: 'qemu' | 'builtin'): { vcpus: number; memoryMiB: number } {
  const sec = which === 'qemu' ? cfg['hypervisor.qemu'] : cfg['hypervisor.builtin'];
  return { vcpus: sec.default_vcpus, memoryMiB: sec.default_memory };
}

export function guestAssets(cfg: Config, which: 'qemu' | 'builtin'): { kernel: string; image: string } {
  const sec = which === 'qemu' ? cfg['hypervisor.qemu'] : cfg['hypervisor.builtin'];
  const cache = cfg.runtime.cache_dir;
  return {
    kernel: sec.kernel || path.join(cache, 'kernel', 'vmlinux'),
    image: sec.image || path.join(cache, 'image', 'rootfs.erofs'),
  };
}
