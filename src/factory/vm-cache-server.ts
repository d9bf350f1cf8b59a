/**
 * The cached side of the claim protocol (vm-cache-protocol.ts): listens on
 * its slot's socket and gives itself to exactly one claimer. Node runs one
 * handler at a time, so "check, mark claimed, unregister" is atomic: of two
 * concurrent claims the first valid one wins and the other is told
 * "already claimed" (its `start` tries the next entry or falls back). A
 * malformed claim is answered with its error and changes nothing.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { errorMessage } from '../common/errors';
import { ClaimError, lineReader, parseClaim, type ClaimReply, type ClaimRequest } from './vm-cache-protocol';
import { isRunClaim, parseRunClaim, type RunClaimRequest } from './vm-cache-run-protocol';

export interface ClaimHandlers {
  /** Why this VM cannot serve `req` (stale: it then exits), or undefined. A run claim (vm-cache-run-protocol.ts) is checked alike. */
  check(req: Pick<ClaimRequest, 'config'> & { flags: { debug: boolean } }): string | undefined;
  /** Leave the cache (synchronously: remove the registration). */
  unregister(): void;
  /** Become the claimer's shim; resolves when it listens on req.flags.socket. */
  takeOver(req: ClaimRequest): Promise<void>;
  /** After unregister, the claim fell through (claimer gone, takeOver failed, stale): exit. */
  abandon(why: string): void;
  /**
   * A `kata-ts run` claim (vm-cache-run-protocol.ts), checked and
   * unregistered: the handler owns the connection from here (its "claimed"
   * reply included). Absent: run claims are refused, the entry stays.
   */
  run?(req: RunClaimRequest, conn: net.Socket): void;
}

/** How long a claimer may take to send its claim, and to ack "ready". */
export const CLAIM_IO_TIMEOUT_MS = 5000;

export class ClaimServer {
  private readonly server: net.Server;
  private claimed = false;

  constructor(readonly socketPath: string, private readonly h: ClaimHandlers) {
    this.server = net.createServer((c) => this.onConnection(c));
  }

  listen(): Promise<void> {
    fs.rmSync(this.socketPath, { force: true });
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.socketPath, () => {
        this.server.removeListener('error', reject);
        resolve();
      });
    });
  }

  close(): void {
    this.server.close();
  }

  get isClaimed(): boolean {
    return this.claimed;
  }

  private onConnection(c: net.Socket): void {
    const send = (r: ClaimReply) => c.write(JSON.stringify(r) + '\n');
    c.on('error', () => undefined);
    let stage: 'request' | 'ack' | 'done' = 'request';
    let timer = setTimeout(() => c.destroy(), CLAIM_IO_TIMEOUT_MS);
    const finish = () => {
      stage = 'done';
      clearTimeout(timer);
    };
    c.on('close', () => {
      // Left the cache, then lost the claimer before its ack: nobody knows this shim.
      if (stage === 'ack') {
        finish();
        this.h.abandon('the claimer went away before acknowledging');
      }
      clearTimeout(timer);
    });
    c.on('data', lineReader((line) => {
      if (stage === 'ack') {
        if (line.trim() === 'ack') {
          finish();
          c.end();
        }
        return;
      }
      if (stage !== 'request') return;
      let req: ClaimRequest | RunClaimRequest;
      try {
        req = isRunClaim(line) ? parseRunClaim(line) : parseClaim(line);
        if ('mode' in req && !this.h.run) throw new ClaimError('refused', 'this cached VM does not serve run claims');
      } catch (err) {
        finish();
        send({ ok: false, error: err instanceof ClaimError ? err.message : errorMessage(err) });
        c.end();
        return;
      }
      if (this.claimed) {
        finish();
        send({ ok: false, error: 'already claimed' });
        c.end();
        return;
      }
      const why = this.h.check(req);
      this.claimed = true;
      this.h.unregister();
      this.server.close();
      if (why) {
        finish();
        send({ ok: false, error: why, stale: true });
        c.end();
        this.h.abandon(`stale: ${why}`);
        return;
      }
      if ('mode' in req) {
        // The run's own conversation (vm-cache-run-serve.ts), with no deadline of ours.
        finish();
        this.h.run!(req, c);
        return;
      }
      send({ ok: true, phase: 'claimed' });
      stage = 'ack';
      clearTimeout(timer);
      this.h.takeOver(req).then(() => {
        if (stage !== 'ack') return;
        send({ ok: true, phase: 'ready' });
        timer = setTimeout(() => c.destroy(), CLAIM_IO_TIMEOUT_MS);
      }, (err) => {
        if (stage !== 'ack') return;
        finish();
        send({ ok: false, error: `taking over failed: ${errorMessage(err)}` });
        c.end();
        this.h.abandon(`taking over failed: ${errorMessage(err)}`);
      });
    }, () => {
      finish();
      send({ ok: false, error: 'malformed claim: line too long' });
      c.end();
    }));
  }
}
