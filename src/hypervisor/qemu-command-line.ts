/**
 * What QEMU is started with: the PCI slot plan of the boot-time devices
 * (root disk, vsock, rng on fixed slots; shares, disks, NICs, root ports,
 * the VFIO bridge and cold-plugged devices from FIRST_DYNAMIC_SLOT), the
 * VFIO port settings QEMU can honour, and the argv itself. Pure functions
 * of the hypervisor options and the VM config; the hypervisor (qemu.ts)
 * adopts the same plan for its hotplug bookkeeping.
 */
import * as path from 'node:path';
import { baseKernelParams, type VmConfig } from './hypervisor';
import type { BlockDriver, QemuOptions } from './qemu';
import { QemuError } from './qemu-error';
import { qemuMemoryPlan } from './memory-plan';
import { BLK_QUEUE_SIZE, FS_QUEUE_SIZE } from './vhost-user-devices';
import { FIRST_DYNAMIC_SLOT, LAST_SLOT, slotAddr, RootPortPool, type VfioPortType } from './pci-slots';
import { vfioDeviceArg } from './vfio-host';

/** Block drivers when the options name none: ours for container disks, QEMU's for the guest image. */
export const DEFAULT_BLOCK_DRIVER: BlockDriver = 'vhost-user-blk';
export const DEFAULT_ROOT_BLOCK_DRIVER: BlockDriver = 'virtio-blk';

/** The child's fd number of cfg.nets[0] (after stdin, stdout, stderr). */
export const FIRST_NET_FD = 3;

/** QEMU id of the pc machine's pci-bridge for VFIO devices in bridge-port mode. */
export const VFIO_BRIDGE = 'pcibr0';
/** Device slots behind that bridge (Kata's bridges also leave slot 0 alone). */
export const BRIDGE_FIRST_SLOT = 1;

/** Root ports per VM at most: each takes a pcie.0 slot from the dynamic range. */
export const MAX_ROOT_PORTS = 16;

/** The last root-bus slot we hand out: q35 keeps 0x1f for its ICH9 functions (LPC, SATA, SMBus). */
export function lastSlot(machine: QemuOptions['machine']): number {
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
export interface BootSlotPlan {
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

/** Socket of boot disk i / the root image / boot share i (deterministic so commandLine() stays pure). */
export function bootSocket(dir: string, what: 'root' | 'disk' | 'fs', i = 0): string {
  return path.join(dir, what === 'root' ? 'vb-r.sock' : what === 'disk' ? `vb-${i}.sock` : `vhost-fs-${i}.sock`);
}

export function bootShareIds(i: number): { chardev: string; qdevId: string } {
  return { chardev: `fs${i}`, qdevId: `fsdev-b${i}` };
}

/**
 * PCI slots of the boot-time shares then disks, in config order from
 * FIRST_DYNAMIC_SLOT: a pure function of the config, so commandLine()
 * renders the same slots however often it is called, and start() adopts
 * the same plan for hotplug bookkeeping. Every boot device's slot must
 * come from take(): start() reserves everything below `next`.
 */
export function bootSlotPlan(cfg: VmConfig, opts: QemuOptions): BootSlotPlan {
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

/**
 * QEMU's full argv for a VM (the hypervisor's commandLine(), exposed for
 * tests and `--debug`): a pure function of the options and the VM config,
 * so it can be rendered any number of times and start() adopts the same
 * slot plan.
 */
export function qemuCommandLine(opts: QemuOptions, cfg: VmConfig): string[] {
  const blockDriver: BlockDriver = opts.blockDriver ?? DEFAULT_BLOCK_DRIVER;
  const rootBlockDriver: BlockDriver = opts.rootBlockDriver ?? DEFAULT_ROOT_BLOCK_DRIVER;
  const plan = bootSlotPlan(cfg, opts);
  const mmio = opts.machine === 'microvm';
  const mem = qemuMemoryPlan(cfg, opts.memory ?? {}, mmio, opts.accel);
  const dev = (pci: string, mm: string, extra: string, addr?: number) =>
    `${mmio ? mm : pci},${extra}${!mmio && addr !== undefined ? `,addr=0x${addr.toString(16)}` : ''}`;
  const args = [
    '-name', `kata-ts-${cfg.id},debug-threads=on`,
    // With a TCG translation cache size (src/hypervisor/memory-plan.ts) the accelerator moves to -accel: QEMU refuses both.
    '-M', `${opts.machine}${mem.accel ? '' : `,accel=${opts.accel}`}${opts.machineAccelerators ? `,${opts.machineAccelerators}` : ''}${mem.machineProps.map((p) => `,${p}`).join('')}`,
    ...(mem.accel ? ['-accel', mem.accel] : []),
    '-cpu', opts.accel === 'kvm' ? 'host' : 'max',
    '-smp', mem.smp,
    '-m', mem.m,
    // vhost-user backends map guest RAM: it must be a shared memfd.
    '-object', `memory-backend-memfd,id=mem,size=${cfg.memoryMiB}M,share=on`,
    '-numa', 'node,memdev=mem',
    '-nodefaults', '-nographic', '-no-user-config', '-no-reboot',
    '-kernel', cfg.kernel,
    '-append', `${mem.rootParams ? baseKernelParams(cfg.debug, opts.machine).replace('root=/dev/vda', mem.rootParams) : baseKernelParams(cfg.debug, opts.machine)} ${[...mem.kernelParams, cfg.kernelParams].join(' ')}`.trim(),
    '-chardev', `file,id=console,path=${path.join(cfg.dir, 'console.log')}`,
    '-serial', 'chardev:console',
    '-qmp', `unix:${path.join(cfg.dir, 'qmp.sock')},server=on,wait=off`,
    '-pidfile', path.join(cfg.dir, 'qemu.pid'),
    // root filesystem: the NVDIMM (DAX) when planned, else the first disk (/dev/vda), slot 3
    ...mem.args,
    ...(mem.daxImage ? [] : rootBlockDriver === 'vhost-user-blk'
      ? ['-chardev', `socket,id=vub-root,path=${bootSocket(cfg.dir, 'root')}`,
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
    const ids = bootShareIds(i);
    const slot = plan.shares[i];
    args.push('-chardev', `socket,id=${ids.chardev},path=${bootSocket(cfg.dir, 'fs', i)}`);
    args.push('-device', dev('vhost-user-fs-pci', 'vhost-user-fs-device', `id=${ids.qdevId},chardev=${ids.chardev},tag=${sh.tag},queue-size=${FS_QUEUE_SIZE}`, slot));
  });
  cfg.disks.forEach((d, i) => {
    const slot = plan.disks[i];
    if (blockDriver === 'vhost-user-blk') {
      // Read-only is ours to honour (VIRTIO_BLK_F_RO + an O_RDONLY fd); the serial is our GET_ID answer.
      args.push('-chardev', `socket,id=vub-${d.id},path=${bootSocket(cfg.dir, 'disk', i)}`);
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
    args.push('-netdev', `tap,id=${n.id},fd=${FIRST_NET_FD + i},vhost=off`);
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
