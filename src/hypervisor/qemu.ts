/**
 * QEMU hypervisor: QEMU runs as a child process of the runtime/shim, driven
 * over QMP (qmp.sock) and stopped with `quit`, then SIGTERM, then SIGKILL.
 *
 * Machine: `pc` by default (virtio-*-pci, ACPI hotplug on the root bus so
 * container disks can be added to a running sandbox), `q35`, or `microvm`
 * (virtio-mmio, boot-time disks only). The guest kernel boots directly
 * through its PVH entry (-kernel vmlinux); the root filesystem is the EROFS
 * guest image on the first virtio-blk disk. The agent channel is vsock:
 * our own vsock device (src/virtio/vsock) served to QEMU's
 * vhost-user-vsock-pci by our vhost-user backend inside this process
 * (src/vhost-user), exposed on the host as a hybrid vsock socket
 * (vsock.sock). vhost-user needs the guest RAM shareable, so RAM is a
 * memory-backend-memfd (share=on) bound through a NUMA node. Host
 * directories shared with the guest (container rootfs by default) are our
 * virtio-fs device (src/virtio/fs) behind vhost-user-fs-pci, one backend per
 * share, also served in this process.
 *
 * Disks (the guest root image and container EROFS images) are served one of
 * two ways, chosen by `blockDriver` / `rootBlockDriver`:
 *   vhost-user-blk  our virtio-blk device (src/virtio/blk, virtio 1.2 §5.2)
 *                   behind vhost-user-blk-pci; the serial the agent finds a
 *                   disk by comes from our VIRTIO_BLK_T_GET_ID answer.
 *   virtio-blk      QEMU's own virtio-blk-pci on a -drive/blockdev node.
 * Hotplug (the `pc` machine's ACPI PCI hotplug) works for both: QMP
 * chardev-add + device_add vhost-user-blk-pci, or blockdev-add + device_add
 * virtio-blk-pci; removal waits for DEVICE_DELETED before letting go of the
 * backend. virtio-fs shares can be hotplugged the same way (addShare), so
 * containers added to a running sandbox get their rootfs shared too.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { KataError } from '../common/errors';
import { logger, type Logger } from '../common/log';
import { baseKernelParams, type DiskDevice, type Hypervisor, type NetDevice, type VmConfig, type VmInfo } from './hypervisor';
import { QmpClient } from './qmp';
import { VhostUserBackend } from '../vhost-user/backend';
import { HybridVsock } from '../virtio/vsock/hybrid';
import { VhostUserDevices, BLK_QUEUE_SIZE, FS_QUEUE_SIZE, type ServedDevice } from './vhost-user-devices';
import type { FsShare } from './hypervisor';
import { qemuMemoryPlan, type QemuMemoryOptions } from './memory-plan';
import { PciSlotAllocator, FIRST_DYNAMIC_SLOT, LAST_SLOT, slotAddr, pciPath, rootPortPciPath, bridgedPciPath, RootPortPool, type RootPort, type VfioPortType } from './pci-slots';
import { preflightVfioSource, vfioDeviceAdd, vfioDeviceArg } from './vfio-host';

export class QemuError extends KataError<'spawn' | 'exited' | 'qmp' | 'config'> {}

/** Who serves a disk: our device over vhost-user, or QEMU's own virtio-blk. */
export type BlockDriver = 'vhost-user-blk' | 'virtio-blk';

export interface QemuOptions {
  binary: string;
  machine: 'pc' | 'q35' | 'microvm';
  accel: 'kvm' | 'tcg';
  /** Container disks (default vhost-user-blk). */
  blockDriver?: BlockDriver;
  /** The guest root image (default virtio-blk; see README "Performance" for why). */
  rootBlockDriver?: BlockDriver;
  /** Extra -machine properties (Kata's machine_accelerators, e.g. "nosmm"); accel is ours. */
  machineAccelerators?: string;
  /** Memory density (issue 13): DAX image on an NVDIMM, balloon, hotplug room (src/hypervisor/memory-plan.ts). */
  memory?: QemuMemoryOptions;
  /** q35 only: pcie-root-port devices created at boot (Kata's pcie_root_port), for VFIO devices in root-port mode. */
  pcieRootPorts?: number;
  /** Kata's hot_plug_vfio: 'root-port' hotplugs VFIO devices onto free root ports (q35); 'no-port' onto the root bus (pc). */
  hotPlugVfio?: VfioPortType;
  /** Kata's cold_plug_vfio: 'root-port' puts each boot VFIO device behind its own root port (q35); else the root bus. */
  coldPlugVfio?: VfioPortType;
}

/** QEMU id of the pc machine's pci-bridge for VFIO devices in bridge-port mode. */
export const VFIO_BRIDGE = 'pcibr0';
/** Device slots behind that bridge (Kata's bridges also leave slot 0 alone). */
const BRIDGE_FIRST_SLOT = 1;

/** Root ports per VM at most: each takes a pcie.0 slot from the dynamic range. */
export const MAX_ROOT_PORTS = 16;

/** The last root-bus slot we hand out: q35 keeps 0x1f for its ICH9 functions (LPC, SATA, SMBus). */
function lastSlot(machine: QemuOptions['machine']): number {
  return machine === 'q35' ? LAST_SLOT - 1 : LAST_SLOT;
}

/**
 * The VFIO port settings QEMU can honour, or one QemuError: root ports exist
 * on q35 only (pc and microvm have no PCIe); root-port mode needs ports;
 * bridge-port is one pci-bridge on the pc machine's root bus (q35's
 * pcie-pci-bridge is not implemented); switch-port (a PCIe switch under a
 * root port) is not implemented: silently using the root bus instead would
 * claim a topology the guest does not get.
 */
export function checkVfioPorts(machine: QemuOptions['machine'], ports: number, hot: VfioPortType, cold: VfioPortType): void {
  if (!Number.isInteger(ports) || ports < 0 || ports > MAX_ROOT_PORTS) throw new QemuError('config', `pcie_root_port = ${ports}: must be 0..${MAX_ROOT_PORTS}`);
  if (ports > 0 && machine !== 'q35') throw new QemuError('config', `pcie_root_port = ${ports} needs machine_type = "q35": the ${machine} machine has no PCI Express root complex`);
  for (const [key, v] of [['hot_plug_vfio', hot], ['cold_plug_vfio', cold]] as const) {
    if (v === 'switch-port') throw new QemuError('config', `${key} = "switch-port" is not supported by kata-ts (only "no-port", "bridge-port" on pc and "root-port" on q35)`);
    if (v === 'bridge-port' && machine !== 'pc') throw new QemuError('config', `${key} = "bridge-port" needs machine_type = "pc" (a pci-bridge on its root bus; on q35 use "root-port")`);
    if (v === 'root-port' && machine !== 'q35') throw new QemuError('config', `${key} = "root-port" needs machine_type = "q35" (root ports are PCI Express)`);
    if (v === 'root-port' && ports === 0) throw new QemuError('config', `${key} = "root-port" needs pcie_root_port > 0 (the ports are created at boot)`);
  }
}

/**
 * Fixed PCI slots: root disk 3, vsock 4, rng 5; boot-time devices (shares,
 * disks, then whatever else the boot plan places) and hotplugged devices
 * share 8..0x1f, allocated by PciSlotAllocator (./pci-slots). A hotplugged
 * device takes the lowest free slot and gives it back when the guest has
 * released it (DEVICE_DELETED), so add/remove cycles never run the bus dry.
 */

/** Where the boot-time shares and disks of a VmConfig sit on the PCI bus. */
interface BootSlotPlan {
  /** Slot of cfg.shares[i]. */
  shares: number[];
  /** Slot of cfg.disks[i]. */
  disks: number[];
  /** Slot of cfg.nets[i]. */
  nets: number[];
  /** Slot of cfg.vfio[i] (cold-plugged PCI devices) on the root bus; -1 when it sits behind root port rp<i> instead. */
  vfio: number[];
  /** pcie.0 slot of root port rp<k> (q35, pcie_root_port). */
  rootPorts: number[];
  /** Root slot of the VFIO pci-bridge (bridge-port mode, pc), or -1; cold-plugged device i then sits in its slot 1+i (vfio[i] = -2). */
  bridge: number;
  /** One past the last slot the plan hands out: start() reserves [FIRST_DYNAMIC_SLOT, next). */
  next: number;
}

/** A VM started from a template (startClone): built by src/factory. */
export interface QemuClone {
  /** QEMU's argv but -qmp/-pidfile: the template's machine, RAM and devices, -S -incoming defer, its own console. */
  args: string[];
  /** Loads the template's state over QMP and resumes the guest. */
  restore(qmp: QmpClient): Promise<void>;
  /** This clone's vsock CID (our device's config space answers it). */
  guestCid: number;
}

/** util-linux setpriv (scripts/setup.sh installs util-linux), looked up once. */
let setprivPath: string | null | undefined;
function findSetpriv(): string | null {
  if (setprivPath === undefined) {
    setprivPath = null;
    for (const dir of (process.env.PATH || '/usr/bin:/bin').split(':').concat(['/usr/bin', '/bin'])) {
      const p = path.join(dir || '.', 'setpriv');
      try {
        fs.accessSync(p, fs.constants.X_OK);
        setprivPath = p;
        break;
      } catch { /* next */ }
    }
  }
  return setprivPath;
}

/**
 * argv that runs QEMU so it cannot outlive this process: `setpriv
 * --pdeathsig KILL -- qemu …` sets PR_SET_PDEATHSIG and execs QEMU (same
 * pid, same command line in /proc). Without it a SIGKILLed `kata-ts run` or
 * shim left QEMU running (its vhost-user devices, served by the dead
 * process, gone with it) until `kata-ctl cleanup`. The signal fires when the
 * thread that forked exits: libuv spawns from the main thread, so that is
 * the process's own end. The shim's `delete` still cleans up after a dead
 * shim (it finds the VM already gone).
 */
export function ownedBy(binary: string, args: string[], log: Logger): [string, string[]] {
  const setpriv = findSetpriv();
  if (!setpriv) {
    log.warn('setpriv (util-linux) not found: QEMU will outlive this process if it is killed');
    return [binary, args];
  }
  return [setpriv, ['--pdeathsig', 'KILL', '--', binary, ...args]];
}

/** The guest's vsock CID (§5.10.4: 3 is the first guest CID). */
export const GUEST_CID = 3;
/** QMP chardev-add argument for a unix socket QEMU connects to (qapi/char.json ChardevSocket). */
function unixClientChardev(id: string, socket: string): Record<string, unknown> {
  return { id, backend: { type: 'socket', data: { addr: { type: 'unix', data: { path: socket } }, server: false } } };
}

export class QemuHypervisor implements Hypervisor {
  readonly name = 'qemu' as const;
  private child: ChildProcess | undefined;
  private qmp: QmpClient | undefined;
  private cfg: VmConfig | undefined;
  private exitReason: Promise<string> | undefined;
  private stopping = false;
  private readonly log = logger('qemu');
  /**
   * PCI slots ≥ FIRST_DYNAMIC_SLOT in use: the boot plan's (set by start())
   * and hotplugged ones until unplugged. Read by the device manager
   * (src/resource/devices) for the PCI path it hands the agent.
   */
  readonly slots: PciSlotAllocator;
  /** q35's PCIe root ports (pcie_root_port) and which hold a VFIO device; empty elsewhere. Set by start(). */
  private ports = new RootPortPool([]);
  /** VFIO devices behind a root port → the port. */
  private readonly vfioPorts = new Map<string, RootPort>();
  /** bridge-port mode (pc): the pci-bridge's root slot (set by start()), its free slots, VFIO devices → their bridge slot. */
  private bridgeAt: number | undefined;
  private readonly bridgeSlots = new PciSlotAllocator(BRIDGE_FIRST_SLOT, LAST_SLOT);
  private readonly vfioBridged = new Map<string, number>();
  private readonly diskSlots = new Map<string, { slot: number; driver: BlockDriver }>();
  private readonly shareSlots = new Map<string, number>();
  /** Network devices (boot-time and hotplugged) → their PCI slot. */
  private readonly netSlots = new Map<string, number>();
  /** Host PCI devices given to the guest with vfio-pci → their PCI slot. */
  private readonly vfioSlots = new Map<string, number>();
  private vsock: HybridVsock | undefined;
  private vsockBackend: VhostUserBackend | undefined;
  /** Our blk/fs device servers (boot-time and hotplugged). */
  private devices: VhostUserDevices | undefined;
  /** Names hotplug sockets uniquely within the VM dir (kept short: sun_path is 108 bytes). */
  private hotSeq = 0;
  readonly blockDriver: BlockDriver;
  readonly rootBlockDriver: BlockDriver;

  /** The options this hypervisor runs QEMU with (a VM template's key needs them). */
  get settings(): Readonly<QemuOptions> {
    return this.opts;
  }

  constructor(private readonly opts: QemuOptions) {
    this.blockDriver = opts.blockDriver ?? 'vhost-user-blk';
    this.rootBlockDriver = opts.rootBlockDriver ?? 'virtio-blk';
    checkVfioPorts(opts.machine, opts.pcieRootPorts ?? 0, opts.hotPlugVfio ?? 'no-port', opts.coldPlugVfio ?? 'no-port');
    this.slots = new PciSlotAllocator(FIRST_DYNAMIC_SLOT, lastSlot(opts.machine));
  }

  /** A network device QEMU can take: an id it accepts, a MAC, an open tap fd. */
  private static checkNet(n: NetDevice): void {
    if (!/^[A-Za-z0-9_-]{1,32}$/.test(n.id)) throw new QemuError('config', `net id "${n.id}" must be 1-32 of [A-Za-z0-9_-]`);
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(n.mac)) throw new QemuError('config', `net ${n.id}: "${n.mac}" is not a MAC address`);
    if (!Number.isInteger(n.fd) || n.fd < 0) throw new QemuError('config', `net ${n.id}: no tap fd`);
  }

  /** The child's fd number of cfg.nets[0] (after stdin, stdout, stderr). */
  static readonly FIRST_NET_FD = 3;

  /** Socket of boot disk i / the root image / boot share i (deterministic so commandLine() stays pure). */
  private static bootSocket(dir: string, what: 'root' | 'disk' | 'fs', i = 0): string {
    return path.join(dir, what === 'root' ? 'vb-r.sock' : what === 'disk' ? `vb-${i}.sock` : `vhost-fs-${i}.sock`);
  }

  private static bootShareIds(i: number): { chardev: string; qdevId: string } {
    return { chardev: `fs${i}`, qdevId: `fsdev-b${i}` };
  }

  /**
   * PCI slots of the boot-time shares then disks, in config order from
   * FIRST_DYNAMIC_SLOT: a pure function of the config, so commandLine()
   * renders the same slots however often it is called, and start() adopts
   * the same plan for hotplug bookkeeping. Every boot device's slot must
   * come from take(): start() reserves everything below `next`.
   */
  private static bootSlotPlan(cfg: VmConfig, opts: QemuOptions): BootSlotPlan {
    let next = FIRST_DYNAMIC_SLOT;
    const last = lastSlot(opts.machine);
    const take = () => {
      if (next > last) throw new QemuError('config', 'no free PCI slot for another device');
      return next++;
    };
    const shares = (cfg.shares ?? []).map(take);
    const disks = cfg.disks.map(take);
    const nets = (cfg.nets ?? []).map(take);
    const onPorts = opts.coldPlugVfio === 'root-port';
    const onBridge = opts.coldPlugVfio === 'bridge-port';
    const vfio = (cfg.vfio ?? []).map(() => (onPorts ? -1 : onBridge ? -2 : take()));
    if (onBridge && (cfg.vfio ?? []).length > LAST_SLOT - BRIDGE_FIRST_SLOT + 1) throw new QemuError('config', `${(cfg.vfio ?? []).length} VFIO devices do not fit behind one pci-bridge`);
    const nPorts = opts.pcieRootPorts ?? 0;
    if (onPorts && (cfg.vfio ?? []).length > nPorts) {
      throw new QemuError('config', `${(cfg.vfio ?? []).length} VFIO devices are cold-plugged on root ports but pcie_root_port = ${nPorts}: one port per device`);
    }
    const rootPorts = Array.from({ length: nPorts }, take);
    const bridge = onBridge || opts.hotPlugVfio === 'bridge-port' ? take() : -1;
    return { shares, disks, nets, vfio, rootPorts, bridge, next };
  }

  /** Our device server behind a disk or share (tests and metrics). */
  servedDevice(kind: 'blk' | 'fs', key: string): ServedDevice | undefined {
    return this.devices?.get(kind, key);
  }

  /** The full command line (exposed for tests and `--debug`); pure: no slot or other state changes. */
  commandLine(cfg: VmConfig): string[] {
    const plan = QemuHypervisor.bootSlotPlan(cfg, this.opts);
    const mmio = this.opts.machine === 'microvm';
    const mem = qemuMemoryPlan(cfg, this.opts.memory ?? {}, mmio, this.opts.accel);
    const dev = (pci: string, mm: string, extra: string, addr?: number) =>
      `${mmio ? mm : pci},${extra}${!mmio && addr !== undefined ? `,addr=0x${addr.toString(16)}` : ''}`;
    const args = [
      '-name', `kata-ts-${cfg.id},debug-threads=on`,
      // With a TCG translation cache size (src/hypervisor/memory-plan.ts) the accelerator moves to -accel: QEMU refuses both.
      '-M', `${this.opts.machine}${mem.accel ? '' : `,accel=${this.opts.accel}`}${this.opts.machineAccelerators ? `,${this.opts.machineAccelerators}` : ''}${mem.machineProps.map((p) => `,${p}`).join('')}`,
      ...(mem.accel ? ['-accel', mem.accel] : []),
      '-cpu', this.opts.accel === 'kvm' ? 'host' : 'max',
      '-smp', mem.smp,
      '-m', mem.m,
      // vhost-user backends map guest RAM: it must be a shared memfd.
      '-object', `memory-backend-memfd,id=mem,size=${cfg.memoryMiB}M,share=on`,
      '-numa', 'node,memdev=mem',
      '-nodefaults', '-nographic', '-no-user-config', '-no-reboot',
      '-kernel', cfg.kernel,
      '-append', `${mem.rootParams ? baseKernelParams(cfg.debug, this.opts.machine).replace('root=/dev/vda', mem.rootParams) : baseKernelParams(cfg.debug, this.opts.machine)} ${[...mem.kernelParams, cfg.kernelParams].join(' ')}`.trim(),
      '-chardev', `file,id=console,path=${path.join(cfg.dir, 'console.log')}`,
      '-serial', 'chardev:console',
      '-qmp', `unix:${path.join(cfg.dir, 'qmp.sock')},server=on,wait=off`,
      '-pidfile', path.join(cfg.dir, 'qemu.pid'),
      // root filesystem: the NVDIMM (DAX) when planned, else the first disk (/dev/vda), slot 3
      ...mem.args,
      ...(mem.daxImage ? [] : this.rootBlockDriver === 'vhost-user-blk'
        ? ['-chardev', `socket,id=vub-root,path=${QemuHypervisor.bootSocket(cfg.dir, 'root')}`,
          '-device', dev('vhost-user-blk-pci', 'vhost-user-blk', `chardev=vub-root,num-queues=1,queue-size=${BLK_QUEUE_SIZE}`, 3)]
        : ['-drive', `if=none,id=rootimg,file=${cfg.image},format=raw,readonly=on,cache=unsafe`,
          '-device', dev('virtio-blk-pci', 'virtio-blk-device', 'drive=rootimg,serial=kata-root', 3)]),
      // agent channel: vhost-user-vsock served by this process (start()).
      '-chardev', `socket,id=vsock,path=${path.join(cfg.dir, 'vhost-vsock.sock')}`,
      '-device', dev('vhost-user-vsock-pci', 'vhost-user-vsock-device', 'chardev=vsock', 4),
      '-device', dev('virtio-rng-pci', 'virtio-rng-device', 'id=rng', 5),
    ];
    (cfg.shares ?? []).forEach((sh, i) => {
      // vhost-user-fs-pci keeps the tag and queue count in QEMU's own config
      // space; queue-size must not exceed what our device offers.
      // Named like hotplugged shares (bootShareIds) so removeShare() can unplug them too.
      const ids = QemuHypervisor.bootShareIds(i);
      const slot = plan.shares[i];
      args.push('-chardev', `socket,id=${ids.chardev},path=${QemuHypervisor.bootSocket(cfg.dir, 'fs', i)}`);
      args.push('-device', dev('vhost-user-fs-pci', 'vhost-user-fs-device', `id=${ids.qdevId},chardev=${ids.chardev},tag=${sh.tag},queue-size=${FS_QUEUE_SIZE}`, slot));
    });
    cfg.disks.forEach((d, i) => {
      const slot = plan.disks[i];
      if (this.blockDriver === 'vhost-user-blk') {
        // Read-only is ours to honour (VIRTIO_BLK_F_RO + an O_RDONLY fd); the serial is our GET_ID answer.
        args.push('-chardev', `socket,id=vub-${d.id},path=${QemuHypervisor.bootSocket(cfg.dir, 'disk', i)}`);
        args.push('-device', dev('vhost-user-blk-pci', 'vhost-user-blk', `id=dev-${d.id},chardev=vub-${d.id},num-queues=1,queue-size=${BLK_QUEUE_SIZE}`, slot));
        return;
      }
      args.push('-drive', `if=none,id=d-${d.id},file=${d.path},format=raw,readonly=${d.readonly ? 'on' : 'off'}`);
      args.push('-device', dev('virtio-blk-pci', 'virtio-blk-device', `id=dev-${d.id},drive=d-${d.id},serial=${d.id}`, slot));
    });
    // Pod interfaces: QEMU's own virtio-net on the tap fds we opened in the
    // pod netns, passed as fds 3, 4, … (start()'s stdio). QEMU's device
    // rather than ours over vhost-user: frames then never cross this Node
    // process, one hop less per frame for the shim's event loop
    // (bench/net.ts measures the path against runc; README "Networking").
    // host_mtu offers VIRTIO_NET_F_MTU so the guest starts at the pod's MTU.
    (cfg.nets ?? []).forEach((n, i) => {
      args.push('-netdev', `tap,id=${n.id},fd=${QemuHypervisor.FIRST_NET_FD + i},vhost=off`);
      args.push('-device', dev('virtio-net-pci', 'virtio-net-device', `id=dev-${n.id},netdev=${n.id},mac=${n.mac},host_mtu=${n.mtu}`, plan.nets[i]));
    });
    // PCIe root ports (q35, pcie_root_port): rp<k> on its own pcie.0 slot,
    // a unique chassis/slot pair each (QEMU refuses duplicates); hotplug
    // capable, so a VFIO device can be added behind one later.
    plan.rootPorts.forEach((slot, k) => {
      const p = new RootPortPool(plan.rootPorts).ports[k];
      args.push('-device', `pcie-root-port,id=${p.id},bus=pcie.0,chassis=${p.chassis},slot=${p.physSlot},addr=${slotAddr(slot)}`);
    });
    // bridge-port mode (pc): one pci-bridge for VFIO devices; shpc=off so
    // its slots are hotplugged through ACPI like the root bus's.
    if (plan.bridge >= 0) args.push('-device', `pci-bridge,id=${VFIO_BRIDGE},bus=pci.0,chassis_nr=1,shpc=off,addr=${slotAddr(plan.bridge)}`);
    // Cold-plugged PCI devices (vfio-pci, or the edu test stand-in): named
    // dev-<id> like hotplugged ones so removeVfio() can unplug them too;
    // with cold_plug_vfio = "root-port" device i sits in slot 0 of rp<i>.
    (cfg.vfio ?? []).forEach((v, i) => {
      if (mmio) throw new QemuError('config', `VFIO device ${v.id}: the microvm machine has no PCI bus`);
      const at = plan.vfio[i] === -1 ? { bus: `rp${i}` } : plan.vfio[i] === -2 ? { bus: VFIO_BRIDGE, slot: BRIDGE_FIRST_SLOT + i } : plan.vfio[i];
      args.push('-device', vfioDeviceArg(v.source, `dev-${v.id}`, at));
    });
    return args;
  }

  async start(cfg: VmConfig): Promise<VmInfo> {
    for (const f of [cfg.kernel, cfg.image]) {
      if (!fs.existsSync(f)) throw new QemuError('config', `${f} does not exist (run scripts/setup.sh to build the guest)`);
    }
    if (!fs.existsSync(this.opts.binary)) throw new QemuError('config', `QEMU not found at ${this.opts.binary}`);
    for (const n of cfg.nets ?? []) QemuHypervisor.checkNet(n);
    // Host checks of cold-plugged VFIO devices before QEMU starts: one clear error, no VM.
    for (const v of cfg.vfio ?? []) {
      if (!/^[A-Za-z0-9_-]{1,32}$/.test(v.id)) throw new QemuError('config', `VFIO device id "${v.id}" must be 1-32 of [A-Za-z0-9_-]`);
      preflightVfioSource(v.source);
    }
    for (const d of cfg.disks) if (!/^[A-Za-z0-9_-]{1,20}$/.test(d.id)) throw new QemuError('config', `disk id "${d.id}" must be 1-20 of [A-Za-z0-9_-] (virtio-blk serial)`);
    // A computed disk (d.backend) exists only in this process: QEMU's own virtio-blk cannot open it.
    if (this.blockDriver !== 'vhost-user-blk' && cfg.disks.some((d) => d.backend)) throw new QemuError('config', 'converted-image disks need block_device_driver = "vhost-user-blk" (our virtio-blk device computes their bytes)');
    for (const sh of cfg.shares ?? []) {
      if (!/^[A-Za-z0-9_.-]{1,36}$/.test(sh.tag)) throw new QemuError('config', `virtio-fs tag "${sh.tag}" must be 1-36 of [A-Za-z0-9_.-]`);
      if (!fs.existsSync(sh.path) || !fs.statSync(sh.path).isDirectory()) throw new QemuError('config', `virtio-fs share ${sh.path} is not a directory`);
    }
    // Slots are assigned once per boot; commandLine() renders the same plan.
    const plan = QemuHypervisor.bootSlotPlan(cfg, this.opts);
    this.shareSlots.clear();
    (cfg.shares ?? []).forEach((sh, i) => this.shareSlots.set(sh.tag, plan.shares[i]));
    this.diskSlots.clear();
    cfg.disks.forEach((d, i) => this.diskSlots.set(d.id, { slot: plan.disks[i], driver: this.blockDriver }));
    this.slots.clear();
    for (let s = FIRST_DYNAMIC_SLOT; s < plan.next; s++) this.slots.reserve(s);
    this.netSlots.clear();
    (cfg.nets ?? []).forEach((n, i) => this.netSlots.set(n.id, plan.nets[i]));
    this.vfioSlots.clear();
    this.vfioPorts.clear();
    this.ports = new RootPortPool(plan.rootPorts);
    this.vfioBridged.clear();
    this.bridgeSlots.clear();
    this.bridgeAt = plan.bridge >= 0 ? plan.bridge : undefined;
    (cfg.vfio ?? []).forEach((v, i) => {
      if (plan.vfio[i] === -1) this.vfioPorts.set(v.id, this.ports.reserve(`rp${i}`));
      else if (plan.vfio[i] === -2) {
        this.bridgeSlots.reserve(BRIDGE_FIRST_SLOT + i);
        this.vfioBridged.set(v.id, BRIDGE_FIRST_SLOT + i);
      } else this.vfioSlots.set(v.id, plan.vfio[i]);
    });
    this.cfg = cfg;
    fs.mkdirSync(cfg.dir, { recursive: true });
    // The backend listens before QEMU starts: QEMU connects at start-up.
    this.vsock = new HybridVsock(path.join(cfg.dir, 'vsock.sock'), { guestCid: GUEST_CID });
    await this.vsock.listen();
    this.vsockBackend = new VhostUserBackend({
      socketPath: path.join(cfg.dir, 'vhost-vsock.sock'), device: this.vsock.device,
      // Sized for hotplugged DIMMs too (src/resource/memory/resize.ts): QEMU sends them in a new memory table.
      guestBytes: qemuMemoryPlan(cfg, this.opts.memory ?? {}, this.opts.machine === 'microvm', this.opts.accel).maxRamMiB * 1024 * 1024, queues: 2, name: 'vsock', // QEMU serves the event queue itself
    });
    this.vsockBackend.listen();
    const devices = new VhostUserDevices(qemuMemoryPlan(cfg, this.opts.memory ?? {}, this.opts.machine === 'microvm', this.opts.accel).maxRamMiB * 1024 * 1024);
    this.devices = devices;
    try {
      (cfg.shares ?? []).forEach((sh, i) => devices.addFs(sh.tag, sh.path, QemuHypervisor.bootSocket(cfg.dir, 'fs', i), QemuHypervisor.bootShareIds(i)));
      if (this.rootBlockDriver === 'vhost-user-blk' && !qemuMemoryPlan(cfg, this.opts.memory ?? {}, this.opts.machine === 'microvm').daxImage) devices.addBlk('kata-root', cfg.image, true, QemuHypervisor.bootSocket(cfg.dir, 'root'));
      if (this.blockDriver === 'vhost-user-blk') cfg.disks.forEach((d, i) => devices.addBlk(d.id, d.path, d.readonly, QemuHypervisor.bootSocket(cfg.dir, 'disk', i), d.backend));
    } catch (err) {
      await this.closeBackends();
      throw new QemuError('config', `cannot serve the VM's devices: ${(err as Error).message}`, { cause: err });
    }
    const args = this.commandLine(cfg);
    const pid = await this.spawnQemu(cfg.dir, args, (cfg.nets ?? []).map((n) => n.fd));
    return {
      hypervisor: 'qemu', pids: [pid], agentSocket: path.join(cfg.dir, 'vsock.sock'),
      consoleLog: path.join(cfg.dir, 'console.log'), accel: this.opts.accel,
    };
  }

  /**
   * Spawns QEMU with `args` (plus QMP and pid file in `dir`) and `fds` as
   * its fds 3, 4, …; resolves with its pid once QMP answers. If QEMU exits
   * first, our device backends are closed and the reason is thrown.
   */
  private async spawnQemu(dir: string, args: string[], fds: number[]): Promise<number> {
    this.log.debug('starting qemu', { args });
    this.stopping = false; // a VM may be started again after a failed start (a template clone's fallback)
    // One malloc arena (issue 13): QEMU's vCPU thread otherwise gets its own
    // arena beside the main heap; measured on idle sandboxes, 36.0-36.1 vs
    // 36.5-37.5 MiB of QEMU's private memory (README "Memory density").
    // glibc's per-thread cache keeps small allocations off the arena lock.
    const env = { ...process.env, MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '1' };
    const child = spawn(...ownedBy(this.opts.binary, args, this.log), { stdio: ['ignore', 'ignore', 'pipe', ...fds], detached: false, env });
    this.child = child;
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.length > 8192) stderr = stderr.slice(-8192);
    });
    this.exitReason = new Promise<string>((resolve) => {
      child.on('exit', (code, signal) => {
        const why = this.stopping ? 'stopped' : `QEMU exited (${signal ?? `status ${code}`})${stderr.trim() ? `: ${stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`;
        resolve(why);
      });
      child.on('error', (err) => resolve(`QEMU failed to start: ${err.message}`));
    });
    const qmp = new QmpClient();
    const connected = qmp.connect(path.join(dir, 'qmp.sock'), 15000).then(() => 'ok' as const);
    const res = await Promise.race([connected, this.exitReason]);
    if (res !== 'ok') {
      qmp.close();
      await this.closeBackends();
      throw new QemuError('exited', res);
    }
    this.qmp = qmp;
    return child.pid ?? 0;
  }

  /**
   * Starts this VM as a clone of a VM template (src/factory): QEMU runs
   * `clone.args` (the template's machine, memory and QEMU-own devices, with
   * -S -incoming defer), `clone.restore` loads the template's device state
   * and resumes the guest; then the sandbox's own devices are hotplugged —
   * our vhost-user-vsock agent channel at its usual slot 4 with this
   * clone's CID, then cfg's shares, disks and nets through addShare /
   * addDisk / addNet — so none of them is in the template (QEMU cannot
   * migrate vhost-user-vsock/-fs) and CID and MACs are the clone's own.
   * Any failure stops QEMU and everything served for it.
   */
  async startClone(cfg: VmConfig, clone: QemuClone): Promise<VmInfo> {
    if (this.opts.machine !== 'pc') throw new QemuError('config', `VM templates need the pc machine (ACPI hotplug of the agent channel), not ${this.opts.machine}`);
    for (const n of cfg.nets ?? []) QemuHypervisor.checkNet(n);
    this.cfg = cfg;
    this.slots.clear();
    this.diskSlots.clear();
    this.shareSlots.clear();
    this.netSlots.clear();
    this.vfioSlots.clear();
    this.vfioPorts.clear();
    this.ports = new RootPortPool([]);
    this.vfioBridged.clear();
    this.bridgeAt = undefined;
    fs.mkdirSync(cfg.dir, { recursive: true });
    this.vsock = new HybridVsock(path.join(cfg.dir, 'vsock.sock'), { guestCid: clone.guestCid });
    await this.vsock.listen();
    const vsockSock = path.join(cfg.dir, 'vhost-vsock.sock');
    this.vsockBackend = new VhostUserBackend({ socketPath: vsockSock, device: this.vsock.device, guestBytes: cfg.memoryMiB * 1024 * 1024, queues: 2, name: 'vsock' });
    this.vsockBackend.listen();
    this.devices = new VhostUserDevices(cfg.memoryMiB * 1024 * 1024);
    let pid = 0;
    try {
      pid = await this.spawnQemu(cfg.dir, [...clone.args, '-qmp', `unix:${path.join(cfg.dir, 'qmp.sock')},server=on,wait=off`, '-pidfile', path.join(cfg.dir, 'qemu.pid')], []);
      const qmp = this.requireQmp();
      await clone.restore(qmp);
      await qmp.execute('chardev-add', unixClientChardev('vsock', vsockSock));
      await qmp.execute('device_add', { driver: 'vhost-user-vsock-pci', id: 'vsock0', chardev: 'vsock', addr: slotAddr(4) });
      for (const sh of cfg.shares ?? []) await this.addShare(sh);
      for (const d of cfg.disks) await this.addDisk(d);
      for (const n of cfg.nets ?? []) await this.addNet(n);
    } catch (err) {
      await this.stop();
      throw err;
    }
    return {
      hypervisor: 'qemu', pids: [pid], agentSocket: path.join(cfg.dir, 'vsock.sock'),
      consoleLog: path.join(cfg.dir, 'console.log'), accel: this.opts.accel, guestCid: clone.guestCid,
    };
  }

  exited(): Promise<string> {
    return this.exitReason ?? Promise.resolve('not started');
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      this.qmp?.close();
      await this.closeBackends();
      return;
    }
    this.stopping = true;
    const gone = new Promise<void>((r) => child.once('exit', () => r()));
    // unref'd: a pending grace timer must not keep the CLI alive after QEMU is gone
    const within = (ms: number) => Promise.race([gone.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);
    await this.qmp?.execute('quit').catch(() => undefined);
    if (!(await within(3000))) {
      child.kill('SIGTERM');
      if (!(await within(3000))) {
        child.kill('SIGKILL');
        await gone;
      }
    }
    this.qmp?.close();
    await this.closeBackends();
  }

  /** Our in-process device backends go with the VM. */
  private async closeBackends(): Promise<void> {
    this.devices?.closeAll();
    this.devices = undefined;
    this.vsockBackend?.close();
    this.vsockBackend = undefined;
    await this.vsock?.close();
    this.vsock = undefined;
  }

  async pause(): Promise<void> {
    await this.requireQmp().execute('stop');
  }

  async resume(): Promise<void> {
    await this.requireQmp().execute('cont');
  }

  async addDisk(d: DiskDevice): Promise<void> {
    const qmp = this.requireHotplug('disks');
    if (!/^[A-Za-z0-9_-]{1,20}$/.test(d.id)) throw new QemuError('config', `disk id "${d.id}" must be 1-20 of [A-Za-z0-9_-] (virtio-blk serial)`);
    if (this.diskSlots.has(d.id)) throw new QemuError('config', `disk ${d.id} is already attached`);
    if (d.backend && this.blockDriver !== 'vhost-user-blk') throw new QemuError('config', `disk ${d.id} is a converted-image device: it needs block_device_driver = "vhost-user-blk"`);
    const slot = this.takeSlot();
    const addr = slotAddr(slot);
    try {
      if (this.blockDriver === 'vhost-user-blk') {
        const s = this.requireDevices().addBlk(d.id, d.path, d.readonly, path.join(this.cfg!.dir, `vb-h${this.hotSeq++}.sock`), d.backend);
        await this.plugVhostUser(s, { driver: 'vhost-user-blk-pci', 'num-queues': 1, 'queue-size': BLK_QUEUE_SIZE, addr });
      } else {
        await qmp.execute('blockdev-add', {
          'node-name': `d-${d.id}`, driver: 'raw', 'read-only': d.readonly,
          file: { driver: 'file', filename: d.path, 'read-only': d.readonly },
        });
        await qmp.execute('device_add', { driver: 'virtio-blk-pci', id: `dev-${d.id}`, drive: `d-${d.id}`, serial: d.id, addr }).catch(async (err: unknown) => {
          await qmp.execute('blockdev-del', { 'node-name': `d-${d.id}` }).catch(() => undefined);
          throw err;
        });
      }
    } catch (err) {
      // Nothing was plugged: the slot is free again.
      this.freeSlot(slot);
      throw err;
    }
    this.diskSlots.set(d.id, { slot, driver: this.blockDriver });
  }

  /**
   * Hotplugs a virtio-net device on a tap fd (a pod interface that appeared
   * after boot): the fd crosses the QMP socket with SCM_RIGHTS (`getfd`),
   * then netdev_add tap + device_add virtio-net-pci on a free slot. QEMU
   * keeps its own copy; the caller may close its fd afterwards.
   */
  async addNet(n: NetDevice): Promise<void> {
    const qmp = this.requireHotplug('network devices');
    QemuHypervisor.checkNet(n);
    if (this.netSlots.has(n.id)) throw new QemuError('config', `net ${n.id} is already attached`);
    const slot = this.takeSlot();
    const fdname = `fd-${n.id}`;
    let netdev = false;
    try {
      await qmp.executeWithFd('getfd', { fdname }, n.fd);
      await qmp.execute('netdev_add', { type: 'tap', id: n.id, fd: fdname, vhost: false });
      netdev = true;
      await qmp.execute('device_add', { driver: 'virtio-net-pci', id: `dev-${n.id}`, netdev: n.id, mac: n.mac, host_mtu: n.mtu, addr: slotAddr(slot) });
    } catch (err) {
      if (netdev) await qmp.execute('netdev_del', { id: n.id }).catch(() => undefined);
      await qmp.execute('closefd', { fdname }).catch(() => undefined);
      this.freeSlot(slot);
      throw err;
    }
    this.netSlots.set(n.id, slot);
  }

  /**
   * Hotplugs a host PCI device with QEMU's vfio-pci on a free slot, after
   * src/hypervisor/vfio-host.ts found its IOMMU group viable and the kernel
   * agreed. These hosts have no IOMMU: here it always stops at that check.
   * `bdf` "edu" plugs QEMU's emulated edu device instead (a test stand-in,
   * no host check: see vfio-host.ts).
   */
  async addVfio(id: string, bdf: string): Promise<void> {
    if (this.opts.hotPlugVfio === 'root-port') return this.addVfioOnRootPort(id, bdf);
    if (this.opts.hotPlugVfio === 'bridge-port') return this.addVfioOnBridge(id, bdf);
    const qmp = this.requireHotplug('VFIO devices');
    if (this.vfioSlots.has(id) || this.vfioPorts.has(id) || this.vfioBridged.has(id)) throw new QemuError('config', `VFIO device ${id} is already attached`);
    preflightVfioSource(bdf);
    const slot = this.takeSlot();
    try {
      await qmp.execute('device_add', vfioDeviceAdd(bdf, `dev-${id}`, slot));
    } catch (err) {
      this.freeSlot(slot);
      throw err;
    }
    this.vfioSlots.set(id, slot);
  }

  /**
   * hot_plug_vfio = "root-port" (q35): device_add into slot 0 of the lowest
   * free PCIe root port (bus=rpK). Allowed on q35 although disks and shares
   * are not hotplugged there: those go on pcie.0, the root complex, whose
   * integrated endpoints cannot be hotplugged; a root port is a
   * hotplug-capable slot (QEMU 7.2's q35 signals it through ACPI PCI hotplug
   * by default, the guest's pciehp otherwise). All ports busy: one error,
   * nothing attached. The port is free again once DEVICE_DELETED came.
   */
  private async addVfioOnRootPort(id: string, bdf: string): Promise<void> {
    const qmp = this.requireQmp();
    if (this.vfioSlots.has(id) || this.vfioPorts.has(id) || this.vfioBridged.has(id)) throw new QemuError('config', `VFIO device ${id} is already attached`);
    preflightVfioSource(bdf);
    let port: RootPort;
    try {
      port = this.ports.take();
    } catch (err) {
      throw new QemuError('config', `VFIO device ${id}: ${(err as Error).message}`, { cause: err });
    }
    try {
      await qmp.execute('device_add', vfioDeviceAdd(bdf, `dev-${id}`, { bus: port.id }));
    } catch (err) {
      this.ports.release(port.id);
      throw err;
    }
    this.vfioPorts.set(id, port);
  }

  /**
   * hot_plug_vfio = "bridge-port" (pc): device_add into the lowest free slot
   * of the VFIO pci-bridge (bus=pcibr0), hotplugged through ACPI like the
   * root bus; the slot is free again once DEVICE_DELETED came.
   */
  private async addVfioOnBridge(id: string, bdf: string): Promise<void> {
    const qmp = this.requireHotplug('VFIO devices');
    if (this.vfioSlots.has(id) || this.vfioPorts.has(id) || this.vfioBridged.has(id)) throw new QemuError('config', `VFIO device ${id} is already attached`);
    if (this.bridgeAt === undefined) throw new QemuError('config', `VFIO device ${id}: this VM has no VFIO pci-bridge`);
    preflightVfioSource(bdf);
    let slot: number;
    try {
      slot = this.bridgeSlots.take();
    } catch (err) {
      throw new QemuError('config', `VFIO device ${id}: ${(err as Error).message.replace('no free PCI slot', 'no free pci-bridge slot')}`, { cause: err });
    }
    try {
      await qmp.execute('device_add', vfioDeviceAdd(bdf, `dev-${id}`, { bus: VFIO_BRIDGE, slot }));
    } catch (err) {
      this.bridgeSlots.release(slot);
      throw err;
    }
    this.vfioBridged.set(id, slot);
  }

  async removeVfio(id: string): Promise<void> {
    const bslot = this.vfioBridged.get(id);
    if (bslot !== undefined) {
      await this.unplug(`dev-${id}`, () => this.bridgeSlots.release(bslot));
      this.vfioBridged.delete(id);
      return;
    }
    const port = this.vfioPorts.get(id);
    if (port) {
      await this.unplug(`dev-${id}`, () => this.ports.release(port.id));
      this.vfioPorts.delete(id);
      return;
    }
    const slot = this.vfioSlots.get(id);
    if (slot === undefined) return;
    await this.unplug(`dev-${id}`, slot);
    this.vfioSlots.delete(id);
  }

  /** Root ports holding a device, ascending (tests, `--debug`). */
  rootPortsInUse(): string[] {
    return this.ports.inUse();
  }

  async removeNet(id: string): Promise<void> {
    const qmp = this.requireQmp();
    const slot = this.netSlots.get(id);
    if (slot === undefined) return;
    await this.unplug(`dev-${id}`, slot);
    await qmp.execute('netdev_del', { id }).catch(() => undefined);
    this.netSlots.delete(id);
  }

  /**
   * Grows a disk (kata-ctl direct-volume resize) and tells the guest
   * through a virtio config-change interrupt. QEMU's own virtio-blk: QMP
   * block_resize on its node (extends the raw image). vhost-user-blk: the
   * capacity lives in our backend, which grows the file and sends
   * CONFIG_CHANGE_MSG on the vhost-user back-end channel
   * (vhost-user-devices.ts resizeBlk).
   */
  async resizeDisk(id: string, size: number): Promise<void> {
    const qmp = this.requireQmp();
    const d = this.diskSlots.get(id);
    if (!d) throw new QemuError('config', `disk ${id} is not attached`);
    if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) throw new QemuError('config', `disk ${id}: new size ${size} must be a positive multiple of 512 bytes`);
    if (d.driver === 'vhost-user-blk') {
      await this.requireDevices().resizeBlk(id, size);
      return;
    }
    await qmp.execute('block_resize', { 'node-name': `d-${id}`, size });
  }

  async removeDisk(id: string): Promise<void> {
    const qmp = this.requireQmp();
    const d = this.diskSlots.get(id);
    if (!d) return;
    await this.unplug(`dev-${id}`, d.slot);
    if (d.driver === 'vhost-user-blk') {
      const s = this.devices?.get('blk', id);
      if (s) await qmp.execute('chardev-remove', { id: s.chardev }).catch(() => undefined);
      this.devices?.remove('blk', id);
    } else {
      await qmp.execute('blockdev-del', { 'node-name': `d-${id}` }).catch(() => undefined);
    }
    this.diskSlots.delete(id);
  }

  /** Shares a host directory with the running guest (virtio-fs hotplug, our device). */
  async addShare(sh: FsShare): Promise<void> {
    this.requireHotplug('virtio-fs shares');
    if (!/^[A-Za-z0-9_.-]{1,36}$/.test(sh.tag)) throw new QemuError('config', `virtio-fs tag "${sh.tag}" must be 1-36 of [A-Za-z0-9_.-]`);
    if (!fs.existsSync(sh.path) || !fs.statSync(sh.path).isDirectory()) throw new QemuError('config', `virtio-fs share ${sh.path} is not a directory`);
    if (this.shareSlots.has(sh.tag)) throw new QemuError('config', `virtio-fs tag ${sh.tag} is already shared`);
    const slot = this.takeSlot();
    try {
      const s = this.requireDevices().addFs(sh.tag, sh.path, path.join(this.cfg!.dir, `vf-h${this.hotSeq++}.sock`));
      await this.plugVhostUser(s, { driver: 'vhost-user-fs-pci', tag: sh.tag, 'queue-size': FS_QUEUE_SIZE, addr: slotAddr(slot) });
    } catch (err) {
      this.freeSlot(slot);
      throw err;
    }
    this.shareSlots.set(sh.tag, slot);
  }

  async removeShare(tag: string): Promise<void> {
    const qmp = this.requireQmp();
    const s = this.devices?.get('fs', tag);
    const slot = this.shareSlots.get(tag);
    if (!s || slot === undefined) return;
    await this.unplug(s.qdevId, slot);
    await qmp.execute('chardev-remove', { id: s.chardev }).catch(() => undefined);
    this.devices?.remove('fs', tag);
    this.shareSlots.delete(tag);
  }

  /**
   * chardev-add then device_add for a backend that already listens. QEMU
   * connects at chardev-add and negotiates inside device_add (realize), with
   * this event loop answering while the QMP call is pending. On failure
   * everything added is taken back.
   */
  private async plugVhostUser(s: ServedDevice, props: Record<string, unknown>): Promise<void> {
    const qmp = this.requireQmp();
    let chardev = false;
    try {
      await qmp.execute('chardev-add', unixClientChardev(s.chardev, s.socket));
      chardev = true;
      await qmp.execute('device_add', { ...props, id: s.qdevId, chardev: s.chardev });
    } catch (err) {
      if (chardev) await qmp.execute('chardev-remove', { id: s.chardev }).catch(() => undefined);
      this.devices?.remove(s.kind, s.key);
      throw err;
    }
  }

  /**
   * device_del, then wait for the guest to release it (ACPI eject →
   * DEVICE_DELETED), 5 s at most. The PCI slot is freed when DEVICE_DELETED
   * comes, even after the wait gave up; a slot the guest has not released is
   * never handed out again (device_add there would fail). A device QEMU no
   * longer has (DeviceNotFound) frees its slot at once.
   */
  private async unplug(qdevId: string, slotOrFree: number | (() => void)): Promise<void> {
    const qmp = this.requireQmp();
    // A device behind a root port frees its port, not a root-bus slot.
    const slot = typeof slotOrFree === 'number' ? slotOrFree : -1;
    const free = typeof slotOrFree === 'number' ? () => this.freeSlot(slotOrFree) : slotOrFree;
    let settle = () => {};
    const waited = new Promise<void>((resolve) => { settle = resolve; });
    const timer = setTimeout(() => {
      this.log.warn('guest has not released an unplugged device; its PCI slot stays taken until it does', { device: qdevId, slot });
      settle();
    }, 5000);
    timer.unref();
    const onEv = (name: string, data: { device?: string }) => {
      if (name === 'DEVICE_DELETED' && data.device === qdevId) {
        qmp.off('event', onEv);
        clearTimeout(timer);
        free();
        settle();
      }
    };
    qmp.on('event', onEv);
    try {
      await qmp.execute('device_del', { id: qdevId });
    } catch (err) {
      // No DEVICE_DELETED will follow a refused device_del.
      qmp.off('event', onEv);
      clearTimeout(timer);
      if (/DeviceNotFound/.test((err as Error).message)) free();
      else this.log.warn('device_del failed; its PCI slot stays taken', { device: qdevId, slot, err: (err as Error).message });
      settle();
    }
    await waited;
  }

  private requireHotplug(what: string): QmpClient {
    // microvm has no hotplug; q35's root complex (pcie.0) has none without root ports.
    if (this.opts.machine !== 'pc') throw new QemuError('config', `the ${this.opts.machine} machine cannot hotplug ${what}; use machine_type = "pc"`);
    return this.requireQmp();
  }

  /** The lowest free PCI slot ≥ FIRST_DYNAMIC_SLOT, now taken (give it back with freeSlot if nothing gets plugged). */
  private takeSlot(): number {
    try {
      return this.slots.take();
    } catch (err) {
      throw new QemuError('config', (err as Error).message, { cause: err });
    }
  }

  private freeSlot(slot: number): void {
    this.slots.release(slot);
  }

  /** Our vhost-user device servers (benchmarks and tests look at their backends). */
  get vhostUserDevices(): VhostUserDevices | undefined { return this.devices; }

  /** PCI slots ≥ FIRST_DYNAMIC_SLOT in use, ascending (tests, `--debug`). */
  slotsInUse(): number[] {
    return this.slots.inUse();
  }

  /** Hotplug slots still free on the root bus. */
  freeSlots(): number {
    return this.slots.free;
  }

  /**
   * Kata's PCI path of an attached device: its root-bus slot ("0a"), or
   * "<root port's slot>/00" for a VFIO device behind a root port.
   */
  pciPathOf(kind: 'blk' | 'fs' | 'net' | 'vfio', id: string): string | undefined {
    const port = kind === 'vfio' ? this.vfioPorts.get(id) : undefined;
    if (port) return rootPortPciPath(port.slot);
    const bslot = kind === 'vfio' ? this.vfioBridged.get(id) : undefined;
    if (bslot !== undefined && this.bridgeAt !== undefined) return bridgedPciPath(this.bridgeAt, bslot);
    const slot = this.slotOf(kind, id);
    return slot === undefined ? undefined : pciPath(slot);
  }

  /** The root-bus PCI slot a disk, share or network device of this VM sits in, if attached. */
  slotOf(kind: 'blk' | 'fs' | 'net' | 'vfio', id: string): number | undefined {
    // microvm's devices are virtio-mmio: no PCI path for the agent to wait on (it goes by serial/tag).
    if (this.opts.machine === 'microvm') return undefined;
    return kind === 'blk' ? this.diskSlots.get(id)?.slot : kind === 'fs' ? this.shareSlots.get(id) : kind === 'vfio' ? this.vfioSlots.get(id) : this.netSlots.get(id);
  }

  private requireDevices(): VhostUserDevices {
    if (!this.devices || !this.cfg) throw new QemuError('qmp', 'VM is not running');
    return this.devices;
  }

  /**
   * Guest RAM as our vhost-user vsock backend maps it (every QEMU VM here has
   * that device): where the page scanner (src/resource/memory) reads it, in place.
   */
  guestMemory(): { hot: VhostUserBackend['hot']; regions: () => VhostUserBackend['guestMemoryRegions'] } | undefined {
    const b = this.vsockBackend;
    return b ? { hot: b.hot, regions: () => b.guestMemoryRegions } : undefined;
  }

  /** The boot-time virtio-mem device (src/hypervisor/memory-plan.ts) if the VM has one: memory is resized through it instead of DIMMs. */
  virtioMemDevice(): { id: string; sizeMiB: number } | undefined {
    return this.cfg ? qemuMemoryPlan(this.cfg, this.opts.memory ?? {}, this.opts.machine === 'microvm', this.opts.accel).virtioMem : undefined;
  }

  /** One QMP command for memory management (balloon, memory/vCPU hotplug: src/resource/memory). */
  memoryQmp(cmd: string, args?: Record<string, unknown>): Promise<unknown> {
    return this.requireQmp().execute(cmd, args);
  }

  consoleTail(lines = 20): string {
    if (!this.cfg) return '';
    try {
      const txt = fs.readFileSync(path.join(this.cfg.dir, 'console.log'), 'utf8');
      return txt.split('\n').filter((l) => l.trim()).slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  private requireQmp(): QmpClient {
    if (!this.qmp) throw new QemuError('qmp', 'VM is not running');
    return this.qmp;
  }
}
