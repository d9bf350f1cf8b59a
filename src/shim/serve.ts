/**
 * The long-running shim (`serve`, started by `start`): logs to containerd's
 * `log` fifo in the bundle directory (JSON lines, as Kata's shim does),
 * listens on the socket `start` chose, serves the task service and exits
 * after Shutdown, on SIGTERM/SIGINT, or when containerd is long gone and
 * nothing runs. Tells `start` it is ready with one line on stdout.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { PassThrough, type Writable } from 'node:stream';
import { configureLogging, logger, type LogLevel } from '../common/log';
import { errorMessage } from '../common/errors';
import { loadConfig } from '../runtime/config';
import { TtrpcServer } from '../protocols/ttrpc/server';
import { ContainerdPublisher } from './events';
import type { ShimFlags } from './flags';
import { bundleAnnotations, groupId } from './grouping';
import { registerTaskService } from './registration';
import { TaskService, type PrestartedSandboxVm } from './service';

/** containerd created <bundle>/log as a fifo and reads it; open our end without blocking. */
function openLogFifo(bundle: string): Writable {
  const p = path.join(bundle, 'log');
  try {
    if (!fs.statSync(p).isFIFO()) return fs.createWriteStream(p, { flags: 'a' });
    const fd = fs.openSync(p, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    const s = new net.Socket({ fd, readable: false, writable: true });
    s.on('error', () => undefined); // containerd went away: logs are best effort
    return s;
  } catch {
    return new PassThrough().resume();
  }
}

/** `extra.prestarted`: a claimed pre-started VM (src/shim/vm-cache-serve.ts) for the first sandbox. */
export async function serve(flags: ShimFlags, extra: { prestarted?: PrestartedSandboxVm } = {}): Promise<void> {
  const bundle = flags.bundle || process.cwd();
  // KATA_TS_LOG_LEVEL sets the shim's own log level only: containerd's
  // -debug also turns on the guest's debug (kernel command line), so a VM
  // template made without it would not be used.
  const envLevel = process.env.KATA_TS_LOG_LEVEL as LogLevel | undefined;
  configureLogging({ level: envLevel && ['error', 'warn', 'info', 'debug'].includes(envLevel) ? envLevel : flags.debug ? 'debug' : 'info', stream: openLogFifo(bundle), source: 'containerd-shim-kata-ts-v2' });
  const log = logger('shim', { id: flags.id, namespace: flags.namespace });
  const config = loadConfig();
  if (flags.debug) config.runtime.enable_debug = true;
  const publisher = new ContainerdPublisher({
    namespace: flags.namespace, address: flags.address, publishBinary: flags.publishBinary, ttrpcAddress: process.env.TTRPC_ADDRESS,
  });
  const server = new TtrpcServer();
  let exiting = false;
  const exit = async (why: string, code = 0) => {
    if (exiting) return;
    exiting = true;
    log.info('shim exiting', { why });
    await svc.teardown().catch((err) => log.error('teardown failed', { err: errorMessage(err) }));
    // After Shutdown containerd closes its connection once it has forgotten
    // this shim; leaving earlier looks like a crash to it (and it would run
    // `delete` to clean up after us).
    if (why === 'shutdown') await server.idle(3000);
    await server.close().catch(() => undefined);
    fs.rmSync(flags.socket, { force: true });
    process.exit(code);
  };
  const svc: TaskService = new TaskService({
    config, sandboxId: groupId(flags.id, bundleAnnotations(bundle)), publisher, onShutdown: () => void exit('shutdown'),
    containerd: { address: flags.address, namespace: flags.namespace }, prestarted: extra.prestarted,
  });
  registerTaskService(server, svc);
  await server.listen(flags.socket);
  for (const s of ['SIGTERM', 'SIGINT'] as const) process.on(s, () => void exit(s));
  process.on('SIGPIPE', () => undefined);
  process.on('uncaughtException', (err) => {
    log.error('uncaught exception', { err: errorMessage(err), stack: err.stack });
    void exit('crash', 1);
  });
  process.on('unhandledRejection', (err) => log.error('unhandled rejection', { err: errorMessage(err) }));
  log.info('shim listening', { socket: flags.socket });
  process.stdout.write('ready\n', () => process.stdout.destroy());
}
