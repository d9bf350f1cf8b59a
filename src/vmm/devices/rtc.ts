/**
 * MC146818 CMOS RTC at 0x70/0x71 (index/data): the time in BCD, status A
 * with update-in-progress clear, status B 24-hour BCD, status D "valid".
 * Linux reads it once at boot (mach_get_cmos_time); without it the UIP bit
 * reads as set (unclaimed ports return 0xff) and the read loop times out.
 */
import type { BusDevice } from '../bus';
import type { RtcState } from '../snapshot/format';

const bcd = (n: number): number => ((Math.floor(n / 10) << 4) | (n % 10)) & 0xff;

export class Rtc implements BusDevice {
  private index = 0;
  private nvram = new Uint8Array(128);
  /** Index and NVRAM for a snapshot; the time is the host's, read live. */
  saveState(): RtcState { return { index: this.index, nvram: Buffer.from(this.nvram).toString('base64') }; }
  loadState(s: RtcState): void { this.index = s.index; this.nvram = new Uint8Array(Buffer.from(s.nvram, 'base64')); }

  read(off: number, d: Uint8Array): void {
    d.fill(0);
    if (off === 0) { d[0] = this.index; return; }
    const t = new Date();
    switch (this.index) {
      case 0x00: d[0] = bcd(t.getUTCSeconds()); break;
      case 0x02: d[0] = bcd(t.getUTCMinutes()); break;
      case 0x04: d[0] = bcd(t.getUTCHours()); break;
      case 0x06: d[0] = t.getUTCDay() + 1; break;
      case 0x07: d[0] = bcd(t.getUTCDate()); break;
      case 0x08: d[0] = bcd(t.getUTCMonth() + 1); break;
      case 0x09: d[0] = bcd(t.getUTCFullYear() % 100); break;
      case 0x0a: d[0] = 0x26; break; // UIP clear, 32.768 kHz, 1024 Hz
      case 0x0b: d[0] = 0x02; break; // 24-hour, BCD
      case 0x0c: d[0] = 0; break;
      case 0x0d: d[0] = 0x80; break; // valid RAM and time
      case 0x32: d[0] = bcd(Math.floor(t.getUTCFullYear() / 100)); break;
      default: d[0] = this.nvram[this.index & 0x7f];
    }
  }
  write(off: number, d: Uint8Array): void {
    if (off === 0) this.index = d[0] & 0x7f; // bit 7 is NMI mask
    else if (this.index >= 0x0e) this.nvram[this.index] = d[0];
  }
}
