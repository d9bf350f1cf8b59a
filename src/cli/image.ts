/**
 * `kata-ts image convert SOURCE [--chunk-size N] [--store DIR] [--json]` and
 * `kata-ts image ls [--store DIR] [--json]`: convert an OCI image into the
 * store (EROFS metadata + chunk blobs, src/image/convert.ts) and list what is
 * there. Thin: parse, call, print. The store defaults to the config's
 * `[image] store_dir`.
 */
import type { Argv, CommandModule } from 'yargs';
import { errorMessage } from '../common/errors';
import { loadConfig } from '../runtime/config';
import { convertImage } from '../image/convert';
import { listImages } from '../image/store';
import { formatMiB as mib } from '../common/units';

/** "1M", "256K", "4096" → bytes. */
export function parseSize(s: string): number {
  const m = /^([0-9]+)\s*([KMG]?)(i?B)?$/i.exec(String(s).trim());
  if (!m) throw new Error(`"${s}" is not a size (e.g. 1M, 256K, 4096)`);
  const mult = { '': 1, K: 1024, M: 1 << 20, G: 1 << 30 }[m[2].toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * mult;
}


/** The `image` command group; `setCode` receives the exit status. */
export function imageCommand(setCode: (c: number) => void): CommandModule {
  const builder = (yy: Argv): Argv => yy
    .command('convert <source>', 'convert an OCI image (layout DIR[:TAG], docker/oci archive, containerd:REF); prints its id', (c) => c
      .positional('source', { type: 'string', demandOption: true })
      .option('chunk-size', { type: 'string', default: '1M', describe: 'chunk size, a power of two from 4K to 16M' })
      .option('store', { type: 'string', describe: 'store directory (default: [image] store_dir)' })
      .option('namespace', { type: 'string', default: 'default', describe: 'containerd namespace for containerd:REF' })
      .option('address', { type: 'string', describe: 'containerd socket for containerd:REF (default: ctr\'s)' })
      .option('content-dir', { type: 'string', describe: 'containerd content store (default: /var/lib/containerd/io.containerd.content.v1.content)' })
      .option('json', { type: 'boolean', default: false }),
    async (a) => {
      try {
        const store = a.store ?? loadConfig(a.config as string | undefined, process.env).image.store_dir;
        const r = await convertImage(a.source as string, {
          store, chunkSize: parseSize(a['chunk-size']),
          containerd: { namespace: a.namespace, address: a.address, contentDir: a['content-dir'] },
        });
        if (a.json) process.stdout.write(JSON.stringify({ id: r.id, cached: r.cached, record: r.record }, null, 2) + '\n');
        else {
          if (!r.cached) {
            const t = r.record.totals;
            process.stderr.write(`converted: ${t.files} files, ${t.dirs} dirs, ${mib(t.fileBytes)} of file data in ${t.chunks} chunks; stored ${t.newChunks} new chunks (${mib(t.newBlobBytes)}), metadata ${mib(r.record.metaSize)}\n`);
          } else process.stderr.write('already converted\n');
          process.stdout.write(`${r.id}\n`);
        }
      } catch (e) {
        process.stderr.write(`kata-ts: ${errorMessage(e)}\n`);
        setCode(1);
      }
    })
    .command('ls', 'list converted images', (c) => c
      .option('store', { type: 'string', describe: 'store directory (default: [image] store_dir)' })
      .option('json', { type: 'boolean', default: false }),
    (a) => {
      try {
        const store = a.store ?? loadConfig(a.config as string | undefined, process.env).image.store_dir;
        const list = listImages(store);
        if (a.json) { process.stdout.write(JSON.stringify(list, null, 2) + '\n'); return; }
        const rows = [['ID', 'REFERENCE', 'LAYERS', 'FILE DATA', 'CHUNKS', 'CREATED']];
        for (const r of list) rows.push([r.id.slice(7, 19), r.references[r.references.length - 1] ?? '', String(r.layers.length), mib(r.totals.fileBytes), String(r.totals.chunks), r.created]);
        const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
        for (const r of rows) process.stdout.write(r.map((s, i) => s.padEnd(w[i])).join('  ').trimEnd() + '\n');
      } catch (e) {
        process.stderr.write(`kata-ts: ${errorMessage(e)}\n`);
        setCode(1);
      }
    })
    .demandCommand(1, 'image: convert or ls') as unknown as Argv;
  return { command: 'image', describe: 'convert OCI images to EROFS + chunk blobs, list converted images', builder, handler: () => undefined };
}
