/**
 * A process as containerd sees it through the shim: a container's init
 * (execId "") or an exec. Holds the stdio paths containerd gave, the state
 * machine created → running ⇄ paused → stopped, the exit status and time,
 * and the waiters for them (Wait may be called before Start).
 */
import type { HostIo, StdioPaths } from './stdio';
import type { OciProcess } from '../protocols/oci';

export type ProcessStatus = 'created' | 'running' | 'paused' | 'stopped';

export interface ExitInfo {
  status: number;
  exitedAt: Date;
}

export class ShimProcess {
  status: ProcessStatus = 'created';
  /** The pid containerd is told (see service.ts: the VM's host pid for init, as Kata does). */
  pid = 0;
  /** The pid inside the guest (ps). */
  guestPid = 0;
  io: HostIo | undefined;
  resize: ((rows: number, cols: number) => Promise<void>) | undefined;
  private exit: ExitInfo | undefined;
  private readonly exited: Promise<ExitInfo>;
  private resolveExit!: (e: ExitInfo) => void;

  constructor(
    readonly containerId: string,
    readonly execId: string,
    readonly stdio: StdioPaths,
    /** exec processes: the OCI process to run. */
    readonly spec?: OciProcess,
  ) {
    this.exited = new Promise((r) => (this.resolveExit = r));
  }

  get exitInfo(): ExitInfo | undefined {
    return this.exit;
  }

  wait(): Promise<ExitInfo> {
    return this.exited;
  }

  /** Records the exit once; later calls are ignored (first cause wins). */
  setExited(status: number, exitedAt: Date): boolean {
    if (this.exit) return false;
    this.exit = { status, exitedAt };
    this.status = 'stopped';
    this.resolveExit(this.exit);
    return true;
  }
}
