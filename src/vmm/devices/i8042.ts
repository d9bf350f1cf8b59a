/**
 * i8042 keyboard controller, only what a guest uses to reset the machine:
 * command 0xFE on port 0x64 pulses the CPU reset line (Linux `reboot=k`,
 * arch/x86/kernel/reboot.c). Status reads say "no data, input buffer
 * empty" so probes finish quickly. As in Firecracker, a reset ends the VM.
 */
import type { BusDevice } from '../bus';

export const I8042_DATA = 0x60, I8042_CMD = 0x64;
export const I8042_RESET_CMD = 0xfe;

export class I8042 implements BusDevice {
  constructor(private readonly onReset: () => void) {}
  /** Registered at 0x60 with length 5 (0x60..0x64); offset 4 is the command/status port. */
  read(_off: number, d: Uint8Array): void {
    d.fill(0);
  }
  write(off: number, d: Uint8Array): void {
    if (off === 4 && d[0] === I8042_RESET_CMD) this.onReset();
  }
}
