/**
 * The KSM throttler, after Kata's ksm-throttler: scan hard while sandboxes
 * start (fresh guests are when identical pages appear), then step down to a
 * background pace when nothing starts. Off by default ([memory]
 * ksm_throttler = true turns it on).
 *
 * There is no daemon: every sandbox owner (one process per pod) runs one.
 * A start "kicks" by touching <run dir>/ksm-kick; each throttler derives the
 * level from the time since the newest kick, so all of them write the same
 * values and agree without talking. KSM missing or not writable: one clear
 * warning, nothing else happens.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { logger } from '../../common/log';
import { KSM_DIR, ksmUnavailable, readSettings, writeSettings, type KsmSettings } from './ksm';

/** Levels, hardest first: settings and how long after a kick they hold. */
export const LEVELS: ReadonlyArray<KsmSettings & { name: string; untilMs: number }> = [
  { name: 'aggressive', run: 1, pagesToScan: 2000, sleepMillisecs: 10, untilMs: 30_000 },
  { name: 'standard', run: 1, pagesToScan: 500, sleepMillisecs: 50, untilMs: 120_000 },
  { name: 'slow', run: 1, pagesToScan: 100, sleepMillisecs: 200, untilMs: 600_000 },
  { name: 'idle', run: 1, pagesToScan: 100, sleepMillisecs: 1000, untilMs: Infinity },
];

export function levelFor(sinceKickMs: number): (typeof LEVELS)[number] {
  return LEVELS.find((l) => sinceKickMs < l.untilMs) ?? LEVELS[LEVELS.length - 1];
}

export class KsmThrottler {
  private timer: NodeJS.Timeout | undefined;
  private current: string | undefined;
  private readonly log = logger('ksm');
  readonly kickFile: string;

  constructor(runDir: string, private readonly dir = KSM_DIR, private readonly now = () => Date.now()) {
    this.kickFile = path.join(runDir, 'ksm-kick');
  }

  /** Starts pacing KSM (a sandbox starts: kick first). False, with a warning, when KSM cannot be used. */
  start(opts: { kick?: boolean; periodMs?: number } = {}): boolean {
    const why = ksmUnavailable(this.dir);
    if (why) {
      this.log.warn(`ksm_throttler is on but ${why}; KSM stays as it is`);
      return false;
    }
    if (opts.kick ?? true) this.kick();
    this.apply();
    this.timer = setInterval(() => this.apply(), opts.periodMs ?? 5000);
    this.timer.unref();
    return true;
  }

  kick(): void {
    fs.mkdirSync(path.dirname(this.kickFile), { recursive: true });
    fs.writeFileSync(this.kickFile, String(this.now()));
  }

  /** Sets the level the newest kick calls for; returns its name. */
  apply(): string {
    let kicked = 0;
    try {
      kicked = Number(fs.readFileSync(this.kickFile, 'utf8')) || 0;
    } catch { /* never kicked: idle */ }
    const level = levelFor(kicked ? this.now() - kicked : Infinity);
    const cur = readSettings(this.dir);
    if (cur.run !== level.run || cur.pagesToScan !== level.pagesToScan || cur.sleepMillisecs !== level.sleepMillisecs) {
      try {
        writeSettings(level, this.dir);
      } catch (err) {
        this.log.warn('cannot pace KSM', { err: (err as Error).message });
      }
    }
    if (this.current !== level.name) this.log.debug('ksm level', { level: level.name });
    this.current = level.name;
    return level.name;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
