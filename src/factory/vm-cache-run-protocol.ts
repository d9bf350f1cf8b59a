/**
 * The VM cache's second claim mode, `mode: "run"`: `kata-ts run` claims a
 * cached VM and the cached process runs the container itself, instead of
 * becoming a containerd shim (vm-cache-protocol.ts has the shim's mode).
 * JSON lines over the slot's claim socket:
 *
 *   run    → cached   RunClaimRequest                         (one line)
 *   cached → run      {"ok":true,"phase":"claimed","stdio":P}  it left the cache
 *   run    → cached   (on unix socket P, one sendmsg: "stdio" + SCM_RIGHTS fds 0, 1, 2)
 *   cached → run      {"started":true}                        the container runs (a terminal goes raw)
 *   run    → cached   {"signal":"SIGINT"} | {"resize":{"rows":R,"cols":C}}   any number
 *   cached → run      {"exit":N} | {"error":"…","code":N}      last line; then its VM stops
 *
 * or, instead of "claimed", {"ok":false,…} as in the shim's mode. The
 * container's output goes straight to the passed fds, not over the socket.
 * A claimer that goes away interrupts the run (as its Ctrl-C would).
 */
import type { OciSpec } from '../protocols/oci';
import { ClaimError } from './vm-cache-protocol';
import type { ConfigIdentity } from './vm-cache-store';

/** The container a claimed VM runs (src/runtime/run-sandbox.ts RunPlan, minus what the cache cannot serve). */
export interface RunClaimPlan {
  id: string;
  spec: OciSpec;
  rootfs: string;
  /** 'erofs' only for the built-in image when the guest image has its copy (guest-rootfs.ts): no disk then. */
  rootfsShare: 'virtiofs' | 'erofs';
  /** The rootfs is shared read-only under a throwaway guest overlay (the built-in image without a guest copy). */
  rootfsOverlay: boolean;
  dns: string[];
}

export interface RunClaimRequest {
  v: 1;
  mode: 'run';
  /** As the shim's flags.debug: a cached VM serves only claimers started alike. */
  flags: { debug: boolean };
  config: ConfigIdentity;
  run: RunClaimPlan;
  /** The claimer's log level: the cached process's lines go to the claimer's stderr from the claim on, as a run's own would. */
  logLevel?: 'error' | 'warn' | 'info' | 'debug';
}

/** What the claimer sends once the container may run. */
export type RunControl = { signal: 'SIGINT' | 'SIGTERM' | 'SIGHUP' } | { resize: { rows: number; cols: number } };

/** What the cached process reports: the container started, or its end (last line). */
export type RunReport = { started: true } | { exit: number } | { error: string; code: number };

/** The stdio fds a claimer passes, in this order. */
export const STDIO_FDS = ['stdin', 'stdout', 'stderr'] as const;

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function json(line: string, what: string): Record<string, unknown> {
  let j: unknown;
  try {
    j = JSON.parse(line);
  } catch (err) {
    throw new ClaimError('malformed', `malformed ${what}: not JSON (${(err as Error).message})`);
  }
  if (!j || typeof j !== 'object' || Array.isArray(j)) throw new ClaimError('malformed', `malformed ${what}: expected an object`);
  return j as Record<string, unknown>;
}

/** Whether a claim line asks for the run mode (parsed with parseRunClaim then), without judging the rest. */
export function isRunClaim(line: string): boolean {
  try {
    return (JSON.parse(line) as { mode?: unknown })?.mode === 'run';
  } catch {
    return false;
  }
}

/** Parses and checks a run claim; throws ClaimError('malformed') naming what is wrong. */
export function parseRunClaim(line: string): RunClaimRequest {
  const r = json(line, 'run claim');
  if (r.v !== 1 || r.mode !== 'run') throw new ClaimError('malformed', 'malformed run claim: expected {"v":1,"mode":"run",…}');
  const f = r.flags as { debug?: unknown } | undefined;
  if (!f || typeof f.debug !== 'boolean') throw new ClaimError('malformed', 'malformed run claim: flags.debug must be a boolean');
  const c = r.config as Partial<ConfigIdentity> | undefined;
  if (!c || typeof c.path !== 'string' || typeof c.sha256 !== 'string') throw new ClaimError('malformed', 'malformed run claim: config must be {path, sha256}');
  const p = r.run as Partial<RunClaimPlan> | undefined;
  if (!p || typeof p !== 'object') throw new ClaimError('malformed', 'malformed run claim: no run');
  if (typeof p.id !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(p.id)) throw new ClaimError('malformed', 'malformed run claim: run.id must be a sandbox id');
  if (typeof p.rootfs !== 'string' || !p.rootfs.startsWith('/')) throw new ClaimError('malformed', 'malformed run claim: run.rootfs must be an absolute path');
  if (p.rootfsShare !== 'virtiofs' && p.rootfsShare !== 'erofs') throw new ClaimError('malformed', 'malformed run claim: run.rootfsShare must be "virtiofs" or "erofs"');
  if (typeof p.rootfsOverlay !== 'boolean') throw new ClaimError('malformed', 'malformed run claim: run.rootfsOverlay must be a boolean');
  if (!Array.isArray(p.dns) || p.dns.some((d) => typeof d !== 'string')) throw new ClaimError('malformed', 'malformed run claim: run.dns must be a list of strings');
  if (r.logLevel !== undefined && !['error', 'warn', 'info', 'debug'].includes(r.logLevel as string)) throw new ClaimError('malformed', 'malformed run claim: logLevel must be error, warn, info or debug');
  const spec = p.spec as OciSpec | undefined;
  if (!spec || typeof spec !== 'object' || !spec.process || !Array.isArray(spec.process.args) || !spec.process.args.length) throw new ClaimError('malformed', 'malformed run claim: run.spec needs process.args');
  return r as unknown as RunClaimRequest;
}

/** Parses one control line from the claimer; throws ClaimError('malformed'). */
export function parseRunControl(line: string): RunControl {
  const r = json(line, 'run control line');
  if ('signal' in r) {
    if (typeof r.signal !== 'string' || !SIGNALS.includes(r.signal)) throw new ClaimError('malformed', `malformed run control line: signal must be one of ${SIGNALS.join(', ')}`);
    return { signal: r.signal as 'SIGINT' };
  }
  if ('resize' in r) {
    const s = r.resize as { rows?: unknown; cols?: unknown } | undefined;
    const ok = (n: unknown) => Number.isInteger(n) && (n as number) > 0 && (n as number) < 65536;
    if (!s || !ok(s.rows) || !ok(s.cols)) throw new ClaimError('malformed', 'malformed run control line: resize needs integer rows and cols in 1..65535');
    return { resize: { rows: s.rows as number, cols: s.cols as number } };
  }
  throw new ClaimError('malformed', 'malformed run control line: expected {"signal":…} or {"resize":…}');
}

/** Parses one report line from the cached process; throws ClaimError('malformed'). */
export function parseRunReport(line: string): RunReport {
  const r = json(line, 'run report');
  if (r.started === true) return { started: true };
  if ('exit' in r) {
    if (!Number.isInteger(r.exit) || (r.exit as number) < 0 || (r.exit as number) > 255) throw new ClaimError('malformed', 'malformed run report: exit must be an integer in 0..255');
    return { exit: r.exit as number };
  }
  if ('error' in r) {
    if (typeof r.error !== 'string' || !Number.isInteger(r.code)) throw new ClaimError('malformed', 'malformed run report: error needs a message and an integer code');
    return { error: r.error, code: r.code as number };
  }
  throw new ClaimError('malformed', 'malformed run report: expected {"started":true}, {"exit":N} or {"error":…,"code":N}');
}

/**
 * Checks the fds received with the stdio message: exactly stdin, stdout,
 * stderr. Returns them, or throws ClaimError('malformed') (the caller closes what came).
 */
export function checkStdioFds(fds: number[], truncated?: boolean): [number, number, number] {
  if (truncated) throw new ClaimError('malformed', 'the stdio message lost fds (control message truncated)');
  if (fds.length !== STDIO_FDS.length) throw new ClaimError('malformed', `the claimer passed ${fds.length} fd(s), expected ${STDIO_FDS.length} (${STDIO_FDS.join(', ')})`);
  return [fds[0]!, fds[1]!, fds[2]!];
}
