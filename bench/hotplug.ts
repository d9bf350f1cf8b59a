/**
 * Hotplug latency per device kind (issue 14): request → usable in the guest,
 * through the sandbox's device manager. Two pods run side by side for the
 * whole run, one per block driver, and every iteration measures both, in
 * alternating order (ours then QEMU's, then QEMU's then ours: ABBA), so a
 * load change on this shared host hits both sides alike instead of one
 * whole series:
 *
 *   blk, ours     our virtio-blk behind vhost-user-blk-pci (chardev-add +
 *                 device_add), until the guest has the new block device;
 *   blk, QEMU's   QEMU's own virtio-blk-pci (blockdev-add + device_add), the
 *                 peer, same test;
 *   fs, ours      our virtio-fs behind vhost-user-fs-pci, until the guest's
 *                 virtio_fs driver is bound to it (mountable). No peer here:
 *                 virtiofsd is not installed on these hosts.
 *   net           QEMU's virtio-net-pci on a tap of ours (getfd, netdev_add,
 *                 device_add; the same in either pod), until virtio_net is
 *                 bound to it in the guest. No peer: there is no other.
 *   unplug        device_del until the guest released it (DEVICE_DELETED).
 *
 * How "usable" is seen without counting an exec's start-up: a poller runs
 * in a container (exec'd before the request, it says "go" when running)
 * and prints "UP <guest uptime>" as soon as the guest has one more virtio
 * block device (or bound virtio-fs device) than when it started, checking
 * sysfs every 10 ms as the agent does (a busy loop would take the single
 * vCPU from the guest kernel's own probe); then it prints the kernel log
 * and exits. The time is from the attach call to the host reading that
 * line.
 *
 * Where the time goes: every QMP command is timed (a wrapper around
 * QmpClient.execute, this process only), and for ours the backend records
 * when the guest driver started the device (VhostUserBackend.activatedAt:
 * QEMU's vhost start after the guest's DRIVER_OK). Each sample carries the
 * 1-minute load average; the report gives median and min–max of each.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/hotplug.js [iterations, default 11]
 *
 * Writes build/bench/hotplug.json. Under TCG on a shared 2-core host the
 * guest's own probing dominates; read the ratio, not the milliseconds.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { configureLogging } from '../src/common/log';
import { native } from '../src/common/native';
import { defaultConfig } from '../src/runtime/config';
import { QemuHypervisor, type BlockDriver } from '../src/hypervisor/qemu';
import { QmpClient } from '../src/hypervisor/qmp';
import { VhostUserBackend } from '../src/vhost-user/backend';
import { Sandbox } from '../src/runtime/sandbox';
import { defaultProcess, defaultSpec } from '../src/runtime/spec';
import { attachProcess } from '../src/runtime/stdio';
import type { DeviceSpec } from '../src/resource/devices/device-manager';
import { machine, table, writeResult } from './native';
import { median } from './stats';

const CACHE = process.env.KATA_TS_CACHE ?? '/var/cache/kata-ts';

/** One hotplug: totals and the phases (ms from the attach call). */
interface Sample {
  plugMs: number;
  unplugMs: number;
  /** 1-minute load average when the sample was taken. */
  load1: number;
  phases: Record<string, number>;
}

interface Pod {
  name: 'ours' | 'qemu';
  hv: QemuHypervisor;
  sb: Sandbox;
  runDir: string;
  disk: string;
  dir: string;
  seq: number;
}

// QMP timing: the commands one attach sent, with their durations.
let qmpLog: Array<{ cmd: string; start: number; ms: number }> | undefined;
const origExecute = QmpClient.prototype.execute;
QmpClient.prototype.execute = function <T>(this: QmpClient, cmd: string, args?: Record<string, unknown>): Promise<T> {
  const log = qmpLog;
  const start = performance.now();
  const p = origExecute.call(this, cmd, args) as Promise<T>;
  if (log) void p.then(() => log.push({ cmd, start, ms: performance.now() - start }), () => undefined);
  return p;
};

async function startPod(driver: BlockDriver): Promise<Pod> {
  const name = driver === 'virtio-blk' ? 'qemu' : 'ours';
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), `bench-hp-${name}-`));
  const cfg = defaultConfig();
  cfg.runtime.run_dir = runDir;
  cfg.runtime.cache_dir = CACHE;
  const hv = new QemuHypervisor({ binary: cfg['hypervisor.qemu'].path, machine: 'pc', accel: 'tcg', blockDriver: driver });
  const rootfs = path.join(CACHE, 'rootfs', 'busybox');
  const sb = new Sandbox({ id: `hp-${name}`, config: cfg, hypervisor: hv, bootContainers: [{ id: 'c', rootfs, rootfsShare: 'erofs' }] });
  try {
    await sb.start();
    await sb.createContainer('c', defaultSpec({ args: ['sleep', '3600'] }), rootfs);
    await sb.startContainer('c');
  } catch (err) {
    await sb.stop().catch(() => undefined);
    fs.rmSync(runDir, { recursive: true, force: true });
    throw err;
  }
  const disk = path.join(runDir, 'disk.raw');
  fs.writeFileSync(disk, Buffer.alloc(0));
  fs.truncateSync(disk, 16 << 20);
  const dir = path.join(runDir, 'share');
  fs.mkdirSync(dir);
  return { name, hv, sb, runDir, disk, dir, seq: 0 };
}

async function stopPod(p: Pod | undefined): Promise<void> {
  if (!p) return;
  await p.sb.stop().catch((e: Error) => process.stderr.write(`stopping ${p.name}: ${e.message}\n`));
  fs.rmSync(p.runDir, { recursive: true, force: true });
}

type Kind = 'blk' | 'fs' | 'net';
/** What the poller counts: virtio block devices, or virtio devices bound to the virtiofs / virtio_net driver. */
const COUNT: Record<Kind, string> = {
  blk: 'ls /sys/block | grep -c ^vd',
  fs: 'ls /sys/bus/virtio/drivers/virtiofs 2>/dev/null | grep -c ^virtio',
  net: 'ls /sys/bus/virtio/drivers/virtio_net 2>/dev/null | grep -c ^virtio',
};

async function plugOnce(p: Pod, kind: Kind): Promise<Sample> {
  const { sb, hv } = p;
  // Waits for one more of what COUNT counts than there was when it started.
  const count = COUNT[kind];
  const n = p.seq++;
  const execId = `p${n}`;
  // After it saw the device: the guest's clock and kernel log, for the guest-side phases.
  await sb.exec('c', execId, defaultProcess({ args: ['sh', '-c', `n=$(${count}); echo go; until [ "$(${count})" -gt "$n" ]; do usleep 10000; done; echo UP $(cat /proc/uptime); dmesg | tail -n 40`] }));
  const stream = new PassThrough();
  let seen = '';
  // The poller prints "UP <guest uptime>" the moment it saw the device: that line's arrival is "usable".
  let sawAt = 0;
  const started = new Promise<void>((resolve) => stream.on('data', (d) => {
    seen += d;
    if (!sawAt && seen.includes('UP ')) sawAt = performance.now();
    if (seen.includes('go')) resolve();
  }));
  const done = attachProcess(sb.agent, 'c', execId, { stdout: stream, stderr: stream, terminal: false }).done;
  done.catch(() => undefined); // awaited below; a failure before that must not crash the run
  await started;
  const id = `${kind}${n}`;
  // A net device is QEMU's virtio-net on a tap of ours (not brought up; it goes when its fd closes).
  const tap = kind === 'net' ? native().tapCreate(null, `hpb${process.pid % 10000}n${n % 100}`, { vnetHdr: true, nonBlocking: true }) : undefined;
  const spec: DeviceSpec = kind === 'blk' ? { kind: 'blk', id, path: p.disk, readonly: false }
    : kind === 'fs' ? { kind: 'fs', id, path: p.dir }
    : { kind: 'net', id, fd: tap!.fd, mac: `52:54:00:7e:${(n >> 8 & 255).toString(16).padStart(2, '0')}:${(n & 255).toString(16).padStart(2, '0')}`, mtu: 1500 };
  const log: NonNullable<typeof qmpLog> = [];
  qmpLog = log;
  const t0 = performance.now();
  let dev;
  try {
    dev = await sb.devices.attach(spec, 'bench');
  } catch (err) {
    if (tap) native().closeFd(tap.fd);
    throw err;
  } finally {
    qmpLog = undefined;
  }
  const returned = performance.now() - t0;
  const st = await done;
  if (st.status !== 0 || !sawAt) throw new Error(`poller failed: ${seen}`);
  const plugMs = sawAt - t0;
  const phases: Record<string, number> = {};
  for (const c of log) phases[`${c.cmd} (QMP)`] = (phases[`${c.cmd} (QMP)`] ?? 0) + c.ms;
  // Our own time in the attach: before the first QMP command and between/after them.
  if (log.length) {
    phases['= before the first QMP command, ms'] = log[0].start - t0;
    phases['= attach outside QMP commands, ms'] = returned - log.reduce((a, c) => a + c.ms, 0);
  }
  phases['attach returned'] = returned;
  const served = kind === 'net' ? undefined : hv.vhostUserDevices?.get(kind, id);
  const be = served?.backend;
  if (be && be.activatedAt >= t0) {
    phases['backend activated (guest started the device)'] = be.activatedAt - t0;
    // vhost-user messages: those in device_add (realize) and those of QEMU's
    // vhost start after the guest's DRIVER_OK; our handlers' own time in each.
    const tr = (be.trace ?? []).filter((m) => m.at >= t0 && m.at <= be.activatedAt);
    const realize = tr.filter((m) => m.at - t0 <= returned);
    const start = tr.filter((m) => m.at - t0 > returned);
    if (start.length) phases['vhost start: first message (guest DRIVER_OK)'] = start[0].at - t0;
    phases['= our handlers in realize, ms'] = realize.reduce((a, m) => a + m.ms, 0);
    phases['= our handlers in vhost start, ms'] = start.reduce((a, m) => a + m.ms, 0);
    phases['= vhost-user messages in realize'] = realize.length;
    phases['= vhost-user messages in vhost start'] = start.length;
  }
  Object.assign(phases, guestPhases(seen, dev.pciPath!, kind, plugMs));
  phases['guest sees it'] = plugMs;
  const t1 = performance.now();
  await sb.devices.detach(id, 'bench');
  const unplugMs = performance.now() - t1;
  if (tap) native().closeFd(tap.fd);
  // Not counted: let a late DEVICE_DELETED free the slot before the next round.
  const slot = parseInt(dev.pciPath!, 16);
  for (let w = 0; w < 300 && hv.slotsInUse().includes(slot); w++) await new Promise((r) => setTimeout(r, 200));
  return { plugMs, unplugMs, load1: os.loadavg()[0], phases };
}

/**
 * Guest-side phases from the poller's kernel log, placed on the host's
 * time line by the guest clock at the moment the poller saw the device
 * (plugMs; the line's trip to the host is not subtracted): when the PCI
 * device was found (ACPI hotplug → the guest's PCI rescan) and, for a disk,
 * when virtio_blk read its capacity (probe, before DRIVER_OK; ours is
 * activated by QEMU's vhost start after that, and the partition scan that
 * follows reads through the device).
 */
function guestPhases(out: string, pciPath: string, kind: Kind, plugMs: number): Record<string, number> {
  const up = /UP ([\d.]+)/.exec(out);
  if (!up) return {};
  const now = Number(up[1]);
  const at = (re: RegExp) => {
    let last: number | undefined;
    for (const line of out.split('\n')) { const m = /^\[\s*([\d.]+)\]/.exec(line); if (m && re.test(line)) last = Number(m[1]); }
    return last === undefined ? undefined : plugMs - (now - last) * 1000;
  };
  const r: Record<string, number> = {};
  const found = at(new RegExp(`pci 0000:00:${pciPath}\\.0: \\[1af4:`));
  if (found !== undefined) r['guest: PCI device found'] = found;
  if (kind === 'blk') {
    const cap = at(/virtio_blk virtio\d+: \[vd[a-z]+\] \d+ 512-byte logical blocks/);
    if (cap !== undefined) r['guest: virtio_blk read the capacity'] = cap;
  }
  return r;
}

const f0 = (x: number) => x.toFixed(0);
/** "median (min–max)" of a series. */
function spread(xs: number[]): string {
  return `${f0(median(xs))} (${f0(Math.min(...xs))}–${f0(Math.max(...xs))})`;
}

async function main(): Promise<void> {
  configureLogging({ level: 'error' });
  VhostUserBackend.traceNew = true;
  const iterations = Number(process.argv[2] ?? 11);
  if (!Number.isInteger(iterations) || iterations < 1) throw new Error(`iterations "${process.argv[2]}" must be a positive integer`);
  const loadStart = os.loadavg();
  const res: Record<'ours' | 'qemu', Record<Kind, Sample[]>> = { ours: { blk: [], fs: [], net: [] }, qemu: { blk: [], fs: [], net: [] } };
  let ours: Pod | undefined;
  let qemu: Pod | undefined;
  try {
    ours = await startPod('vhost-user-blk');
    qemu = await startPod('virtio-blk');
    for (let i = 0; i < iterations; i++) {
      // ABBA: the side measured first alternates.
      const order = i % 2 ? [qemu, ours] : [ours, qemu];
      for (const p of order) {
        const s = await plugOnce(p, 'blk');
        res[p.name].blk.push(s);
        process.stderr.write(`  ${i + 1}/${iterations} ${p.name} blk: plug ${f0(s.plugMs)} ms, unplug ${f0(s.unplugMs)} ms, load ${s.load1.toFixed(2)}\n`);
      }
      for (const kind of ['fs', 'net'] as const) {
        const s = await plugOnce(ours, kind);
        res.ours[kind].push(s);
        process.stderr.write(`  ${i + 1}/${iterations} ours ${kind}: plug ${f0(s.plugMs)} ms, unplug ${f0(s.unplugMs)} ms\n`);
      }
    }
  } finally {
    await stopPod(ours);
    await stopPod(qemu);
  }
  const loadEnd = os.loadavg();
  const col = (s: Sample[], k: 'plugMs' | 'unplugMs') => s.map((x) => x[k]);
  const ratio = (a: Sample[], b: Sample[], k: 'plugMs' | 'unplugMs') => (median(col(a, k)) / median(col(b, k))).toFixed(2);
  const O = res.ours, Q = res.qemu;
  const rows: Array<[string, string, string]> = [
    [`ms, median (min–max) of ${iterations}, interleaved`, 'ours', "QEMU's (peer)"],
    ['blk: request → block device in the guest', spread(col(O.blk, 'plugMs')), `${spread(col(Q.blk, 'plugMs'))}  ours/QEMU ${ratio(O.blk, Q.blk, 'plugMs')}`],
    ['blk: unplug → released', spread(col(O.blk, 'unplugMs')), `${spread(col(Q.blk, 'unplugMs'))}  ours/QEMU ${ratio(O.blk, Q.blk, 'unplugMs')}`],
    ['fs: request → virtio_fs bound in the guest', spread(col(O.fs, 'plugMs')), 'no peer (no virtiofsd here)'],
    ['fs: unplug → released', spread(col(O.fs, 'unplugMs')), '-'],
    ['net: request → virtio_net bound in the guest', spread(col(O.net, 'plugMs')), "no peer (QEMU's virtio-net either way)"],
    ['net: unplug → released', spread(col(O.net, 'unplugMs')), '-'],
  ];
  process.stdout.write(`${table(rows)}\n\n`);
  // Phase breakdown (ms from the attach call, medians).
  const phaseRows: Array<[string, string, string]> = [['blk phases, ms from the request (median)', 'ours', "QEMU's"]];
  // In time order (median over both sides).
  const when = (k: string) => median([...O.blk, ...Q.blk].map((x) => x.phases[k]).filter((x): x is number => x !== undefined));
  // Rows starting "=" are counts and our own time, not moments: they go last.
  const order = (k: string) => (k.startsWith('=') ? 1e9 : when(k));
  const names = [...new Set([...O.blk, ...Q.blk].flatMap((s) => Object.keys(s.phases)))].sort((a, b) => order(a) - order(b));
  const ph = (s: Sample[], k: string) => { const xs = s.map((x) => x.phases[k]).filter((x): x is number => x !== undefined); return xs.length ? spread(xs) : '-'; };
  for (const k of names) phaseRows.push([k, ph(O.blk, k), ph(Q.blk, k)]);
  process.stdout.write(`${table(phaseRows)}\n\n`);
  const loads = [...O.blk, ...Q.blk, ...O.fs, ...O.net].map((s) => s.load1);
  process.stdout.write(`load average (1/5/15 min): start ${loadStart.map((x) => x.toFixed(2)).join(' ')}, end ${loadEnd.map((x) => x.toFixed(2)).join(' ')}; 1-min per sample ${Math.min(...loads).toFixed(2)}–${Math.max(...loads).toFixed(2)}\n`);
  process.stdout.write(`wrote ${writeResult('hotplug', { machine: machine(), iterations, interleaved: 'ABBA', ours: O, qemu: Q, loadStart, loadEnd })}\n`);
}

main().catch((e: Error) => { process.stderr.write(`${e.stack ?? e.message}\n`); process.exit(1); });
