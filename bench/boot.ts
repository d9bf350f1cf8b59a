/**
 * Sandbox start-up and footprint (issue 2), side by side in one run:
 *
 *   kata-ts run      `kata-ts run -- echo MARK`: start of the CLI to MARK on
 *                    its stdout (VM boot, agent, container create+start).
 *   kata-ts run (DAX image)  the same with the guest image on an NVDIMM
 *                    mounted with DAX (disable_image_nvdimm = false).
 *   floor (kernel)   the same QEMU machine, kernel and guest image booted by a
 *                    bare command line with init=/bin/echo MARK: the cost of
 *                    QEMU + kernel alone.
 *   floor (node)     the same, with init=/usr/bin/node -e 'print MARK': the
 *                    cost of starting Node in the guest, which the agent pays.
 *
 * The kata-ts runs log at info level (`--log-level info`, not --debug, whose
 * guest debug mode slows the boot): their 'sandbox ready' line carries the
 * start-up phases — in the guest: kernel + kata-init, Node's own start,
 * loading the agent's modules, agent API ready (listening on vsock); on the
 * host: to the agent's ready line, the vsock dial, the first RPC (Check),
 * and the sandbox set-up after it — reported as medians next to the totals.
 *
 * Reported as medians and as ratios to the floors, plus host memory (PSS from
 * /proc/<pid>/smaps_rollup) of the runtime process and of QEMU per running
 * sandbox. Acceleration is whatever `auto` picks here (TCG on PVM hosts).
 * A footprint that cannot be measured (no running sandbox, a process gone,
 * an unreadable smaps_rollup) is reported as a failure — footprintError in
 * the JSON, FAILED on the console, exit status 1 — never as 0 MiB.
 *
 *   bash scripts/setup.sh && node dist/bench/boot.js [runs]
 *
 * Writes build/bench/boot.json.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { ROOT, writeResult } from './native';
import { pssMiB } from './pss';
import { defaultConfig, guestAssets } from '../src/runtime/config';
import { probeKvm, chooseHypervisor } from '../src/hypervisor/capabilities';
import { baseKernelParams } from '../src/hypervisor/hypervisor';
import { median } from './stats';

export const MARK = 'KATA_BENCH_MARK';


/** Spawn, resolve with ms until `marker` appears on the chosen stream, then let it finish. */
export function timeToMarker(cmd: string, args: string[], stream: 'stdout' | 'stderr'): Promise<{ ms: number; totalMs: number; other: string }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let seen = -1;
    let buf = '';
    let otherText = '';
    child[stream].on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      if (seen < 0 && buf.includes(MARK)) seen = Number(process.hrtime.bigint() - t0) / 1e6;
    });
    const other = stream === 'stdout' ? 'stderr' : 'stdout';
    child[other].on('data', (d: Buffer) => { otherText = (otherText + d.toString('latin1')).slice(-65536); });
    const timer = setTimeout(() => child.kill('SIGKILL'), 180000);
    child.on('exit', () => {
      clearTimeout(timer);
      const total = Number(process.hrtime.bigint() - t0) / 1e6;
      if (seen < 0) reject(new Error(`${cmd} ended without printing the marker: ${buf.slice(-400)} ${otherText.slice(-400)}`));
      else resolve({ ms: seen, totalMs: total, other: otherText });
    });
  });
}

/** The start-up phases of one kata-ts run, from its 'sandbox ready' log line (src/runtime/sandbox.ts). */
function phasesOf(stderr: string): Record<string, number> {
  for (const line of stderr.split('\n')) {
    if (!line.includes('"sandbox ready"')) continue;
    try {
      const j = JSON.parse(line) as { guest?: Record<string, unknown>; host?: Record<string, unknown> };
      const out: Record<string, number> = {};
      for (const [side, o] of [['guest', j.guest], ['host', j.host]] as const) {
        for (const [k, v] of Object.entries(o ?? {})) if (typeof v === 'number') out[`${side}.${k}`] = v;
      }
      return out;
    } catch { /* not JSON */ }
  }
  return {};
}

/** Phase names in start-up order, with what each one is. */
const PHASES: [string, string][] = [
  ['host.toAgentReadyMs', 'spawn → agent ready line seen by the host'],
  ['guest.kernelInitMs', '  guest: kernel + kata-init (to node exec)'],
  ['guest.nodeStartMs', '  guest: Node start (to boot.js)'],
  ['guest.modulesMs', '  guest: agent modules loaded'],
  ['guest.apiReadyMs', '  guest: agent API ready (listening)'],
  ['host.dialMs', 'host: vsock dial (first connection)'],
  ['host.firstRpcMs', 'host: ready line → first RPC (Check) answered'],
  ['host.sandboxSetupMs', 'host: CreateSandbox + set-up'],
];

/**
 * The floor: a bare QEMU command line with the same machine, CPU model,
 * memory, kernel and guest image (root on QEMU's virtio-blk), and init
 * replaced by the marker program. No vhost-user devices, no agent.
 * (bench/factory.ts measures against the same floor.)
 */
export function kernelFloorArgs(accel: string, assets: { kernel: string; image: string }, init = '/bin/echo', extra = MARK): string[] {
  return [
    '-M', `pc,accel=${accel}`, '-cpu', accel === 'kvm' ? 'host' : 'max', '-smp', '1', '-m', '512M',
    '-nodefaults', '-nographic', '-no-user-config', '-no-reboot',
    '-kernel', assets.kernel,
    '-append', `${baseKernelParams(false, 'pc').replace('init=/sbin/kata-init', `init=${init}`)} -- ${extra}`,
    '-serial', 'stdio',
    '-drive', `if=none,id=rootimg,file=${assets.image},format=raw,readonly=on`,
    '-device', 'virtio-blk-pci,drive=rootimg,addr=0x3',
    '-device', 'virtio-rng-pci',
  ];
}

async function footprint(cfgFile: string, runDir: string): Promise<{ runtimePssMiB: number; qemuPssMiB: number }> {
  const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'kata-ts'), 'run', '--config', cfgFile, '--', 'sleep', '20'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-2000); });
  try {
    const deadline = Date.now() + 120000;
    let qemuPid = 0;
    while (Date.now() < deadline) {
      const dir = path.join(runDir, 'sandboxes');
      for (const id of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
        try {
          const st = JSON.parse(fs.readFileSync(path.join(dir, id, 'state.json'), 'utf8'));
          if (st.phase === 'running' && st.containers?.[0]?.state === 'running') qemuPid = st.vmPids[0];
        } catch { /* being written */ }
      }
      if (qemuPid) break;
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`kata-ts run ended (${child.signalCode ?? `status ${child.exitCode}`}) before its sandbox ran: ${stderr.trim()}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    if (!qemuPid) throw new Error('no running sandbox within 120 s to measure');
    await new Promise((r) => setTimeout(r, 2000)); // settle
    return { runtimePssMiB: pssMiB(child.pid!), qemuPssMiB: pssMiB(qemuPid) };
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      await new Promise((r) => { child.once('exit', r); setTimeout(() => child.kill('SIGTERM'), 100); });
    }
  }
}

async function main(): Promise<void> {
  const runs = Number(process.argv[2] ?? 3);
  const cfg = defaultConfig();
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-bench-'));
  const cfgFile = path.join(runDir, 'configuration.toml');
  fs.writeFileSync(cfgFile, `[runtime]\nrun_dir = "${runDir}"\n`);
  const probe = await probeKvm(cfg['hypervisor.qemu'].path, runDir);
  const choice = chooseHypervisor('auto', 'auto', probe, false);
  const assets = guestAssets(cfg, 'qemu');
  const floorArgs = (init: string, extra: string) => kernelFloorArgs(choice.accel, assets, init, extra);
  // The same run with the guest image on an NVDIMM mounted with DAX ([hypervisor.qemu]
  // disable_image_nvdimm = false, as Kata's default): Node's pages are then the host's
  // page cache, not read and LZ4-decompressed through virtio-blk at every boot.
  const daxCfgFile = path.join(runDir, 'configuration-dax.toml');
  fs.writeFileSync(daxCfgFile, `[runtime]\nrun_dir = "${runDir}"\n[hypervisor.qemu]\ndisable_image_nvdimm = false\n`);
  const results: Record<string, number[]> = { 'kata-ts run': [], 'kata-ts run (DAX image)': [], 'floor (kernel)': [], 'floor (node)': [] };
  const runsFromSnapshot: boolean[] = [];
  const totals: number[] = [];
  const phaseSamples: Record<string, number[]> = {};
  for (let r = 0; r < runs; r++) {
    process.stderr.write(`run ${r + 1}/${runs}: kata-ts run, kata-ts run (DAX image), floor (kernel), floor (node)\n`);
    const k = await timeToMarker(process.execPath, [path.join(ROOT, 'bin', 'kata-ts'), 'run', '--log-level', 'info', '--config', cfgFile, '--', 'echo', MARK], 'stdout');
    results['kata-ts run']!.push(k.ms);
    totals.push(k.totalMs);
    for (const [p, v] of Object.entries(phasesOf(k.other))) (phaseSamples[p] ??= []).push(v);
    runsFromSnapshot.push(/"snapshot":true/.test(k.other));
    const d = await timeToMarker(process.execPath, [path.join(ROOT, 'bin', 'kata-ts'), 'run', '--log-level', 'info', '--config', daxCfgFile, '--', 'echo', MARK], 'stdout');
    results['kata-ts run (DAX image)']!.push(d.ms);
    for (const [p, v] of Object.entries(phasesOf(d.other))) (phaseSamples[`dax.${p}`] ??= []).push(v);
    results['floor (kernel)']!.push((await timeToMarker(cfg['hypervisor.qemu'].path, floorArgs('/bin/echo', MARK), 'stdout')).ms);
    results['floor (node)']!.push((await timeToMarker(cfg['hypervisor.qemu'].path, floorArgs('/usr/bin/node', `-e console.log("${MARK}")`), 'stdout')).ms);
  }
  let fp: { runtimePssMiB: number; qemuPssMiB: number } | undefined;
  let footprintError: string | undefined;
  try {
    fp = await footprint(cfgFile, runDir);
  } catch (err) {
    footprintError = (err as Error).message;
  }
  fs.rmSync(runDir, { recursive: true, force: true });
  const med = Object.fromEntries(Object.entries(results).map(([k, v]) => [k, Math.round(median(v))]));
  const out = {
    accel: choice.accel, reason: choice.reason, runs,
    medianMs: med, runTotalMedianMs: Math.round(median(totals)),
    ratioToKernelFloor: +(med['kata-ts run']! / med['floor (kernel)']!).toFixed(2),
    ratioToNodeFloor: +(med['kata-ts run']! / med['floor (node)']!).toFixed(2),
    daxRatioToKernelFloor: +(med['kata-ts run (DAX image)']! / med['floor (kernel)']!).toFixed(2),
    // run by run, each kata-ts run against the floor measured right after it
    ratiosRunByRun: results['kata-ts run']!.map((v, i) => +(v / results['floor (kernel)']![i]!).toFixed(2)),
    daxRatiosRunByRun: results['kata-ts run (DAX image)']!.map((v, i) => +(v / results['floor (kernel)']![i]!).toFixed(2)),
    agentFromSnapshot: `${runsFromSnapshot.filter(Boolean).length} of ${runs}`,
    phasesMedianMs: Object.fromEntries(Object.entries(phaseSamples).map(([k, v]) => [k, Math.round(median(v))])),
    footprintMiB: fp ? { runtime: +fp.runtimePssMiB.toFixed(1), qemu: +fp.qemuPssMiB.toFixed(1) } : null,
    ...(footprintError ? { footprintError } : {}),
    samplesMs: results,
  };
  console.log(`accel: ${out.accel} (${out.reason})`);
  console.log('time to first output (median of %d):', runs);
  for (const [k, v] of Object.entries(med)) console.log(`  ${k.padEnd(16)} ${String(v).padStart(6)} ms`);
  console.log(`  ratio kata-ts run / floor (kernel): ${out.ratioToKernelFloor}x;  / floor (node): ${out.ratioToNodeFloor}x`);
  console.log(`  run by run / floor (kernel): ${out.ratiosRunByRun.map((x) => `${x}x`).join(', ')}`);
  console.log(`  ratio kata-ts run (DAX image) / floor (kernel): ${out.daxRatioToKernelFloor}x; run by run: ${out.daxRatiosRunByRun.map((x) => `${x}x`).join(', ')}`);
  console.log(`  agent started from its V8 snapshot: ${out.agentFromSnapshot} runs`);
  console.log(`  kata-ts run total (to exit, VM torn down): ${out.runTotalMedianMs} ms`);
  console.log('kata-ts run phases (median, from its "sandbox ready" line):');
  console.log(`  ${''.padEnd(50)} ${'virtio-blk'.padStart(10)} ${'DAX'.padStart(8)}`);
  for (const [k, what] of PHASES) {
    const show = (v: number | undefined) => (v === undefined ? '-' : `${v} ms`);
    console.log(`  ${what.padEnd(50)} ${show(out.phasesMedianMs[k]).padStart(10)} ${show(out.phasesMedianMs[`dax.${k}`]).padStart(8)}`);
  }
  if (out.footprintMiB) console.log(`host PSS per running sandbox: runtime ${out.footprintMiB.runtime} MiB, qemu ${out.footprintMiB.qemu} MiB`);
  else console.log(`host PSS per running sandbox: FAILED: ${footprintError}`);
  writeResult('boot', out);
  if (footprintError) process.exitCode = 1;
}

// bench/factory.ts imports the floor from here: run only as a program.
if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
