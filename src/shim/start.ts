/**
 * `containerd-shim-kata-ts-v2 start`: containerd runs it in the bundle
 * directory and reads its combined output as the shim's ttrpc address. If a
 * shim already serves the container's group (a pod member), its address is
 * returned; otherwise a detached `serve` process is started (own session, so
 * it outlives this one and containerd), and we return once it listens.
 * With `[factory] vm_cache_number` > 0, a pre-started shim holding a running
 * clone of the VM template is claimed instead (src/factory/vm-cache-*.ts;
 * bounded, else the spawn as before, with one line in containerd's log), and
 * one pre-start is spawned to refill the slot it freed.
 * containerd's runtime options on stdin (ConfigPath) choose the
 * configuration file (runtime-options.ts).
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
import { configPathFromStartInput, readStartInput } from './runtime-options';

export class StartError extends KataError<'spawn' | 'usage'> {}

/** How long `start` tries the VM cache before it spawns a shim as before. */
export const CLAIM_TIMEOUT_MS = 3000;

/**
 * One log line in containerd's `log` fifo of the bundle (containerd reads it
 * from before `start` runs), in the shim's JSON shape: `start` itself must
 * not print anything but the address.
 */
function logToContainerd(bundle: string, level: 'info' | 'warn', msg: string, fields: Record<string, unknown> = {}): void {
  const line = JSON.stringify({ time: new Date().toISOString(), level, msg, source: 'containerd-shim-kata-ts-v2', pid: process.pid, module: 'vm-cache', ...fields }) + '\n';
  try {
    const p = path.join(bundle, 'log');
    const fd = fs.statSync(p).isFIFO() ? fs.openSync(p, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK) : fs.openSync(p, 'a');
    try { fs.writeSync(fd, line); } finally { fs.closeSync(fd); }
  } catch { /* no log to write to: best effort */ }
}

/**
 * Claims a pre-started VM for this shim when the configuration asks for a
 * cache; true when a claimed shim now listens on `sock`. A pod whose
 * annotations may change its VM (io.katacontainers.*) does not try.
 */
async function claimFromCache(flags: ShimFlags, bundle: string, sock: string, launcher: string): Promise<boolean> {
  const { configureLogging } = await import('../common/log');
  // Config warnings must not reach stdout/stderr (containerd reads them as the address).
  configureLogging({ silent: true });
  const { loadConfig } = await import('../runtime/config');
  let cfg;
  try {
    cfg = loadConfig();
  } catch {
    return false; // the shim it spawns reports the configuration error
  }
  const n = cfg.factory.vm_cache_number;
  if (!(n > 0) || !cfg.factory.enable_template) return false;
  const annotated = Object.keys(bundleAnnotations(bundle)).filter((k) => k.startsWith('io.katacontainers.'));
  if (annotated.length) {
    logToContainerd(bundle, 'info', `VM cache not used: the pod has ${annotated[0]}${annotated.length > 1 ? ` and ${annotated.length - 1} more` : ''} (may change its VM); starting a shim`, { id: flags.id });
    return false;
  }
  const { cacheDir, configIdentity } = await import('../factory/vm-cache-store');
  const { claimCachedVm } = await import('../factory/vm-cache-claim');
  const { claimEnv } = await import('../factory/vm-cache-protocol');
  const dir = cacheDir(cfg);
  const identity = configIdentity(cfg);
  const req = {
    v: 1 as const,
    flags: { id: flags.id, namespace: flags.namespace, address: flags.address, publishBinary: flags.publishBinary, bundle, debug: flags.debug, socket: sock },
    env: claimEnv(process.env), config: identity,
  };
  const t0 = Date.now();
  const r = await claimCachedVm(dir, n, req, CLAIM_TIMEOUT_MS);
  // Refill: the slot just freed (or any free one), in the background, nice'd (vm-cache-fill.ts).
  const { refillAfterClaim } = await import('../factory/vm-cache-fill');
  refillAfterClaim(cfg, { launcher, configPath: identity.path, debug: flags.debug });
  if (!r.ok) {
    logToContainerd(bundle, 'info', `VM cache: ${r.reason}; starting a shim`, { id: flags.id });
    return false;
  }
  logToContainerd(bundle, 'info', 'claimed a pre-started VM from the VM cache', { id: flags.id, slot: r.slot, shimPid: r.pid, qemuPid: r.meta.qemuPid, cachedAt: r.meta.readyAt, claimMs: Date.now() - t0 });
  return true;
}

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
  // containerd's runtime options (Kata's ConfigPath, runtime-options.ts):
  // they name this handler's configuration file, ahead of KATA_TS_CONFIG,
  // for the claim below and the shim spawned (it inherits the environment).
  const configPath = configPathFromStartInput(readStartInput());
  if (configPath) process.env.KATA_TS_CONFIG = configPath;
  if (await canConnect(sock)) {
    writeAddress();
    return address;
  }
  fs.mkdirSync(path.dirname(sock), { recursive: true, mode: 0o711 });
  fs.rmSync(sock, { force: true });
  if (await claimFromCache(flags, bundle, sock, launcher)) {
    writeAddress();
    return address;
  }
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
