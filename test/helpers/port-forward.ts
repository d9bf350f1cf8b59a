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

/** Sends `payload` (a string, or that many 0x05 bytes) to 127.0.0.1:port in the named netns and half-closes. */
export function dialInNetns(netnsName: string, port: number, payload: string | number, timeoutMs = 30_000): Promise<DialResult> {
  const body = typeof payload === 'number' ? `Buffer.alloc(${payload}, 5)` : `Buffer.from(${JSON.stringify(payload)})`;
  const script = `
    const net = require('net'); const crypto = require('crypto');
    const s = net.connect({ host: '127.0.0.1', port: ${port}, allowHalfOpen: true });
    const parts = [];
    s.on('data', (d) => parts.push(d));
    s.on('error', (e) => { console.log(JSON.stringify({ err: e.code })); process.exit(0); });
    s.on('end', () => { const b = Buffer.concat(parts); console.log(JSON.stringify({ len: b.length, sha: crypto.createHash('sha256').update(b).digest('hex'), text: b.subarray(0, 256).toString('latin1') })); s.destroy(); });
    s.on('connect', () => { s.end(${body}); });`;
  return new Promise((resolve, reject) => {
    execFile('ip', ['netns', 'exec', netnsName, process.execPath, '-e', script], { timeout: timeoutMs }, (err, out) => {
      if (err) return reject(err);
      resolve(JSON.parse(out.trim()) as DialResult);
    });
  });
}
