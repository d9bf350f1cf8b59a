/**
 * Gives the guest agent's freed memory back once it goes quiet (issue 13).
 *
 * The agent (Node, in a guest whose RAM the host pays for page by page)
 * allocates while it starts and while it creates and starts containers, then
 * idles. glibc returns free heap memory only from the top of an arena, so
 * what the agent freed in the middle stays resident. A while after the last
 * RPC call starts or ends (quiet for `quietMs`) this runs a full GC and
 * malloc_trim(0), which hand the free pages to the guest kernel; free page
 * reporting (virtio-balloon) then returns them to the host. With one malloc
 * arena (kata-init sets MALLOC_ARENA_MAX=1) the agent's anonymous memory
 * went 15.5 -> 14.0 MiB in a lean guest (README "Memory density").
 *
 * Only after activity, at most once per `minGapMs`, and only when the
 * anonymous memory grew by `growthKiB` since the last trim: an idle agent
 * costs nothing, a polling host costs one /proc read per quiet spell, and
 * nothing runs between the calls of a busy host. The timers are
 * unref'd: they never keep the agent alive.
 */

export interface IdleTrimOptions {
  /** false: never trims (agent.idle_trim=0 on the kernel command line, to compare). */
  enabled?: boolean;
  /** Quiet time after the last call before trimming. */
  quietMs?: number;
  /** Least time between two trims. */
  minGapMs?: number;
  /** Growth of the anonymous memory since the last trim (KiB) below which a quiet spell does not trim. */
  growthKiB?: number;
  /** The process's anonymous memory in KiB (tests replace it). */
  memory?: () => number;
  /** The trim itself (tests replace it); a returned string is written to stderr (the console log). */
  trim?: () => string | void;
  /** Clock (tests). */
  now?: () => number;
}

export const IDLE_TRIM_QUIET_MS = 3_000;
export const IDLE_TRIM_MIN_GAP_MS = 10_000;
export const IDLE_TRIM_GROWTH_KIB = 256;

/** Resident anonymous memory of this process in KiB (RssAnon), or NaN. */
export function rssAnonKiB(): number {
  try {
    return Number(/^RssAnon:\s+(\d+)/m.exec(require('node:fs').readFileSync('/proc/self/status', 'utf8'))?.[1] ?? NaN);
  } catch {
    return NaN;
  }
}

/**
 * A full GC (when gc() is exposed), then malloc_trim(0) through the native addon when it has it.
 * Returns one line for the console log: anonymous memory before and after, and the time it took.
 */
export function trimAgentMemory(): string {
  const before = rssAnonKiB();
  const t0 = process.hrtime.bigint();
  // A full GC first: without it the agent's anonymous memory stayed where it
  // was (15.3 MiB with malloc_trim alone, 14.0 with both, measured). gc() is
  // exposed by --expose-gc in the agent's NODE_OPTIONS (kata-init; the
  // snapshot is made with the same flags); the vm.runInNewContext('gc')
  // trick instead cost a whole new context (+0.4 MiB, measured).
  const gc = (globalThis as { gc?: () => void }).gc;
  if (typeof gc === 'function') gc();
  let trimmed = 'no malloc_trim';
  try {
    // Loaded lazily: the addon is set after the snapshot is deserialized (boot.ts).
    const { native } = require('../common/native') as typeof import('../common/native');
    const n = native();
    if (n.mallocTrim) trimmed = `malloc_trim ${n.mallocTrim()}`;
  } catch { /* no addon: the GC alone */ }
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  return `kata-agent: idle trim: anon ${(before / 1024).toFixed(1)} -> ${(rssAnonKiB() / 1024).toFixed(1)} MiB in ${ms.toFixed(0)} ms (${typeof gc === 'function' ? 'gc, ' : ''}${trimmed})`;
}

export class IdleTrimmer {
  private readonly enabled: boolean;
  private readonly quietMs: number;
  private readonly minGapMs: number;
  private readonly trimFn: () => string | void;
  private readonly growthKiB: number;
  private readonly memory: () => number;
  /** Anonymous memory right after the last trim (KiB). */
  private floorKiB = -Infinity;
  private readonly now: () => number;
  private timer: NodeJS.Timeout | undefined;
  private lastTrim = -Infinity;
  /** Trims done (tests, debug). */
  trims = 0;

  constructor(o: IdleTrimOptions = {}) {
    this.enabled = o.enabled ?? true;
    this.quietMs = o.quietMs ?? IDLE_TRIM_QUIET_MS;
    this.minGapMs = o.minGapMs ?? IDLE_TRIM_MIN_GAP_MS;
    this.trimFn = o.trim ?? trimAgentMemory;
    this.growthKiB = o.growthKiB ?? IDLE_TRIM_GROWTH_KIB;
    this.memory = o.memory ?? rssAnonKiB;
    this.now = o.now ?? Date.now;
  }

  /** Activity: (re)arms the quiet timer. */
  touch(): void {
    this.arm(this.quietMs);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(ms: number): void {
    if (!this.enabled) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.fire(), ms);
    this.timer.unref();
  }

  private fire(): void {
    this.timer = undefined;
    const wait = this.lastTrim + this.minGapMs - this.now();
    if (wait > 0) { this.arm(wait); return; }
    // A host that polls (health checks, stats) makes quiet spells all the time:
    // only memory grown since the last trim is worth a GC (100-1900 ms of an
    // emulated vCPU under load, measured).
    const kib = this.memory();
    if (Number.isFinite(kib) && kib < this.floorKiB + this.growthKiB) return; // unknown (no /proc): trims
    this.lastTrim = this.now();
    this.trims++;
    try {
      const line = this.trimFn();
      if (line) process.stderr.write(`${line}\n`);
    } catch { /* a failed trim must never hurt the agent */ }
    this.floorKiB = this.memory();
  }
}

/**
 * The same handler table with every call reported to `t` as activity when it
 * starts and, for a unary call, again when it settles. An open call does not
 * hold the trim off: WaitProcess, GetOOMEvent and the output streams stay
 * open for a container's whole life (a trim that waited for them never ran,
 * measured), and a trim during a call only delays it by the GC's pause.
 */
export function withIdleTrim<H extends Record<string, (...a: any[]) => unknown>>(handlers: H, t: IdleTrimmer): H {
  const out: Record<string, (...a: any[]) => unknown> = {};
  for (const [name, h] of Object.entries(handlers)) {
    out[name] = (...args: any[]) => {
      t.touch();
      const r = h(...args);
      if (r && typeof (r as Promise<unknown>).then === 'function') (r as Promise<unknown>).then(() => t.touch(), () => t.touch());
      return r;
    };
  }
  return out as H;
}
