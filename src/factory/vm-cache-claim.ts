/**
 * The claiming side of the pre-started VM cache (`containerd-shim-kata-ts-v2
 * start`): find a ready cached VM made with this configuration and debug
 * setting, claim it (vm-cache-protocol.ts) and return once it listens on the
 * group's socket. Entries are tried in a random order, so concurrent starts
 * rarely contend for one; one told "already claimed" moves on to the next.
 * A registration whose holder is dead is removed on the way. Bounded: the
 * whole attempt gives up after `timeoutMs` (the caller then spawns a shim as
 * before); a cached shim left mid-claim exits by itself (vm-cache-server.ts).
 */
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import { lineReader, type ClaimReply, type ClaimRequest } from './vm-cache-protocol';
import { clearSlot, listSlots, pidAlive, slotFile, type CacheEntryMeta } from './vm-cache-store';

export type ClaimResult = { ok: true; slot: number; pid: number; meta: CacheEntryMeta } | { ok: false; reason: string };

/** One claim over one socket: resolves 'ready', or why not. */
export function claimOne(sock: string, req: ClaimRequest, deadline: number): Promise<{ ok: true } | { ok: false; error: string; stale?: boolean; refused?: boolean }> {
  return new Promise((resolve) => {
    const c = net.createConnection(sock);
    let settled = false;
    const done = (r: { ok: true } | { ok: false; error: string; stale?: boolean; refused?: boolean }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (r.ok) c.end('ack\n');
      else c.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ ok: false, error: 'timed out' }), Math.max(1, deadline - Date.now()));
    c.on('error', (err) => done({ ok: false, error: err.message, refused: ['ECONNREFUSED', 'ENOENT'].includes((err as NodeJS.ErrnoException).code ?? '') }));
    c.on('close', () => done({ ok: false, error: 'the cached shim closed the connection' }));
    c.on('connect', () => c.write(JSON.stringify(req) + '\n'));
    c.on('data', lineReader((line) => {
      let r: ClaimReply;
      try {
        r = JSON.parse(line) as ClaimReply;
      } catch {
        return done({ ok: false, error: `bad reply ${JSON.stringify(line.slice(0, 80))}` });
      }
      if (!r.ok) return done({ ok: false, error: r.error, stale: r.stale });
      if (r.phase === 'ready') done({ ok: true });
    }, () => done({ ok: false, error: 'reply too long' })));
  });
}

/**
 * Claims a cached VM for `req` from the cache in `dir` (slots 0..n-1 and any
 * other present). `{ok:false, reason}` says why none was taken, in one line.
 */
export async function claimCachedVm(dir: string, n: number, req: ClaimRequest, timeoutMs: number): Promise<ClaimResult> {
  const r = await claimFromSlots(dir, n, req, timeoutMs, async (sock, q, deadline) => {
    const one = await claimOne(sock, q, deadline);
    return one.ok ? { ok: true, value: undefined } : one;
  });
  return r.ok ? { ok: true, slot: r.slot, pid: r.pid, meta: r.meta } : r;
}

/** Who claims: its configuration and debug setting (a cached VM serves only its like). */
export type ClaimerIdentity = Pick<ClaimRequest, 'config'> & { flags: { debug: boolean } };

/** One claim attempt on one slot's socket, in a given claim mode. */
export type ClaimAttempt<R, T> = (sock: string, req: R, deadline: number) => Promise<{ ok: true; value: T } | { ok: false; error: string; stale?: boolean; refused?: boolean }>;

/** claimCachedVm for any claim mode (`one` claims on one socket: the shim's, or kata-ts run's, vm-cache-run-claim.ts). */
export async function claimFromSlots<R extends ClaimerIdentity, T>(dir: string, n: number, req: R, timeoutMs: number, one: ClaimAttempt<R, T>): Promise<(Extract<ClaimResult, { ok: true }> & { value: T }) | Extract<ClaimResult, { ok: false }>> {
  const deadline = Date.now() + timeoutMs;
  const slots = listSlots(dir, n);
  const ready = slots.filter((s): s is Extract<typeof s, { state: 'ready' }> => s.state === 'ready');
  if (!ready.length) {
    const starting = slots.filter((s) => s.state === 'starting').length;
    return { ok: false, reason: `no cached VM ready in ${dir}${starting ? ` (${starting} starting)` : ''}` };
  }
  const fit = ready.filter((s) => s.meta.config.path === req.config.path && s.meta.config.sha256 === req.config.sha256 && s.meta.debug === req.flags.debug);
  if (!fit.length) return { ok: false, reason: `the ${ready.length} cached VM(s) were made with another configuration file or debug setting` };
  const order = fit.map((s) => ({ s, k: crypto.randomInt(1 << 30) })).sort((a, b) => a.k - b.k).map((x) => x.s);
  const why: string[] = [];
  for (const s of order) {
    if (Date.now() >= deadline) {
      why.push('timed out');
      break;
    }
    const r = await one(slotFile(dir, s.slot, 'sock'), req, deadline);
    if (r.ok) return { ok: true, slot: s.slot, pid: s.pid, meta: s.meta, value: r.value };
    // A holder that died between listing and connecting: its registration goes.
    if (r.refused && !pidAlive(s.pid)) clearSlot(dir, s.slot);
    why.push(`slot ${s.slot} (pid ${s.pid}): ${r.error}`);
  }
  return { ok: false, reason: `no cached VM could be claimed: ${why.join('; ')}` };
}

