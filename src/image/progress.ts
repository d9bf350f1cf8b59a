/**
 * One rewritten progress line for long conversions, in the style of
 * guest/progress.sh: "LABEL 42% (120/290 MiB), 0m05s left". Shown only when
 * stderr is a terminal (KATA_TS_PROGRESS=1 forces it, =0 silences it), so
 * logs and piped output stay free of carriage returns.
 */
export class Progress {
  private readonly on: boolean;
  private readonly start = Date.now();
  private last = 0;
  private shown = false;

  constructor(private readonly label: string, private readonly total: number, private readonly unit = 'MiB', private readonly scale = 1 << 20) {
    const env = process.env.KATA_TS_PROGRESS;
    this.on = env === '1' || (env !== '0' && process.stderr.isTTY === true);
  }

  update(done: number): void {
    if (!this.on || this.total <= 0) return;
    const now = Date.now();
    if (now - this.last < 200 && done < this.total) return;
    this.last = now;
    const pct = Math.min(99, Math.floor((done * 100) / this.total));
    const el = (now - this.start) / 1000;
    let left = '';
    if (done > 0 && el >= 2) {
      const rest = Math.max(0, Math.round((el * (this.total - done)) / done));
      left = `, ${Math.floor(rest / 60)}m${String(rest % 60).padStart(2, '0')}s left`;
    }
    const f = (x: number): string => String(Math.round(x / this.scale));
    process.stderr.write(`\r\x1b[K${this.label} ${pct}% (${f(done)}/${f(this.total)} ${this.unit})${left}`);
    this.shown = true;
  }

  done(): void {
    if (this.shown) process.stderr.write('\r\x1b[K');
    this.shown = false;
  }
}
