/**
 * Image conversion, side by side in one run (issue 12):
 *
 * 1. Throughput, interleaved: every round runs each contender once, in the
 *    same order; the figure is the median over the rounds, with the load
 *    average before each round. What each side does:
 *    - ours (`convertImage`) on a one-layer OCI image of TREE: stream the
 *      layer blob in slices (its sha256 checked as it goes), parse the tar
 *      and apply the OCI layer rules, cut files into 1 MiB chunks as they
 *      stream by, sha256 each chunk, dedup, LZ4 by
 *      our AssemblyScript encoder (in worker threads) where it saves space,
 *      write and fsync the blob and the EROFS metadata, register. Timed from
 *      an uncompressed tar layer, with LZ4 on (default workers, and 2) and
 *      off, and with --gzip from a gzip layer (gunzip + diff_id check then
 *      included).
 *    - mkfs.erofs 1.5 reads the unpacked TREE (page cache warm, like our
 *      layer blob) and writes one image, fsynced before the clock stops:
 *      -zlz4 (the goal's peer), no -z (the peer of ours with LZ4 off), our
 *      layout (--chunksize=1M --blobdev), and with --hc -zlz4hc.
 *    Our worker threads start with the first conversion in the process and
 *    are reused by the next ones (compress-pool.ts acquirePool, as in a
 *    long-lived shim): round 1 includes their start, later rounds do not.
 *    The main thread's event-loop utilisation (ELU) is printed with ours.
 *    Ratios are peer seconds / our seconds (> 1: we are faster). CPU
 *    seconds (user + system, all threads) are printed too: under other
 *    users' load they say more than wall time.
 * 2. Dedup: stored bytes (blobs + metadata) for two related images against
 *    the sum of their layers: (a) base + one layer of changes on top, (b) a
 *    rebuild: the changed tree as one new layer, which layer-level dedup
 *    cannot share at all. Changes: every 20th file gets 4 KiB appended, plus
 *    16 MiB of new data.
 *
 *   npx tsc -p tsconfig.json && nice node dist/bench/image-convert.js [TREE] [--rounds N] [--no-dedup] [--gzip] [--hc]
 *
 * TREE defaults to /usr/lib/x86_64-linux-gnu; rounds to 3. Writes
 * build/bench/image-convert.json.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configureLogging } from '../src/common/log';
import { convertImage, type ConvertTimings } from '../src/image/convert';
import { parseTar, type TarEntry } from '../src/image/tar';
import { makeTar, noise, writeLayout, type TarSpec } from '../test/helpers/oci-images';
import { machine, table, writeResult } from './native';
import { median } from './stats';

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

interface Sample {
  s: number; cpu: number; stored: number; timings?: ConvertTimings;
  /** Ours: the main thread's event-loop utilisation, and its own CPU seconds (the rest is the workers'). */
  elu?: number; mainCpu?: number;
}

/** CPU seconds of this process's main thread so far (Linux /proc; NaN elsewhere). */
function mainThreadCpu(): number {
  try {
    const f = fs.readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in USER_HZ (100)
  } catch { return NaN; }
}

function fsyncFile(p: string): void {
  const fd = fs.openSync(p, 'r');
  try { fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
}

const loadavg = (): string => os.loadavg().map((x) => x.toFixed(2)).join(' ');

async function main(): Promise<void> {
  configureLogging({ silent: true });
  const args = process.argv.slice(2);
  const ri = args.indexOf('--rounds');
  const rounds = ri >= 0 ? Number(args[ri + 1]) : 3;
  const doDedup = !args.includes('--no-dedup');
  const tree = args.find((a, i) => !a.startsWith('--') && (ri < 0 || i !== ri + 1)) ?? '/usr/lib/x86_64-linux-gnu';
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-bench-imgconv-'));
  const haveTime = fs.existsSync('/usr/bin/time');
  try {
    const treeBytes = Number(execFileSync('du', ['-sb', tree], { encoding: 'utf8' }).split('\t')[0]);
    const files = Number(execFileSync('sh', ['-c', `find '${tree}' | wc -l`], { encoding: 'utf8' }).trim());
    process.stderr.write(`tree ${tree}: ${(treeBytes / 1048576).toFixed(0)} MiB, ${files} entries; making the OCI images…\n`);
    const layerTar = path.join(work, 'layer.tar');
    execFileSync('tar', ['--numeric-owner', '--sort=name', '-C', tree, '-cf', layerTar, '.']);
    const tarBytes = fs.readFileSync(layerTar);
    const layout = path.join(work, 'layout');
    const withGzip = args.includes('--gzip');
    writeLayout(layout, [{ tag: 'tar', layers: [{ tar: tarBytes, gzip: false }] }, ...(withGzip ? [{ tag: 'gz', layers: [{ tar: tarBytes }] }] : [])]);

    const ours = async (tag: string, compress: boolean, workers?: number): Promise<Sample> => {
      const store = path.join(work, `store-${tag}`);
      fs.rmSync(store, { recursive: true, force: true });
      const c0 = process.cpuUsage();
      const e0 = performance.eventLoopUtilization();
      const m0 = mainThreadCpu();
      const t0 = process.hrtime.bigint();
      const res = await convertImage(`${layout}:${tag}`, { store, progress: false, compress, workers });
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      const c = process.cpuUsage(c0);
      const elu = performance.eventLoopUtilization(e0).utilization;
      const mainCpu = mainThreadCpu() - m0;
      const stored = dirBytes(store);
      fs.rmSync(store, { recursive: true, force: true });
      return { s, cpu: (c.user + c.system) / 1e6, stored, timings: res.timings, elu, mainCpu };
    };
    const peer = (opts: string[]): Sample => {
      const img = path.join(work, 'peer.erofs');
      const blob = path.join(work, 'peer.blob');
      fs.rmSync(img, { force: true }); fs.rmSync(blob, { force: true });
      const argv = ['--quiet', ...opts.map((o) => o.replace('BLOB', blob)), img, tree];
      const t0 = process.hrtime.bigint();
      const r = haveTime
        ? spawnSync('/usr/bin/time', ['-f', 'KTS-CPU %U %S', 'mkfs.erofs', ...argv], { encoding: 'utf8' })
        : spawnSync('mkfs.erofs', argv, { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`mkfs.erofs ${argv.join(' ')}: ${r.stderr}`);
      fsyncFile(img);
      if (fs.existsSync(blob)) fsyncFile(blob);
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      const m = /KTS-CPU ([0-9.]+) ([0-9.]+)/.exec(r.stderr ?? '');
      const stored = fs.statSync(img).size + (fs.existsSync(blob) ? fs.statSync(blob).size : 0);
      fs.rmSync(img, { force: true }); fs.rmSync(blob, { force: true });
      return { s, cpu: m ? Number(m[1]) + Number(m[2]) : NaN, stored };
    };

    const contenders: [string, () => Promise<Sample> | Sample][] = [
      ['ours, tar layer, LZ4', () => ours('tar', true)],
      ['mkfs.erofs -zlz4', () => peer(['-zlz4'])],
      ['ours, tar layer, LZ4, 2 workers', () => ours('tar', true, 2)],
      ['ours, tar layer, no compression', () => ours('tar', false)],
      ['mkfs.erofs (no -z)', () => peer([])],
      ['mkfs.erofs --chunksize=1M --blobdev', () => peer(['--chunksize=1048576', '--blobdev=BLOB'])],
    ];
    // Slow ones (tens of seconds a round under load): on request.
    if (withGzip) contenders.push(['ours, gzip layer, LZ4', () => ours('gz', true)]);
    if (args.includes('--hc')) contenders.push(['mkfs.erofs -zlz4hc', () => peer(['-zlz4hc'])]);
    const samples = new Map<string, Sample[]>(contenders.map(([n]) => [n, []]));
    const loads: string[] = [];
    for (let r = 0; r < rounds; r++) {
      loads.push(loadavg());
      process.stderr.write(`round ${r + 1}/${rounds} (load ${loads[r]})…\n`);
      for (const [name, fn] of contenders) {
        const x = await fn();
        samples.get(name)!.push(x);
        process.stderr.write(`  ${name}: ${x.s.toFixed(2)} s, ${x.cpu.toFixed(2)} CPU-s${x.elu !== undefined ? `, ELU ${x.elu.toFixed(2)}, main thread ${x.mainCpu!.toFixed(2)} CPU-s` : ''}${x.timings ? ` ${JSON.stringify(x.timings)}` : ''}\n`);
      }
    }
    loads.push(loadavg());
    const med = (name: string): Sample => {
      const xs = samples.get(name)!;
      const t = xs[0].timings;
      return {
        s: median(xs.map((x) => x.s)), cpu: median(xs.map((x) => x.cpu)), stored: xs[0].stored,
        elu: xs[0].elu === undefined ? undefined : median(xs.map((x) => x.elu!)),
        mainCpu: xs[0].mainCpu === undefined ? undefined : median(xs.map((x) => x.mainCpu!)),
        timings: t && (Object.fromEntries(Object.keys(t).map((k) => [k, median(xs.map((x) => x.timings![k as keyof ConvertTimings]))])) as unknown as ConvertTimings),
      };
    };
    const peers: Record<string, Sample> = {};
    for (const [name] of contenders) if (name.startsWith('mkfs')) peers[name] = med(name);
    const oursTar = med('ours, tar layer, LZ4');
    const ours2 = med('ours, tar layer, LZ4, 2 workers');
    const oursRaw = med('ours, tar layer, no compression');
    const oursGz = samples.has('ours, gzip layer, LZ4') ? med('ours, gzip layer, LZ4') : null;

    // Dedup.
    const dedup: Record<string, unknown> = {};
    if (doDedup) {
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
    }

    const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;
    const rate = (x: Sample): string => `${(treeBytes / 1048576 / x.s).toFixed(0)} MiB/s, ${x.cpu.toFixed(2)} CPU-s (main thread ${x.mainCpu!.toFixed(2)}), ELU ${x.elu!.toFixed(2)}, stored ${mib(x.stored)}`;
    const ratio = (p: Sample, o: Sample): string => `${(p.s / o.s).toFixed(2)}x (CPU ${(p.cpu / o.cpu).toFixed(2)}x)`;
    const rows: Array<[string, string, string]> = [
      ['ours, tar layer, LZ4', `${oursTar.s.toFixed(2)} s`, rate(oursTar)],
      ['ours, tar layer, LZ4, 2 workers', `${ours2.s.toFixed(2)} s`, rate(ours2)],
      ['ours, tar layer, no compression', `${oursRaw.s.toFixed(2)} s`, rate(oursRaw)],
    ];
    if (oursGz) rows.push(['ours, gzip layer, LZ4', `${oursGz.s.toFixed(2)} s`, rate(oursGz)]);
    for (const [name, p] of Object.entries(peers)) rows.push([name, `${p.s.toFixed(2)} s`, `${p.cpu.toFixed(2)} CPU-s, stored ${mib(p.stored)}`]);
    rows.push(['ratio: mkfs.erofs -zlz4 / ours LZ4 (tar)', ratio(peers['mkfs.erofs -zlz4'], oursTar), 'the goal: >= 1.0']);
    rows.push(['ratio: mkfs.erofs -zlz4 / ours LZ4, 2 workers', ratio(peers['mkfs.erofs -zlz4'], ours2), '']);
    if (oursGz) rows.push(['ratio: mkfs.erofs -zlz4 / ours LZ4 (gzip)', ratio(peers['mkfs.erofs -zlz4'], oursGz), '']);
    rows.push(['ratio: mkfs.erofs (no -z) / ours no compression', ratio(peers['mkfs.erofs (no -z)'], oursRaw), '']);
    rows.push(['ratio: mkfs.erofs --chunksize --blobdev / ours no compression', ratio(peers['mkfs.erofs --chunksize=1M --blobdev'], oursRaw), '']);
    if (peers['mkfs.erofs -zlz4hc']) rows.push(['ratio: mkfs.erofs -zlz4hc / ours LZ4 (tar)', ratio(peers['mkfs.erofs -zlz4hc'], oursTar), '']);
    process.stdout.write(`image conversion of ${tree} (${mib(treeBytes)}, ${files} entries), median of ${rounds} interleaved rounds; load average (1/5/15 min) before each round and at the end: ${loads.join(' | ')}\n${table(rows)}\n`);
    process.stdout.write(`ours, LZ4, median stage times (ms): ${JSON.stringify(oursTar.timings)}\n`);
    for (const [k, v] of Object.entries(dedup) as [string, { storedBoth: number; secondAdded: number; layersTar: number; layersGz: number; ratioTar: number; ratioGz: number }][]) {
      process.stdout.write(`dedup (${k}): stored ${mib(v.storedBoth)} (second image added ${mib(v.secondAdded)}) vs layers ${mib(v.layersTar)} tar = ${v.ratioTar.toFixed(2)}, ${mib(v.layersGz)} gzip = ${v.ratioGz.toFixed(2)}\n`);
    }
    const file = writeResult('image-convert', { machine: machine(), tree, treeBytes, files, rounds, loads, samples: Object.fromEntries(samples), ours: { tar: oursTar, raw: oursRaw, gzip: oursGz }, peers, dedup });
    process.stdout.write(`wrote ${file}\n`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e) => { process.stderr.write(`${(e as Error).stack}\n`); process.exit(1); });
