/**
 * A tiny OCI-distribution-like blob server on 127.0.0.1 for the lazy-source
 * tests and the cold-start benchmark: `GET /v2/<name>/blobs/sha256:<hex>`
 * with `Range: bytes=a-b` answers 206 from `<dir>/<hex>` (the store's
 * blobs/sha256 directory of the "registry side"). It counts requests and
 * bytes, and can misbehave on purpose (`mode`): stall mid-body, send wrong
 * bytes, lie about the blob size, or ignore the range.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';

export type BlobServerMode = 'ok' | 'stall' | 'flip' | 'lie-size' | 'no-range' | 'short' | 'error500';

export interface BlobServer {
  url: string;
  /** Requests answered, and body bytes sent. */
  stats: { requests: number; bytes: number };
  mode: BlobServerMode;
  close(): Promise<void>;
}

export async function startBlobServer(dir: string, name = 'test/image'): Promise<BlobServer> {
  const sockets = new Set<import('node:net').Socket>();
  const s: BlobServer = { url: '', stats: { requests: 0, bytes: 0 }, mode: 'ok', close: async () => undefined };
  const prefix = `/v2/${name}/blobs/sha256:`;
  const server = http.createServer((req, res) => {
    s.stats.requests++;
    const hex = req.url?.startsWith(prefix) ? req.url.slice(prefix.length) : '';
    const file = `${dir}/${hex}`;
    if (!/^[0-9a-f]{64}$/.test(hex) || !fs.existsSync(file)) { res.writeHead(404).end(); return; }
    if (s.mode === 'error500') { res.writeHead(500).end(); return; }
    const size = fs.statSync(file).size;
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    if (!m || s.mode === 'no-range') {
      const all = fs.readFileSync(file);
      s.stats.bytes += all.length;
      res.writeHead(200, { 'Content-Length': all.length }).end(all);
      return;
    }
    const a = Number(m[1]), b = Math.min(Number(m[2]), size - 1);
    const body = Buffer.alloc(b - a + 1);
    const fd = fs.openSync(file, 'r');
    try { fs.readSync(fd, body, 0, body.length, a); } finally { fs.closeSync(fd); }
    if (s.mode === 'flip') body[body.length >> 1] ^= 0xff;
    const total = s.mode === 'lie-size' ? size + 4096 : size;
    res.writeHead(206, { 'Content-Range': `bytes ${a}-${b}/${total}`, 'Content-Length': body.length });
    if (s.mode === 'stall') { res.write(body.subarray(0, body.length >> 1)); s.stats.bytes += body.length >> 1; return; }
    if (s.mode === 'short') { res.write(body.subarray(0, body.length >> 1)); s.stats.bytes += body.length >> 1; res.destroy(); return; }
    s.stats.bytes += body.length;
    res.end(body);
  });
  server.on('connection', (c) => { sockets.add(c); c.on('close', () => sockets.delete(c)); });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  s.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  s.close = () => new Promise<void>((resolve) => {
    for (const c of sockets) c.destroy();
    server.close(() => resolve());
  });
  return s;
}
