/**
 * `kata-ctl image ls | rm ID | gc [--dry-run]` — the converted-image store
 * (src/image/gc.ts): list images with their local/remote bytes, remove one,
 * collect unreferenced blobs. rm refuses an image a running sandbox uses
 * (--force unlists it, keeping its data for them); gc keeps what they use. `--store DIR` overrides `[image] store_dir`;
 * every verb takes --json (schemaVersion 1).
 */
import type { CtlCommand } from '../command';
import { ctlConfig, JSON_OPTION, printJson, type GlobalArgs } from '../common';
import { collectGarbage, listStore, removeImage, type ImageSummary } from '../../image/gc';
import { describeUsers } from '../../image/in-use';
import { formatMiB as mib } from '../../common/units';

interface ImageArgs extends GlobalArgs {
  action: string;
  id?: string;
  store?: string;
  dryRun?: boolean;
  force?: boolean;
}


function lsText(rows: ImageSummary[]): string {
  if (!rows.length) return 'no converted images\n';
  const lines = ['ID            REFERENCE                         CHUNKS  DEVICE      STORED      LOCAL'];
  for (const r of rows) {
    lines.push([
      r.id.slice(7, 19).padEnd(13), (r.references[0] ?? '-').slice(0, 33).padEnd(33), String(r.chunks).padStart(6),
      mib(r.deviceBytes).padStart(11), mib(r.storedBytes).padStart(11), `${mib(r.localBytes).padStart(11)}`,
    ].join(' '));
  }
  return lines.join('\n') + '\n';
}

export const imageCommand: CtlCommand<ImageArgs> = {
  command: 'image <action> [id]',
  describe: 'converted images: ls, rm ID [--force], gc [--dry-run]',
  builder: (y) =>
    y
      .positional('action', { type: 'string', choices: ['ls', 'rm', 'gc'], demandOption: true })
      .positional('id', { type: 'string', describe: 'rm: image id (sha256:…, a ≥ 12-digit prefix) or a reference it was converted from' })
      .option('store', { type: 'string', describe: 'store directory (default: [image] store_dir)' })
      .option('dry-run', { type: 'boolean', default: false, describe: 'gc: only say what would be removed' })
      .option('force', { type: 'boolean', default: false, describe: 'rm: unlist an image even while sandboxes use it (its data stays until the last one ends)' })
      .option('json', JSON_OPTION) as never,
  handler: async (argv) => {
    const root = argv.store || ctlConfig(argv).image.store_dir;
    switch (argv.action) {
      case 'ls': {
        const rows = listStore(root);
        if (argv.json) printJson({ schemaVersion: 1, store: root, images: rows });
        else process.stdout.write(lsText(rows));
        return 0;
      }
      case 'rm': {
        if (!argv.id) throw new Error('kata-ctl image rm needs an image id');
        const r = await removeImage(root, argv.id, { force: argv.force });
        if (argv.json) printJson({ schemaVersion: 1, removed: r.id, ...(r.keptFor ? { keptFor: r.keptFor } : {}) });
        else if (r.keptFor) process.stdout.write(`unlisted ${r.id}; in use by ${describeUsers(r.keptFor)}: its data stays until the last one ends, then goes at a kata-ctl image gc\n`);
        else process.stdout.write(`removed ${r.id} (its blobs go at the next kata-ctl image gc)\n`);
        return 0;
      }
      default: {
        const r = await collectGarbage(root, { dryRun: argv.dryRun });
        if (argv.json) { printJson({ schemaVersion: 1, ...r }); return 0; }
        const verb = r.dryRun ? 'would remove' : 'removed';
        for (const x of r.removed) process.stdout.write(`${verb} ${x.path} (${x.why}, ${mib(x.bytes)})\n`);
        process.stdout.write(`${r.images} images, ${r.liveBlobs} live blobs; ${verb} ${r.removed.length} entries, ${mib(r.freedBytes)}\n`);
        process.stdout.write(`${r.imagesInUse} images in use by running sandboxes; kept for them ${r.keptForSandboxes.images} removed images and ${r.keptForSandboxes.blobs} blobs no listed image uses` +
          `${r.staleUses ? `; deleted ${r.staleUses} stale use records` : ''}\n`);
        return 0;
      }
    }
  },
};
