/**
 * The peer side of bench/net.ts, run inside the peer network namespace
 * (`ip netns exec PEER node dist/bench/net-peer.js ADDR`): three TCP
 * servers on ADDR, each printing one JSON line per connection on stdout.
 *   9000 sink   — reads to EOF: {"kind":"upload","bytes":N,"seconds":S}
 *   9001 pinger — sends one byte, waits for the client's echo, ROUNDS times:
 *                 {"kind":"rtt","rounds":N,"medianUs":…,"p99Us":…}
 *   9002 source — writes DOWNLOAD_MIB MiB then closes: {"kind":"download",…}
 * Timing is taken here, on the host side, so both runtimes are measured by
 * the same clock, from first byte to last.
 */
import * as net from 'node:net';

const addr = process.argv[2] ?? '0.0.0.0';
const ROUNDS = Number(process.env.RTT_ROUNDS ?? 200);
const DOWNLOAD_MIB = Number(process.env.DOWNLOAD_MIB ?? 64);

const say = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(o)}\n`);

net.createServer((s) => {
  let bytes = 0;
  let t0 = 0n;
  s.on('data', (d: Buffer) => {
    if (!t0) t0 = process.hrtime.bigint();
    bytes += d.length;
  });
  s.on('end', () => {
    say({ kind: 'upload', bytes, seconds: Number(process.hrtime.bigint() - t0) / 1e9 });
    s.end();
  });
  s.on('error', () => undefined);
}).listen(9000, addr);

net.createServer((s) => {
  s.setNoDelay(true);
  const times: number[] = [];
  let sent = 0n;
  const ping = () => {
    sent = process.hrtime.bigint();
    s.write('x');
  };
  s.on('data', (d: Buffer) => {
    for (let i = 0; i < d.length; i++) {
      times.push(Number(process.hrtime.bigint() - sent) / 1e3);
      if (times.length >= ROUNDS) {
        const sorted = [...times].sort((a, b) => a - b);
        say({ kind: 'rtt', rounds: times.length, medianUs: sorted[Math.floor(sorted.length / 2)], p99Us: sorted[Math.floor(sorted.length * 0.99)] });
        s.destroy();
        return;
      }
      ping();
    }
  });
  s.on('error', () => undefined);
  // Let the client's side settle (nc -e starts cat after connect).
  setTimeout(ping, 200);
}).listen(9001, addr);

net.createServer((s) => {
  const chunk = Buffer.alloc(1 << 16, 0x61);
  let left = DOWNLOAD_MIB * 16;
  const t0 = process.hrtime.bigint();
  const pump = (): void => {
    while (left > 0) {
      left--;
      if (!s.write(chunk)) {
        s.once('drain', pump);
        return;
      }
    }
    s.end();
  };
  // 'close' (the client read everything and hung up), not 'finish' (data merely queued in our kernel).
  s.on('close', () => say({ kind: 'download', bytes: DOWNLOAD_MIB << 20, seconds: Number(process.hrtime.bigint() - t0) / 1e9 }));
  s.on('error', () => undefined);
  pump();
}).listen(9002, addr);

say({ kind: 'ready' });
