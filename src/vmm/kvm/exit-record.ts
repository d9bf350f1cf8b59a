/**
 * The exit record a vCPU thread fills for each exit (layout owned by
 * native/src/kvm_vcpu.cc; keep the two in step). Reasons below 0x1000 are
 * KVM's exit_reason (linux/kvm.h, api.rst §5 "kvm_run"); 0x1000+ are ours.
 */
export const REC_REASON = 0, REC_WRITE = 4, REC_ADDR = 8, REC_SIZE = 16, REC_COUNT = 20,
  REC_AUX0 = 24, REC_AUX1 = 28, REC_AUX_DATA = 32, REC_DATA = 160;
export const REC_DATA_MAX = 4096;
export const REC_BYTES = REC_DATA + REC_DATA_MAX;

export const EXIT = {
  UNKNOWN: 0, EXCEPTION: 1, IO: 2, HYPERCALL: 3, DEBUG: 4, HLT: 5, MMIO: 6, IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8, FAIL_ENTRY: 9, INTR: 10, SET_TPR: 11, TPR_ACCESS: 12, NMI: 16, INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
  PAUSED: 0x1000, RUN_ERROR: 0x1001, STOPPED: 0x1002,
} as const;

export const EXIT_NAMES: Record<number, string> = Object.fromEntries(Object.entries(EXIT).map(([k, v]) => [v, k]));

/** KVM_SYSTEM_EVENT_* types. */
export const SYSTEM_EVENT = { SHUTDOWN: 1, RESET: 2, CRASH: 3 } as const;
/** KVM_INTERNAL_ERROR_* sub-errors. */
export const INTERNAL_ERROR = { EMULATION: 1, SIMUL_EX: 2, DELIVERY_EV: 3, UNEXPECTED_EXIT_REASON: 4 } as const;
