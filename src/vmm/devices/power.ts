/**
 * Power port: how a guest without ACPI stops the VM. The builtin machine has
 * no ACPI tables (so no PM1a_CNT sleep-state write), and the i8042 reset
 * already ends the VM as a reboot. A one-byte write to port 0x501 powers the
 * machine off with that byte as its exit code: `MachineEnd` kind 'shutdown',
 * `exitCode` = the byte. The port is the one QEMU's isa-debug-exit uses by
 * default, but the code is not shifted: what the guest writes is what the
 * host sees. Reads return 0. Test guests use it (test/fixtures/vmm-guest
 * `poweroff()`); a Linux guest can too (`outb(code, 0x501)` from a
 * pm_power_off hook or /dev/port), and KVM_SYSTEM_EVENT_SHUTDOWN ends the
 * VM as 'shutdown' as well.
 */
import type { BusDevice } from '../bus';

export const POWER_PORT = 0x501;

export class PowerPort implements BusDevice {
  constructor(private readonly onPowerOff: (code: number) => void) {}
  read(_off: number, d: Uint8Array): void { d.fill(0); }
  write(off: number, d: Uint8Array): void {
    if (off === 0 && d.length > 0) this.onPowerOff(d[0]);
  }
}
