/**
 * 8250/16550A UART at COM1 (0x3f8, IRQ 4): enough of the register model
 * (National Semiconductor PC16550D data sheet; Linux drivers/tty/serial/8250)
 * for a console — transmit to a sink, receive from the host, THRE and RDA
 * interrupts, divisor latch, scratch register (Linux's probe checks it),
 * loopback-free MSR. No real baud timing: bytes leave at once.
 */
import type { BusDevice } from '../bus';
import type { SerialState } from '../snapshot/format';

export const COM1_PORT = 0x3f8, COM1_IRQ = 4;
const IER_RDI = 1, IER_THRI = 2;
const IIR_NONE = 1, IIR_THRI = 2, IIR_RDI = 4, IIR_FIFO = 0xc0;
const LCR_DLAB = 0x80;
const LSR_DR = 1, LSR_THRE = 0x20, LSR_TEMT = 0x40;
const MCR_LOOP = 0x10;

export class Serial implements BusDevice {
  private ier = 0; private lcr = 0x03; private mcr = 0x08; private scr = 0; private fcr = 0;
  private dll = 0x0c; private dlm = 0;
  private thrPending = false;
  private rx: number[] = [];

  constructor(private readonly out: (b: Uint8Array) => void, private readonly irq: () => void) {}

  /** Register state for a snapshot (src/vmm/snapshot). */
  saveState(): SerialState {
    return { ier: this.ier, lcr: this.lcr, mcr: this.mcr, scr: this.scr, fcr: this.fcr, dll: this.dll, dlm: this.dlm, thrPending: this.thrPending, rx: [...this.rx] };
  }

  loadState(s: SerialState): void {
    ({ ier: this.ier, lcr: this.lcr, mcr: this.mcr, scr: this.scr, fcr: this.fcr, dll: this.dll, dlm: this.dlm, thrPending: this.thrPending } = s);
    this.rx = [...s.rx];
  }

  /** Host → guest bytes (console input). */
  input(data: Uint8Array): void {
    for (const b of data) this.rx.push(b);
    if (this.ier & IER_RDI) this.irq();
  }

  read(off: number, d: Uint8Array): void {
    d.fill(0);
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (off) {
      case 0: d[0] = dlab ? this.dll : (this.rx.shift() ?? 0); break;
      case 1: d[0] = dlab ? this.dlm : this.ier; break;
      case 2: {
        let iir = IIR_NONE;
        if ((this.ier & IER_RDI) && this.rx.length) iir = IIR_RDI;
        else if ((this.ier & IER_THRI) && this.thrPending) { iir = IIR_THRI; this.thrPending = false; }
        d[0] = iir | (this.fcr & 1 ? IIR_FIFO : 0);
        break;
      }
      case 3: d[0] = this.lcr; break;
      case 4: d[0] = this.mcr; break;
      case 5: d[0] = LSR_THRE | LSR_TEMT | (this.rx.length ? LSR_DR : 0); break;
      case 6: d[0] = this.mcr & MCR_LOOP ? 0 : 0xb0; break; // DCD, DSR, CTS
      case 7: d[0] = this.scr; break;
    }
  }

  write(off: number, d: Uint8Array): void {
    const v = d[0];
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (off) {
      case 0:
        if (dlab) { this.dll = v; break; }
        this.out(d.subarray(0, 1));
        this.thrPending = true;
        if (this.ier & IER_THRI) this.irq();
        break;
      case 1:
        if (dlab) { this.dlm = v; break; }
        // Enabling THRI with the transmitter empty raises it at once (16550 behaviour Linux relies on).
        if (!(this.ier & IER_THRI) && (v & IER_THRI)) { this.thrPending = true; this.ier = v & 0x0f; this.irq(); break; }
        this.ier = v & 0x0f;
        break;
      case 2: this.fcr = v; break;
      case 3: this.lcr = v; break;
      case 4: this.mcr = v & 0x1f; break;
      case 7: this.scr = v; break;
    }
  }
}
