/**
 * Where a clone's time goes after resume (issue 16): one timeline per clone
 * of host events (QMP commands sent/answered, the agent's vsock port
 * answering) and the guest's console lines as they appear, all in ms since
 * QEMU's spawn. The template is made with `loglevel=8` so the guest's
 * hotplug and probe messages reach the console.
 *
 *   node dist/bench/factory-hotplug.js [shares=0,2] [runs=1]
 *
 * Environment: FH_VMLINUX=<vmlinux with symbols> samples the guest's RIP
 * (HMP `info registers`) between startClone's return and the agent's
 * answer and prints a histogram by kernel symbol; FH_ACPI_IRQ=1 boots the
 * template without `acpi=noirq` (as before template format 4);
 * FH_KPARAMS replaces `loglevel=8`; FH_IMAGE picks another guest image;
 * FH_QEMU_ARGS adds QEMU arguments to the template and its clones;
 * FH_CHECKS=n times n agent Check RPCs on a fresh connection afterwards;
 * FH_RPCS=1 then times a sandbox start's RPCs on that connection as the
 * runtime sends them (CreateSandbox, CreateContainer of /bin/true on the
 * guest's own root, StartContainer, WaitProcess); FH_WARMUP=0 boots the
 * template without `agent.warmup=1` (no agent warm-up, as before template
 * format 5), FH_WARMUP=both builds both templates and alternates their
 * clones, to compare in the same minutes.
 *
 * Needs root (the template's tmpfs). Prints the timelines; writes nothing.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { defaultConfig, guestAssets, loadConfig } from '../src/runtime/config';
import { probeKvm, chooseHypervisor } from '../src/hypervisor/capabilities';
import { qemuMemoryOptions } from '../src/hypervisor/index';
import { QemuHypervisor } from '../src/hypervisor/qemu';
import { QmpClient } from '../src/hypervisor/qmp';
import { connectVsock, dialAgent, AGENT_VSOCK_PORT } from '../src/protocols/agent-dialer';
import { AgentClient } from '../src/runtime/agent-client';
import { defaultSpec } from '../src/runtime/spec';
import { VmFactory, qemuTarget } from '../src/factory/factory';

const ms = (t0: bigint) => Math.round(Number(process.hrtime.bigint() - t0) / 1e5) / 10;

/** Sorted [address, name] of the guest kernel's text symbols (FH_VMLINUX=path). */
type Syms = Array<[bigint, string]>;
function loadSyms(vmlinux: string): Syms {
  const out = spawnSync('nm', ['-n', vmlinux], { encoding: 'utf8', maxBuffer: 256 << 20 }).stdout;
  const syms: Syms = [];
  for (const l of out.split('\n')) {
    const m = /^([0-9a-f]+) [tTwW] (\S+)/.exec(l);
    if (m) syms.push([BigInt(`0x${m[1]}`), m[2]!]);
  }
  return syms;
}
function symbolOf(syms: Syms, a: bigint): string {
  let lo = 0;
  let hi = syms.length - 1;
  if (!syms.length || a < syms[0]![0]) return `user/${a < 0xffff800000000000n ? 'user' : 'unknown'}`;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (syms[mid]![0] <= a) lo = mid; else hi = mid - 1;
  }
  return syms[lo]![1];
}
// FH_QEMU_ARGS: extra QEMU arguments for the template and its clones (experiments).
if (process.env.FH_QEMU_ARGS) {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const mod = require('../src/factory/qemu-template') as { templateArgs: (...a: unknown[]) => string[] };
  const orig = mod.templateArgs;
  mod.templateArgs = (...a: unknown[]) => [...orig(...a), ...process.env.FH_QEMU_ARGS!.split(' ').filter(Boolean)];
}
const syms = process.env.FH_VMLINUX ? loadSyms(process.env.FH_VMLINUX) : undefined;

async function cloneTimeline(factory: VmFactory, qemu: string, dir: string, shares: number): Promise<string[]> {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const shareDirs = Array.from({ length: shares }, (_, i) => fs.mkdtempSync(path.join(os.tmpdir(), `kts-fh-share${i}-`)));
  const lines: string[] = [];
  const t0 = process.hrtime.bigint();
  const exec = QmpClient.prototype.execute;
  QmpClient.prototype.execute = async function (this: QmpClient, cmd: string, args?: Record<string, unknown>) {
    const what = cmd === 'device_add' ? `device_add ${String(args?.driver)}` : cmd;
    lines.push(`${ms(t0)} host  > ${what}`);
    const r = await exec.call(this, cmd, args as never);
    lines.push(`${ms(t0)} host  < ${what}`);
    return r;
  } as typeof exec;
  const consoleLog = path.join(dir, 'console.log');
  let seen = 0;
  let partial = '';
  const poll = setInterval(() => {
    try {
      const buf = fs.readFileSync(consoleLog);
      if (buf.length > seen) {
        const text = partial + buf.subarray(seen).toString();
        seen = buf.length;
        const parts = text.split('\n');
        partial = parts.pop() ?? '';
        for (const p of parts) lines.push(`${ms(t0)} guest ${p.trim()}`);
      }
    } catch { /* not yet */ }
  }, 3);
  const prep = factory.prepareClone(dir);
  if ('reason' in prep) throw new Error(prep.reason);
  const hv = new QemuHypervisor({ binary: qemu, machine: 'pc', accel: factory.machine().accel, memory: factory.machine().memory });
  try {
    const vm = await hv.startClone({ id: 'fh', dir, kernel: '', image: '', vcpus: factory.machine().vcpus, memoryMiB: factory.machine().memoryMiB, kernelParams: '', disks: [], debug: false,
      shares: shareDirs.map((p, i) => ({ tag: `s${i}`, path: p })) }, prep.clone);
    lines.push(`${ms(t0)} host  startClone returned`);
    let sampling = !!syms;
    const samples: string[] = [];
    const sampler = (async () => {
      const qmp = (hv as unknown as { qmp: QmpClient }).qmp;
      while (sampling) {
        const out = await exec.call(qmp, 'human-monitor-command', { 'command-line': 'info registers' } as never).catch(() => '') as unknown as string;
        const rip = /RIP=([0-9a-f]+)/.exec(String(out))?.[1];
        if (rip && syms) samples.push(symbolOf(syms, BigInt(`0x${rip}`)));
      }
    })();
    const s = await connectVsock(vm.agentSocket, AGENT_VSOCK_PORT, 30000);
    lines.push(`${ms(t0)} host  agent vsock port answers`);
    sampling = false;
    await sampler;
    s.destroy();
    // The first RPCs on the clone's first connection, each timed (FH_CHECKS=n): first-call cost vs steady state.
    const checks = Number(process.env.FH_CHECKS ?? 0);
    if (checks > 0) {
      const agent = new AgentClient(dialAgent(vm.agentSocket));
      try {
        for (let i = 0; i < checks; i++) {
          const c0 = process.hrtime.bigint();
          await agent.check(30000);
          lines.push(`${ms(t0)} host  Check ${i + 1}: ${ms(c0)} ms`);
        }
        if (process.env.FH_RPCS === '1') {
          const timed = async (what: string, call: () => Promise<unknown>) => {
            const c0 = process.hrtime.bigint();
            const err = await call().then(() => '', (e: Error) => ` (failed: ${e.message})`);
            lines.push(`${ms(t0)} host  ${what}: ${ms(c0)} ms${err}`);
          };
          const spec = { ...defaultSpec({ args: ['/bin/true'] }), root: { path: '/', readonly: true } };
          await timed('CreateSandbox', () => agent.createSandbox({ sandbox_id: 'fh', hostname: 'fh', dns: ['nameserver 10.0.2.3'], sysctls: {}, policy_json: '' }));
          await timed('CreateContainer', () => agent.createContainer({ container_id: 'fh', exec_id: '', storages: [], oci_spec_json: JSON.stringify(spec) }));
          await timed('StartContainer', () => agent.startContainer('fh'));
          await timed('WaitProcess', () => agent.waitProcess({ container_id: 'fh', exec_id: '' }));
        }
      } finally {
        agent.close();
      }
    }
    if (samples.length) {
      const hist = new Map<string, number>();
      for (const f of samples) hist.set(f, (hist.get(f) ?? 0) + 1);
      lines.push(`guest RIP samples (${samples.length}) between startClone's return and the agent's answer:`);
      for (const [f, n] of [...hist].sort((a, b) => b[1] - a[1]).slice(0, 40)) lines.push(`  ${String(n).padStart(5)} ${f}`);
    }
    await new Promise((r) => setTimeout(r, 1500));
  } finally {
    clearInterval(poll);
    QmpClient.prototype.execute = exec;
    prep.release();
    await hv.stop();
    fs.rmSync(dir, { recursive: true, force: true });
    for (const d of shareDirs) fs.rmSync(d, { recursive: true, force: true });
  }
  return lines;
}

async function main(): Promise<void> {
  const shareCounts = (process.argv[2] ?? '0,2').split(',').map(Number);
  const runs = Number(process.argv[3] ?? 1);
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-fhbench-'));
  // FH_WARMUP=both: two templates, with and without the agent's warm-up, their clones alternating.
  const warmups = process.env.FH_WARMUP === 'both' ? ['1', '0'] : [process.env.FH_WARMUP === '0' ? '0' : '1'];
  const factories: { warm: string; factory: VmFactory }[] = [];
  const qemuOf: string[] = [];
  try {
    // Kernel and image pinned as copies (as bench/factory.ts): a guest image rebuilt meanwhile would stale the templates.
    const assets = guestAssets(defaultConfig(), 'qemu');
    const pinned = { kernel: path.join(runDir, 'vmlinux'), image: path.join(runDir, 'rootfs.erofs') };
    fs.copyFileSync(assets.kernel, pinned.kernel);
    fs.copyFileSync(process.env.FH_IMAGE ?? assets.image, pinned.image);
    for (const warm of warmups) {
      const tplCfg = path.join(runDir, `template-${warm}.toml`);
      fs.writeFileSync(tplCfg, `[runtime]\nrun_dir = "${runDir}"\n[factory]\nenable_template = true\ntemplate_path = "${path.join(runDir, `template-${warm}`)}"\n[hypervisor.qemu]\nkernel = "${pinned.kernel}"\nimage = "${pinned.image}"\n`);
      const cfg = loadConfig(tplCfg);
      const qemu = cfg['hypervisor.qemu'].path;
      const probe = await probeKvm(qemu, runDir);
      const choice = chooseHypervisor('qemu', 'auto', probe, false);
      const hv = new QemuHypervisor({ binary: qemu, machine: 'pc', accel: choice.accel, memory: qemuMemoryOptions(cfg['hypervisor.qemu']) });
      // FH_ACPI_IRQ=1 / warm-up '0': the template without TEMPLATE_KERNEL_PARAMS' acpi=noirq / agent.warmup=1 (the layouts before), to compare.
      const factory = new (class extends VmFactory {
        machine() {
          const m = super.machine();
          let line = m.kernelCmdline;
          if (process.env.FH_ACPI_IRQ === '1') line = line.replace(/ ?\bacpi=noirq\b/, '');
          if (warm === '0') line = line.replace(/ ?\bagent\.warmup=1\b/, '');
          return { ...m, kernelCmdline: line };
        }
      })({ config: cfg, qemu: qemuTarget(hv), kernelParams: process.env.FH_KPARAMS ?? 'loglevel=8' });
      factories.push({ warm, factory });
      qemuOf.push(qemu);
      await factory.init((l) => process.stderr.write(`  ${l}\n`));
    }
    for (let r = 0; r < runs; r++) {
      for (const n of shareCounts) {
        for (const [i, { warm, factory }] of factories.entries()) {
          console.log(`--- clone with vsock + ${n} share(s), run ${r + 1}${warm === '0' ? ', no agent warm-up' : ''} (load ${os.loadavg()[0].toFixed(2)})`);
          const lines = await cloneTimeline(factory, qemuOf[i]!, path.join(runDir, 'c'), n);
          for (const l of lines) console.log(l);
          const at = (re: RegExp) => Number(lines.find((l) => re.test(l))?.split(' ')[0] ?? NaN);
          const plug = at(/host {2}> device_add vhost-user-vsock-pci/);
          const agent = at(/agent vsock port answers/);
          const rpcs = lines.filter((l) => /host {2}(Check 1|CreateSandbox|CreateContainer|StartContainer|WaitProcess):/.test(l)).map((l) => l.replace(/^\S+ host {2}/, '')).join(', ');
          console.log(`summary: ${n} share(s)${process.env.FH_ACPI_IRQ === '1' ? ', ACPI IRQ routing' : ', acpi=noirq'}${warm === '0' ? ', no agent warm-up' : ', agent warm-up'}: resumed ${at(/host {2}< cont/)} ms, agent answers ${agent} ms after spawn, ${(agent - plug).toFixed(1)} ms after the vsock's device_add${rpcs ? `; ${rpcs}` : ''}`);
        }
      }
    }
  } finally {
    for (const { factory } of factories) factory.destroy();
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
