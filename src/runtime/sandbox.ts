/**
 * A sandbox: one VM (through a Hypervisor), its guest agent, and the
 * containers in it — Kata's "virtcontainers" Sandbox, drivable without
 * containerd (the CLI and, later, the shim both sit on this).
 *
 * Container root filesystems reach the guest one of two ways: through the
 * sandbox's one virtio-fs share (the default, as Kata's shared directory:
 * the host directory is bind-mounted into the share, volumes.ts, and the
 * container writes straight into it, as under runc; the share device is on
 * the VM's command line when a boot container or volume needs it, else
 * hotplugged once, at the first container that does), or an EROFS image of
 * it on a read-only virtio-blk disk with a tmpfs overlay on top
 * (`rootfsShare: 'erofs'`, or a hypervisor without the share and no way to
 * hotplug it).
 *
 * Teardown always happens: stop() is idempotent, runs on every error path,
 * and removes the VM, its sockets and the sandbox directory. State is
 * persisted for kata-ctl at each change.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KataError, errorMessage } from '../common/errors';
import { logger } from '../common/log';
import type { Hypervisor, VfioDevice, VmConfig, VmInfo } from '../hypervisor/hypervisor';
import { dialAgent, waitForMarker } from '../protocols/agent-dialer';
import type { OciProcess, OciSpec } from '../protocols/oci';
import { AgentClient } from './agent-client';
import { policyFromFile, type HostPolicy } from './policy';
import { POLICY_KERNEL_PARAM } from '../protocols/agent-policy';
// Loaded when the sandbox is up, not before QEMU starts: it brings grpc-js (~0.1 s to load).
import type { CtlChannel } from './ctl-channel';
import { startSandboxMemory } from './sandbox-memory';
import type { SandboxMemory } from '../resource/memory/service';
import type { Config } from './config';
import { guestAssets, vmSizing } from './config';
import { guestCopyOfRootfs } from './guest-rootfs';
import { buildErofsImage } from './rootfs';
// image-rootfs (and the image store, LZ4, tar it loads) only for a converted image: imported where used,
// so a plain `kata-ts run` does not load them before its VM starts (README Performance, VM templates).
import type * as ImageRootfs from './image-rootfs';
const imageRootfs = (): Promise<typeof ImageRootfs> => import('./image-rootfs');
import { SandboxVolumes, VolumeError, planRootfs, planVolumes, removeTreeSafely, sandboxShareDevice, virtiofsStorage } from './volumes';
import { SandboxDirectVolumes, planDirectMounts } from './direct-volumes';
import { DirectVolumeStore } from '../resource/volumes/direct-volume';
import type { Storage, StdioPorts } from '../protocols/agent-api';
import { passfdKernelParam } from './passfd-stdio';
import { SANDBOX_SHM_GUEST_DIR, SHARED_FS_TAG, SHARED_GUEST_DIR, sharedRootfsGuestPath } from '../protocols/guest-paths';
import { PodNetwork, type HeldTap } from '../resource/network/pod-network';
import { DeviceManager, SANDBOX_HOLDER } from '../resource/devices/device-manager';
import { planContainerDevices, type ContainerDevicePlan, type VfioMode, type VfioGroupSources } from '../resource/devices/container-devices';
import type { Device } from '../protocols/agent-api';
import { configureGuestNetwork, guestNetworkPlan, type GuestNetworkPlan } from '../resource/network/guest-config';
import { NetnsWatcher } from '../resource/network/netns-watch';
import { PortForwarder } from './port-forward';
import { makeCloneUnique, startFromTemplate } from '../factory/sandbox-clone';
import { processStartTime, sandboxesDir, writeState, type SandboxPhase, type SandboxState } from './state';

export class SandboxError extends KataError<'boot' | 'agent' | 'container' | 'state'> {}

export interface SandboxOptions {
  id: string;
  config: Config;
  hypervisor: Hypervisor;
  vcpus?: number;
  memoryMiB?: number;
  hostname?: string;
  /**
   * The pod's network namespace (set up by CNI, or `kata-ts run --net
   * host-netns PATH`): each of its interfaces is mirrored into the VM
   * (src/resource/network). Absent: the VM has only loopback.
   */
  netns?: string;
  /** resolv.conf lines for the guest (Kata's CreateSandbox dns). */
  dns?: string[];
  /**
   * VFIO (linux.devices /dev/vfio/<group>, src/resource/devices/container-devices.ts):
   * Kata's vfio_mode (default: [runtime] vfio_mode) and where a group's devices come from
   * (default the host's sysfs; tests give the emulated edu device as a
   * stand-in, these hosts having no IOMMU).
   */
  vfio?: { mode?: VfioMode; sources?: VfioGroupSources };
  /**
   * PCI devices cold-plugged at boot (QEMU's command line), held by the
   * sandbox; a container whose /dev/vfio/<group> maps to the same source
   * under the same id (container-devices.ts vfioDeviceId) takes a reference
   * instead of a hotplug. No VM template is used for such a sandbox (a
   * template's clone has none of them).
   */
  bootVfio?: VfioDevice[];
  /**
   * Containers known at boot: their rootfs is shared with virtio-fs (default)
   * or built into an EROFS disk, attached at boot (no hotplug needed).
   * `overlay` (virtio-fs only): the directory is shared read-only and the
   * container writes to a throwaway overlay in the guest (a pre-started VM
   * has the share but no disk: `kata-ts run`'s built-in image from the VM cache).
   */
  bootContainers?: { id: string; rootfs: string; rootfsShare?: RootfsShare; image?: string; overlay?: boolean }[];
  /**
   * Attach the sandbox share (volumes.ts) at boot even if no boot container
   * needs it (one with a virtio-fs rootfs does); otherwise it is hotplugged
   * when the first container with a bind mount or a shared rootfs arrives.
   */
  volumes?: boolean;
  /**
   * Agent policy (README "Agent policy"): given, or read from
   * `[agent.kata] policy_file`. Sent once in CreateSandbox, its sha256
   * pinned on the guest kernel command line.
   */
  policy?: HostPolicy;
  /**
   * A VM already running for this sandbox: a clone of the VM template that a
   * pre-started VM cache entry (src/factory/vm-cache-vm.ts) started, with its
   * agent dialled and answering Check. start() then only attaches the boot
   * devices (attach), makes the clone unique and creates the sandbox.
   */
  prestarted?: PrestartedVm;
}

/** A pre-started clone handed to Sandbox.start (SandboxOptions.prestarted). */
export interface PrestartedVm {
  info: VmInfo;
  wire: ReturnType<typeof dialAgent>;
  agent: AgentClient;
  cloneMs: number;
  copyMs: number;
  /** Hotplugs `vm`'s shares, disks and nets (what a clone's startClone would have). */
  attach(vm: VmConfig): Promise<void>;
  /**
   * The sandbox share, attached while the VM waited: its host directory
   * (mounts/ + the read-only shared/ view) prepared and its device plugged
   * under SHARED_FS_TAG. The sandbox binds its containers' roots and volumes
   * there, so its first container needs no hotplug; stop() unmounts it.
   */
  share?: SandboxVolumes;
  /**
   * A NIC plugged while the VM waited, on a tap in our namespace: the pod's
   * network takes it when the pod has one interface (PodNetwork.attach),
   * else it stays unused and its tap fd is closed at once.
   */
  nic?: HeldTap;
  /** makeCloneUnique, already sent when the VM was claimed (while the guest idles until Create). */
  unique?: Promise<void>;
}

/** How a container's rootfs directory reaches the guest. */
export type RootfsShare = 'virtiofs' | 'erofs';

interface HostContainer {
  id: string;
  disk: string;
  /** Its rootfs is bound into the sandbox share (unbound at removal). */
  shared: boolean;
  /** A converted image's blob-device disk (its metadata disk is `disk`). */
  blobDisk?: string;
  image: string;
  state: 'created' | 'running' | 'stopped';
  pid: number;
}

/** virtio-blk serials are at most 20 bytes: derive a short stable disk id. */
export function diskIdFor(containerId: string): string {
  return 'c' + crypto.createHash('sha256').update(containerId).digest('hex').slice(0, 19);
}

/** The agent's ready line carries its start-up timings as JSON; tolerate anything. */
function parseTimings(text: string): unknown {
  try {
    return text ? JSON.parse(text) : undefined;
  } catch {
    return text;
  }
}

/** sun_path holds 108 bytes, the last a NUL. */
const UNIX_PATH_MAX = 107;
/** The longest socket name a sandbox directory holds: vhost-vsock.sock (vhost-fs-NN.sock and the hotplug ones are no longer). */
const SOCKET_NAME_MAX = 'vhost-vsock.sock'.length;

/** The sandbox's part of the guest kernel command line (a VM template's key includes it). */
export function sandboxKernelParams(cfg: Config, policy: HostPolicy | undefined): string {
  // The guest agent serves the debug console only when booted with this flag.
  // Passfd IO: the agent listens for stdio streams on this port (a template built without it is another key).
  return [cfg['hypervisor.qemu'].kernel_params, cfg['agent.kata'].debug_console_enabled ? 'agent.debug_console' : '', policy ? `${POLICY_KERNEL_PARAM}=${policy.sha256}` : '',
    cfg.runtime.use_passfd_io ? passfdKernelParam(cfg.runtime.passfd_listener_port) : ''].filter(Boolean).join(' ');
}

export const GUEST_CONTAINERS_DIR = '/run/kata-ts/containers';

export class Sandbox {
  readonly dir: string;
  private vm: VmInfo | undefined;
  private agentClient: AgentClient | undefined;
  private readonly containers = new Map<string, HostContainer>();
  private phase: SandboxPhase = 'creating';
  private stopped: Promise<void> | undefined;
  private readonly log;
  private readonly createdAt = new Date().toISOString();
  private readonly preparedImages = new Map<string, string>();
  /** Containers whose rootfs is a converted image attached at boot → its disks (image-rootfs.ts). */
  private readonly bootImages = new Map<string, { meta: string; blob: string }>();
  private ctl: CtlChannel | undefined;
  private memory: SandboxMemory | undefined;
  /** The pod's interfaces mirrored into the VM (opts.netns). */
  private network: PodNetwork | undefined;
  private netWatch: NetnsWatcher | undefined;
  /** CRI port-forward: localhost:PORT in the pod netns reaches PORT in the VM (port-forward.ts). */
  private portForward: Promise<PortForwarder | undefined> | undefined;
  /** What the guest was last told (to push only what changed). */
  private pushedNetwork: GuestNetworkPlan | undefined;
  private netSync: Promise<void> = Promise.resolve();
  /** Containers' bind mounts and shared roots, through one share (SHARED_FS_TAG) of <dir>/shared. */
  private readonly volumes: SandboxVolumes;
  /** The sandbox share's device is attached (boot or hotplug): never a second one. */
  private sandboxShare = false;
  /** Every disk, share and network device of the VM, boot-time or hotplugged, with its holders (src/resource/devices). */
  readonly devices: DeviceManager;
  /** Containers' linux.devices disks as the agent is told about them (CreateContainerRequest.devices). */
  private readonly containerDevices = new Map<string, Device[]>();
  /** Passfd IO: the stdio ports of a CreateContainer in flight (createContainer). */
  private readonly passfdPorts = new Map<string, StdioPorts>();
  /** Direct-assigned volumes (kata-ctl direct-volume) the containers mount: disks the agent mounts itself. */
  private readonly directVolumeStore = new DirectVolumeStore();
  private readonly directVolumes: SandboxDirectVolumes;
  /**
   * Containers with a writable filesystem on a guest block device (direct
   * volumes, linux.devices disks): their data may sit in the guest's page
   * cache, so stop() asks the agent to unmount (DestroySandbox) before the
   * VM goes. Without any, the VM is stopped at once (doStop).
   */
  private readonly guestBlockMounts = new Set<string>();
  /** Containers whose shared rootfs is read-only under a guest overlay (bootContainers `overlay`). */
  private readonly overlayRoots = new Set<string>();
  /** Containers on the guest image's copy of the default rootfs (guest-rootfs.ts) → its guest path: no disk. */
  private readonly guestRoots = new Map<string, string>();

  constructor(private readonly opts: SandboxOptions) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(opts.id)) throw new SandboxError('state', `invalid sandbox id "${opts.id}"`);
    this.dir = path.join(sandboxesDir(opts.config.runtime.run_dir), opts.id);
    // The VM's unix sockets live in this directory, and a socket address
    // holds 107 bytes: Node cuts a longer path short without a word, and two
    // cut-short names then collide (EADDRINUSE). Refuse it plainly instead.
    const longest = Buffer.byteLength(path.join(this.dir, 'x'.repeat(SOCKET_NAME_MAX)));
    if (longest > UNIX_PATH_MAX) {
      throw new SandboxError('state', `sandbox directory ${this.dir} is too long for its unix sockets (${longest} > ${UNIX_PATH_MAX} bytes): set a shorter [runtime] run_dir (at most ${UNIX_PATH_MAX - (longest - Buffer.byteLength(opts.config.runtime.run_dir))} bytes for this sandbox id)`);
    }
    this.volumes = opts.prestarted?.share ?? new SandboxVolumes(path.join(this.dir, 'shared'));
    this.devices = new DeviceManager(opts.hypervisor);
    this.directVolumes = new SandboxDirectVolumes(opts.id, this.directVolumeStore, this.devices);
    this.log = logger('sandbox', { sandbox: opts.id });
  }

  get id(): string {
    return this.opts.id;
  }

  /** The host end of the VM's hybrid vsock (passfd IO opens its streams there). */
  get vsockSocket(): string {
    if (!this.vm) throw new SandboxError('state', `sandbox ${this.id} is not running`);
    return this.vm.agentSocket;
  }

  get agent(): AgentClient {
    if (!this.agentClient) throw new SandboxError('agent', 'sandbox is not running');
    return this.agentClient;
  }

  get vmInfo(): VmInfo | undefined {
    return this.vm;
  }

  /** Boot the VM and connect to the agent. On any failure everything is torn down. */
  async start(): Promise<void> {
    if (fs.existsSync(this.dir)) throw new SandboxError('state', `sandbox ${this.id} already exists (${this.dir})`);
    // A malformed policy fails here, before anything is set up.
    const policyFile = this.opts.config['agent.kata'].policy_file;
    const policy = this.opts.policy ?? (policyFile ? policyFromFile(policyFile) : undefined);
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    try {
      this.persist();
      const disks = [];
      const shares = [];
      for (const c of this.opts.bootContainers ?? []) {
        if (c.image) {
          // A converted image: its metadata and blob-device disks, nothing built.
          const img = (await imageRootfs()).openImageDisks(this.opts.config, c.id, c.image, this.id);
          disks.push(...img.disks);
          this.bootImages.set(c.id, { meta: img.disks[0].id, blob: img.disks[1].id });
          continue;
        }
        if ((c.rootfsShare ?? 'virtiofs') === 'virtiofs') {
          // Bound into the sandbox share before the VM (its FUSE server) opens it.
          const planned = planRootfs(c.id, c.rootfs, this.volumes.sharedDir);
          await this.volumes.addRootfs(c.id, c.overlay ? { ...planned, readonly: true } : planned);
          if (c.overlay) this.overlayRoots.add(c.id);
          continue;
        }
        const inGuest = guestCopyOfRootfs(this.opts.config, this.opts.hypervisor.name, c.rootfs);
        if (inGuest) {
          this.guestRoots.set(c.id, inGuest);
          continue;
        }
        const image = await this.prepareImage(c.id, c.rootfs);
        disks.push({ id: diskIdFor(c.id), path: image, readonly: true });
      }
      // A pre-started VM's share is attached already: taken whether needed or not (it costs nothing more now).
      if (this.opts.prestarted?.share || this.opts.volumes || (this.opts.bootContainers ?? []).some((c) => this.volumes.hasRootfs(c.id))) {
        await this.volumes.prepare();
        shares.push(sandboxShareDevice(this.volumes.sharedDir));
        this.sandboxShare = true;
      }
      const cfg = this.opts.config;
      const assets = guestAssets(cfg, this.opts.hypervisor.name);
      if (this.opts.netns) this.network = PodNetwork.attach(this.opts.netns, this.opts.prestarted?.nic);
      // A pre-plugged NIC no interface took: our fd goes now, its tap with the VM.
      if (!this.network?.adopted) this.opts.prestarted?.nic?.close();
      const t0 = Date.now();
      const vmCfg = {
        id: this.id, dir: this.dir, kernel: assets.kernel, image: assets.image,
        vcpus: this.opts.vcpus ?? vmSizing(cfg, this.opts.hypervisor.name).vcpus, memoryMiB: this.opts.memoryMiB ?? vmSizing(cfg, this.opts.hypervisor.name).memoryMiB,
        kernelParams: sandboxKernelParams(cfg, policy), disks, shares, nets: this.network?.tapFds(), vfio: this.opts.bootVfio, debug: cfg['agent.kata'].enable_debug || cfg.runtime.enable_debug,
      };
      // [factory] enable_template: a clone of the VM template, else (one warning) a cold boot.
      // A pre-started VM (the VM cache) is such a clone, already running: it gets the boot devices now.
      const pre = this.opts.prestarted;
      // Its share is plugged already (vmCfg.shares holds only it): adoptBoot below records it with its PCI path.
      // So is a pre-plugged NIC the pod network took (adoptBoot records it too).
      if (pre) await pre.attach({ ...vmCfg, shares: pre.share ? [] : vmCfg.shares, nets: vmCfg.nets?.filter((n) => n.id !== this.network?.adopted) });
      const clone = pre ?? (this.opts.bootVfio?.length ? undefined : await startFromTemplate(this.opts.hypervisor, cfg, vmCfg, vmCfg.kernelParams, this.log));
      this.vm = clone?.info ?? await this.opts.hypervisor.start(vmCfg);
      // The boot devices, held by the containers they serve (else by the sandbox).
      const holders: Record<string, string> = {};
      for (const [c, d] of this.bootImages) { holders[d.meta] = c; holders[d.blob] = c; }
      for (const c of this.opts.bootContainers ?? []) if (!c.image && (c.rootfsShare ?? 'virtiofs') !== 'virtiofs' && !this.guestRoots.has(c.id)) holders[diskIdFor(c.id)] = c.id;
      this.devices.adoptBoot(vmCfg, holders);
      // QEMU holds its own tap fds now: the taps live exactly as long as the VM.
      this.network?.releaseTapFds();
      this.persist();
      const timeoutMs = cfg['agent.kata'].dial_timeout * 1000;
      let guestTimings = '';
      // A clone's agent printed its ready line in the template's life, not this one's: dial straight away.
      if (!clone) try {
        guestTimings = await waitForMarker(this.vm.consoleLog, timeoutMs, this.opts.hypervisor.exited());
      } catch (err) {
        const tail = this.opts.hypervisor.consoleTail(8);
        throw new SandboxError('boot', `${errorMessage(err)}${tail ? `; last console lines:\n${tail}` : ''}`, { cause: err });
      }
      // Host-side phases for the 'sandbox ready' line (README performance, cold path).
      const tMarker = Date.now();
      const wire = pre?.wire ?? dialAgent(this.vm.agentSocket);
      this.agentClient = pre?.agent ?? new AgentClient(wire);
      if (!pre) await this.agentClient.check(Math.max(5000, timeoutMs - (Date.now() - t0)));
      if (clone) guestTimings = JSON.stringify({ template: true, ...(pre ? { prestarted: true } : {}), ...(pre?.share ? { sharePreattached: true } : {}), ...(this.network?.adopted ? { nicPreplugged: true } : {}), cloneMs: clone.cloneMs, memoryCopyMs: clone.copyMs, guestCid: clone.info.guestCid });
      const tCheck = Date.now();
      // A clone's reseed and clock go out with CreateSandbox (ttrpc multiplexes
      // them; none depends on another): one round trip to the guest less. Not
      // with an agent policy, which CreateSandbox sets: they must reach the
      // agent before it, as the policy need not allow them.
      const unique = clone ? pre?.unique ?? makeCloneUnique(this.agentClient) : undefined;
      if (policy) await unique;
      await Promise.all([
        unique,
        this.agentClient.createSandbox({ sandbox_id: this.id, hostname: this.opts.hostname ?? '', dns: this.opts.dns ?? [], sysctls: {}, policy_json: policy?.text ?? '' }),
      ]);
      if (this.network) {
        const plan = guestNetworkPlan(this.network.snapshot(), (d) => this.devices.get(d)?.pciPath);
        await configureGuestNetwork(this.agentClient, plan);
        this.pushedNetwork = plan;
        // Interfaces CNI adds later are hotplugged (where the hypervisor can).
        if (this.opts.hypervisor.addNet) this.netWatch = NetnsWatcher.start(this.opts.netns!, () => void this.resyncNetwork());
      }
      // Without it the pod runs as before; only port-forward is refused.
      // Not awaited: an iptables run is no part of a pod's start; stop() waits for it.
      if (this.opts.netns) {
        this.portForward = PortForwarder.start({ netns: this.opts.netns, vsockSocket: () => this.vsockSocket, log: this.log })
          .catch((err) => { this.log.warn('CRI port-forward unavailable for this pod', { err: errorMessage(err) }); return undefined; });
      }
      // kata-ctl (list/metrics/exec) reaches the agent through us: see ctl-channel.ts.
      const { serveCtlChannel } = await import('./ctl-channel');
      this.ctl = await serveCtlChannel(this.dir, this.agentClient, { debugConsole: cfg['agent.kata'].debug_console_enabled, resizeVolume: (p, size) => this.resizeDirectVolume(p, size) });
      // Page scanner and balloon, reached by kata-ctl on mem.sock (src/resource/memory).
      this.memory = await startSandboxMemory(this.opts.hypervisor, cfg, this.id, this.dir, vmCfg.memoryMiB, this.agentClient, vmCfg.vcpus);
      this.log.info('sandbox ready', { bootMs: Date.now() - t0, accel: this.vm.accel, guest: parseTimings(guestTimings),
        host: { toAgentReadyMs: tMarker - t0, dialMs: wire.timings.connectMs, firstRpcMs: tCheck - tMarker, sandboxSetupMs: Date.now() - tCheck } });
      this.phase = 'running';
      this.persist();
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  /**
   * The pod netns changed: hotplug a virtio-net device for each interface
   * that appeared (unplug those that went), then tell the agent what
   * changed — interfaces whose name, MTU or addresses differ, and the routes
   * and neighbours when they differ. One resync at a time.
   */
  resyncNetwork(): Promise<void> {
    this.netSync = this.netSync.then(async () => {
      const net = this.network;
      const hv = this.opts.hypervisor;
      if (!net || !this.agentClient || this.phase !== 'running' || !hv.addNet) return;
      try {
        const { added, removed } = net.rescan();
        for (const e of removed) await this.devices.detach(e.id, SANDBOX_HOLDER);
        for (const e of added) {
          await this.devices.attach({ kind: 'net', ...PodNetwork.netDevice(e) }, SANDBOX_HOLDER);
          net.closeTap(e);
          this.log.info('pod interface hotplugged', { iface: e.link.name, mac: e.link.mac, device: e.id });
        }
        const plan = guestNetworkPlan(net.snapshot(), (d) => this.devices.get(d)?.pciPath);
        const before = this.pushedNetwork;
        const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
        for (const i of plan.interfaces) {
          if (!same(before?.interfaces.find((x) => x.hw_addr === i.hw_addr), i)) await this.agentClient.updateInterface(i);
        }
        if (!same(before?.routes, plan.routes)) await this.agentClient.updateRoutes(plan.routes);
        const newNeighbours = plan.neighbours.filter((n) => !before?.neighbours.some((o) => same(o, n)));
        if (newNeighbours.length) await this.agentClient.addArpNeighbors(newNeighbours);
        this.pushedNetwork = plan;
      } catch (err) {
        this.log.error('cannot follow a change of the pod network', { netns: this.opts.netns, err: errorMessage(err) });
      }
    });
    return this.netSync;
  }

  private async prepareImage(containerId: string, rootfs: string): Promise<string> {
    const image = path.join(this.dir, `rootfs-${diskIdFor(containerId)}.erofs`);
    await buildErofsImage(rootfs, image);
    this.preparedImages.set(containerId, image);
    return image;
  }

  /**
   * Create a container from an OCI spec whose rootfs is the host directory
   * `rootfs`. A container not known at boot gets its directory shared by
   * virtio-fs hotplug (default) or, with rootfsShare 'erofs' or a hypervisor
   * that cannot hotplug shares, an EROFS disk.
   */
  async createContainer(id: string, spec: OciSpec, rootfs: string, opts: { rootfsShare?: RootfsShare; image?: string; stdio?: StdioPorts } = {}): Promise<void> {
    // Passfd IO (passfd-stdio.ts): the init's stdio streams, named in the agent's CreateContainer.
    if (opts.stdio) this.passfdPorts.set(id, opts.stdio);
    try {
      await this.createContainerWith(id, spec, rootfs, opts);
    } finally {
      this.passfdPorts.delete(id);
    }
  }

  private async createContainerWith(id: string, spec: OciSpec, rootfs: string, opts: { rootfsShare?: RootfsShare; image?: string }): Promise<void> {
    if (this.containers.has(id)) throw new SandboxError('container', `container ${id} already exists in sandbox ${this.id}`);
    // linux.devices: bad entries are refused before anything is set up (src/resource/devices).
    const devPlan = planContainerDevices(spec, { mode: this.opts.config.runtime.vfio_mode as VfioMode, ...this.opts.vfio });
    if (devPlan.hostDevicesLeftOut) {
      this.log.warn('privileged container: host devices are not passed into the VM (as containerd\'s privileged_without_host_devices); name a device without --privileged to attach it', { container: id, leftOut: devPlan.hostDevicesLeftOut });
    }
    // Pod resizing (src/resource/memory/resize.ts): the VM grows for the container's limits; beyond its maximum the container is refused here.
    await this.memory?.containerJoins(id, spec.linux?.resources);
    // Volumes first: a bad bind mount is refused before anything is set up.
    // Direct-assigned volumes are not shared through virtio-fs (direct-volumes.ts).
    const vol = await this.mountVolumes(id, { ...spec, mounts: planDirectMounts(spec.mounts, this.directVolumeStore).rest }).catch(async (err) => {
      await this.memory?.containerLeaves(id);
      // A boot container's rootfs is bound already: not left behind.
      await this.volumes.remove(id).catch((e) => this.log.warn('cannot unmount a container\'s rootfs', { container: id, err: errorMessage(e) }));
      throw err;
    });
    try {
      await this.attachContainerDevices(id, devPlan);
      const direct = await this.directVolumes.attach(id, spec);
      if (direct.storages.length || this.containerDevices.has(id)) this.guestBlockMounts.add(id);
      const mounts = direct.mounts.length ? [...(vol.mounts ?? []), ...direct.mounts] : vol.mounts;
      await this.createWithRootfs(id, { ...spec, mounts }, rootfs, opts, [...vol.storages, ...direct.storages]);
    } catch (err) {
      this.containerDevices.delete(id);
      this.guestBlockMounts.delete(id);
      await this.directVolumes.release(id);
      await this.devices.detachHolder(id).catch((e) => this.log.warn('cannot detach a container\'s devices', { container: id, err: errorMessage(e) }));
      await this.memory?.containerLeaves(id);
      await this.leaveShare(id);
      throw err;
    }
  }

  /**
   * Hotplugs the disks of a container's linux.devices (all or nothing) and
   * records where they are for the agent: their PCI paths.
   */
  private async attachContainerDevices(id: string, plan: ContainerDevicePlan): Promise<void> {
    if (!plan.disks.length) return;
    const attached = await this.devices.attachAll(plan.disks, id);
    this.containerDevices.set(id, plan.devices.map((d, i) => ({ ...d, vm_path: attached[i].pciPath ?? attached[i].spec.id })));
  }

  /**
   * Attaches the sandbox share (SHARED_FS_TAG, `<dir>/shared`: every
   * container's volumes and shared roots) unless it is attached already:
   * on the command line at boot, else hotplugged here, once for the
   * sandbox's life. Idempotent; callable as soon as the VM runs, before any
   * container exists (a pre-started VM waiting to be claimed can take it
   * early, so its first container needs no hotplug at all).
   */
  async attachSandboxShare(): Promise<void> {
    if (this.sandboxShare) return;
    const hv = this.opts.hypervisor;
    if (!hv.addShare) throw new VolumeError('unsupported', `the sandbox share needs virtio-fs hotplug, which the ${hv.name} hypervisor does not provide (use qemu, or share at boot)`);
    await this.volumes.prepare();
    await this.devices.attach({ kind: 'fs', id: SHARED_FS_TAG, path: this.volumes.sharedDir }, SANDBOX_HOLDER);
    this.sandboxShare = true;
  }

  /** Whether a container can get its rootfs or volumes through the sandbox share (attached, or attachable now). */
  private get canShare(): boolean {
    return this.sandboxShare || !!this.opts.hypervisor.addShare;
  }

  /** The agent's storage for the sandbox share (mounted once at SHARED_GUEST_DIR, counted per container). */
  private sandboxShareStorage(): Storage {
    return virtiofsStorage(SHARED_FS_TAG, SHARED_GUEST_DIR, this.devices.get(SHARED_FS_TAG)?.pciPath);
  }

  /**
   * Validates and mounts a container's bind mounts on the host (volumes.ts);
   * returns the translated mounts and the sandbox storages the agent needs
   * for them (the sandbox share, the pod's /dev/shm), to go before the rootfs.
   */
  private async mountVolumes(id: string, spec: OciSpec): Promise<{ mounts: OciSpec['mounts']; storages: Storage[] }> {
    if (!spec.mounts?.length) return { mounts: spec.mounts, storages: [] };
    const plan = planVolumes(id, spec.mounts, this.volumes.sharedDir);
    const storages: Storage[] = [];
    if (plan.volumes.length) {
      if (!this.canShare) throw new VolumeError('unsupported', `bind mounts need virtio-fs, which the ${this.opts.hypervisor.name} hypervisor does not provide (use qemu)`);
      await this.attachSandboxShare();
      await this.volumes.add(id, plan.volumes);
      storages.push(this.sandboxShareStorage());
    }
    if (plan.needsShm) {
      storages.push({ driver: 'ephemeral', source: 'shm', fstype: 'tmpfs', options: ['nosuid', 'nodev', 'noexec', 'mode=1777', 'size=65536k'], mount_point: SANDBOX_SHM_GUEST_DIR });
    }
    return { mounts: plan.mounts, storages };
  }

  private async createWithRootfs(id: string, spec: OciSpec, rootfs: string, opts: { rootfsShare?: RootfsShare; image?: string }, volumeStorages: Storage[]): Promise<void> {
    const root = `${GUEST_CONTAINERS_DIR}/${id}/rootfs`;
    if (opts.image || this.bootImages.has(id)) {
      await this.createFromImage(id, spec, opts.image, volumeStorages, root);
      return;
    }
    // The default rootfs, copied in the guest image: a tmpfs overlay over that copy, no disk (guest-rootfs.ts).
    const guestRoot = this.guestRoots.get(id)
      ?? (!this.preparedImages.has(id) && opts.rootfsShare === 'erofs' ? guestCopyOfRootfs(this.opts.config, this.opts.hypervisor.name, rootfs) : undefined);
    if (guestRoot) {
      await this.agent.createContainer({
        container_id: id, exec_id: '', devices: this.containerDevices.get(id) ?? [], ...this.passfdPorts.get(id),
        storages: [...volumeStorages, { driver: 'overlay', source: 'overlay', fstype: 'overlay', options: [`lowerdir=${guestRoot}`], mount_point: root }],
        oci_spec_json: JSON.stringify({ ...spec, root: { path: root, readonly: spec.root?.readonly ?? false } }),
      });
      this.containers.set(id, { id, disk: '', shared: false, image: '', state: 'created', pid: 0 });
      this.persist();
      return;
    }
    if (!this.volumes.hasRootfs(id) && !this.preparedImages.has(id) && (opts.rootfsShare ?? 'virtiofs') === 'virtiofs' && this.canShare) {
      const planned = (() => {
        try {
          return planRootfs(id, rootfs, this.volumes.sharedDir);
        } catch (err) {
          throw new SandboxError('container', errorMessage(err), { cause: err });
        }
      })();
      await this.attachSandboxShare();
      await this.volumes.addRootfs(id, planned);
    }
    if (this.volumes.hasRootfs(id)) {
      // The sandbox share (Kata's shared directory): the rootfs is a
      // directory in it, writable, no overlay and no storage of its own —
      // the agent mounts the share once (counted) and runs the container
      // at its guest path. On failure the caller unbinds it (volumes.remove).
      const shareRoot = sharedRootfsGuestPath(id);
      const storages = volumeStorages.some((st) => st.mount_point === SHARED_GUEST_DIR) ? [...volumeStorages] : [...volumeStorages, this.sandboxShareStorage()];
      // A read-only shared root: the container's writes go to an overlay the VM throws away.
      const overlay = this.overlayRoots.has(id);
      if (overlay) storages.push({ driver: 'overlay', source: 'overlay', fstype: 'overlay', options: [`lowerdir=${shareRoot}`], mount_point: root });
      await this.agent.createContainer({
        container_id: id, exec_id: '', devices: this.containerDevices.get(id) ?? [], ...this.passfdPorts.get(id),
        storages,
        oci_spec_json: JSON.stringify({ ...spec, root: { path: overlay ? root : shareRoot, readonly: spec.root?.readonly ?? false } }),
      });
      this.containers.set(id, { id, disk: '', shared: true, image: '', state: 'created', pid: 0 });
      this.persist();
      return;
    }
    const disk = diskIdFor(id);
    let image = this.preparedImages.get(id);
    if (!image) {
      image = await this.prepareImage(id, rootfs);
      await this.devices.attach({ kind: 'blk', id: disk, path: image, readonly: true }, id);
    }
    const lower = `/run/kata-ts/storage/${id}`;
    try {
      await this.agent.createContainer({
        container_id: id, exec_id: '', devices: this.containerDevices.get(id) ?? [], ...this.passfdPorts.get(id),
        storages: [
          ...volumeStorages,
          // The agent waits for the disk at its PCI path (Kata's form) where it has one, else by serial (virtio-mmio).
          { driver: 'blk', source: this.devices.get(disk)?.pciPath ?? disk, fstype: 'erofs', options: ['ro'], mount_point: lower },
          { driver: 'overlay', source: 'overlay', fstype: 'overlay', options: [`lowerdir=${lower}`], mount_point: root },
        ],
        oci_spec_json: JSON.stringify({ ...spec, root: { path: root, readonly: spec.root?.readonly ?? false } }),
      });
    } catch (err) {
      await this.devices.detach(disk, id).catch(() => undefined);
      throw err;
    }
    this.containers.set(id, { id, disk, shared: false, image, state: 'created', pid: 0 });
    this.persist();
  }

  /**
   * A container whose rootfs is a converted image (`rootfs` unused): its two
   * disks (attached at boot, else hotplugged now) and the agent's EROFS +
   * overlay storages (image-rootfs.ts).
   */
  private async createFromImage(id: string, spec: OciSpec, image: string | undefined, volumeStorages: Storage[], root: string): Promise<void> {
    const { imageStorages, openImageDisks } = await imageRootfs();
    let ids = this.bootImages.get(id);
    if (!ids) {
      const img = openImageDisks(this.opts.config, id, image!, this.id);
      await this.devices.attachAll(img.disks.map((d) => ({ kind: 'blk' as const, ...d })), id).catch((err) => { img.device.close(); throw err; });
      ids = { meta: img.disks[0].id, blob: img.disks[1].id };
    }
    const lower = `/run/kata-ts/storage/${id}`;
    try {
      await this.agent.createContainer({
        container_id: id, exec_id: '', devices: this.containerDevices.get(id) ?? [], ...this.passfdPorts.get(id),
        storages: [...volumeStorages, ...imageStorages(id, lower, root, (disk) => this.devices.get(disk)?.pciPath)],
        oci_spec_json: JSON.stringify({ ...spec, root: { path: root, readonly: spec.root?.readonly ?? false } }),
      });
    } catch (err) {
      await this.devices.detach(ids.blob, id).catch(() => undefined);
      await this.devices.detach(ids.meta, id).catch(() => undefined);
      throw err;
    }
    this.containers.set(id, { id, disk: ids.meta, blobDisk: ids.blob, shared: false, image: '', state: 'created', pid: 0 });
    this.persist();
  }

  async startContainer(id: string): Promise<number> {
    const c = this.container(id);
    c.pid = await this.agent.startContainer(id);
    c.state = 'running';
    this.persist();
    return c.pid;
  }

  /** `stdio`: passfd IO's stream ports (passfd-stdio.ts), when the caller opened them. */
  async exec(containerId: string, execId: string, proc: OciProcess, stdio?: StdioPorts): Promise<number> {
    this.container(containerId);
    return this.agent.execProcess({ container_id: containerId, exec_id: execId, process_json: JSON.stringify(proc), ...stdio });
  }

  async removeContainer(id: string, timeoutSec = this.opts.config.runtime.stop_timeout): Promise<void> {
    const c = this.container(id);
    const t0 = Date.now();
    await this.agent.removeContainer(id, timeoutSec);
    const tAgent = Date.now();
    if (c.disk) await this.devices.detach(c.disk, id).catch(() => undefined);
    if (c.blobDisk) await this.devices.detach(c.blobDisk, id).catch(() => undefined);
    // Its linux.devices disks (a disk another container also holds stays).
    this.containerDevices.delete(id);
    this.guestBlockMounts.delete(id);
    await this.devices.detachHolder(id).catch((err) => this.log.warn('cannot detach a container\'s devices', { container: id, err: errorMessage(err) }));
    await this.directVolumes.release(id);
    // After the agent let go of it: the rootfs bind (c.shared) and the
    // volumes leave the share (the shim unmounts the rootfs right after).
    await this.leaveShare(id);
    if (c.image) fs.rmSync(c.image, { force: true });
    this.guestRoots.delete(id);
    this.containers.delete(id);
    this.persist();
    await this.memory?.containerLeaves(id);
    this.log.debug('container removed', { container: id, agentMs: tAgent - t0, hostMs: Date.now() - tAgent });
  }

  /**
   * kata-ctl direct-volume resize (through the ctl channel): grow the
   * volume's disk on the host (QMP block_resize, or our vhost-user-blk
   * backend's config change), then its filesystem in the guest (the
   * agent's ResizeVolume, online). A smaller size is refused first.
   */
  private async resizeDirectVolume(guestPath: string, size: number): Promise<void> {
    const disk = this.directVolumes.diskOf(guestPath, size);
    const hv = this.opts.hypervisor;
    if (!hv.resizeDisk) throw new SandboxError('container', `the ${hv.name} hypervisor cannot resize disks`);
    await hv.resizeDisk(disk, size);
    await this.agent.resizeVolume(guestPath, size);
    this.log.info('direct volume resized', { guestPath, size });
  }

  /**
   * Unbinds a container's volumes and shared rootfs from the sandbox share.
   * The share's FUSE server then lets go of what it held in that rootfs (a
   * filesystem of its own, as containerd's snapshot): the guest's dentry
   * cache would otherwise pin the unmounted snapshot in the host kernel
   * until it happened to forget it.
   */
  private async leaveShare(id: string): Promise<void> {
    try {
      const dev = await this.volumes.remove(id);
      if (dev !== undefined) {
        const n = this.opts.hypervisor.forgetShareDevice?.(SHARED_FS_TAG, dev) ?? 0;
        this.log.debug('shared rootfs left the share', { container: id, inodesReleased: n });
      }
    } catch (err) {
      this.log.warn('cannot unmount volumes (retried at sandbox stop)', { container: id, err: errorMessage(err) });
    }
  }

  markExited(id: string): void {
    const c = this.containers.get(id);
    if (c) {
      c.state = 'stopped';
      this.persist();
    }
  }

  private container(id: string): HostContainer {
    const c = this.containers.get(id);
    if (!c) throw new SandboxError('container', `container ${id} not found in sandbox ${this.id}`);
    return c;
  }

  /** Stop everything; safe to call many times and from any state. */
  stop(): Promise<void> {
    this.stopped ??= this.doStop();
    return this.stopped;
  }

  private async doStop(): Promise<void> {
    this.phase = 'stopping';
    if (fs.existsSync(this.dir)) this.persist();
    await this.ctl?.close();
    await this.memory?.close();
    this.netWatch?.close();
    await (await this.portForward)?.close();
    await this.netSync;
    const t0 = Date.now();
    if (this.agentClient) {
      // The VM is about to be killed: the guest's own teardown (stopping and
      // deleting containers, unmounting; ~0.5 s under TCG) changes nothing the
      // host keeps. virtio-fs is write-through (no FUSE writeback cache), so a
      // container's writes to a shared directory are on the host already. Only
      // a filesystem on a guest block device may hold dirty pages: then the
      // agent unmounts first, as before.
      if (this.guestBlockMounts.size) await this.agentClient.destroySandbox(5000).catch(() => undefined);
      this.agentClient.close();
    }
    const tAgent = Date.now();
    await this.opts.hypervisor.stop().catch((err) => this.log.warn('hypervisor stop failed', { err: errorMessage(err) }));
    const tVm = Date.now();
    try {
      this.network?.teardown();
    } catch (err) {
      this.log.warn('cannot tear down the pod network', { err: errorMessage(err) });
    }
    // A pre-plugged NIC's tap fd (closed already when the network took it or did not want it; idempotent).
    this.opts.prestarted?.nic?.close();
    await this.volumes.close().catch((err) => this.log.warn('cannot unmount volumes', { err: errorMessage(err) }));
    await this.directVolumes.releaseAll();
    this.phase = 'stopped';
    // Never a recursive delete through a volume mount that is still there.
    if (!removeTreeSafely(this.dir)) this.log.error('mounts are left under the sandbox directory; not removing it', { dir: this.dir });
    this.log.debug('sandbox stopped', { agentMs: tAgent - t0, vmStopMs: tVm - tAgent, cleanupMs: Date.now() - tVm });
  }

  private persist(): void {
    const st: SandboxState = {
      id: this.id, phase: this.phase, hypervisor: this.opts.hypervisor.name, accel: this.vm?.accel ?? '',
      ownerPid: process.pid, ownerStartTime: processStartTime(process.pid), vmPids: this.vm?.pids ?? [],
      vcpus: this.opts.vcpus ?? vmSizing(this.opts.config, this.opts.hypervisor.name).vcpus,
      memoryMiB: this.opts.memoryMiB ?? vmSizing(this.opts.config, this.opts.hypervisor.name).memoryMiB,
      createdAt: this.createdAt,
      containers: [...this.containers.values()].map((c) => ({ id: c.id, state: c.state, pid: c.pid, disk: c.disk })),
    };
    try {
      writeState(this.dir, st);
    } catch (err) {
      this.log.warn('cannot persist state', { err: errorMessage(err) });
    }
  }
}
