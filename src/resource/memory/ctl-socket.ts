/**
 * How kata-ctl reaches a sandbox's memory management (page scanner results,
 * the balloon): `<sandbox dir>/mem.sock`, served by the process that owns
 * the VM (it holds the guest RAM mapping and the QMP session; QEMU's QMP
 * socket takes one client, the owner). Mode 0600 in the 0700 sandbox dir:
 * root's tool only.
 *
 * Protocol: one JSON request line, one JSON response line, then the server
 * closes. Requests: {"op":"scan","fresh"?:bool} | {"op":"balloon","setMiB"?:n}.
 * Responses: {"ok":true,...} or {"ok":false,"error":"…"}. A separate socket
 * rather than the agent ctl channel (src/runtime/ctl-channel.ts) because
 * these are host-side facts, not agent calls.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { KataError, errorMessage } from '../../common/errors';

/** 'absent': the sandbox serves no memory socket at all (builtin VMM, or an owner that predates it). */
export class MemoryCtlError extends KataError<'absent' | 'unavailable' | 'protocol' | 'remote'> {}

export const MEM_SOCKET_NAME = 'mem.sock';
const MAX_REQUEST = 4096;
const MAX_RESPONSE = 64 * 1024 * 1024;

export type MemoryRequest = { op: 'scan'; fresh?: boolean } | { op: 'balloon'; setMiB?: number };
export type MemoryHandler = (req: MemoryRequest) => Promise<Record<string, unknown>>;

export function memSocketPath(sandboxDir: string): string {
  return path.join(sandboxDir, MEM_SOCKET_NAME);
}

/** Checks the shape of a request from the socket (anything else is refused with a message). */
export function parseRequest(line: string): MemoryRequest {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    throw new MemoryCtlError('protocol', 'request is not JSON');
  }
  const o = v as Record<string, unknown>;
  if (!o || typeof o !== 'object') throw new MemoryCtlError('protocol', 'request must be an object');
  if (o.op === 'scan') {
    if (o.fresh !== undefined && typeof o.fresh !== 'boolean') throw new MemoryCtlError('protocol', 'scan: fresh must be a boolean');
    return { op: 'scan', fresh: o.fresh as boolean | undefined };
  }
  if (o.op === 'balloon') {
    if (o.setMiB !== undefined && (typeof o.setMiB !== 'number' || !Number.isInteger(o.setMiB) || o.setMiB < 1)) {
      throw new MemoryCtlError('protocol', 'balloon: setMiB must be a positive integer');
    }
    return { op: 'balloon', setMiB: o.setMiB as number | undefined };
  }
  throw new MemoryCtlError('protocol', `unknown op ${JSON.stringify(o.op)} (scan, balloon)`);
}

export interface MemoryCtlServer {
  close(): Promise<void>;
}

export async function serveMemoryCtl(sandboxDir: string, handler: MemoryHandler): Promise<MemoryCtlServer> {
  const socket = memSocketPath(sandboxDir);
  fs.rmSync(socket, { force: true });
  const conns = new Set<net.Socket>();
  const server = net.createServer((c) => {
    conns.add(c);
    c.on('close', () => conns.delete(c));
    c.on('error', () => undefined);
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString('utf8');
      if (buf.length > MAX_REQUEST) {
        c.end(JSON.stringify({ ok: false, error: 'request too long' }) + '\n');
        return;
      }
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      c.pause();
      const line = buf.slice(0, nl);
      Promise.resolve()
        .then(() => handler(parseRequest(line)))
        .then((res) => ({ ok: true, ...res }), (err) => ({ ok: false, error: errorMessage(err) }))
        .then((res) => c.end(JSON.stringify(res) + '\n'));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socket, () => resolve());
  });
  fs.chmodSync(socket, 0o600);
  let closed: Promise<void> | undefined;
  return {
    close: () => (closed ??= new Promise<void>((resolve) => {
      for (const c of conns) c.destroy();
      server.close(() => {
        fs.rmSync(socket, { force: true });
        resolve();
      });
    })),
  };
}

/** kata-ctl side: one request to a sandbox's memory socket. */
export function memoryCtlCall(sandboxDir: string, req: MemoryRequest, timeoutMs = 30000): Promise<Record<string, unknown>> {
  const socket = memSocketPath(sandboxDir);
  if (!fs.existsSync(socket)) {
    return Promise.reject(new MemoryCtlError('absent', `sandbox at ${sandboxDir} serves no memory socket (not QEMU, or its owner predates it)`));
  }
  return new Promise((resolve, reject) => {
    const c = net.connect(socket);
    let buf = '';
    const timer = setTimeout(() => {
      c.destroy();
      reject(new MemoryCtlError('unavailable', `no answer from ${socket} within ${timeoutMs} ms`));
    }, timeoutMs);
    c.on('connect', () => c.write(JSON.stringify(req) + '\n'));
    c.on('data', (d) => {
      buf += d.toString('utf8');
      if (buf.length > MAX_RESPONSE) c.destroy(new Error('response too long'));
    });
    c.on('error', (err) => {
      clearTimeout(timer);
      reject(new MemoryCtlError('unavailable', `${socket}: ${err.message}`, { cause: err }));
    });
    c.on('end', () => {
      clearTimeout(timer);
      let res: Record<string, unknown>;
      try {
        res = JSON.parse(buf);
      } catch {
        reject(new MemoryCtlError('protocol', `${socket}: answer is not JSON`));
        return;
      }
      if (res.ok !== true) reject(new MemoryCtlError('remote', String(res.error ?? 'failed')));
      else resolve(res);
    });
  });
}
