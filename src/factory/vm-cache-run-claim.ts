/**
 * The claiming side of a `kata-ts run` claim (vm-cache-run-protocol.ts):
 * one attempt on one cached VM's socket (claimFromSlots in
 * vm-cache-claim.ts tries the entries), passing this process's
 * stdin/stdout/stderr with SCM_RIGHTS once the entry has left the cache,
 * and then the session: the claimer forwards its signals and window sizes,
 * and waits for the exit status. The container's output never passes
 * through this process.
 */
import * as net from 'node:net';
import { errorMessage } from '../common/errors';
import { native } from '../common/native';
import { lineReader, type ClaimReply } from './vm-cache-protocol';
import { parseRunReport, type RunClaimRequest, type RunControl, type RunReport } from './vm-cache-run-protocol';
import type { ClaimAttempt } from './vm-cache-claim';

/** How long `kata-ts run` tries the VM cache before it starts a VM itself (as the shim's start). */
export const RUN_CLAIM_TIMEOUT_MS = 3000;

/** A claimed run, from the claimer's side. */
export interface RunSession {
  /** The last report: the exit status, or the run's error; rejects when the cached process ends without one. */
  done: Promise<Exclude<RunReport, { started: true }>>;
  /** Called when the container runs (a terminal goes raw then). */
  onStarted(cb: () => void): void;
  send(c: RunControl): void;
}

/** Claims the cached VM at `sock` for a run and passes it `stdioFds` (default this process's 0, 1, 2). */
export function claimRunOne(stdioFds: [number, number, number] = [0, 1, 2]): ClaimAttempt<RunClaimRequest, RunSession> {
  return (sock, req, deadline) => new Promise((resolve) => {
    const c = net.createConnection(sock);
    let phase: 'claim' | 'run' | 'over' = 'claim';
    const started: (() => void)[] = [];
    let finish: (r: Exclude<RunReport, { started: true }>) => void = () => undefined;
    let fail: (e: Error) => void = () => undefined;
    const done = new Promise<Exclude<RunReport, { started: true }>>((res, rej) => { finish = res; fail = rej; });
    done.catch(() => undefined);
    const refuse = (r: { ok: false; error: string; stale?: boolean; refused?: boolean }) => {
      if (phase !== 'claim') return;
      phase = 'over';
      clearTimeout(timer);
      c.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => refuse({ ok: false, error: 'timed out' }), Math.max(1, deadline - Date.now()));
    c.on('error', (err) => refuse({ ok: false, error: err.message, refused: ['ECONNREFUSED', 'ENOENT'].includes((err as NodeJS.ErrnoException).code ?? '') }));
    c.on('close', () => {
      refuse({ ok: false, error: 'the cached VM closed the connection' });
      if (phase === 'run') {
        phase = 'over';
        fail(new Error(`the cached VM's process (${sock}) ended without reporting the container's exit status`));
      }
    });
    c.on('connect', () => c.write(JSON.stringify(req) + '\n'));
    c.on('data', lineReader((line) => {
      if (phase === 'claim') {
        let r: ClaimReply & { stdio?: unknown };
        try {
          r = JSON.parse(line) as ClaimReply & { stdio?: unknown };
        } catch {
          return refuse({ ok: false, error: `bad reply ${JSON.stringify(line.slice(0, 80))}` });
        }
        if (!r.ok) return refuse({ ok: false, error: r.error, stale: r.stale });
        if (r.phase !== 'claimed' || typeof r.stdio !== 'string') return refuse({ ok: false, error: `unexpected reply ${JSON.stringify(line.slice(0, 80))}` });
        try {
          passStdio(r.stdio, stdioFds);
        } catch (err) {
          return refuse({ ok: false, error: `cannot pass stdio: ${errorMessage(err)}` });
        }
        phase = 'run';
        clearTimeout(timer);
        resolve({ ok: true, value: { done, onStarted: (cb) => started.push(cb), send: (m) => { if (phase === 'run') c.write(JSON.stringify(m) + '\n'); } } });
        return;
      }
      if (phase !== 'run') return;
      let rep: RunReport;
      try {
        rep = parseRunReport(line);
      } catch (err) {
        phase = 'over';
        c.destroy();
        return fail(new Error(`the cached VM's process sent ${errorMessage(err)}`));
      }
      if ('started' in rep) {
        for (const cb of started) cb();
        return;
      }
      phase = 'over';
      c.end();
      finish(rep);
    }, () => refuse({ ok: false, error: 'reply too long' })));
  });
}

/** One sendmsg on the entry's stdio socket: "stdio" with the fds. */
function passStdio(sock: string, fds: number[]): void {
  const n = native();
  const fd = n.unixConnect(sock);
  try {
    if (n.sendMsg(fd, Buffer.from('stdio'), fds) <= 0) throw new Error('the stdio socket would block');
  } finally {
    n.closeFd(fd);
  }
}
