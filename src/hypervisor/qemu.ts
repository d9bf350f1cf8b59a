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
 *
 * The argv and the boot-time PCI slot plan are built in qemu-command-line.ts
 * (pure functions of the options and the VM config), the error type is in
 * qemu-error.ts, and qemu-owner.ts makes QEMU die with its parent.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { logger } from '../common/log';
import { type DiskDevice, type Hypervisor, type NetDevice, type VmConfig, type VmInfo } from './hypervisor';
import { QmpClient } from './qmp';
import { VhostUserBackend } from '../vhost-user/backend';
import { HybridVsock } from '../virtio/vsock/hybrid';
import { VhostUserDevices, BLK_QUEUE_SIZE, FS_QUEUE_SIZE, MMIO_QUEUE_MAX, type ServedDevice } from './vhost-user-devices';
import type { FsShare } from './hypervisor';
import { qemuMemoryPlan, type QemuMemoryOptions } from './memory-plan';
import { PciSlotAllocator, FIRST_DYNAMIC_SLOT, LAST_SLOT, slotAddr, pciPath, rootPortPciPath, bridgedPciPath, RootPortPool, type RootPort, type VfioPortType } from './pci-slots';
import { preflightVfioSource, vfioDeviceAdd } from './vfio-host';
import { QemuError } from './qemu-error';
import { ownedBy } from './qemu-owner';
import { BRIDGE_FIRST_SLOT, DEFAULT_BLOCK_DRIVER, DEFAULT_ROOT_BLOCK_DRIVER, FIRST_NET_FD, VFIO_BRIDGE, bootShareIds, bootSlotPlan, bootSocket, checkVfioPorts, lastSlot, qemuCommandLine } from './qemu-command-line';

export { QemuError } from './qemu-error';
export { ownedBy } from './qemu-owner';
export { checkVfioPorts, MAX_ROOT_PORTS, VFIO_BRIDGE } from './qemu-command-line';

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

/** A VM started from a template (startClone): built by src/factory. */
export interface QemuClone {
  /** QEMU's argv but -qmp/-pidfile: the template's machine, RAM and devices, -S -incoming defer, its own console. */
  args: string[];
  /** Loads the template's state over QMP and resumes the guest. */
  restore(qmp: QmpClient): Promise<void>;
  /** This clone's vsock CID (our device's config space answers it). */
  guestCid: number;
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
    this.blockDriver = opts.blockDriver ?? DEFAULT_BLOCK_DRIVER;
    this.rootBlockDriver = opts.rootBlockDriver ?? DEFAULT_ROOT_BLOCK_DRIVER;
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
  static readonly FIRST_NET_FD = FIRST_NET_FD;

  /** The full command line (exposed for tests and `--debug`); pure: no slot or other state changes. */
  commandLine(cfg: VmConfig): string[] {
    return qemuCommandLine(this.opts, cfg);
  }

  /** Our device server behind a disk or share (tests and metrics). */
  servedDevice(kind: 'blk' | 'fs', key: string): ServedDevice | undefined {
    return this.devices?.get(kind, key);
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
    const plan = bootSlotPlan(cfg, this.opts);
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
    this.vsock = new HybridVsock(path.join(cfg.dir, 'vsock.sock'), { guestCid: GUEST_CID, queueSize: MMIO_QUEUE_MAX });
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
      (cfg.shares ?? []).forEach((sh, i) => devices.addFs(sh.tag, sh.path, bootSocket(cfg.dir, 'fs', i), bootShareIds(i)));
      if (this.rootBlockDriver === 'vhost-user-blk' && !qemuMemoryPlan(cfg, this.opts.memory ?? {}, this.opts.machine === 'microvm').daxImage) devices.addBlk('kata-root', cfg.image, true, bootSocket(cfg.dir, 'root'));
      if (this.blockDriver === 'vhost-user-blk') cfg.disks.forEach((d, i) => devices.addBlk(d.id, d.path, d.readonly, bootSocket(cfg.dir, 'disk', i), d.backend));
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
    this.vsock = new HybridVsock(path.join(cfg.dir, 'vsock.sock'), { guestCid: clone.guestCid, queueSize: MMIO_QUEUE_MAX });
    await this.vsock.listen();
    const vsockSock = path.join(cfg.dir, 'vhost-vsock.sock');
    // As start(): room for the template's virtio-mem region (in the first memory table) or DIMMs hotplugged later.
    const guestBytes = qemuMemoryPlan(cfg, this.opts.memory ?? {}, false, this.opts.accel).maxRamMiB * 1024 * 1024;
    this.vsockBackend = new VhostUserBackend({ socketPath: vsockSock, device: this.vsock.device, guestBytes, queues: 2, name: 'vsock' });
    this.vsockBackend.listen();
    this.devices = new VhostUserDevices(guestBytes);
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

  forgetShareDevice(tag: string, dev: bigint): number {
    return this.devices?.forgetFsDevice(tag, dev) ?? 0;
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
