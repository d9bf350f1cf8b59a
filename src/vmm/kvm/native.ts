/**
 * Typed facade over the KVM and VFIO part of the addon (native/src/kvm.cc,
 * kvm_vcpu.cc, vfio.cc). Kept apart from src/common/native.ts so the VMM's
 * surface is one file; it loads the same addon through native() and tests
 * substitute it with setKvmNativeForTests().
 *
 * Numbers are KVM's (Documentation/virt/kvm/api.rst); addresses and 64-bit
 * register values are bigints.
 */
import { native } from '../../common/native';

export interface Segment {
  base: bigint; limit: number; selector: number; type: number; present: number; dpl: number;
  db: number; s: number; l: number; g: number; avl: number; unusable: number;
}
export interface DTable { base: bigint; limit: number }
export interface Sregs {
  cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment; tr: Segment; ldt: Segment;
  gdt: DTable; idt: DTable; cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint; efer: bigint; apic_base: bigint;
}
export type RegName = 'rax' | 'rbx' | 'rcx' | 'rdx' | 'rsi' | 'rdi' | 'rsp' | 'rbp' | 'r8' | 'r9' | 'r10' | 'r11' | 'r12' | 'r13' | 'r14' | 'r15' | 'rip' | 'rflags';
export type Regs = Record<RegName, bigint>;
export interface CpuidEntry { function: number; index: number; flags: number; eax: number; ebx: number; ecx: number; edx: number }

/** One vCPU (native class KvmVcpu). State access only while paused, not started, or inside an exit handler. */
export interface NativeVcpu {
  readonly fd: number;
  readonly running: boolean;
  getRegs(): Regs;
  setRegs(r: Partial<Regs>): void;
  getSregs(): Sregs;
  setSregs(s: { [K in keyof Sregs]?: K extends 'cs' | 'ds' | 'es' | 'fs' | 'gs' | 'ss' | 'tr' | 'ldt' ? Partial<Segment> : Sregs[K] }): void;
  getFpu(): { fcw: number; fsw: number; ftwx: number; mxcsr: number };
  setFpu(f: { fcw?: number; mxcsr?: number }): void;
  getXcrs(): Array<{ xcr: number; value: bigint }>;
  setXcrs(x: Array<{ xcr: number; value: bigint }>): void;
  getLapic(): Buffer;
  setLapic(b: Buffer): void;
  getMsrs(indices: number[]): bigint[];
  setMsrs(entries: Array<[number, bigint]>): void;
  setCpuid2(entries: CpuidEntry[]): void;
  getMpState(): number;
  setMpState(state: number): void;
  /** KVM's own struct for a snapshot (regs, sregs, fpu, xsave, xcrs, lapic, mpstate, events, debugregs). */
  /** For 'xsave', `size` > 4096 (KVM_CAP_XSAVE2) uses KVM_GET_XSAVE2. */
  getState(kind: string, size?: number): Buffer;
  setState(kind: string, blob: Buffer): void;
  /** Starts KVM_RUN on a native thread; handler(reason) runs on the JS thread per exit. */
  start(handler: (reason: number) => void): void;
  /** One KVM_RUN on the calling thread (not while started). */
  runOnce(): number;
  /** Asks the thread to park; true when it already is (no PAUSED exit follows). */
  pause(): boolean;
  resume(): void;
  stop(): void;
  close(): void;
}

export interface KvmAddon {
  kvmOpen(path?: string): number;
  kvmApiVersion(kvmFd: number): number;
  kvmCheckExtension(fd: number, cap: number): number;
  kvmVcpuMmapSize(kvmFd: number): number;
  kvmCreateVm(kvmFd: number): number;
  kvmGetSupportedCpuid(kvmFd: number): CpuidEntry[];
  vmSetTssAddr(vmFd: number, addr: number | bigint): void;
  vmSetIdentityMapAddr(vmFd: number, addr: number | bigint): void;
  vmCreateIrqchip(vmFd: number): void;
  vmCreatePit2(vmFd: number): void;
  vmSetUserMemoryRegion(vmFd: number, slot: number, gpa: bigint, size: number | bigint, hostAddr: bigint, flags?: number): void;
  vmIrqLine(vmFd: number, irq: number, level: number): void;
  vmIrqfd(vmFd: number, eventfd: number, gsi: number, deassign?: boolean): void;
  vmIoeventfd(vmFd: number, o: { fd: number; addr: number | bigint; len: number; pio?: boolean; datamatch?: number | bigint; deassign?: boolean }): void;
  arrayBufferAddress(b: ArrayBuffer): bigint;
  // native/src/kvm_snapshot.cc
  /** KVM's struct for pic0, pic1, ioapic, pit2 or clock. */
  vmGetState(vmFd: number, kind: string): Buffer;
  vmSetState(vmFd: number, kind: string, blob: Buffer): void;
  kvmGetMsrIndexList(kvmFd: number): number[];
  /** MAP_PRIVATE|MAP_FIXED of fd over buffer[offset, offset+length): copy-on-write. */
  mapFilePrivateOver(buffer: ArrayBuffer, offset: number, length: number, fd: number, fileOffset: number): void;
  /** lseek(2); negative errno on failure (SEEK_DATA 3, SEEK_HOLE 4). */
  fsLseek(fd: number, offset: number, whence: number): number;
  KvmVcpu: new (vmFd: number, index: number, mmapSize: number, record: ArrayBuffer) => NativeVcpu;

  // shared helpers from native/src/mem.cc and sock.cc
  memfdCreate(name: string, size: number): number;
  mapFileOver(buffer: ArrayBuffer, offset: number, length: number, fd: number, fileOffset: number, readonly?: boolean): void;
  unmapOver(buffer: ArrayBuffer, offset: number, length: number): void;
  eventfdCreate(initial?: number): number;
  eventfdRead(fd: number): number;
  eventfdWrite(fd: number, value?: number): void;
  pollStart(fd: number, events: number, cb: (events: number) => void, unref?: boolean): number;
  pollStop(id: number): void;
  closeFd(fd: number): void;

  vfioOpen(path: string): number;
  vfioApiVersion(fd: number): number;
  vfioCheckExtension(fd: number, ext: number): number;
  vfioGroupStatus(groupFd: number): { viable: boolean; containerSet: boolean };
  vfioGroupSetContainer(groupFd: number, containerFd: number): void;
  vfioSetIommuType1(containerFd: number): void;
  vfioGroupDeviceFd(groupFd: number, name: string): number;
  vfioDeviceInfo(deviceFd: number): { flags: number; numRegions: number; numIrqs: number };
  vfioRegionInfo(deviceFd: number, index: number): { flags: number; size: bigint; offset: bigint };
  vfioIrqInfo(deviceFd: number, index: number): { flags: number; count: number };
  vfioDmaMap(containerFd: number, iova: bigint, hostAddr: bigint, size: bigint | number): void;
  vfioDmaUnmap(containerFd: number, iova: bigint, size: bigint | number): void;
}

let override: KvmAddon | undefined;

export function kvmNative(): KvmAddon {
  return override ?? (native() as unknown as KvmAddon);
}

export function setKvmNativeForTests(a: KvmAddon | undefined): void {
  override = a;
}

/** KVM capability numbers we check (linux/kvm.h). */
export const KVM_CAP = {
  IRQCHIP: 0, USER_MEMORY: 3, SET_TSS_ADDR: 4, EXT_CPUID: 7, NR_VCPUS: 9, IRQ_ROUTING: 25, IRQFD: 32,
  PIT2: 33, IOEVENTFD: 36, SET_IDENTITY_MAP_ADDR: 37, XCRS: 56, MAX_VCPUS: 66, IMMEDIATE_EXIT: 136,
} as const;
