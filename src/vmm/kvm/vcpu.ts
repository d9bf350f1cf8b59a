/**
 * One vCPU: the native KvmVcpu (KVM_RUN on its own thread) plus the exit
 * dispatch on the JS thread. IO and MMIO exits go to the buses; every other
 * exit ends the vCPU with a VcpuEnd that says why in words
 * (api.rst §5: KVM_EXIT_SHUTDOWN is a triple fault, SYSTEM_EVENT a PSCI-/
 * ACPI-style shutdown or reset, INTERNAL_ERROR usually the emulator meeting
 * an instruction it cannot handle, FAIL_ENTRY bad guest state).
 */
import type { Bus } from '../bus';
import { VmmError } from '../errors';
import { EXIT, EXIT_NAMES, INTERNAL_ERROR, REC_ADDR, REC_AUX0, REC_AUX1, REC_AUX_DATA, REC_BYTES, REC_COUNT, REC_DATA, REC_REASON, REC_SIZE, REC_WRITE, SYSTEM_EVENT } from './exit-record';
import { kvmNative, type NativeVcpu } from './native';
import * as os from 'node:os';

export interface VcpuEnd {
  vcpu: number;
  /** shutdown/reset: the guest asked; error: it broke or KVM failed; stopped: we asked. */
  kind: 'shutdown' | 'reset' | 'error' | 'stopped';
  reason: string;
  error?: VmmError;
}

/** Who a vCPU exit handler can reach. */
export interface VcpuBuses {
  pio: Bus;
  mmio: Bus;
  /** A device asked for a reset (i8042) or poweroff: the machine ends all vCPUs. */
}

export class Vcpu {
  readonly native: NativeVcpu;
  readonly record = new ArrayBuffer(REC_BYTES);
  private readonly view = new DataView(this.record);
  private readonly bytes = new Uint8Array(this.record);
  private pauseWaiters: Array<() => void> = [];
  private onEnd: ((e: VcpuEnd) => void) | undefined;
  private ended = false;
  /** IO + MMIO exits handled (a cheap counter for tests and the benchmark). */
  exits = 0;

  constructor(vmFd: number, readonly index: number, mmapSize: number, private readonly buses: VcpuBuses) {
    this.native = new (kvmNative().KvmVcpu)(vmFd, index, mmapSize, this.record);
  }

  /** Starts the vCPU thread; `onEnd` is called once when it stops for any reason. */
  start(onEnd: (e: VcpuEnd) => void): void {
    this.onEnd = onEnd;
    this.ended = false;
    this.native.start((reason) => this.onExit(reason));
  }

  /** Handles the exit now in the record; returns true when it ended the vCPU. */
  handleExit(reason: number): boolean {
    const v = this.view;
    if (reason === EXIT.IO) {
      const port = Number(v.getBigUint64(REC_ADDR, true));
      const size = v.getUint32(REC_SIZE, true);
      const count = v.getUint32(REC_COUNT, true);
      const write = v.getUint32(REC_WRITE, true) !== 0;
      for (let i = 0; i < count; i++) {
        const d = this.bytes.subarray(REC_DATA + i * size, REC_DATA + (i + 1) * size);
        if (write) this.buses.pio.write(port, d); else this.buses.pio.read(port, d);
      }
      this.exits++;
      return false;
    }
    if (reason === EXIT.MMIO) {
      const addr = Number(v.getBigUint64(REC_ADDR, true));
      const size = v.getUint32(REC_SIZE, true);
      const d = this.bytes.subarray(REC_DATA, REC_DATA + size);
      if (v.getUint32(REC_WRITE, true) !== 0) this.buses.mmio.write(addr, d); else this.buses.mmio.read(addr, d);
      this.exits++;
      return false;
    }
    if (reason === EXIT.PAUSED) {
      const w = this.pauseWaiters.splice(0);
      for (const f of w) f();
      return false;
    }
    this.end(this.describe(reason));
    return true;
  }

  private onExit(reason: number): void {
    try {
      this.handleExit(reason);
    } catch (err) {
      // A device model bug must not leave the guest waiting on an answer
      // forever nor kill the process: end this vCPU with the error.
      this.native.stop();
      this.end({ vcpu: this.index, kind: 'error', reason: `exit handler failed: ${(err as Error).message}`, error: new VmmError('device', `vCPU ${this.index}: exit handler failed`, { cause: err }) });
    }
  }

  private end(e: VcpuEnd): void {
    if (this.ended) return;
    this.ended = true;
    const w = this.pauseWaiters.splice(0);
    for (const f of w) f();
    this.onEnd?.(e);
  }

  /** Words for a terminal exit (the record holds its details). */
  describe(reason: number): VcpuEnd {
    const v = this.view;
    const aux0 = v.getUint32(REC_AUX0, true);
    const aux1 = v.getUint32(REC_AUX1, true);
    const i = this.index;
    const err = (msg: string): VcpuEnd => ({ vcpu: i, kind: 'error', reason: msg, error: new VmmError(reason === EXIT.RUN_ERROR ? 'kvm' : 'guest', `vCPU ${i}: ${msg}`) });
    switch (reason) {
      case EXIT.STOPPED: return { vcpu: i, kind: 'stopped', reason: 'stopped by the host' };
      case EXIT.HLT: return err('guest halted (HLT with no in-kernel irqchip to wake it)');
      case EXIT.SHUTDOWN: return err('guest triple-faulted (KVM_EXIT_SHUTDOWN)');
      case EXIT.SYSTEM_EVENT:
        if (aux0 === SYSTEM_EVENT.SHUTDOWN) return { vcpu: i, kind: 'shutdown', reason: 'guest powered off (KVM_SYSTEM_EVENT_SHUTDOWN)' };
        if (aux0 === SYSTEM_EVENT.RESET) return { vcpu: i, kind: 'reset', reason: 'guest reset (KVM_SYSTEM_EVENT_RESET)' };
        return err(`guest system event ${aux0 === SYSTEM_EVENT.CRASH ? 'CRASH' : aux0}`);
      case EXIT.INTERNAL_ERROR: {
        const data: string[] = [];
        for (let k = 0; k < Math.min(aux1, 16); k++) data.push('0x' + v.getBigUint64(REC_AUX_DATA + 8 * k, true).toString(16));
        const sub = aux0 === INTERNAL_ERROR.EMULATION ? 'instruction emulation failed' : aux0 === INTERNAL_ERROR.DELIVERY_EV ? 'event delivery failed' : `suberror ${aux0}`;
        return err(`KVM internal error: ${sub}${data.length ? ` [${data.join(' ')}]` : ''}`);
      }
      case EXIT.FAIL_ENTRY:
        return err(`VM entry failed: hardware reason 0x${v.getBigUint64(REC_AUX_DATA, true).toString(16)} on host cpu ${aux0}`);
      case EXIT.RUN_ERROR: {
        const name = Object.entries(os.constants.errno).find(([, n]) => n === aux0)?.[0] ?? `errno ${aux0}`;
        return err(`ioctl(KVM_RUN) failed: ${name}`);
      }
      default:
        return err(`unexpected exit ${EXIT_NAMES[reason] ?? reason}`);
    }
  }

  /** Parks the thread outside KVM_RUN; resolves once it is parked (or ended). */
  pause(): Promise<void> {
    if (this.ended || !this.native.running) return Promise.resolve();
    return new Promise((resolve) => {
      // Already parked (paused twice): no PAUSED exit follows.
      if (this.native.pause()) { resolve(); return; }
      this.pauseWaiters.push(resolve);
    });
  }

  resume(): void {
    this.native.resume();
  }

  /** Ends the thread (joins it) and reports 'stopped' if nothing ended it before. */
  stop(): void {
    this.native.stop();
    this.end({ vcpu: this.index, kind: 'stopped', reason: 'stopped by the host' });
  }

  close(): void {
    this.stop();
    this.native.close();
  }

  get reasonInRecord(): number {
    return this.view.getUint32(REC_REASON, true);
  }
}
