/**
 * Gives the owner process's freed malloc memory back to the kernel (issue 13).
 *
 * The process that owns a VM (`kata-ts run`, the shim's `serve`) mallocs a
 * lot while it boots the sandbox — WebAssembly compilation of the hot
 * modules, device set-up, the agent handshake — frees most of it, and then
 * idles serving the vhost-user devices. glibc hands memory back to the
 * kernel only from the top of an arena, so the freed middle stays resident:
 * measured on one idle sandbox, 8.6 MiB of the process's 24 MiB anonymous
 * memory was such free heap, returned by one malloc_trim(0) (README "Memory
 * density"). V8's own heap (~10 MiB live code and objects) does not shrink
 * with a GC, and the young generation stays at 1 MiB when idle. The shim
 * starts its owner with one malloc arena (src/runtime/owner-flags.ts), so
 * each trim covers every thread's allocations.
 *
 * One trimmer per process, shared by every sandbox it owns (held while at
 * least one SandboxMemory runs): a trim soon after a sandbox is up, again
 * when its boot-time garbage has been collected, then every minute for
 * what later I/O left behind. malloc_trim walks the free lists only (well
 * under a millisecond for these heaps), so the cost is nothing next to the
 * devices' work. An addon built before mallocTrim existed: nothing happens.
 */
import { native } from '../../common/native';

/** Delays of the first trims after a sandbox comes up, then the period. */
export const TRIM_AFTER_START_MS = [2_000, 15_000];
export const TRIM_PERIOD_MS = 60_000;

type TrimFn = () => number;

let holders = 0;
let period: NodeJS.Timeout | undefined;
const pending = new Set<NodeJS.Timeout>();
let trimOverride: TrimFn | undefined;
/** Trims done in this process (tests, debug). */
export let trimCount = 0;

function trimFn(): TrimFn | undefined {
  if (trimOverride) return trimOverride;
  try {
    const n = native();
    return n.mallocTrim ? () => n.mallocTrim!() : undefined;
  } catch {
    return undefined;
  }
}

/** One malloc_trim(0) now; false when the addon cannot (not built, or built before mallocTrim). */
export function trimProcessMemory(): boolean {
  const f = trimFn();
  if (!f) return false;
  f();
  trimCount++;
  return true;
}

function later(ms: number): void {
  const t = setTimeout(() => {
    pending.delete(t);
    trimProcessMemory();
  }, ms);
  t.unref();
  pending.add(t);
}

/**
 * A sandbox came up in this process: trims after it and periodically while
 * any holder remains. The returned stop() releases this hold (idempotent).
 */
export function holdProcessTrim(): { stop(): void } {
  holders++;
  for (const ms of TRIM_AFTER_START_MS) later(ms);
  if (!period) {
    period = setInterval(trimProcessMemory, TRIM_PERIOD_MS);
    period.unref();
  }
  let held = true;
  return {
    stop() {
      if (!held) return;
      held = false;
      holders--;
      if (holders === 0) {
        if (period) clearInterval(period);
        period = undefined;
        for (const t of pending) clearTimeout(t);
        pending.clear();
      }
    },
  };
}

/** Tests: replace malloc_trim (undefined restores the addon's). */
export function setTrimForTests(f: TrimFn | undefined): void {
  trimOverride = f;
  trimCount = 0;
}

/** Tests: timers still armed by holders. */
export function trimTimersArmed(): number {
  return pending.size + (period ? 1 : 0);
}
