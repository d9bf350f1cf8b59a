/**
 * Whole host footprint per idle sandbox (issue 13): N sandboxes started as
 * in production — one `kata-ts run` owner process each (the runtime, as in a
 * shim) with its QEMU child — left idle, then the PSS of every owner and
 * every QEMU summed (PSS splits shared pages — the DAX image's page cache,
 * QEMU's libraries — among the processes that map them; guest RAM touched
 * is QEMU's shmem). Run at 1, 5 and 10 sandboxes with the memory features
 * off (defaults) and on, side by side, one configuration after the other.
 *
 *   node dist/bench/footprint.js [counts=1,5,10] [configs=off,dax,balloon,ksm,on] [settleSec=20]
 *
 * `tb32`/`tb16` = a 32/16 MiB TCG translation cache; `dax32` = DAX image +
 * balloon + tb32; `lean` = dax32 with tb16 and a VM that starts at 256 MiB
 * (memory hotplug grows it for containers' limits); `lean64` = lean with a
 * 64 MiB cache; `leanksm` = lean with the KSM throttler; `leantpl` = lean with
 * `[factory] enable_template`: `kata-ctl factory init` with that configuration
 * first, then every sandbox starts as a clone of the template (checked: each
 * QEMU ran with -incoming), the template destroyed at the end; `dense` / `densetpl` =
 * lean / leantpl with QEMU's default TCG cache; `off` = DAX, balloon and hotplug room off (set explicitly: they are the defaults now); `defaults` / `defaultstpl` = the built-in defaults, cold / from a template; `offtpl` = off from a template; `on` = DAX image + balloon with
 * free page reporting + 32 MiB TCG cache + KSM throttler + page
 * scanner. KSM settings of the host are restored at the end. The page
 * scanner's throughput (resident guest RAM hashed per busy second) and its
 * CPU share at the default interval are measured on the `on` runs. Kata
 * 3.2's figure (~120 MiB per pod, its CI) is quoted, not measured: Kata does
 * not run here. Results: build/bench/footprint.json.
 *
 * PSS alone under-counts a template clone: the runtime copies the
 * template's RAM into the clone's memfd with write(2), and pages the guest
 * has not touched since are in nobody's page tables. So every row also has
 * "host": runtime + QEMU PSS without their shmem share, plus the bytes
 * allocated in each QEMU's memfds (guest RAM, virtio-mem) and the
 * template's RAM file divided among the sandboxes. FOOTPRINT_OWNER_FLAGS
 * starts every owner with those Node flags; each row prints the load average
 * at its start and at its measurement.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { memfdBytes, pssMiB } from './pss';
import { listSandboxes } from '../src/ctl/sandboxes';
import { memoryCtlCall } from '../src/resource/memory/ctl-socket';
import { readKsm, readSettings, writeSettings, ksmUnavailable } from '../src/resource/memory/ksm';
import type { ScanReport } from '../src/resource/memory/service';

const REPO = path.resolve(__dirname, '..', '..');
const CACHE = process.env.KATA_TS_CACHE ?? '/var/cache/kata-ts';
const KATA_CI_MIB = 120;
/**
 * The guest pinned for the whole bench, copied: an image rebuild elsewhere
 * moves the cache symlink and prunes the old directory, which would take the
 * image (and the DAX file beside it) away mid-run.
 */
const PIN_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-footprint-guest-'));
const PINNED = (() => {
  const img = fs.realpathSync(path.join(CACHE, 'image'));
  for (const f of ['rootfs.erofs', 'rootfs-dax.erofs']) fs.copyFileSync(path.join(img, f), path.join(PIN_DIR, f));
  fs.copyFileSync(path.join(fs.realpathSync(path.join(CACHE, 'kernel')), 'vmlinux'), path.join(PIN_DIR, 'vmlinux'));
  return { kernel: path.join(PIN_DIR, 'vmlinux'), image: path.join(PIN_DIR, 'rootfs.erofs') };
})();

/**
 * The features off, set explicitly: DAX, the balloon and virtio-mem room are
 * the defaults since issue 13's change, so `off` (and the single-feature rows
 * built on it) keep meaning "without them"; `defaults` is the built-in defaults.
 */
const offWith = (o: { dax?: boolean; balloon?: boolean; extra?: string; tail?: string }) =>
  `[hypervisor.qemu]\ndisable_image_nvdimm = ${!o.dax}\nreclaim_guest_freed_memory = ${!!o.balloon}\ndefault_maxmemory = 0\n${o.extra ?? ''}${o.tail ?? ''}`;

const CONFIGS: Record<string, string> = {
  off: offWith({}),
  defaults: '',
  defaultstpl: '[factory]\nenable_template = true\ntemplate_path = "@RUN@/template"\n',
  dax: offWith({ dax: true }),
  balloon: offWith({ balloon: true }),
  ksm: offWith({ tail: '[memory]\nksm_throttler = true\n' }),
  tb32: offWith({ extra: 'tcg_translation_cache = 32\n' }),
  tb16: offWith({ extra: 'tcg_translation_cache = 16\n' }),
  // DAX (plain-layout image) + free page reporting + a 32 MiB TCG cache.
  dax32: '[hypervisor.qemu]\ndisable_image_nvdimm = false\nreclaim_guest_freed_memory = true\ntcg_translation_cache = 32\n',
  // The VM starts small (256 MiB; containers' memory limits hotplug DIMMs up to 2048), 16 MiB TCG cache.
  lean: '[hypervisor.qemu]\ndisable_image_nvdimm = false\nreclaim_guest_freed_memory = true\ntcg_translation_cache = 16\ndefault_memory = 256\ndefault_maxmemory = 2048\n',
  // lean with a 64 MiB TCG cache: the cheaper trade in speed (README "Memory density": boot + a shell loop, tb16 ~1.5x and tb64 ~1.25x the time of QEMU's 1 GiB default).
  lean64: '[hypervisor.qemu]\ndisable_image_nvdimm = false\nreclaim_guest_freed_memory = true\ntcg_translation_cache = 64\ndefault_memory = 256\ndefault_maxmemory = 2048\n',
  // lean with the KSM throttler: what merges of QEMU's private memory (heap, TCG cache) across 10 VMs.
  // lean with the guest agent's idle trim off (src/agent/idle-trim.ts): what the trim saves.
  leannotrim: '[hypervisor.qemu]\ndisable_image_nvdimm = false\nreclaim_guest_freed_memory = true\ntcg_translation_cache = 16\ndefault_memory = 256\ndefault_maxmemory = 2048\nkernel_params = "agent.idle_trim=0"\n',
  leanksm: '[hypervisor.qemu]\ndisable_image_nvdimm = false\nreclaim_guest_freed_memory = true\ntcg_translation_cache = 16\ndefault_memory = 256\ndefault_maxmemory = 2048\n[memory]\nksm_throttler = true\n',
  // lean started from a VM template (the template carries DAX, balloon, virtio-mem and the 256 MiB start); @RUN@ is the run directory.
  // lean with QEMU's default TCG cache (the candidate defaults: DAX + balloon + virtio-mem + 256 MiB), cold and from a template.
  // The defaults started from a template (today's templated sandboxes).
  offtpl: offWith({ tail: '[factory]\nenable_template = true\ntemplate_path = "@RUN@/template"\n' }),
  dense: '[hypervisor.qemu]\ndisable_image_nvdimm = false\nreclaim_guest_freed_memory = true\ndefault_memory = 256\ndefault_maxmemory = 2048\n',
  densetpl: '[hypervisor.qemu]\ndisable_image_nvdimm = false\nreclaim_guest_freed_memory = true\ndefault_memory = 256\ndefault_maxmemory = 2048\n[factory]\nenable_template = true\ntemplate_path = "@RUN@/template"\n',
  leantpl: '[hypervisor.qemu]\ndisable_image_nvdimm = false\nreclaim_guest_freed_memory = true\ntcg_translation_cache = 16\ndefault_memory = 256\ndefault_maxmemory = 2048\n[factory]\nenable_template = true\ntemplate_path = "@RUN@/template"\n',
  on: '[hypervisor.qemu]\ndisable_image_nvdimm = false\nreclaim_guest_freed_memory = true\ntcg_translation_cache = 32\n[memory]\nksm_throttler = true\npage_scanner = true\nscan_interval = 3600\n',
};

interface Row {
  config: string;
  sandboxes: number;
  perSandboxMiB: number;
  runtimeMiB: number;
  qemuMiB: number;
  qemuShmemMiB: number;
  qemuAnonMiB: number;
  qemuFileMiB: number;
  runtimeAnonMiB: number;
  /** Guest RAM allocated on the host (its memfds, each once), per sandbox: PSS misses a clone's copied pages the guest has not touched. */
  guestRamAllocMiB: number;
  /** The template's RAM file (tmpfs data) divided among the sandboxes; 0 without a template. */
  templateMiB: number;
  /** Host memory per sandbox: runtime + QEMU PSS without their shmem share, plus guestRamAllocMiB and templateMiB. */
  hostPerSandboxMiB: number;
  ksmSavingMiB: number;
  scanGBps?: number;
  scanCpuShareAt60s?: number;
  scanEventLoopDelayMaxMs?: number;
  bootSec: number;
  /** 1-minute load average when the configuration started and when it was measured. */
  loadStart: number;
  loadEnd: number;
  ownerFlags: string[];
}

/** Node flags for every owner (FOOTPRINT_OWNER_FLAGS, space-separated): to measure the owner's flags (issue 13). */
const OWNER_FLAGS = (process.env.FOOTPRINT_OWNER_FLAGS ?? '').split(/\s+/).filter(Boolean);

/** One Pss_* line of smaps_rollup in MiB (Anon: private heap/TCG cache; File: binaries, the DAX image; Shmem: guest RAM). */
function pssPartMiB(pid: number, part: 'Anon' | 'File' | 'Shmem'): number {
  const t = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(new RegExp(`^Pss_${part}:\\s+(\\d+)`, 'm').exec(t)?.[1] ?? 0) / 1024;
}

async function runOne(config: string, n: number, settleSec: number): Promise<Row> {
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-footprint-'));
  const cfg = path.join(runDir, 'configuration.toml');
  // The guest pinned for the whole bench: a rebuild elsewhere moves the cache symlinks, not this run.
  const pin = `kernel = "${PINNED.kernel}"\nimage = "${PINNED.image}"\n`;
  const extra = CONFIGS[config].includes('[hypervisor.qemu]\n') ? CONFIGS[config].replace('[hypervisor.qemu]\n', `[hypervisor.qemu]\n${pin}`) : `[hypervisor.qemu]\n${pin}${CONFIGS[config]}`;
  fs.writeFileSync(cfg, `[runtime]\nrun_dir = "${runDir}"\ncache_dir = "${CACHE}"\n[agent.kata]\ndial_timeout = 300\n${extra.replace(/@RUN@/g, runDir)}`);
  const owners: ChildProcess[] = [];
  const templated = extra.includes('enable_template = true');
  const ctl = (...a: string[]) => spawnSync(process.execPath, [path.join(REPO, 'bin', 'kata-ctl'), '--config', cfg, ...a], { encoding: 'utf8' });
  let t0 = Date.now();
  const loadStart = os.loadavg()[0];
  try {
    if (templated) {
      const init = ctl('factory', 'init');
      if (init.status !== 0) throw new Error(`${config}: kata-ctl factory init failed: ${init.stderr.trim()}`);
      process.stderr.write(`${config}: template made in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
      t0 = Date.now();
    }
    for (let i = 0; i < n; i++) {
      const c = spawn(process.execPath, [...OWNER_FLAGS, path.join(REPO, 'bin', 'kata-ts'), 'run', '--config', cfg, '--name', `fp${i}`, '--', 'sleep', '3600'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      c.stderr!.on('data', (d: Buffer) => { err = (err + d.toString()).slice(-2000); });
      c.on('exit', (code) => { if (code) process.stderr.write(`fp${i} exited ${code}: ${err}\n`); });
      owners.push(c);
    }
    const deadline = Date.now() + 600_000;
    for (;;) {
      const rows = listSandboxes(runDir).filter((r) => r.phase === 'running' && r.containers === 1);
      process.stderr.write(`\r${config} ×${n}: ${rows.length}/${n} running (${Math.round((Date.now() - t0) / 1000)} s)   `);
      if (rows.length === n) break;
      if (owners.some((o) => o.exitCode !== null)) throw new Error(`${config} ×${n}: a sandbox failed to start`);
      if (Date.now() > deadline) throw new Error(`${config} ×${n}: not all sandboxes up in 10 min`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    const bootSec = (Date.now() - t0) / 1000;
    process.stderr.write(`\n${config} ×${n}: all running after ${bootSec.toFixed(0)} s; idling ${settleSec} s\n`);
    await new Promise((r) => setTimeout(r, settleSec * 1000));
    const rows = listSandboxes(runDir);
    // A templated configuration must really have cloned every VM (a stale template would cold-boot with a warning).
    const clones = rows.flatMap((r) => r.vmPids).filter((p) => fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').includes('-incoming')).length;
    if (templated && clones !== n) throw new Error(`${config} ×${n}: only ${clones} of ${n} VMs started from the template`);
    let runtime = 0;
    let qemu = 0;
    let shmem = 0;
    let qAnon = 0;
    let qFile = 0;
    let rAnon = 0;
    let rShmem = 0;
    let memfd = 0;
    for (const r of rows) {
      runtime += pssMiB(r.ownerPid);
      rAnon += pssPartMiB(r.ownerPid, 'Anon');
      rShmem += pssPartMiB(r.ownerPid, 'Shmem');
      for (const p of r.vmPids) {
        qemu += pssMiB(p);
        memfd += memfdBytes(p) / 1048576;
        shmem += pssPartMiB(p, 'Shmem');
        qAnon += pssPartMiB(p, 'Anon');
        qFile += pssPartMiB(p, 'File');
      }
    }
    const tplFile = path.join(runDir, 'template', 'memory');
    const tpl = templated && fs.existsSync(tplFile) ? (fs.statSync(tplFile).blocks * 512) / 1048576 : 0;
    const row: Row = {
      config, sandboxes: n, perSandboxMiB: (runtime + qemu) / n, runtimeMiB: runtime / n, qemuMiB: qemu / n, qemuShmemMiB: shmem / n,
      qemuAnonMiB: qAnon / n, qemuFileMiB: qFile / n, runtimeAnonMiB: rAnon / n,
      guestRamAllocMiB: memfd / n, templateMiB: tpl / n, hostPerSandboxMiB: (runtime + qemu - rShmem - shmem + memfd + tpl) / n,
      ksmSavingMiB: ksmUnavailable() ? 0 : readKsm().savingBytes / 1048576, bootSec,
      loadStart, loadEnd: os.loadavg()[0], ownerFlags: OWNER_FLAGS,
    };
    if (config === 'on') {
      let bytes = 0;
      let busy = 0;
      let delay = 0;
      for (const r of rows) {
        const s = (await memoryCtlCall(r.dir, { op: 'scan', fresh: true }, 300_000)).scan as ScanReport;
        bytes += s.residentPages * 4096;
        busy += s.busyMs;
        delay = Math.max(delay, s.eventLoopDelayMaxMs);
      }
      row.scanGBps = bytes / 1e9 / (busy / 1000);
      // One pass per sandbox every 60 s (the default interval) on 2 cores.
      row.scanCpuShareAt60s = busy / 1000 / 60 / os.cpus().length;
      row.scanEventLoopDelayMaxMs = delay;
    }
    return row;
  } finally {
    for (const o of owners) if (o.exitCode === null && o.signalCode === null) o.kill('SIGTERM');
    await Promise.all(owners.map((o) => (o.exitCode !== null || o.signalCode !== null ? undefined : new Promise((r) => {
      const t = setTimeout(() => o.kill('SIGKILL'), 30_000);
      o.once('exit', () => { clearTimeout(t); r(undefined); });
    }))));
    if (templated) ctl('factory', 'destroy');
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const counts = (process.argv[2] ?? '1,5,10').split(',').map(Number);
  const configs = (process.argv[3] ?? 'off,on').split(',');
  const settle = Number(process.argv[4] ?? 20);
  for (const c of configs) if (!(c in CONFIGS)) throw new Error(`unknown config ${c} (${Object.keys(CONFIGS).join(', ')})`);
  const savedKsm = ksmUnavailable() ? undefined : readSettings();
  const rows: Row[] = [];
  try {
    for (const n of counts) {
      for (const c of configs) {
        // KSM from a clean state for every run: unmerge (run=2), then off.
        if (savedKsm) writeSettings({ run: 2, pagesToScan: savedKsm.pagesToScan, sleepMillisecs: savedKsm.sleepMillisecs });
        if (savedKsm) writeSettings({ run: 0, pagesToScan: savedKsm.pagesToScan, sleepMillisecs: savedKsm.sleepMillisecs });
        rows.push(await runOne(c, n, settle));
        const r = rows[rows.length - 1];
        process.stdout.write(`${c.padEnd(8)} ×${String(n).padStart(2)}: ${r.perSandboxMiB.toFixed(1)} MiB per sandbox [host, memfds counted: ${r.hostPerSandboxMiB.toFixed(1)} MiB; guest RAM allocated ${r.guestRamAllocMiB.toFixed(1)}, template ${r.templateMiB.toFixed(1)}] (runtime ${r.runtimeMiB.toFixed(1)} [anon ${r.runtimeAnonMiB.toFixed(1)}], QEMU ${r.qemuMiB.toFixed(1)}: guest RAM ${r.qemuShmemMiB.toFixed(1)}, private ${r.qemuAnonMiB.toFixed(1)}, files ${r.qemuFileMiB.toFixed(1)}; boot ${r.bootSec.toFixed(0)} s), KSM saving ${r.ksmSavingMiB.toFixed(1)} MiB host-wide; load ${r.loadStart.toFixed(1)} -> ${r.loadEnd.toFixed(1)}${r.ownerFlags.length ? `; owner flags ${r.ownerFlags.join(' ')}` : ''}` +
          `${r.scanGBps !== undefined ? `; scanner ${r.scanGBps.toFixed(2)} GB/s, CPU share at 60 s ${(r.scanCpuShareAt60s! * 100).toFixed(3)} %, max loop delay ${r.scanEventLoopDelayMaxMs!.toFixed(1)} ms` : ''}\n`);
      }
    }
  } finally {
    if (savedKsm) {
      writeSettings({ run: 2, pagesToScan: savedKsm.pagesToScan, sleepMillisecs: savedKsm.sleepMillisecs });
      writeSettings(savedKsm);
    }
  }
  process.stdout.write('\nper idle sandbox, MiB (ratio to Kata 3.2 CI ~120 MiB, quoted):\n');
  for (const n of counts) {
    process.stdout.write(`  ${String(n).padStart(2)} sandboxes: ${configs.map((c) => {
      const r = rows.find((x) => x.config === c && x.sandboxes === n)!;
      return `${c} ${r.perSandboxMiB.toFixed(1)} (${(r.perSandboxMiB / KATA_CI_MIB).toFixed(2)}x; host ${r.hostPerSandboxMiB.toFixed(1)})`;
    }).join('  ')}\n`);
  }
  fs.mkdirSync(path.join(REPO, 'build', 'bench'), { recursive: true });
  fs.writeFileSync(path.join(REPO, 'build', 'bench', 'footprint.json'), JSON.stringify({ schemaVersion: 1, kataCiMiB: KATA_CI_MIB, rows }, null, 2));
}

main().catch((err) => {
  process.stderr.write(`footprint: ${(err as Error).message}\n`);
  process.exitCode = 1;
}).finally(() => fs.rmSync(PIN_DIR, { recursive: true, force: true }));
