/**
 * Pod memory resizing (issue 13), the two mechanisms side by side on fresh
 * pods, in alternating order each iteration (virtio-mem then DIMM, then DIMM
 * then virtio-mem) so a load change on this shared host hits both:
 *
 *   virtio-mem   memory_hotplug = "virtio-mem" (the default): qom-set
 *                requested-size up, and back down when the container leaves;
 *   dimm         memory_hotplug = "dimm" with the balloon
 *                (reclaim_guest_freed_memory): a pc-dimm plugged, never
 *                unplugged; the balloon's target goes back to the boot size.
 *
 * Each pod boots with 512 MiB and room to 1024 MiB; a container with a
 * 512 MiB memory limit joins, touches 400 MiB (dd's buffer), and leaves.
 * Measured:
 *   grow     the create call → the guest's MemTotal +500 MiB (polled through
 *            the agent every 100 ms);
 *   touched  MiB the host allocated in QEMU's guest-RAM memfds meanwhile
 *            (their st_blocks through /proc/<qemu>/fd; that is what guest
 *            RAM costs the host, whoever maps it);
 *   remove   the remove call (the container exits on SIGTERM at once; with
 *            virtio-mem the call includes the wait for the guest's unplug);
 *   shrink   the remove call → those memfds back within 32 MiB of where they
 *            were before the touch (polled every 250 ms, 90 s at most);
 *   returned MiB given back to the host by then.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/memory-resize.js [iterations, default 3]
 *
 * Writes build/bench/memory-resize.json. TCG on a shared 2-core host: the
 * load average is recorded with every sample.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { configureLogging } from '../src/common/log';
import { defaultConfig } from '../src/runtime/config';
import { selectHypervisor } from '../src/hypervisor';
import { Sandbox } from '../src/runtime/sandbox';
import { defaultProcess, defaultSpec } from '../src/runtime/spec';
import { attachProcess } from '../src/runtime/stdio';
import { machine, table, writeResult } from './native';
import { median } from './stats';

const CACHE = process.env.KATA_TS_CACHE ?? '/var/cache/kata-ts';
const MIB = 1024 * 1024;
type Mode = 'virtio-mem' | 'dimm';

interface Sample { mode: Mode; growMs: number; touchedMiB: number; removeMs: number; shrinkMs: number; returnedMiB: number; leftMiB: number; load: number }

/** MiB the host has allocated in a process's memfds (guest RAM: boot memory, the virtio-mem device, DIMMs). */
function memfdMiB(pid: number): number {
  let blocks = 0;
  const dir = `/proc/${pid}/fd`;
  for (const fd of fs.readdirSync(dir)) {
    try {
      if (!fs.readlinkSync(path.join(dir, fd)).startsWith('/memfd:')) continue;
      blocks += fs.statSync(path.join(dir, fd)).blocks;
    } catch { /* closed meanwhile */ }
  }
  return (blocks * 512) / MIB;
}

/** The pid QEMU wrote under the sandbox's run dir (its -pidfile). */
function qemuPid(dir: string): number {
  for (const e of fs.readdirSync(dir, { recursive: true, withFileTypes: false }) as string[]) {
    if (path.basename(e) === 'qemu.pid') return Number(fs.readFileSync(path.join(dir, e), 'utf8').trim());
  }
  throw new Error(`no qemu.pid under ${dir}`);
}

async function until(what: string, timeoutMs: number, everyMs: number, ok: () => Promise<boolean> | boolean): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((res) => setTimeout(res, everyMs));
  }
}

async function one(mode: Mode, runDir: string, i: number): Promise<Sample> {
  const dir = path.join(runDir, `${mode}-${i}`);
  fs.mkdirSync(dir, { recursive: true });
  const rootfs = path.join(dir, 'rootfs');
  fs.cpSync(path.join(CACHE, 'rootfs', 'busybox'), rootfs, { recursive: true, verbatimSymlinks: true });
  const cfg = defaultConfig();
  cfg.runtime.run_dir = dir;
  cfg.runtime.cache_dir = CACHE;
  cfg['agent.kata'].dial_timeout = 120;
  const q = cfg['hypervisor.qemu'];
  q.default_memory = 512;
  q.default_maxmemory = 1024;
  q.memory_hotplug = mode;
  q.reclaim_guest_freed_memory = mode === 'dimm';
  const hv = (await selectHypervisor(cfg, 'qemu')).hv;
  const sb = new Sandbox({ id: `mr${i}${mode === 'dimm' ? 'd' : 'v'}`, config: cfg, hypervisor: hv, bootContainers: [{ id: 'c0', rootfs: path.join(CACHE, 'rootfs', 'busybox'), rootfsShare: 'erofs' }] });
  let seq = 0;
  const sh = async (cid: string, script: string) => {
    const id = `e${seq++}`;
    await sb.exec(cid, id, defaultProcess({ args: ['sh', '-c', script] }));
    const out = new PassThrough();
    let o = '';
    out.on('data', (d) => (o += d));
    await attachProcess(sb.agent, cid, id, { stdout: out, stderr: out, terminal: false }).done;
    return o;
  };
  const memTotalMiB = async () => Number(/MemTotal:\s+(\d+)/.exec(await sh('c0', 'cat /proc/meminfo'))![1]) / 1024;
  try {
    await sb.start();
    await sb.createContainer('c0', defaultSpec({ args: ['sleep', '600'] }), path.join(CACHE, 'rootfs', 'busybox'));
    await sb.startContainer('c0');
    const pid = qemuPid(dir);
    const before = await memTotalMiB();
    // Exits on SIGTERM at once, so the remove call is not the stop timeout (a bare sleep as pid 1 ignores TERM).
    const spec = defaultSpec({ args: ['sh', '-c', 'trap "exit 0" TERM; while :; do sleep 1; done'] });
    spec.linux = { ...spec.linux, resources: { memory: { limit: 512 * MIB } } };
    const t0 = Date.now();
    await sb.createContainer('m1', spec, rootfs);
    await until('guest MemTotal +500 MiB', 60000, 100, async () => (await memTotalMiB()) >= before + 500);
    const growMs = Date.now() - t0;
    await sb.startContainer('m1');
    const base = memfdMiB(pid);
    const used = await sh('m1', 'dd if=/dev/zero of=/dev/null bs=400M count=1 2>&1 && echo used');
    if (!/used/.test(used)) throw new Error(`dd in the container: ${used}`);
    const peak = memfdMiB(pid);
    const t1 = Date.now();
    await sb.removeContainer('m1');
    const removeMs = Date.now() - t1;
    let shrinkMs = NaN;
    await until('host memory back', 90000, 250, () => memfdMiB(pid) <= base + 32).then(() => { shrinkMs = Date.now() - t1; }, () => undefined);
    const left = memfdMiB(pid);
    return { mode, growMs, touchedMiB: peak - base, removeMs, shrinkMs, returnedMiB: peak - left, leftMiB: left - base, load: os.loadavg()[0] };
  } finally {
    await sb.stop().catch(() => undefined);
  }
}

async function main(): Promise<void> {
  configureLogging({ silent: true });
  const n = Number(process.argv[2] ?? 3);
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-bench-mr-'));
  const samples: Sample[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const order: Mode[] = i % 2 ? ['dimm', 'virtio-mem'] : ['virtio-mem', 'dimm'];
      for (const m of order) {
        const s = await one(m, runDir, i);
        samples.push(s);
        console.log(JSON.stringify(s));
      }
    }
  } finally {
    fs.rmSync(runDir, { recursive: true, force: true });
  }
  const of = (m: Mode, k: keyof Omit<Sample, 'mode'>) => samples.filter((s) => s.mode === m).map((s) => s[k] as number);
  const med = (m: Mode, k: keyof Omit<Sample, 'mode'>) => median(of(m, k).filter((x) => Number.isFinite(x)));
  const range = (m: Mode, k: keyof Omit<Sample, 'mode'>) => { const xs = of(m, k); return `${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)}`; };
  const rows: Array<[string, string, string]> = [];
  for (const m of ['virtio-mem', 'dimm'] as Mode[]) {
    rows.push([`${m} grow ms`, med(m, 'growMs').toFixed(0), range(m, 'growMs')]);
    rows.push([`${m} touched MiB`, med(m, 'touchedMiB').toFixed(0), range(m, 'touchedMiB')]);
    rows.push([`${m} remove call ms`, med(m, 'removeMs').toFixed(0), range(m, 'removeMs')]);
    rows.push([`${m} shrink ms (NaN: not back in 90 s)`, med(m, 'shrinkMs').toFixed(0), `${of(m, 'shrinkMs').filter((x) => !Number.isFinite(x)).length} of ${of(m, 'shrinkMs').length} never back`]);
    rows.push([`${m} returned MiB`, med(m, 'returnedMiB').toFixed(0), range(m, 'returnedMiB')]);
    rows.push([`${m} left on the host MiB`, med(m, 'leftMiB').toFixed(0), range(m, 'leftMiB')]);
  }
  rows.push(['grow ratio virtio-mem / dimm', (med('virtio-mem', 'growMs') / med('dimm', 'growMs')).toFixed(2), '']);
  rows.push(['load (1 min)', median(samples.map((s) => s.load)).toFixed(1), `${Math.min(...samples.map((s) => s.load)).toFixed(1)}–${Math.max(...samples.map((s) => s.load)).toFixed(1)}`]);
  console.log(table(rows));
  console.log(`wrote ${writeResult('memory-resize', { machine: machine(), iterations: n, samples })}`);
}

main().catch((err) => { console.error(err); process.exit(1); });
