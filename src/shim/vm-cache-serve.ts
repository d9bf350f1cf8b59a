/**
 * `containerd-shim-kata-ts-v2 [-debug] prestart` (internal): one entry of
 * the pre-started VM cache (README "VM templates (QEMU factory)"). It takes
 * its slot (KATA_TS_VM_CACHE_SLOT; vm-cache-store.ts), starts a clone of
 * the VM template with the agent answering (vm-cache-vm.ts), registers its
 * claim socket and waits. A claim (vm-cache-server.ts) turns it into the
 * pod's shim: it leaves the cache, takes the claimer's environment and
 * bundle, and runs `serve` with the pre-started VM; `start` prints the
 * address. Our device backends (vsock, virtio-fs, block) live in the process
 * that owns the VM, so a VM cannot be handed from one process to another as
 * Kata's VMCache hands a Go VM over gRPC: the process that holds it becomes
 * the shim instead.
 *
 * Unclaimed, it exits (removing its registration and VM) on SIGTERM
 * (`kata-ctl factory destroy`), when its QEMU dies, when its registration
 * was taken away, or when a claim finds it stale (the template was rebuilt).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { configureLogging, logger, type LogLevel } from '../common/log';
import { errorMessage } from '../common/errors';
import { loadConfig } from '../runtime/config';
import { ClaimServer } from '../factory/vm-cache-server';
import { CachedVm, templateIdentity, vmDirName } from '../factory/vm-cache-vm';
import { makeCloneUnique } from '../factory/sandbox-clone';
import { acquireSlot, cacheDir, configIdentity, releaseSlot, slotFile, type CacheEntryMeta } from '../factory/vm-cache-store';
import type { ClaimRequest } from '../factory/vm-cache-protocol';
import type { ShimFlags } from './flags';
import { serve } from './serve';
import { removeTreeSafely } from '../runtime/volumes';
import { serveRunClaim } from '../factory/vm-cache-run-serve';
import { setProcessNice } from '../factory/renice';

/** How often an unclaimed entry checks that its registration is still its own. */
const WATCH_MS = 2000;

export async function prestart(flags: ShimFlags): Promise<void> {
  const slot = Number(process.env.KATA_TS_VM_CACHE_SLOT);
  const config = loadConfig();
  if (flags.debug) config.runtime.enable_debug = true;
  const n = config.factory.vm_cache_number;
  if (!Number.isInteger(slot) || slot < 0 || slot >= n) throw new Error(`prestart: KATA_TS_VM_CACHE_SLOT must be a slot below [factory] vm_cache_number (${n}), got "${process.env.KATA_TS_VM_CACHE_SLOT ?? ''}"`);
  const dir = cacheDir(config);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  // Taken by another (a concurrent refill): nothing to do.
  if (!acquireSlot(dir, slot)) return;
  const envLevel = process.env.KATA_TS_LOG_LEVEL as LogLevel | undefined;
  configureLogging({ level: envLevel && ['error', 'warn', 'info', 'debug'].includes(envLevel) ? envLevel : flags.debug ? 'debug' : 'info', stream: fs.createWriteStream(slotFile(dir, slot, 'log'), { flags: 'w' }), source: 'containerd-shim-kata-ts-v2' });
  const log = logger('vm-cache', { slot });
  const nice = Number(process.env.KATA_TS_VM_CACHE_NICE ?? 0) || 0;
  if (nice) setProcessNice(0, nice); // every thread: the nice value is per thread on Linux (renice.ts)
  const identity = configIdentity(config);
  let vm: CachedVm | undefined;
  // The VM being started: a SIGTERM (factory destroy) that arrives meanwhile
  // waits for it and stops it, else its QEMU would outlive this process.
  let starting: Promise<CachedVm> | undefined;
  let claimed = false;
  let leaving = false;
  const leave = async (why: string, code: number) => {
    if (leaving) return;
    leaving = true;
    log.info('cached VM leaving', { why });
    releaseSlot(dir, slot);
    if (!vm && starting) vm = await starting.catch(() => undefined);
    await vm?.stop();
    process.exit(code);
  };
  for (const s of ['SIGTERM', 'SIGINT'] as const) process.on(s, () => { if (!claimed) void leave(s, 0); });
  const delay = Number(process.env.KATA_TS_VM_CACHE_DELAY_MS ?? 0) || 0;
  if (delay > 0) await new Promise((r) => setTimeout(r, delay));
  const t0 = Date.now();
  try {
    starting = CachedVm.start(config, path.join(dir, vmDirName(slot)), log);
    vm = await starting;
  } catch (err) {
    log.error('cannot start a cached VM', { err: errorMessage(err) });
    return leave('start failed', 1);
  }
  // Told to leave while the VM started: leave() is stopping it.
  if (leaving) return;
  const vmDir = vm.vmDir;
  // The VM's directory goes with this process, whenever it exits (claimed or
  // not); never through a mount left in its share (removeTreeSafely unmounts first, or keeps it).
  process.on('exit', () => removeTreeSafely(vmDir));
  void vm.hv.exited().then((why) => { if (!claimed) void leave(`VM exited: ${why}`, 1); });
  const meta: CacheEntryMeta = {
    schemaVersion: 1, slot, pid: process.pid, qemuPid: vm.qemuPid, config: identity, debug: flags.debug,
    template: vm.template, startedAt: new Date(t0).toISOString(), readyAt: new Date().toISOString(), vmDir,
  };
  // What a claimed sandbox loads lazily (the ctl channel brings grpc-js, ~0.1 s): loaded now, while nobody waits.
  await import('../runtime/ctl-channel');
  const tmp = `${slotFile(dir, slot, 'json')}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(meta));
  fs.renameSync(tmp, slotFile(dir, slot, 'json'));
  const cached = vm;
  let req: ClaimRequest | undefined;
  // A claimed VM's work is the pod's, not background work: this process and its QEMU back to normal priority.
  const unnice = () => {
    if (!nice) return;
    setProcessNice(0, 0);
    setProcessNice(cached.qemuPid, 0);
  };
  const server = new ClaimServer(slotFile(dir, slot, 'sock'), {
    check: (r) => {
      if (r.config.path !== identity.path || r.config.sha256 !== identity.sha256) return `made with configuration ${identity.path || '(built-in)'} ${identity.sha256.slice(0, 12)}, the claimer has ${r.config.path || '(built-in)'} ${r.config.sha256.slice(0, 12)}`;
      if (r.flags.debug !== flags.debug) return `made with debug ${flags.debug ? 'on' : 'off'}, the claimer has it ${r.flags.debug ? 'on' : 'off'}`;
      const t = templateIdentity(config);
      if (!t || t.key !== cached.template.key || t.createdAt !== cached.template.createdAt) return 'the VM template was rebuilt or removed since this VM was cached';
      return undefined;
    },
    unregister: () => {
      claimed = true;
      releaseSlot(dir, slot);
    },
    takeOver: async (r) => {
      req = r;
      log.info('cached VM claimed', { container: r.flags.id, namespace: r.flags.namespace });
      unnice();
      process.chdir(r.flags.bundle);
      Object.assign(process.env, r.env);
      const pre = await cached.handOver();
      // Reseed and clock now: the guest idles until containerd's Create arrives (Sandbox.start awaits it).
      pre.unique = makeCloneUnique(pre.agent);
      pre.unique.catch(() => undefined);
      await serve({ ...r.flags, action: 'serve' }, {
        prestarted: { vm: pre, hypervisor: cached.hv, kernelParams: cached.kernelParams, config, discard: () => cached.stop() },
      });
      // From here on, log lines go to the pod's containerd log fifo.
      logger('vm-cache', { slot }).info('shim serves from a claimed cached VM', { container: r.flags.id, vmDir, qemuPid: cached.qemuPid, cachedAt: meta.readyAt });
    },
    // `kata-ts run` claimed it: the container runs here, on the claimer's stdio (vm-cache-run-serve.ts); then the VM stops.
    run: (r, conn) => {
      log.info('cached VM claimed by kata-ts run', { container: r.run.id });
      unnice();
      void serveRunClaim(r, conn, { config, hv: cached.hv, vmDir, handOver: () => cached.handOver() })
        .then(() => 0, (err) => {
          log.warn('run claim abandoned', { container: r.run.id, err: errorMessage(err) });
          return 1;
        })
        .then((code) => cached.stop().finally(() => process.exit(code)));
    },
    abandon: (why) => {
      log.warn('claim abandoned', { why, container: req?.flags.id });
      // Not server.close() of the shim socket: a fallback shim may already listen on that path.
      void cached.stop().finally(() => process.exit(1));
    },
  });
  try {
    await server.listen();
  } catch (err) {
    log.error('cannot listen for claims', { err: errorMessage(err) });
    return leave('listen failed', 1);
  }
  log.info('cached VM ready', { qemuPid: vm.qemuPid, ms: Date.now() - t0, socket: server.socketPath });
  // `kata-ctl factory destroy` (or a crash cleanup) took the registration: go.
  const watch = setInterval(() => {
    if (claimed) return clearInterval(watch);
    let holder = '';
    try { holder = fs.readFileSync(slotFile(dir, slot, 'pid'), 'utf8').trim(); } catch { /* removed */ }
    if (holder !== String(process.pid)) {
      clearInterval(watch);
      void leave('registration removed', 0);
    }
  }, WATCH_MS);
  watch.unref();
}
