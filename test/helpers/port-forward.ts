/**
 * Dialling 127.0.0.1:PORT inside a network namespace, as containerd's CRI
 * PortForward does (it enters the pod netns and dials "tcp4" localhost):
 * a Node child run with `ip netns exec`, which sends a payload, half-closes
 * and reports what came back — for the port-forward suites.
 */
import { execFile } from 'node:child_process';

export interface DialResult {
  /** The socket error's code (ECONNREFUSED, ECONNRESET, …), when the dial or the read failed. */
  err?: string;
  /** What the server sent, up to its end. */
  len?: number;
  sha?: string;
  /** The first 256 bytes of it as latin1 (for text replies). */
  text?: string;
}

/**
 * Sends `payload` (a string, or that many 0x05 bytes) to 127.0.0.1:port in
 * the named netns and half-closes: at once, or with `untilReply` once the
 * reply holds that text (a server such as busybox nc quits on the client's
 * FIN before it has sent anything). Gives up after `timeoutMs`.
 */
export function dialInNetns(netnsName: string, port: number, payload: string | number, opts: { untilReply?: string; timeoutMs?: number } = {}): Promise<DialResult> {
  const body = typeof payload === 'number' ? `Buffer.alloc(${payload}, 5)` : `Buffer.from(${JSON.stringify(payload)})`;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const script = `
    const net = require('net'); const crypto = require('crypto');
    const until = ${JSON.stringify(opts.untilReply ?? '')};
    const s = net.connect({ host: '127.0.0.1', port: ${port}, allowHalfOpen: true });
    const parts = [];
    const report = () => { const b = Buffer.concat(parts); console.log(JSON.stringify({ len: b.length, sha: crypto.createHash('sha256').update(b).digest('hex'), text: b.subarray(0, 256).toString('latin1') })); s.destroy(); process.exit(0); };
    setTimeout(report, ${timeoutMs - 2000}).unref();
    s.on('data', (d) => { parts.push(d); if (until && !s.writableEnded && Buffer.concat(parts).toString('latin1').includes(until)) s.end(); });
    s.on('error', (e) => { console.log(JSON.stringify({ err: e.code })); process.exit(0); });
    s.on('end', report);
    s.on('connect', () => { if (until) s.write(${body}); else s.end(${body}); });`;
  return new Promise((resolve, reject) => {
    execFile('ip', ['netns', 'exec', netnsName, process.execPath, '-e', script], { timeout: timeoutMs }, (err, out) => {
      if (err) return reject(err);
      resolve(JSON.parse(out.trim()) as DialResult);
    });
  });
}
