/**
 * `kata-ctl metrics [SANDBOX-ID] [--listen ADDR]`: print one scrape in
 * Prometheus text format, or serve GET /metrics on ADDR (host:port, like
 * kata-monitor's --listen-address) until SIGINT/SIGTERM. The server states
 * its real address on stderr (port 0 picks a free one).
 */
import * as http from 'node:http';
import type { CtlCommand } from '../command';
import { ctlConfig, type GlobalArgs } from '../common';
import { collectMetrics } from '../metrics';
import { CONTENT_TYPE } from '../prometheus';

interface MetricsArgs extends GlobalArgs {
  sandboxId?: string;
  listen?: string;
}

/** "host:port" or "[v6]:port" -> parts. */
export function parseListen(addr: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(addr);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`invalid --listen "${addr}": expected HOST:PORT (e.g. 127.0.0.1:8090)`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

async function serve(runDir: string, only: string | undefined, addr: string): Promise<number> {
  const { host, port } = parseListen(addr);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (req.method !== 'GET' || url.pathname !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n');
      return;
    }
    collectMetrics(runDir, { only }).then(
      ({ text }) => res.writeHead(200, { 'content-type': CONTENT_TYPE }).end(text),
      (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const a = server.address();
  const shown = a && typeof a === 'object' ? `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}` : addr;
  process.stderr.write(`kata-ctl: serving metrics on http://${shown}/metrics\n`);
  await new Promise<void>((resolve) => {
    const stop = () => server.close(() => resolve());
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  return 0;
}

export const metricsCommand: CtlCommand<MetricsArgs> = {
  command: 'metrics [sandbox-id]',
  describe: 'sandbox metrics in Prometheus text format (host and guest side)',
  builder: (y) => y
    .positional('sandbox-id', { type: 'string', describe: 'only this sandbox' })
    .option('listen', { type: 'string', describe: 'serve /metrics on HOST:PORT instead of printing once' }) as never,
  handler: async (argv) => {
    const runDir = ctlConfig(argv).runtime.run_dir;
    if (argv.listen) return serve(runDir, argv.sandboxId, argv.listen);
    const { text, errors } = await collectMetrics(runDir, { only: argv.sandboxId });
    process.stdout.write(text);
    for (const e of errors) process.stderr.write(`kata-ctl: guest metrics unavailable for ${e}\n`);
    return 0;
  },
};
