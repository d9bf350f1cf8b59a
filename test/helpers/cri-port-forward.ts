/**
 * A client of the CRI streaming server's port-forward (the URL a CRI
 * PortForward returns), over WebSocket (RFC 6455) with the Kubernetes
 * channel protocol "v4.channel.k8s.io" — the variant of kubelet's
 * streaming/portforward that needs no SPDY: every binary message starts
 * with a channel byte; for the i-th port, channel 2i carries data both
 * ways and 2i+1 the server's errors; the server first sends the port (u16
 * little-endian) on both. One port per connection here.
 *
 * The test's containerd runs in a network namespace of its own, and so
 * does its streaming server on 127.0.0.1: portForwardInNetns runs this
 * file as a script there (`ip netns exec`), which prints the result as
 * one JSON line.
 */
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as path from 'node:path';
import { execFile } from 'node:child_process';

export interface PortForwardResult {
  /** Bytes on the data channel (after the port prefix), as latin1. */
  data: string;
  /** Text on the error channel (after the port prefix): containerd's error, if any. */
  error: string;
  /** Set when the exchange itself failed (handshake, socket). */
  failure?: string;
  /** Every frame received, as "op/channel/length" (to say what happened when an assertion fails). */
  frames: string[];
}

const OP_CONT = 0, OP_BINARY = 2, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10;

/** A masked client frame (RFC 6455 §5.2, §5.3). */
function frame(opcode: number, payload: Buffer): Buffer {
  const len = payload.length;
  const head = len < 126 ? Buffer.alloc(2) : len < 65536 ? Buffer.alloc(4) : Buffer.alloc(10);
  head[0] = 0x80 | opcode;
  if (len < 126) head[1] = 0x80 | len;
  else if (len < 65536) { head[1] = 0x80 | 126; head.writeUInt16BE(len, 2); }
  else { head[1] = 0x80 | 127; head.writeBigUInt64BE(BigInt(len), 2); }
  const mask = crypto.randomBytes(4);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i]! ^= mask[i & 3]!;
  return Buffer.concat([head, mask, body]);
}

/**
 * Forwards one connection to `port` through `url`: sends `payload` on the
 * data channel, collects what comes back until the data holds `untilReply`
 * (or an error arrives, or the server closes, or `timeoutMs`), then closes.
 */
export function portForwardWs(url: string, port: number, payload: string, untilReply: string, timeoutMs = 30_000): Promise<PortForwardResult> {
  return new Promise((resolve) => {
    const res: PortForwardResult = { data: '', error: '', frames: [] };
    const u = new URL(url);
    const key = crypto.randomBytes(16).toString('base64');
    const req = http.request({
      host: u.hostname, port: u.port, path: `${u.pathname}${u.search}`, method: 'GET',
      headers: {
        Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': key,
        'Sec-WebSocket-Protocol': 'v4.channel.k8s.io', Origin: `http://${u.host}`,
      },
    });
    let finished = false;
    let sock: import('node:net').Socket | undefined;
    const finish = (failure?: string) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      if (failure) res.failure = failure;
      if (sock && !sock.destroyed) {
        try { sock.write(frame(OP_CLOSE, Buffer.from([0x03, 0xe8]))); } catch { /* gone */ }
        sock.end();
        setTimeout(() => sock!.destroy(), 500).unref();
      }
      resolve(res);
    };
    const timer = setTimeout(() => finish(`no end within ${timeoutMs} ms`), timeoutMs);
    req.on('error', (e) => finish(`request: ${e.message}`));
    req.on('response', (r) => finish(`no upgrade: HTTP ${r.statusCode}`));
    req.on('upgrade', (r, s, head) => {
      sock = s;
      const accept = crypto.createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
      if (r.headers['sec-websocket-accept'] !== accept) return finish(`bad Sec-WebSocket-Accept: HTTP ${r.statusCode} ${JSON.stringify(r.headers)}`);
      let buf = Buffer.from(head);
      let message: Buffer[] = [];
      let portsSeen = 0;
      let sent = false;
      const onMessage = (m: Buffer) => {
        if (m.length === 0) return;
        const ch = m[0]!;
        let body = m.subarray(1);
        // The first message of each channel is its port (u16 LE).
        if (portsSeen < 2 && body.length >= 2 && body.readUInt16LE(0) === port && !(ch === 0 ? res.data : res.error)) {
          portsSeen++;
          body = body.subarray(2);
          if (portsSeen === 2 && !sent) {
            sent = true;
            s.write(frame(OP_BINARY, Buffer.concat([Buffer.from([0]), Buffer.from(payload)])));
          }
        }
        if (ch === 0) res.data += body.toString('latin1');
        else if (ch === 1) res.error += body.toString('latin1');
        if ((untilReply && res.data.includes(untilReply)) || res.error) finish();
      };
      // Frames may have come with the 101 response (`head`): parse those first, then each chunk.
      const parse = (): void => {
        for (;;) {
          if (buf.length < 2) return;
          const fin = (buf[0]! & 0x80) !== 0;
          const op = buf[0]! & 0x0f;
          let len = buf[1]! & 0x7f;
          let off = 2;
          if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
          else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
          if (buf.length < off + len) return;
          const p = buf.subarray(off, off + len);
          buf = buf.subarray(off + len);
          res.frames.push(`${op}/${p.length ? p[0] : '-'}/${p.length}`);
          if (op === OP_CLOSE) return finish();
          if (op === OP_PING) { s.write(frame(OP_PONG, p)); continue; }
          if (op !== OP_BINARY && op !== OP_CONT) continue;
          message.push(Buffer.from(p));
          if (fin) { const m = Buffer.concat(message); message = []; onMessage(m); }
        }
      };
      s.on('data', (d: Buffer) => { buf = Buffer.concat([buf, d]); parse(); });
      parse();
      s.on('end', () => finish());
      s.on('error', (e) => finish(`socket: ${e.message}`));
    });
    req.end();
  });
}

/** Runs portForwardWs inside the named netns (where the streaming server's 127.0.0.1 is). */
export function portForwardInNetns(netnsName: string, url: string, port: number, payload: string, untilReply: string, timeoutMs = 30_000): Promise<PortForwardResult> {
  return new Promise((resolve, reject) => {
    execFile('ip', ['netns', 'exec', netnsName, process.execPath, path.join(__dirname, 'cri-port-forward.js'), url, String(port), payload, untilReply, String(timeoutMs)],
      { timeout: timeoutMs + 10_000 }, (err, out) => {
        if (err) return reject(err);
        resolve(JSON.parse(out.trim()) as PortForwardResult);
      });
  });
}

if (require.main === module) {
  const [url, port, payload, until, ms] = process.argv.slice(2);
  void portForwardWs(url!, Number(port), payload ?? '', until ?? '', Number(ms) || 30_000).then((r) => {
    process.stdout.write(`${JSON.stringify(r)}\n`, () => process.exit(0));
  });
}
