/**
 * `containerd-shim-kata-ts-v2 start`: containerd runs it in the bundle
 * directory and reads its combined output as the shim's ttrpc address. If a
 * shim already serves the container's group (a pod member), its address is
 * returned; otherwise a detached `serve` process is started (own session, so
 * it outlives this one and containerd), and we return once it listens.
 * Nothing but the address may be printed: containerd reads stdout+stderr.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { KataError } from '../common/errors';
import { formatFlags, type ShimFlags } from './flags';
import { bundleAnnotations, groupId, socketPath } from './grouping';
import { OWNER_NODE_FLAGS, ownerEnv } from '../runtime/owner-flags';

export class StartError extends KataError<'spawn' | 'usage'> {}

function canConnect(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.createConnection(sock);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export async function startShim(flags: ShimFlags, launcher: string): Promise<string> {
  if (!flags.id) throw new StartError('usage', 'start needs -id');
  const bundle = flags.bundle || process.cwd();
  const group = groupId(flags.id, bundleAnnotations(bundle));
  const sock = socketPath(flags.address, flags.namespace, group);
  const address = `unix://${sock}`;
  const writeAddress = () => fs.writeFileSync(path.join(bundle, 'address'), address);
  if (await canConnect(sock)) {
    writeAddress();
    return address;
  }
  fs.mkdirSync(path.dirname(sock), { recursive: true, mode: 0o711 });
  fs.rmSync(sock, { force: true });
  // The owner's Node flags and one malloc arena: its idle memory (owner-flags.ts).
  const child = spawn(process.execPath, [...OWNER_NODE_FLAGS, launcher, ...formatFlags({ ...flags, socket: sock }), 'serve'], {
    cwd: bundle, detached: true, stdio: ['ignore', 'pipe', 'ignore'],
    // stdio fifo opens and writes run in libuv's pool: room for many processes.
    env: ownerEnv({ ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '32' }),
  });
  const ready = await new Promise<string>((resolve) => {
    let out = '';
    const timer = setTimeout(() => resolve('timed out waiting for the shim to listen'), 20000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) {
        clearTimeout(timer);
        resolve(out.split('\n')[0]!);
      }
    });
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      resolve(`shim exited (${sig ?? `status ${code}`}) before listening${out ? `: ${out.trim()}` : ''}`);
    });
  });
  child.stdout!.destroy();
  child.unref();
  if (ready !== 'ready') {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
    throw new StartError('spawn', ready);
  }
  writeAddress();
  return address;
}
