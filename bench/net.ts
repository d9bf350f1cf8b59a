/**
 * Pod network benchmark, side by side in one run: the same busybox client
 * in the same CNI-like pod namespace (a veth to a peer namespace standing
 * for the node), once in a kata-ts VM (`kata-ts run --net host-netns`, tc
 * mirror → tap → QEMU virtio-net, TCG here) and once under runc (the pod
 * netns given as the container's network namespace). The peer side
 * (bench/net-peer.ts) times everything with one clock:
 *   upload    container → peer, UPLOAD_MIB of zeros through `nc`
 *   download  peer → container, DOWNLOAD_MIB
 *   rtt       1-byte ping-pong over one TCP connection (`nc -e cat`), median and p99
 *
 *   bash scripts/setup.sh && node dist/bench/net.js [runs=3]
 *
 * Prints a table with kata-ts/runc ratios and writes build/bench/net.json.
 * Everything it creates (namespaces, bundle, processes) is removed.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as readline from 'node:readline';
import { PodNetns } from '../test/helpers/netns';
import { median } from './stats';

const REPO = path.resolve(__dirname, '..', '..');
const CACHE = process.env.KATA_TS_CACHE ?? '/var/cache/kata-ts';
const UPLOAD_MIB = Number(process.env.UPLOAD_MIB ?? 64);

interface Result { uploadMiBs: number; downloadMiBs: number; rttMedianUs: number; rttP99Us: number }

// `nc -e PROG` hands PROG the connected socket as stdin/stdout, so dd and
// cat move the bytes themselves in 64 KiB calls (nc's own copy loop would
// cap the baseline), and the download ends when the peer closes.
const CLIENT = [
  `nc 10.96.77.1 9000 -e dd if=/dev/zero bs=65536 count=${UPLOAD_MIB * 16}`,
  'nc 10.96.77.1 9002 -e dd of=/dev/null bs=65536',
  'nc 10.96.77.1 9001 -e cat',
].join(' 2>/dev/null; ');

async function main(): Promise<void> {
  const runs = Number(process.argv[2] ?? 3);
  const net = new PodNetns({ podCidr: '10.96.77.2/24', prefix: 'ktsb' });
  const { pod, peer } = net;
  const tag = pod.slice(-6);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-bench-net-'));
  let server: ReturnType<typeof spawn> | undefined;
  try {
    net.create();
    server = spawn('ip', ['netns', 'exec', peer, process.execPath, path.join(__dirname, 'net-peer.js'), '10.96.77.1'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const lines = readline.createInterface({ input: server.stdout! });
    const queue: Record<string, unknown>[] = [];
    const waiters: ((o: Record<string, unknown>) => void)[] = [];
    lines.on('line', (l) => {
      const o = JSON.parse(l) as Record<string, unknown>;
      const w = waiters.shift();
      if (w) w(o);
      else queue.push(o);
    });
    const next = () => new Promise<Record<string, unknown>>((res) => (queue.length ? res(queue.shift()!) : waiters.push(res)));
    if ((await next()).kind !== 'ready') throw new Error('peer server did not start');

    // runc bundle: the busybox rootfs set-up builds, network namespace = the pod's.
    const bundle = path.join(work, 'bundle');
    fs.mkdirSync(bundle);
    execFileSync('runc', ['spec'], { cwd: bundle });
    const spec = JSON.parse(fs.readFileSync(path.join(bundle, 'config.json'), 'utf8'));
    spec.root = { path: path.join(CACHE, 'rootfs', 'busybox'), readonly: true };
    spec.process.terminal = false;
    spec.process.args = ['sh', '-c', CLIENT];
    spec.linux.namespaces = spec.linux.namespaces.map((n: { type: string }) => (n.type === 'network' ? { type: 'network', path: `/var/run/netns/${pod}` } : n));
    fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(spec));

    const peers: Record<string, () => void> = {
      runc: () => {
        const r = spawnSync('runc', ['--root', path.join(work, 'runc-state'), 'run', `bench-${tag}`], { cwd: bundle, stdio: ['ignore', 'inherit', 'inherit'] });
        if (r.status !== 0) throw new Error(`runc exited ${r.status}`);
      },
      'kata-ts': () => {
        const r = spawnSync(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), 'run', '--net', 'host-netns', `/var/run/netns/${pod}`, '--', 'sh', '-c', CLIENT], { stdio: ['ignore', 'inherit', 'inherit'] });
        if (r.status !== 0) throw new Error(`kata-ts run exited ${r.status}`);
      },
    };
    const results: Record<string, Result> = {};
    for (const [name, runOnce] of Object.entries(peers)) {
      const up: number[] = [], down: number[] = [], rtt: number[] = [], p99: number[] = [];
      for (let i = 0; i < runs; i++) {
        const collected = (async () => {
          const got: Record<string, Record<string, unknown>> = {};
          while (!(got.upload && got.download && got.rtt)) {
            const o = await next();
            got[o.kind as string] = o;
          }
          return got;
        })();
        // spawnSync blocks this loop; the peer's lines wait in the pipe meanwhile.
        runOnce();
        const got = await collected;
        up.push(Number(got.upload.bytes) / 2 ** 20 / Number(got.upload.seconds));
        down.push(Number(got.download.bytes) / 2 ** 20 / Number(got.download.seconds));
        rtt.push(Number(got.rtt.medianUs));
        p99.push(Number(got.rtt.p99Us));
        if (Number(got.upload.bytes) !== UPLOAD_MIB << 20) throw new Error(`${name}: upload carried ${got.upload.bytes} bytes, not ${UPLOAD_MIB << 20}`);
      }
      results[name] = { uploadMiBs: median(up), downloadMiBs: median(down), rttMedianUs: median(rtt), rttP99Us: median(p99) };
      process.stdout.write(`${name}: ${JSON.stringify(results[name])}\n`);
    }
    // The floor under emulation: the same upload entirely inside the guest
    // (loopback, sender and receiver on its vCPU), timed by the guest's
    // /proc/uptime (10 ms resolution) — what TCG lets the guest's own TCP
    // stack do with no device at all.
    const floor = spawnSync(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), 'run', '--', 'sh', '-c',
      `(nc -l -p 9000 -e dd of=/dev/null bs=65536 2>/dev/null &); sleep 1; cut -d' ' -f1 /proc/uptime; nc 127.0.0.1 9000 -e dd if=/dev/zero bs=65536 count=${UPLOAD_MIB * 16} 2>/dev/null; cut -d' ' -f1 /proc/uptime`], { encoding: 'utf8' });
    const [u0, u1] = floor.stdout.trim().split('\n').map(Number);
    const floorMiBs = u1 > u0 ? UPLOAD_MIB / (u1 - u0) : NaN;
    const k = results['kata-ts']!, r = results.runc!;
    process.stdout.write(`\n| path (median of ${runs}) | runc | kata-ts | kata-ts / runc |\n|---|---|---|---|\n`);
    process.stdout.write(`| upload, container → peer | ${r.uploadMiBs.toFixed(0)} MiB/s | ${k.uploadMiBs.toFixed(1)} MiB/s | ${(k.uploadMiBs / r.uploadMiBs).toFixed(3)} |\n`);
    process.stdout.write(`| download, peer → container | ${r.downloadMiBs.toFixed(0)} MiB/s | ${k.downloadMiBs.toFixed(1)} MiB/s | ${(k.downloadMiBs / r.downloadMiBs).toFixed(3)} |\n`);
    process.stdout.write(`| floor: the same upload over the guest's loopback (TCG) | | ${floorMiBs.toFixed(1)} MiB/s | |\n`);
    process.stdout.write(`| TCP round trip, median | ${r.rttMedianUs.toFixed(0)} µs | ${k.rttMedianUs.toFixed(0)} µs | ${(k.rttMedianUs / r.rttMedianUs).toFixed(1)} |\n`);
    process.stdout.write(`| TCP round trip, p99 | ${r.rttP99Us.toFixed(0)} µs | ${k.rttP99Us.toFixed(0)} µs | ${(k.rttP99Us / r.rttP99Us).toFixed(1)} |\n`);
    const out = path.join(REPO, 'build', 'bench');
    fs.mkdirSync(out, { recursive: true });
    fs.writeFileSync(path.join(out, 'net.json'), JSON.stringify({ runs, uploadMiB: UPLOAD_MIB, results, guestLoopbackFloorMiBs: floorMiBs }, null, 2));
  } finally {
    server?.kill('SIGKILL');
    net.destroy();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`bench/net: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
