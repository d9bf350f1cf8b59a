/**
 * VM templates (issue 16, Factory), side by side in one run:
 *
 *   template         `kata-ts run -- echo MARK` with [factory] enable_template
 *                    and a valid template: start of the CLI to MARK on stdout.
 *   VM cache         the same with [factory] vm_cache_number = 1 and the
 *                    cache filled: the run claims the pre-started VM (its
 *                    QEMU live, the container path translated). Before each
 *                    run the bench waits until the previous run's refill is
 *                    ready (recorded as `cacheRefillWaitMs`), so no run meets
 *                    a half-filled cache.
 *   cold             the same command booting the VM.
 *   floor (kernel)   bench/boot.ts's floor (imported, not copied): bare QEMU,
 *                    same kernel and image, init=/bin/echo MARK.
 *
 * Then the two clone designs at the VM level (no sandbox, no container):
 *   (1) shared copy  guest RAM = a fresh memfd filled from the template's data
 *                    extents (what kata-ts does): spawn → resumed, and → our
 *                    vhost-user-vsock hotplugged and the agent's vsock port
 *                    answering (QemuHypervisor.startClone).
 *   (2) private CoW  the template's memory file mapped share=off: spawn →
 *                    resumed. Densest (pages shared with the template until
 *                    written), but no vhost-user device can work on it — the
 *                    backend would map the template file, not the clone's
 *                    copy-on-write pages — so no agent channel of ours.
 *
 * And host memory (PSS of the runtime processes + QEMU, guest RAM included)
 * of N idle sandboxes (`kata-ts run -- sleep`) from the template and cold,
 * for N in the given list (default 1,5).
 *
 *   node dist/bench/factory.js [runs=3] [sandboxCounts=1,5] [--timing]
 *     (--timing: only the time-to-first-output rows; no clone designs, no PSS)
 *   FB_QEMU_EXTRA='disable_image_nvdimm = false\nreclaim_guest_freed_memory = true\n…' node dist/bench/factory.js …
 *     (more [hypervisor.qemu] lines for template and cold runs: e.g. the lean memory settings)
 *
 * Writes build/bench/factory.json. Needs root (the template's tmpfs).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { ROOT, writeResult } from './native';
import { memfdBytes, pssMiB } from './pss';
import { MARK, kernelFloorArgs, timeToMarker } from './boot';
import { defaultConfig, guestAssets, loadConfig } from '../src/runtime/config';
import { selectHypervisor } from '../src/hypervisor';
import { QemuHypervisor } from '../src/hypervisor/qemu';
import { QmpClient } from '../src/hypervisor/qmp';
import { connectVsock, AGENT_VSOCK_PORT } from '../src/protocols/agent-dialer';
import { VmFactory, qemuTarget } from '../src/factory/factory';
import { restoreTemplate, templateArgs } from '../src/factory/qemu-template';
import { MEMORY, STATE } from '../src/factory/template-store';
import { median } from './stats';
import { cacheStatus, fillCache, stopCache, waitCacheSettled } from '../src/factory/vm-cache-fill';
import { cacheDir } from '../src/factory/vm-cache-store';
import { GUEST_ROOTFS_MARKER } from '../src/runtime/guest-rootfs';


const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

/** Option (1): kata-ts's clone path, to the agent's vsock port answering. */
async function sharedCopyClone(factory: VmFactory, qemu: string, dir: string): Promise<{ copyMs: number; resumedMs: number; agentMs: number }> {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const t0 = process.hrtime.bigint();
  const prep = factory.prepareClone(dir);
  if ('reason' in prep) throw new Error(prep.reason);
  let resumedMs = 0;
  const restore = prep.clone.restore;
  prep.clone.restore = async (q) => { await restore(q); resumedMs = ms(t0); };
  const hv = new QemuHypervisor({ binary: qemu, machine: 'pc', accel: factory.machine().accel, memory: factory.machine().memory });
  try {
    const vm = await hv.startClone({ id: 'bench', dir, kernel: '', image: factory.machine().image, vcpus: factory.machine().vcpus, memoryMiB: factory.machine().memoryMiB, kernelParams: '', disks: [], debug: false }, prep.clone);
    prep.release();
    const s = await connectVsock(vm.agentSocket, AGENT_VSOCK_PORT, 30000);
    const agentMs = ms(t0);
    s.destroy();
    return { copyMs: (await prep.memory.done).ms, resumedMs, agentMs };
  } finally {
    prep.release();
    await hv.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Option (2): the template's file mapped private, QEMU's own devices only: spawn → resumed. */
async function privateCowClone(factory: VmFactory, qemu: string, dir: string): Promise<{ resumedMs: number; pssMiB: number }> {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const args = [...templateArgs(factory.machine(), path.join(factory.dir, MEMORY), path.join(dir, 'console.log'), { incoming: true, privateMem: true }),
    '-qmp', `unix:${path.join(dir, 'qmp.sock')},server=on,wait=off`];
  const t0 = process.hrtime.bigint();
  const child: ChildProcess = spawn(qemu, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const qmp = new QmpClient();
  try {
    await qmp.connect(path.join(dir, 'qmp.sock'), 15000);
    await restoreTemplate(qmp, path.join(factory.dir, STATE));
    const resumedMs = ms(t0);
    await new Promise((r) => setTimeout(r, 1500)); // let the guest run a little before measuring
    return { resumedMs, pssMiB: pssMiB(child.pid!) };
  } finally {
    await qmp.execute('quit').catch(() => undefined);
    qmp.close();
    if (child.exitCode === null) await new Promise((r) => { child.once('exit', r); setTimeout(() => child.kill('SIGKILL'), 3000).unref(); });
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** PSS of N idle sandboxes: every kata-ts run process and its QEMU. */
async function idlePss(cfgFile: string, runDir: string, n: number): Promise<{ perSandboxMiB: number; totalMiB: number; guestRamMiB: number }> {
  const children: ChildProcess[] = [];
  try {
    for (let i = 0; i < n; i++) {
      children.push(spawn(process.execPath, [path.join(ROOT, 'bin', 'kata-ts'), 'run', '--config', cfgFile, '--', 'sleep', '600'], { stdio: ['ignore', 'ignore', 'ignore'] }));
    }
    const deadline = Date.now() + 300000;
    let qemuPids: number[] = [];
    while (Date.now() < deadline) {
      const dir = path.join(runDir, 'sandboxes');
      qemuPids = [];
      for (const id of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
        try {
          const st = JSON.parse(fs.readFileSync(path.join(dir, id, 'state.json'), 'utf8'));
          if (st.phase === 'running' && st.containers?.[0]?.state === 'running') qemuPids.push(st.vmPids[0]);
        } catch { /* being written */ }
      }
      if (qemuPids.length === n) break;
      if (children.some((c) => c.exitCode !== null)) throw new Error('a kata-ts run ended before its sandbox ran');
      await new Promise((r) => setTimeout(r, 300));
    }
    if (qemuPids.length !== n) throw new Error(`only ${qemuPids.length} of ${n} sandboxes running after 300 s`);
    await new Promise((r) => setTimeout(r, 3000)); // idle
    const total = children.reduce((a, c) => a + pssMiB(c.pid!), 0) + qemuPids.reduce((a, p) => a + pssMiB(p), 0);
    const ram = qemuPids.reduce((a, p) => a + memfdBytes(p), 0) / 1048576;
    return { perSandboxMiB: total / n, totalMiB: total, guestRamMiB: ram / n };
  } finally {
    await Promise.all(children.map((c) => (c.exitCode !== null ? undefined : new Promise((r) => { c.once('exit', r); c.kill('SIGTERM'); }))));
  }
}

async function main(): Promise<void> {
  const timingOnly = process.argv.includes('--timing');
  const argv = process.argv.filter((a) => a !== '--timing');
  const runs = Number(argv[2] ?? 3);
  const counts = timingOnly ? [] : (argv[3] ?? '1,5').split(',').map(Number).filter((n) => n > 0);
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-fbench-'));
  const tplDir = path.join(runDir, 'template');
  // Kernel and image pinned as copies: a guest image rebuilt meanwhile (by
  // anyone on this host) must not stale the template mid-run.
  const assets = guestAssets(defaultConfig(), 'qemu');
  const pinned = { kernel: path.join(runDir, 'vmlinux'), image: path.join(runDir, 'rootfs.erofs') };
  fs.copyFileSync(assets.kernel, pinned.kernel);
  fs.copyFileSync(assets.image, pinned.image);
  // FB_QEMU_EXTRA: more [hypervisor.qemu] lines for template and cold alike (e.g. the lean memory settings,
  // whose DAX image is pinned beside the image too); the template carries them (src/factory/qemu-template.ts).
  const extra = (process.env.FB_QEMU_EXTRA ?? '').replace(/\\n/g, '\n');
  const dax = path.join(path.dirname(assets.image), 'rootfs-dax.erofs');
  if (fs.existsSync(dax)) fs.copyFileSync(dax, path.join(runDir, 'rootfs-dax.erofs'));
  // And the marker naming the guest image's copy of the built-in rootfs (guest-rootfs.ts), as an installation has it.
  const marker = path.join(path.dirname(assets.image), GUEST_ROOTFS_MARKER);
  if (fs.existsSync(marker)) fs.copyFileSync(marker, path.join(runDir, GUEST_ROOTFS_MARKER));
  const base = `[runtime]\nrun_dir = "${runDir}"\n[hypervisor.qemu]\nkernel = "${pinned.kernel}"\nimage = "${pinned.image}"\n${extra ? `${extra.trim()}\n` : ''}[factory]\ntemplate_path = "${tplDir}"\n`;
  const coldCfg = path.join(runDir, 'cold.toml');
  const tplCfg = path.join(runDir, 'template.toml');
  fs.writeFileSync(coldCfg, base + 'enable_template = false\n');
  fs.writeFileSync(tplCfg, base + 'enable_template = true\n');
  const cacheCfg = path.join(runDir, 'cache.toml');
  fs.writeFileSync(cacheCfg, base + `enable_template = true\nvm_cache_number = 1\nvm_cache_endpoint = "${path.join(runDir, 'vm-cache')}"\n`);
  const cacheConfig = loadConfig(cacheCfg);
  const cfg = loadConfig(tplCfg);
  const qemu = cfg['hypervisor.qemu'].path;
  // As the runtime builds it: the configuration's memory options (DAX, balloon, virtio-mem) included.
  const { hv: selected, choice } = await selectHypervisor(cfg, 'qemu');
  const hv = selected as QemuHypervisor;
  const factory = new VmFactory({ config: cfg, qemu: qemuTarget(hv), kernelParams: '' });
  try {
    process.stderr.write('making the template (kata-ctl factory init)…\n');
    const init = await factory.init((l) => process.stderr.write(`  ${l}\n`));
    if (init.state !== 'valid') throw new Error(`template ${init.state}: ${init.reasons.join('; ')}`);
    const kataRun = (c: string) => timeToMarker(process.execPath, [path.join(ROOT, 'bin', 'kata-ts'), 'run', '--log-level', 'info', '--config', c, '--', 'echo', MARK], 'stdout');
    // The VM cache: one pre-started clone, ready before each cached run (no delay, not nice'd: the bench waits for it).
    const cacheReady = async (): Promise<number> => {
      const t0 = Date.now();
      const spawned = fillCache(cacheConfig, { configPath: cacheCfg, debug: false, nice: 0, delayMs: 0 });
      await waitCacheSettled(cacheConfig, 120000, spawned);
      if (cacheStatus(cacheConfig).ready.length !== 1) throw new Error(`the VM cache did not fill: ${JSON.stringify(cacheStatus(cacheConfig))}`);
      return Date.now() - t0;
    };
    process.stderr.write('filling the VM cache…\n');
    await cacheReady();
    const samples: Record<string, number[]> = { template: [], 'VM cache': [], cacheRefillWaitMs: [], cold: [], 'floor (kernel)': [], 'clone (1) shared copy: resumed': [], 'clone (1) shared copy: agent vsock answers': [], 'clone (1) memory copy': [], 'clone (2) private CoW: resumed': [] };
    let privPss = 0;
    for (let r = 0; r < runs; r++) {
      process.stderr.write(`run ${r + 1}/${runs}: template, cold, floor, clone (1), clone (2)\n`);
      const t = await kataRun(tplCfg);
      if (!/"template":true/.test(t.other)) throw new Error(`the templated run did not clone: ${t.other.slice(-600)}`);
      samples.template!.push(t.ms);
      const c = await kataRun(cacheCfg);
      if (!/claimed a pre-started VM from the VM cache/.test(c.other)) throw new Error(`the cached run did not claim: ${c.other.slice(-600)}`);
      samples['VM cache']!.push(c.ms);
      samples.cacheRefillWaitMs!.push(await cacheReady());
      samples.cold!.push((await kataRun(coldCfg)).ms);
      samples['floor (kernel)']!.push((await timeToMarker(qemu, kernelFloorArgs(choice.accel, pinned), 'stdout')).ms);
      if (timingOnly) continue;
      const one = await sharedCopyClone(factory, qemu, path.join(runDir, 'c1'));
      samples['clone (1) shared copy: resumed']!.push(one.resumedMs);
      samples['clone (1) shared copy: agent vsock answers']!.push(one.agentMs);
      samples['clone (1) memory copy']!.push(one.copyMs);
      const two = await privateCowClone(factory, qemu, path.join(runDir, 'c2'));
      samples['clone (2) private CoW: resumed']!.push(two.resumedMs);
      privPss = two.pssMiB;
    }
    const med = Object.fromEntries(Object.entries(samples).filter(([, v]) => v.length).map(([k, v]) => [k, Math.round(median(v))]));
    const floor = med['floor (kernel)']!;
    const pss: Record<string, { template: number; cold: number; templateGuestRam: number; coldGuestRam: number }> = {};
    for (const n of counts) {
      process.stderr.write(`host PSS: ${n} idle sandbox(es) from the template, then cold\n`);
      const a = await idlePss(tplCfg, runDir, n);
      const b = await idlePss(coldCfg, runDir, n);
      pss[String(n)] = { template: +a.perSandboxMiB.toFixed(1), cold: +b.perSandboxMiB.toFixed(1), templateGuestRam: +a.guestRamMiB.toFixed(1), coldGuestRam: +b.guestRamMiB.toFixed(1) };
    }
    const out = {
      accel: choice.accel, runs, medianMs: med,
      ratioToKernelFloor: { template: +(med.template! / floor).toFixed(2), vmCache: +(med['VM cache']! / floor).toFixed(2), cold: +(med.cold! / floor).toFixed(2) },
      loadAverage: os.loadavg().map((l) => +l.toFixed(2)),
      templateVsCold: +(med.template! / med.cold!).toFixed(2),
      template: { key: init.manifest?.key, stateBytes: init.manifest?.stateBytes, memoryDataBytes: init.manifest?.memoryDataBytes, bootS: init.manifest?.bootS, saveS: init.manifest?.saveS },
      privateCowClonePssMiB: +privPss.toFixed(1),
      idlePssPerSandboxMiB: pss,
      samplesMs: samples,
    };
    console.log(`accel: ${choice.accel}; template ${out.template.key}: state ${((out.template.stateBytes ?? 0) / 1024).toFixed(0)} KiB, RAM data ${((out.template.memoryDataBytes ?? 0) / 1048576).toFixed(1)} MiB, made in ${out.template.bootS?.toFixed(1)} s + ${out.template.saveS?.toFixed(2)} s`);
    console.log(`time to first output, kata-ts run -- echo MARK (median of ${runs}):`);
    for (const k of ['template', 'VM cache', 'cold', 'floor (kernel)']) console.log(`  ${k.padEnd(44)} ${String(med[k]).padStart(6)} ms`);
    console.log(`  ratio to the kernel floor: template ${out.ratioToKernelFloor.template}x, VM cache ${out.ratioToKernelFloor.vmCache}x, cold ${out.ratioToKernelFloor.cold}x (goal: from a template <= 0.5x); template/cold ${out.templateVsCold}x`);
    console.log(`  VM cache refill after a claim, until ready (median): ${med.cacheRefillWaitMs} ms; load average at the end ${out.loadAverage.join(' ')}`);
    if (!timingOnly) console.log('clone designs at the VM level (median):');
    for (const k of Object.keys(med).filter((x) => x.startsWith('clone'))) console.log(`  ${k.padEnd(44)} ${String(med[k]).padStart(6)} ms`);
    if (!timingOnly) console.log(`  clone (2) QEMU PSS after 1.5 s: ${out.privateCowClonePssMiB} MiB (no agent channel possible: vhost-user needs shared RAM)`);
    for (const [n, v] of Object.entries(pss)) console.log(`host PSS per idle sandbox at ${n}: template ${v.template} MiB, cold ${v.cold} MiB (guest RAM allocated in its memfd: template ${v.templateGuestRam} MiB, cold ${v.coldGuestRam} MiB)`);
    writeResult('factory', out);
  } finally {
    await stopCache(cacheDir(cacheConfig));
    factory.destroy();
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
