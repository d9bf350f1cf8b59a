/**
 * Image conversion, side by side in one run (issue 12):
 *
 * 1. Throughput: our converter (`convertImage`: tar parse, OCI layer rules,
 *    sha256 per 1 MiB chunk, LZ4 by our AssemblyScript encoder when it saves
 *    space, blob + EROFS metadata written and fsynced) on a one-layer OCI
 *    image of TREE, against mkfs.erofs 1.5 on the same unpacked TREE:
 *    plain, -zlz4, -zlz4hc and the same layout as ours (--chunksize=1048576
 *    --blobdev). Ratios are peer seconds / our seconds (> 1: we are faster).
 *    Ours is timed from an uncompressed and from a gzip layer (gunzip and
 *    the diff_id check are then part of our time; mkfs.erofs reads files).
 * 2. Dedup: stored bytes (blobs + metadata) for two related images against
 *    the sum of their layers: (a) base + one layer of changes on top, (b) a
 *    rebuild: the changed tree as one new layer, which layer-level dedup
 *    cannot share at all. Changes: every 20th file gets 4 KiB appended, plus
 *    16 MiB of new data.
 *
 *   npx tsc -p tsconfig.json && nice node dist/bench/image-convert.js [TREE] [--rounds N]
 *
 * TREE defaults to /usr/lib/x86_64-linux-gnu. Writes build/bench/image-convert.json.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configureLogging } from '../src/common/log';
import { convertImage } from '../src/image/convert';
import { parseTar, type TarEntry } from '../src/image/tar';
import { makeTar, noise, writeLayout, type TarSpec } from '../test/helpers/oci-images';
import { best, machine, table, writeResult } from './native';

function dirBytes(d: string): number {
  let n = 0;
  for (const e of fs.readdirSync(d, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) n += fs.statSync(path.join(e.parentPath ?? e.path, e.name)).size;
  }
  return n;
}

const TYPE: Record<TarEntry['type'], string> = { file: '0', hardlink: '1', symlink: '2', char: '3', block: '4', dir: '5', fifo: '6' };

/** The tree's layer rewritten with the bench's changes (every 20th file grown by 4 KiB). */
function changed(entries: TarEntry[]): { full: TarSpec[]; delta: TarSpec[] } {
  const full: TarSpec[] = [];
  const delta: TarSpec[] = [];
  let i = 0;
  for (const e of entries) {
    const s: TarSpec = { path: e.path, type: TYPE[e.type], mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime, linkname: e.linkname, devmajor: e.devmajor, devminor: e.devminor, data: e.data };
    if (e.type === 'file' && e.size > 0 && i++ % 20 === 0) {
      s.data = Buffer.concat([e.data, noise(4096, i)]);
      delta.push(s);
    }
    full.push(s);
  }
  const extra: TarSpec = { path: 'bench-new-data', data: noise(16 << 20, 4242) };
  return { full: [...full, extra], delta: [...delta, extra] };
}

function gzSize(file: string): number {
  return Number(execFileSync('sh', ['-c', `gzip -6 -c '${file}' | wc -c`], { encoding: 'utf8' }).trim());
}

async function main(): Promise<void> {
  configureLogging({ silent: true });
  const args = process.argv.slice(2);
  const ri = args.indexOf('--rounds');
  const rounds = ri >= 0 ? Number(args[ri + 1]) : 2;
  const tree = args.find((a, i) => !a.startsWith('--') && (ri < 0 || i !== ri + 1)) ?? '/usr/lib/x86_64-linux-gnu';
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-bench-imgconv-'));
  try {
    const treeBytes = Number(execFileSync('du', ['-sb', tree], { encoding: 'utf8' }).split('\t')[0]);
    const files = Number(execFileSync('sh', ['-c', `find '${tree}' | wc -l`], { encoding: 'utf8' }).trim());
    process.stderr.write(`tree ${tree}: ${(treeBytes / 1048576).toFixed(0)} MiB, ${files} entries; making the OCI images…\n`);
    const layerTar = path.join(work, 'layer.tar');
    execFileSync('tar', ['--numeric-owner', '--sort=name', '-C', tree, '-cf', layerTar, '.']);
    const tarBytes = fs.readFileSync(layerTar);
    const layout = path.join(work, 'layout');
    writeLayout(layout, [{ tag: 'tar', layers: [{ tar: tarBytes, gzip: false }] }, { tag: 'gz', layers: [{ tar: tarBytes }] }]);

    const oursAsync = async (tag: string): Promise<{ s: number; stored: number }> => {
      let b = Infinity; let stored = 0;
      for (let r = 0; r < rounds; r++) {
        const store = path.join(work, `store-${tag}`);
        fs.rmSync(store, { recursive: true, force: true });
        const t0 = process.hrtime.bigint();
        await convertImage(`${layout}:${tag}`, { store, progress: false });
        b = Math.min(b, Number(process.hrtime.bigint() - t0) / 1e9);
        stored = dirBytes(store);
        fs.rmSync(store, { recursive: true, force: true });
      }
      return { s: b, stored };
    };
    const peer = (opts: string[]): { s: number; stored: number } => {
      const img = path.join(work, 'peer.erofs');
      const blob = path.join(work, 'peer.blob');
      let stored = 0;
      const s = best(rounds, () => {
        fs.rmSync(img, { force: true }); fs.rmSync(blob, { force: true });
        execFileSync('sh', ['-c', `mkfs.erofs --quiet ${opts.map((o) => o.replace('BLOB', blob)).join(' ')} '${img}' '${tree}' && sync -f '${img}'`], { stdio: ['ignore', 'ignore', 'pipe'] });
        stored = fs.statSync(img).size + (fs.existsSync(blob) ? fs.statSync(blob).size : 0);
      });
      fs.rmSync(img, { force: true }); fs.rmSync(blob, { force: true });
      return { s, stored };
    };

    process.stderr.write('timing: ours (tar layer)…\n');
    const oursTar = await oursAsync('tar');
    process.stderr.write('timing: ours (gzip layer)…\n');
    const oursGz = await oursAsync('gz');
    const peers: Record<string, { s: number; stored: number }> = {};
    for (const [name, o] of [['mkfs.erofs', []], ['mkfs.erofs -zlz4', ['-zlz4']], ['mkfs.erofs -zlz4hc', ['-zlz4hc']], ['mkfs.erofs --chunksize=1M --blobdev', ['--chunksize=1048576', '--blobdev=BLOB']]] as [string, string[]][]) {
      process.stderr.write(`timing: ${name}…\n`);
      peers[name] = peer(o);
    }

    // Dedup.
    process.stderr.write('dedup: building related images…\n');
    const { full, delta } = changed(parseTar(tarBytes, 'tree'));
    const deltaTar = makeTar(delta);
    const rebuildTar = makeTar(full);
    const dl = path.join(work, 'dedup');
    writeLayout(dl, [
      { tag: 'base', layers: [{ tar: tarBytes, gzip: false }] },
      { tag: 'stacked', layers: [{ tar: tarBytes, gzip: false }, { tar: deltaTar, gzip: false }] },
      { tag: 'rebuild', layers: [{ tar: rebuildTar, gzip: false }] },
    ]);
    const f = (name: string, b: Buffer): string => { const p = path.join(work, name); fs.writeFileSync(p, b); return p; };
    const gz = { base: gzSize(layerTar), delta: gzSize(f('delta.tar', deltaTar)), rebuild: gzSize(f('rebuild.tar', rebuildTar)) };
    const dedup: Record<string, unknown> = {};
    for (const second of ['stacked', 'rebuild']) {
      const store = path.join(work, `dedup-${second}`);
      await convertImage(`${dl}:base`, { store, progress: false });
      const afterBase = dirBytes(store);
      await convertImage(`${dl}:${second}`, { store, progress: false });
      const total = dirBytes(store);
      const layersTar = second === 'stacked' ? tarBytes.length + deltaTar.length : tarBytes.length + rebuildTar.length;
      const layersGz = second === 'stacked' ? gz.base + gz.delta : gz.base + gz.rebuild;
      dedup[second] = { storedBase: afterBase, storedBoth: total, secondAdded: total - afterBase, layersTar, layersGz, ratioTar: total / layersTar, ratioGz: total / layersGz };
      fs.rmSync(store, { recursive: true, force: true });
    }

    const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;
    const rows: Array<[string, string, string]> = [
      ['ours, tar layer (LZ4 on)', `${oursTar.s.toFixed(2)} s`, `${(treeBytes / 1048576 / oursTar.s).toFixed(0)} MiB/s, stored ${mib(oursTar.stored)}`],
      ['ours, gzip layer (LZ4 on)', `${oursGz.s.toFixed(2)} s`, `${(treeBytes / 1048576 / oursGz.s).toFixed(0)} MiB/s, stored ${mib(oursGz.stored)}`],
    ];
    for (const [name, p] of Object.entries(peers)) {
      rows.push([name, `${p.s.toFixed(2)} s`, `stored ${mib(p.stored)}; ours(tar) ${(p.s / oursTar.s).toFixed(2)}x, ours(gzip) ${(p.s / oursGz.s).toFixed(2)}x`]);
    }
    process.stdout.write(`image conversion of ${tree} (${mib(treeBytes)}, ${files} entries), best of ${rounds}:\n${table(rows)}\n`);
    for (const [k, v] of Object.entries(dedup) as [string, { storedBoth: number; secondAdded: number; layersTar: number; layersGz: number; ratioTar: number; ratioGz: number }][]) {
      process.stdout.write(`dedup (${k}): stored ${mib(v.storedBoth)} (second image added ${mib(v.secondAdded)}) vs layers ${mib(v.layersTar)} tar = ${v.ratioTar.toFixed(2)}, ${mib(v.layersGz)} gzip = ${v.ratioGz.toFixed(2)}\n`);
    }
    const file = writeResult('image-convert', { machine: machine(), tree, treeBytes, files, rounds, ours: { tar: oursTar, gzip: oursGz }, peers, dedup });
    process.stdout.write(`wrote ${file}\n`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e) => { process.stderr.write(`${(e as Error).stack}\n`); process.exit(1); });
