/**
 * A KVM VM (api.rst §4): checks the API and the capabilities we rely on,
 * creates the VM with the in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT,
 * places the TSS and identity-map pages, and gives it guest RAM.
 *
 * Guest RAM (ARCHITECTURE.md decision 1): one memfd mapped MAP_FIXED|
 * MAP_SHARED over HotMemory's guest area, each guest region registered as a
 * KVM memory slot at its host address inside the WebAssembly.Memory. The
 * HotMemory must outlive the VM (KVM holds the pages by address).
 * attachAnonymous() instead keeps the Memory's own private anonymous pages
 * (KSM merges only those: Machine's `mergeableRam`), and attachMemoryFile()
 * maps a snapshot MAP_PRIVATE. `ramBacking` says which, for the balloon's
 * choice of madvise (src/virtio/balloon/release.ts).
 */
import type { HotMemory } from '../../hot/memory';
import { VmmError } from '../errors';
import { IDENTITY_MAP_ADDR, TSS_ADDR } from '../layout';
import { KVM_CAP, kvmNative, type CpuidEntry } from './native';

const REQUIRED_CAPS: Array<[keyof typeof KVM_CAP, string]> = [
  ['IRQCHIP', 'in-kernel irqchip'], ['USER_MEMORY', 'user memory slots'], ['SET_TSS_ADDR', 'TSS address'],
  ['IRQFD', 'irqfd'], ['IOEVENTFD', 'ioeventfd'], ['PIT2', 'in-kernel PIT'], ['IMMEDIATE_EXIT', 'immediate_exit (clean vCPU kicks)'],
];

export class KvmVm {
  readonly kvmFd: number;
  readonly vmFd: number;
  readonly mmapSize: number;
  readonly maxVcpus: number;
  readonly supportedCpuid: CpuidEntry[];
  private memfd = -1;
  private mapped: { offset: number; length: number } | undefined;
  private slots = 0;
  private closed = false;

  constructor(opts: { devKvm?: string } = {}) {
    const n = kvmNative();
    let kvmFd: number;
    try {
      kvmFd = n.kvmOpen(opts.devKvm ?? '/dev/kvm');
    } catch (cause) {
      throw new VmmError('kvm', `cannot open ${opts.devKvm ?? '/dev/kvm'}: ${(cause as Error).message}`, { cause });
    }
    this.kvmFd = kvmFd;
    try {
      const api = n.kvmApiVersion(kvmFd);
      if (api !== 12) throw new VmmError('kvm', `KVM API version ${api}; kata-ts needs 12`);
      for (const [cap, what] of REQUIRED_CAPS) {
        if (n.kvmCheckExtension(kvmFd, KVM_CAP[cap]) <= 0) throw new VmmError('kvm', `KVM lacks KVM_CAP_${cap} (${what})`);
      }
      this.maxVcpus = n.kvmCheckExtension(kvmFd, KVM_CAP.MAX_VCPUS) || n.kvmCheckExtension(kvmFd, KVM_CAP.NR_VCPUS) || 4;
      this.mmapSize = n.kvmVcpuMmapSize(kvmFd);
      this.supportedCpuid = n.kvmGetSupportedCpuid(kvmFd);
      this.vmFd = n.kvmCreateVm(kvmFd);
    } catch (err) {
      n.closeFd(kvmFd);
      throw err instanceof VmmError ? err : new VmmError('kvm', (err as Error).message, { cause: err });
    }
    try {
      n.vmSetTssAddr(this.vmFd, TSS_ADDR);
      n.vmSetIdentityMapAddr(this.vmFd, IDENTITY_MAP_ADDR);
      n.vmCreateIrqchip(this.vmFd);
      n.vmCreatePit2(this.vmFd);
    } catch (err) {
      this.close();
      throw new VmmError('kvm', (err as Error).message, { cause: err });
    }
  }

  /** Backs HotMemory's guest regions with a fresh memfd and registers them as slots. */
  attachMemory(hot: HotMemory): void {
    if (this.memfd >= 0) throw new VmmError('config', 'guest memory already attached');
    if (hot.guestBytes === 0) throw new VmmError('config', 'HotMemory has no guest regions');
    const n = kvmNative();
    this.memfd = n.memfdCreate('kata-ts-guest-ram', hot.guestBytes);
    n.mapFileOver(hot.memory.buffer, hot.guestBase, hot.guestBytes, this.memfd, 0);
    this.registerRam(hot, 'shared-memfd');
  }
  private hot: HotMemory | undefined;
  private backing: 'shared-memfd' | 'anonymous' | 'private-file' | undefined;

  /** Records what backs HotMemory's guest area now, and registers its guest regions as KVM slots over it. */
  private registerRam(hot: HotMemory, backing: 'shared-memfd' | 'anonymous' | 'private-file'): void {
    this.mapped = { offset: hot.guestBase, length: hot.guestBytes };
    this.hot = hot;
    this.backing = backing;
    const n = kvmNative();
    const base = n.arrayBufferAddress(hot.memory.buffer);
    for (const r of hot.guestRegions) {
      n.vmSetUserMemoryRegion(this.vmFd, this.slots++, r.gpa, r.size, base + BigInt(r.offset), 0);
    }
  }

  /** What backs guest RAM: the shared memfd, the Memory's private anonymous pages, or a snapshot mapped MAP_PRIVATE. */
  get ramBacking(): 'shared-memfd' | 'anonymous' | 'private-file' {
    if (!this.backing) throw new VmmError('config', 'no guest memory attached');
    return this.backing;
  }

  /**
   * Registers HotMemory's guest regions as slots over the Memory's own pages
   * (V8's private anonymous mapping, committed read-write since the Memory is
   * never grown). No memfd: nothing else can map this RAM (no vhost-user
   * peer), and a snapshot reads the whole RAM instead of the memfd's data
   * ranges — the price of RAM that KSM can merge. close() puts fresh zero
   * pages back, which frees what the guest touched.
   */
  attachAnonymous(hot: HotMemory): void {
    if (this.mapped) throw new VmmError('config', 'guest memory already attached');
    if (hot.guestBytes === 0) throw new VmmError('config', 'HotMemory has no guest regions');
    this.registerRam(hot, 'anonymous');
  }

  /**
   * Restore path (src/vmm/snapshot): maps a snapshot's memory file
   * MAP_PRIVATE over HotMemory's guest area — copy-on-write, so clones of one
   * snapshot share its page cache and each writes its own copies — and
   * registers the slots. The fd is not kept: the mapping holds the file.
   * No memfd exists afterwards (memoryFd is -1): a restored VM cannot hand
   * its RAM to a vhost-user peer (README, "Builtin VMM snapshots").
   */
  attachMemoryFile(hot: HotMemory, fd: number): void {
    if (this.mapped) throw new VmmError('config', 'guest memory already attached');
    if (hot.guestBytes === 0) throw new VmmError('config', 'HotMemory has no guest regions');
    kvmNative().mapFilePrivateOver(hot.memory.buffer, hot.guestBase, hot.guestBytes, fd, 0);
    this.registerRam(hot, 'private-file');
  }

  /** The guest RAM memfd (e.g. for a vhost-user peer), or -1. */
  get memoryFd(): number { return this.memfd; }

  irqfd(eventfd: number, gsi: number, deassign = false): void {
    kvmNative().vmIrqfd(this.vmFd, eventfd, gsi, deassign);
  }

  ioeventfd(o: { fd: number; addr: number; len: number; pio?: boolean; datamatch?: number; deassign?: boolean }): void {
    kvmNative().vmIoeventfd(this.vmFd, o);
  }

  /** Edge-triggered legacy interrupt (serial, i8042). */
  pulseIrq(irq: number): void {
    const n = kvmNative();
    n.vmIrqLine(this.vmFd, irq, 1);
    n.vmIrqLine(this.vmFd, irq, 0);
  }

  /** Releases the VM: vCPUs must be closed first. Restores the Memory's zero pages. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const n = kvmNative();
    if (this.vmFd >= 0) n.closeFd(this.vmFd);
    n.closeFd(this.kvmFd);
    if (this.mapped && this.hot) n.unmapOver(this.hot.memory.buffer, this.mapped.offset, this.mapped.length);
    if (this.memfd >= 0) n.closeFd(this.memfd);
    this.memfd = -1;
  }
}
