/**
 * vsock benchmark (issue 5), side by side in one run:
 *
 *  device   our virtio-vsock device behind our vhost-user backend, driven by
 *           the test suite's fake QEMU front end and Linux-shaped guest driver
 *           in the same process (real unix socket, memfd, eventfds, WASM
 *           queue walking; no VM, so it measures our code, not TCG):
 *           host→guest and guest→host MB/s for 32 MiB through the hybrid
 *           socket, and 1-byte ping-pong round trips.
 *  peer     the same transfers over a plain unix socket pair in the same
 *           process (the floor any in-process relay pays).
 *  vm       with --vm, one QEMU TCG guest: sequential agent ttrpc round
 *           trips (Check) per second over our vsock — the number the
 *           runtime feels — and a guest→host bulk transfer (BENCH_VSOCK_VM_MIB,
 *           default 64 MiB) written by the same Node producer in the guest
 *           to (a) an AF_VSOCK stream through our device, (b) its stdout,
 *           read by the host as the agent's ReadStdout ttrpc stream over our
 *           vsock, (c) its stdout as a passfd IO stream (Kata 3's passfd IO:
 *           a vsock connection of its own the agent gives the process as its
 *           stdout, src/agent/passfd.ts; the VM boots with
 *           agent.passfd_listener_port), (d) a QEMU-native virtio-serial port
 *           (virtio-serial-pci hotplugged, socket chardev): ratios ours / QEMU's.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/vsock.js [--vm]
 *   (--vm needs the guest built by scripts/setup.sh; the guest commands run
 *   as debug consoles, so the VM boots with agent.debug_console)
 *
 * Writes build/bench/vsock.json. Ratios are device/peer (1.0 = as fast as
 * a bare unix socket; throughput higher is better, latency lower is better).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { configureLogging, type LogLevel } from '../src/common/log';
import { connectVsock, dialAgent, waitForMarker } from '../src/protocols/agent-dialer';
import { QemuHypervisor } from '../src/hypervisor/qemu';
import { AgentClient } from '../src/runtime/agent-client';
import { openPassfdStreams, passfdKernelParam } from '../src/runtime/passfd-stdio';
import type { VsockMetrics } from '../src/virtio/vsock/device';
import { AGENT_VSOCK_BUFFER } from '../src/agent/vsock-transport';
import type { GuestConn } from '../test/unit/virtio/guest-vsock';
import { closeVsockRig, vsockRig } from '../test/helpers/vhost-user-rig';
import { machine, table, writeResult } from './native';
import { median } from './stats';

const BYTES = 32 << 20;
const PINGS = 2000;
/** VM bulk transfers: VM_REPS blocks of VM_BLOCK bytes (odd, so every block lands at a new phase). */
const VM_BLOCK = 1048573;
const VM_REPS = Number(process.env.BENCH_VSOCK_VM_MIB ?? 64);
const VM_BULK_PORT = 5001;
/** Kata runtime-rs's default passfd listener port ([runtime] passfd_listener_port). */
const PASSFD_PORT = 1027;

async function deviceRig() {
  const r = await vsockRig({ tmpPrefix: 'bench-vsock-', sockName: 'v.sock' });
  const { guest } = r;
  guest.listening.add(5000);
  const s = await connectVsock(r.sock, 5000);
  while (guest.conns.size === 0) await new Promise((res) => setTimeout(res, 1));
  const c = [...guest.conns.values()][0];
  const close = async () => { s.destroy(); await closeVsockRig(r); };
  return { s, c, guest, close };
}

async function deviceThroughput(): Promise<{ h2g: number; g2h: number; rttUs: number }> {
  const { s, c, guest, close } = await deviceRig();
  const data = crypto.randomBytes(BYTES);
  let t0 = process.hrtime.bigint();
  s.write(data);
  await c.until(() => c.bytes >= BYTES, 120000);
  const h2g = BYTES / (Number(process.hrtime.bigint() - t0) / 1e9) / 1e6;
  let got = 0;
  const done = new Promise<void>((r) => s.on('data', (d: Buffer) => { got += d.length; if (got >= BYTES) r(); }));
  s.resume();
  t0 = process.hrtime.bigint();
  await guest.write(c, data);
  await done;
  const g2h = BYTES / (Number(process.hrtime.bigint() - t0) / 1e9) / 1e6;
  s.removeAllListeners('data');
  // Ping-pong: host writes 1 byte, the guest answers 1 byte.
  const one = Buffer.from('x');
  let seen = c.bytes;
  const rtt = await pingPong(PINGS, async () => {
    const reply = new Promise<void>((r) => s.once('data', () => r()));
    s.write(one);
    await c.until(() => c.bytes > seen);
    seen = c.bytes;
    await guest.write(c as GuestConn, one);
    await reply;
  });
  await close();
  return { h2g, g2h, rttUs: rtt };
}

async function pingPong(n: number, once: () => Promise<void>): Promise<number> {
  for (let i = 0; i < 50; i++) await once();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await once();
  return Number(process.hrtime.bigint() - t0) / 1e3 / n;
}

async function peerThroughput(): Promise<{ h2g: number; g2h: number; rttUs: number }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-peer-'));
  const p = path.join(dir, 'p.sock');
  let server!: net.Socket;
  const srv = net.createServer((x) => { server = x; });
  await new Promise<void>((r) => srv.listen(p, () => r()));
  const client = net.connect(p);
  await new Promise<void>((r) => client.once('connect', () => r()));
  while (!server) await new Promise((r) => setTimeout(r, 1));
  const data = crypto.randomBytes(BYTES);
  const xfer = async (a: net.Socket, b: net.Socket) => {
    let got = 0;
    const done = new Promise<void>((r) => b.on('data', (d: Buffer) => { got += d.length; if (got >= BYTES) r(); }));
    const t0 = process.hrtime.bigint();
    a.write(data);
    await done;
    b.removeAllListeners('data');
    return BYTES / (Number(process.hrtime.bigint() - t0) / 1e9) / 1e6;
  };
  const h2g = await xfer(client, server);
  const g2h = await xfer(server, client);
  const one = Buffer.from('x');
  const rtt = await pingPong(PINGS, async () => {
    const a = new Promise<void>((r) => server.once('data', () => r()));
    client.write(one);
    await a;
    const b = new Promise<void>((r) => client.once('data', () => r()));
    server.write(one);
    await b;
  });
  client.destroy(); server.destroy();
  await new Promise<void>((r) => srv.close(() => r()));
  fs.rmSync(dir, { recursive: true, force: true });
  return { h2g, g2h, rttUs: rtt };
}

/**
 * The guest-side producer for the VM transfers, the same code for every
 * channel so only the channel differs: Node in the guest writes `reps`
 * copies of a 1 MiB - 3 B block to `target` — "vsock" (AF_VSOCK to host
 * port VM_BULK_PORT, i.e. our device → hybrid `<socket>_<port>`), "-"
 * (stdout: the agent's ReadStdout ttrpc stream over our vsock) or a
 * virtio-serial port device (QEMU's own virtio-serial-pci + a socket chardev).
 */
const GUEST_PRODUCER = `
const fs = require('fs');
const [, target, reps] = process.argv;
const block = Buffer.alloc(${VM_BLOCK}, '0123456789abcdef\\n');
let out;
if (target === 'vsock') {
  const n = require('/opt/kata-ts/dist/src/common/native.js').native();
  const { FdStream } = require('/opt/kata-ts/dist/src/common/fd-stream.js');
  const fd = n.vsockConnect(2, ${VM_BULK_PORT});
  // The agent's window (src/agent/vsock-transport.ts), so the raw stream stays the agent path's ceiling.
  if (n.vsockSetBufferSize) n.vsockSetBufferSize(fd, ${AGENT_VSOCK_BUFFER});
  out = new FdStream(fd);
} else if (target === '-') out = process.stdout;
else if (target === 'fd1') {
  // A passfd stdout is a vsock socket, which Node's process.stdout does not
  // know (README Limits): write fd 1 as the raw producer writes its socket.
  const { FdStream } = require('/opt/kata-ts/dist/src/common/fd-stream.js');
  out = new FdStream(1);
}
else out = fs.createWriteStream(target);
let i = 0;
const go = () => {
  while (i < Number(reps)) { i++; if (!out.write(block)) { out.once('drain', go); return; } }
  if (out !== process.stdout) out.end(() => out.destroy());
};
go();
`;

interface VmResult {
  rpcUs: number; rpcPerSec: number; calls: number; bulkBytes: number;
  vsockMBs: number; agentStdoutMBs: number; agentStdoutMessages: number; passfdStdoutMBs: number; virtioSerialMBs: number;
  /** Our device's counters during the raw, the agent and the passfd transfer. */
  vsockDevice: DeviceCounts; agentStdoutDevice: DeviceCounts; passfdStdoutDevice: DeviceCounts;
  /** Time between ReadStdout messages on the host, ms. */
  agentStdoutGapsMs: { median: number; p90: number; max: number };
}

type DeviceCounts = Pick<VsockMetrics, 'txPackets' | 'txPasses' | 'creditUpdates' | 'rxInterrupts' | 'txInterrupts'>;

function countsLine(d: DeviceCounts): string {
  return `${d.txPackets} tx packets in ${d.txPasses} passes, ${d.creditUpdates} credit updates, ${d.rxInterrupts}/${d.txInterrupts} rx/tx interrupts`;
}

/** Receives `bytes` on `onData`'s feed; MB/s from the first byte to the last. */
function meter(bytes: number, timeoutMs: number): { feed: (d: Buffer) => void; done: Promise<number> } {
  let got = 0;
  let t0 = 0n;
  let resolve!: (v: number) => void;
  let reject!: (e: Error) => void;
  const done = new Promise<number>((res, rej) => { resolve = res; reject = rej; });
  const timer = setTimeout(() => reject(new Error(`bulk transfer: ${got} of ${bytes} bytes after ${timeoutMs} ms`)), timeoutMs);
  return {
    feed: (d) => {
      if (!t0) t0 = process.hrtime.bigint();
      got += d.length;
      if (got >= bytes) { clearTimeout(timer); resolve(got / (Number(process.hrtime.bigint() - t0) / 1e9) / 1e6); }
    },
    done,
  };
}

async function vmBench(): Promise<VmResult> {
  const cache = process.env.KATA_TS_CACHE ?? '/var/cache/kata-ts';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-vsock-vm-'));
  const hv = new QemuHypervisor({ binary: '/usr/bin/qemu-system-x86_64', machine: 'pc', accel: 'tcg' });
  const servers: net.Server[] = [];
  try {
    const vm = await hv.start({ id: 'bench-vsock', dir, kernel: path.join(cache, 'kernel', 'vmlinux'), image: path.join(cache, 'image', 'rootfs.erofs'), vcpus: 1, memoryMiB: 512, kernelParams: `agent.debug_console ${passfdKernelParam(PASSFD_PORT)}`, disks: [], debug: false });
    await waitForMarker(vm.consoleLog, 120000, hv.exited());
    const client = new AgentClient(dialAgent(vm.agentSocket));
    await client.check(30000);
    // Agent RPC round trips over our vsock (sequential Check calls).
    const calls = 100;
    for (let i = 0; i < 10; i++) await client.check(5000);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < calls; i++) await client.check(5000);
    const rpcUs = Number(process.hrtime.bigint() - t0) / 1e3 / calls;

    const bytes = VM_BLOCK * VM_REPS;
    // Our device's counters around each transfer (bench only: the hypervisor keeps the device private).
    const dev = (hv as unknown as { vsock: { device: { metrics: VsockMetrics } } }).vsock.device;
    const snap = (): VsockMetrics => ({ ...dev.metrics });
    const delta = (a: VsockMetrics): DeviceCounts => {
      const b = dev.metrics;
      return { txPackets: b.txPackets - a.txPackets, txPasses: b.txPasses - a.txPasses, creditUpdates: b.creditUpdates - a.creditUpdates, rxInterrupts: b.rxInterrupts - a.rxInterrupts, txInterrupts: b.txInterrupts - a.txInterrupts };
    };
    const run = async (target: string, ports: { stdout_port?: number } = {}) => {
      const r = await client.startDebugConsole({ args: ['/usr/bin/node', '-e', GUEST_PRODUCER, target, String(VM_REPS)], terminal: false, rows: 0, columns: 0, env: [], ...ports });
      return { container_id: '', exec_id: r.exec_id };
    };
    // 1. raw vsock: guest connects to host port VM_BULK_PORT (hybrid <socket>_<port>).
    const m1 = meter(bytes, 300000);
    const vsrv = net.createServer((c) => c.on('data', m1.feed));
    servers.push(vsrv);
    await new Promise<void>((r) => vsrv.listen(`${vm.agentSocket}_${VM_BULK_PORT}`, () => r()));
    let before = snap();
    const ref1 = await run('vsock');
    const vsockMBs = await m1.done;
    const vsockDevice = delta(before);
    await client.waitProcess(ref1);
    // 2. the same bytes as a process's stdout through the agent (ttrpc ReadStdout over vsock).
    const m2 = meter(bytes, 300000);
    before = snap();
    const ref2 = await run('-');
    const out = client.readStdout(ref2);
    let agentStdoutMessages = 0;
    const arrivals: number[] = [];
    out.on('data', (msg: { data: Buffer }) => { agentStdoutMessages++; arrivals.push(performance.now()); if (msg.data?.length) m2.feed(msg.data); });
    const agentStdoutMBs = await m2.done;
    const agentStdoutDevice = delta(before);
    // Gaps between ReadStdout messages (ms): even gaps mean a steady pipeline, a few long ones a stall.
    const gaps = arrivals.slice(1).map((t, i) => t - arrivals[i]!).sort((a, b) => a - b);
    const agentStdoutGapsMs = { median: median(gaps), p90: gaps[Math.floor(gaps.length * 0.9)] ?? 0, max: gaps[gaps.length - 1] ?? 0 };
    await client.waitProcess(ref2);
    // 3. the same stdout as a passfd IO stream: a vsock connection of its own, the process's fd 1 in the guest, read raw here.
    const m4 = meter(bytes, 300000);
    const streams = await openPassfdStreams(vm.agentSocket, PASSFD_PORT, { stdin: false, stdout: true, stderr: false });
    before = snap();
    const ref4 = await run('fd1', streams.ports);
    streams.stdout!.on('data', m4.feed).resume();
    const passfdStdoutMBs = await m4.done;
    const passfdStdoutDevice = delta(before);
    await client.waitProcess(ref4);
    streams.close();
    // 4. QEMU-native: a virtio-serial port (virtio-serial-pci hotplugged, socket chardev to us).
    const m3 = meter(bytes, 300000);
    const serSock = path.join(dir, 'ser.sock');
    const ssrv = net.createServer((c) => c.on('data', m3.feed));
    servers.push(ssrv);
    await new Promise<void>((r) => ssrv.listen(serSock, () => r()));
    // The hypervisor owns the one QMP connection; borrow it (bench only).
    const qmp = (hv as unknown as { qmp: { execute(cmd: string, args?: Record<string, unknown>): Promise<unknown> } }).qmp;
    await qmp.execute('chardev-add', { id: 'bser', backend: { type: 'socket', data: { addr: { type: 'unix', data: { path: serSock } }, server: false } } });
    await qmp.execute('device_add', { driver: 'virtio-serial-pci', id: 'bvser', addr: '0x1e' });
    await qmp.execute('device_add', { driver: 'virtserialport', bus: 'bvser.0', chardev: 'bser', name: 'bench', id: 'bport' });
    // Find the port's device node once the guest has probed it.
    let port = '';
    for (let i = 0; i < 200 && !port; i++) {
      const find = await client.startDebugConsole({ args: ['/bin/sh', '-c', 'for f in /sys/class/virtio-ports/*; do [ "$(cat $f/name 2>/dev/null)" = bench ] && echo /dev/${f##*/}; done; true'], terminal: false, rows: 0, columns: 0, env: [] });
      const ref = { container_id: '', exec_id: find.exec_id };
      let text = '';
      const s = client.readStdout(ref);
      const ended = new Promise<void>((r) => { s.on('data', (msg: { data: Buffer }) => { text += msg.data?.toString() ?? ''; }); s.on('end', () => r()); s.on('error', () => r()); });
      await client.waitProcess(ref);
      await ended;
      port = text.trim();
      if (!port) await new Promise((r) => setTimeout(r, 100));
    }
    if (!port) throw new Error('virtio-serial port "bench" never appeared in the guest');
    const ref3 = await run(port);
    const virtioSerialMBs = await m3.done;
    await client.waitProcess(ref3);
    client.close();
    return { rpcUs, rpcPerSec: 1e6 / rpcUs, calls, bulkBytes: bytes, vsockMBs, agentStdoutMBs, agentStdoutMessages, passfdStdoutMBs, virtioSerialMBs, vsockDevice, agentStdoutDevice, passfdStdoutDevice, agentStdoutGapsMs };
  } finally {
    for (const s of servers) s.close();
    await hv.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  configureLogging({ level: (process.env.BENCH_LOG_LEVEL ?? 'error') as LogLevel });
  const dev = await deviceThroughput();
  const peer = await peerThroughput();
  const f = (x: number) => x.toFixed(1);
  const rows: Array<[string, string, string]> = [
    ['host→guest MB/s', f(dev.h2g), `${f(peer.h2g)}  (ratio ${(dev.h2g / peer.h2g).toFixed(2)})`],
    ['guest→host MB/s', f(dev.g2h), `${f(peer.g2h)}  (ratio ${(dev.g2h / peer.g2h).toFixed(2)})`],
    ['1-byte round trip µs', f(dev.rttUs), `${f(peer.rttUs)}  (ratio ${(dev.rttUs / peer.rttUs).toFixed(2)})`],
  ];
  const result: Record<string, unknown> = { machine: machine(), bytes: BYTES, pings: PINGS, device: dev, peer };
  process.stdout.write(`${table([['metric', 'vsock device (vhost-user)', 'unix socket pair (peer)'], ...rows])}\n`);
  if (process.argv.includes('--vm')) {
    const vm = await vmBench();
    const mib = (vm.bulkBytes / 1048576).toFixed(0);
    process.stdout.write(`\nsame TCG guest (1 vCPU), ${mib} MiB guest→host written by the same Node producer in the guest:\n`);
    process.stdout.write(`${table([
      ['metric', 'ours (vhost-user vsock)', 'QEMU virtio-serial (peer)'],
      [`bulk guest→host MB/s, raw stream`, f(vm.vsockMBs), `${f(vm.virtioSerialMBs)}  (ratio ${(vm.vsockMBs / vm.virtioSerialMBs).toFixed(2)})`],
      [`bulk as agent ReadStdout (ttrpc) MB/s`, f(vm.agentStdoutMBs), `${f(vm.virtioSerialMBs)}  (ratio ${(vm.agentStdoutMBs / vm.virtioSerialMBs).toFixed(2)})`],
      [`bulk as passfd IO stdout MB/s`, f(vm.passfdStdoutMBs), `${f(vm.virtioSerialMBs)}  (ratio ${(vm.passfdStdoutMBs / vm.virtioSerialMBs).toFixed(2)})`],
      ['agent Check RPC round trips/s', f(vm.rpcPerSec), `—  (${f(vm.rpcUs / 1000)} ms each)`],
      ['agent ReadStdout messages (avg KiB)', String(vm.agentStdoutMessages), `—  (${f(vm.bulkBytes / vm.agentStdoutMessages / 1024)} KiB each)`],
    ])}\n`);
    process.stdout.write(`our device, raw stream: ${countsLine(vm.vsockDevice)}\nour device, agent ReadStdout: ${countsLine(vm.agentStdoutDevice)}\nour device, passfd stdout: ${countsLine(vm.passfdStdoutDevice)}\n`);
    const g = vm.agentStdoutGapsMs;
    process.stdout.write(`agent ReadStdout message gaps: median ${f(g.median)} ms, p90 ${f(g.p90)} ms, max ${f(g.max)} ms\n`);
    result.vm = vm;
  }
  process.stdout.write(`wrote ${writeResult('vsock', result)}\n`);
}

main().catch((e: Error) => { process.stderr.write(`${e.stack ?? e.message}\n`); process.exit(1); });
