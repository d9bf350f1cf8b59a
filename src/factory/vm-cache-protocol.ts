/**
 * The pre-started VM cache's claim protocol: JSON lines over a cached VM's
 * unix socket (slot-<i>.sock, vm-cache-store.ts).
 *
 *   start  → cached   ClaimRequest               (one line)
 *   cached → start    {"ok":true,"phase":"claimed"}   it left the cache
 *   cached → start    {"ok":true,"phase":"ready"}     it listens on the shim socket
 *   start  → cached   "ack"                      start prints the address
 * or, instead of a phase, {"ok":false,"error":…,"stale"?:true}: malformed
 * (the entry stays), already claimed (try another), stale (it exits).
 * A cached process that left the cache and then loses its claimer before
 * the ack (start timed out, crashed) exits: nobody would ever talk to it.
 */
import { KataError } from '../common/errors';
import type { ConfigIdentity } from './vm-cache-store';

export class ClaimError extends KataError<'malformed' | 'refused' | 'timeout' | 'io'> {}

/** What the claimed shim becomes: the shim flags `serve` would have got. */
export interface ClaimFlags {
  id: string;
  namespace: string;
  address: string;
  publishBinary: string;
  bundle: string;
  debug: boolean;
  /** The group's ttrpc socket it must listen on. */
  socket: string;
}

export interface ClaimRequest {
  v: 1;
  flags: ClaimFlags;
  /** Environment the shim needs from containerd (TTRPC_ADDRESS, GRPC_ADDRESS, NAMESPACE, KATA_TS_*…). */
  env: Record<string, string>;
  /** The configuration the claimer runs with: a cached VM made from another is stale. */
  config: ConfigIdentity;
}

export type ClaimReply = { ok: true; phase: 'claimed' | 'ready' } | { ok: false; error: string; stale?: boolean };

/** Environment variables a claim carries to the cached shim. */
export function claimEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) continue;
    if (['TTRPC_ADDRESS', 'GRPC_ADDRESS', 'NAMESPACE', 'MAX_SHIM_VERSION', 'SCHED_CORE', 'PATH'].includes(k) || k.startsWith('KATA_TS_')) out[k] = v;
  }
  return out;
}

/** Longest line either side sends. */
export const MAX_LINE = 64 * 1024;

const str = (v: unknown) => typeof v === 'string';

/** Parses and checks one claim line; throws ClaimError('malformed') naming what is wrong. */
export function parseClaim(line: string): ClaimRequest {
  let j: unknown;
  try {
    j = JSON.parse(line);
  } catch (err) {
    throw new ClaimError('malformed', `malformed claim: not JSON (${(err as Error).message})`);
  }
  const r = j as Partial<ClaimRequest>;
  if (!r || typeof r !== 'object' || r.v !== 1) throw new ClaimError('malformed', 'malformed claim: expected {"v":1,…}');
  const f = r.flags as Partial<ClaimFlags> | undefined;
  if (!f || typeof f !== 'object') throw new ClaimError('malformed', 'malformed claim: no flags');
  for (const k of ['id', 'namespace', 'address', 'publishBinary', 'bundle', 'socket'] as const) {
    if (!str(f[k])) throw new ClaimError('malformed', `malformed claim: flags.${k} must be a string`);
  }
  if (typeof f.debug !== 'boolean') throw new ClaimError('malformed', 'malformed claim: flags.debug must be a boolean');
  if (!f.id || !f.bundle!.startsWith('/') || !f.socket!.startsWith('/')) throw new ClaimError('malformed', 'malformed claim: flags.id, an absolute flags.bundle and flags.socket are required');
  if (!r.env || typeof r.env !== 'object' || Object.values(r.env).some((v) => !str(v))) throw new ClaimError('malformed', 'malformed claim: env must map names to strings');
  if (!r.config || !str(r.config.path) || !str(r.config.sha256)) throw new ClaimError('malformed', 'malformed claim: config must be {path, sha256}');
  return r as ClaimRequest;
}

/** Splits a socket's data into lines (at most MAX_LINE bytes each). */
export function lineReader(onLine: (line: string) => void, onOverflow: () => void): (d: Buffer) => void {
  let buf = '';
  return (d) => {
    buf += d.toString('utf8');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      onLine(line);
    }
    if (buf.length > MAX_LINE) {
      buf = '';
      onOverflow();
    }
  };
}
