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
 *  vm       with --vm: a QEMU TCG guest; sequential agent gRPC round trips
 *           (GetGuestDetails) over vsock — the number the runtime feels.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/vsock.js [--vm]
 *
 * Writes build/bench/vsock.json. Ratios are device/peer (1.0 = as fast as
 * a bare unix socket; throughput higher is better, latency lower is better).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { configureLogging } from '../src/common/log';
import { native } from '../src/common/native';
import { VhostUserBackend } from '../src/vhost-user/backend';
import { HybridVsock } from '../src/virtio/vsock/hybrid';
import { connectVsock, dialAgent, waitForMarker } from '../src/protocols/agent-dialer';
import { QemuHypervisor } from '../src/hypervisor/qemu';
import { AgentClient } from '../src/runtime/agent-client';
import { FakeFrontEnd, GUEST_RAM } from '../test/unit/vhost-user/fake-frontend';
import { GuestVsock, type GuestConn } from '../test/unit/virtio/guest-vsock';
import { machine, table, writeResult } from './native';

const BYTES = 32 << 20;
const PINGS = 2000;

async function deviceRig() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-vsock-'));
  const sock = path.join(dir, 'v.sock');
  const hybrid = new HybridVsock(sock, { guestCid: 3 });
  await hybrid.listen();
  const backend = new VhostUserBackend({ socketPath: path.join(dir, 'vu.sock'), device: hybrid.device, guestBytes: GUEST_RAM, queues: 2 });
  backend.listen();
  const fe = new FakeFrontEnd();
  fe.connect(path.join(dir, 'vu.sock'));
  await fe.negotiate();
  await fe.setMemTable();
  const rx = await fe.startRing(0, 128, 0x10000n, { eventIdx: true });
  const tx = await fe.startRing(1, 128, 0x30000n, { eventIdx: true });
  await fe.enable(0);
  await fe.enable(1);
  const guest = new GuestVsock(fe, rx, tx, 3n, 0x100000n);
  guest.listening.add(5000);
  const s = await connectVsock(sock, 5000);
  while (guest.conns.size === 0) await new Promise((r) => setTimeout(r, 1));
  const c = [...guest.conns.values()][0];
  const close = async () => {
    s.destroy(); guest.close(); fe.close(); backend.close(); await hybrid.close();
    for (const f of [rx.kick, rx.call, rx.err, tx.kick, tx.call, tx.err]) native().closeFd(f);
    fs.rmSync(dir, { recursive: true, force: true });
  };
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

async function vmRoundTrips(): Promise<{ rpcUs: number; calls: number }> {
  const cache = process.env.KATA_TS_CACHE ?? '/var/cache/kata-ts';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-vsock-vm-'));
  const hv = new QemuHypervisor({ binary: '/usr/bin/qemu-system-x86_64', machine: 'pc', accel: 'tcg' });
  try {
    const vm = await hv.start({ id: 'bench-vsock', dir, kernel: path.join(cache, 'kernel', 'vmlinux'), image: path.join(cache, 'image', 'rootfs.erofs'), vcpus: 1, memoryMiB: 512, kernelParams: '', disks: [], debug: false });
    await waitForMarker(vm.consoleLog, 120000, hv.exited());
    const client = new AgentClient(dialAgent(vm.agentSocket));
    await client.check(30000);
    const calls = 100;
    for (let i = 0; i < 10; i++) await client.check(5000);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < calls; i++) await client.check(5000);
    const rpcUs = Number(process.hrtime.bigint() - t0) / 1e3 / calls;
    client.close();
    return { rpcUs, calls };
  } finally {
    await hv.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  configureLogging({ level: 'error' });
  const dev = await deviceThroughput();
  const peer = await peerThroughput();
  const f = (x: number) => x.toFixed(1);
  const rows: Array<[string, string, string]> = [
    ['host→guest MB/s', f(dev.h2g), `${f(peer.h2g)}  (ratio ${(dev.h2g / peer.h2g).toFixed(2)})`],
    ['guest→host MB/s', f(dev.g2h), `${f(peer.g2h)}  (ratio ${(dev.g2h / peer.g2h).toFixed(2)})`],
    ['1-byte round trip µs', f(dev.rttUs), `${f(peer.rttUs)}  (ratio ${(dev.rttUs / peer.rttUs).toFixed(2)})`],
  ];
  const result: Record<string, unknown> = { machine: machine(), bytes: BYTES, pings: PINGS, device: dev, peer };
  if (process.argv.includes('--vm')) {
    const vm = await vmRoundTrips();
    rows.push(['agent Check RPC µs (TCG VM)', f(vm.rpcUs), '—']);
    result.vm = vm;
  }
  process.stdout.write(`${table([['metric', 'vsock device (vhost-user)', 'unix socket pair (peer)'], ...rows])}\n`);
  process.stdout.write(`wrote ${writeResult('vsock', result)}\n`);
}

main().catch((e: Error) => { process.stderr.write(`${e.stack ?? e.message}\n`); process.exit(1); });
