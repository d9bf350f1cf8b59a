/**
 * Converted images, cold and warm (issue 12), side by side in one run:
 *
 *  image     a multi-layer OCI image built from this host's Debian tree —
 *            busybox (for /bin/sh), /usr/lib/x86_64-linux-gnu + lib64
 *            (hundreds of packages' libraries), python3.11 and its stdlib,
 *            and a layer with the read benchmark (bench/c/readbench.c,
 *            static) and a 64 MiB data file of concatenated libraries;
 *            converted once (src/image/convert.ts) into a store.
 *  cold      a store holding only the image's metadata, blobs served by a
 *            loopback OCI-distribution-like server (test/helpers/
 *            blob-server.ts): sandbox start → first output of
 *            `python3.11 -c print(...)`, and the bytes fetched against the
 *            image's total size; vs the current path for a fully unpacked
 *            image — the same tree unpacked on the host, `mkfs.erofs` per
 *            container, QEMU's virtio-blk (rootfsShare 'erofs').
 *  warm      blobs local: in-guest sequential (1 MiB) and random (4 KiB)
 *            reads of the 64 MiB file with O_DIRECT (every read reaches the
 *            device) — our blob device (vhost-user-blk: chunk lookup, LZ4
 *            in WASM, sha256) vs the unpacked tree's EROFS on QEMU's own
 *            virtio-blk, and on our own virtio-blk device serving that image
 *            file (vhost-user-blk, no chunks: the transport alone). The
 *            sequential read runs twice: the first pass decodes and
 *            verifies every chunk, the second hits the verified-chunk cache.
 *
 *   npx tsc -p tsconfig.json && nice node dist/bench/image-lazy.js [rounds]
 *
 * Writes build/bench/image-lazy.json. Needs root (mkfs.erofs keeps owners),
 * QEMU and the guest (scripts/setup.sh), gcc with a static glibc.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { configureLogging } from '../src/common/log';
import { defaultConfig, type Config } from '../src/runtime/config';
import { QemuHypervisor, type BlockDriver } from '../src/hypervisor/qemu';
import { Sandbox } from '../src/runtime/sandbox';
import { defaultProcess, defaultSpec } from '../src/runtime/spec';
import { attachProcess } from '../src/runtime/stdio';
import { convertImage } from '../src/image/convert';
import { blobsDir, imageDir, imageIdHex } from '../src/image/store';
import { buildOciLayout } from '../test/helpers/oci-layout';
import { startBlobServer } from '../test/helpers/blob-server';
import { machine, table, writeResult, ROOT } from './native';
import { median } from './stats';

const CACHE = process.env.KATA_TS_CACHE ?? '/var/cache/kata-ts';
const MiB = 1 << 20;
const COMMAND = ['python3.11', '-c', 'import json, sys; print("hello from", sys.version.split()[0])'];

function log(msg: string): void {
  process.stderr.write(`[image-lazy] ${msg}\n`);
}

function duBytes(dir: string): number {
  return Number(execFileSync('du', ['-sb', dir], { encoding: 'utf8' }).split('\t')[0]);
}

/** The image's layers and the unpacked tree; returns the layout dir and the unpacked dir. */
function buildImage(work: string): { layout: string; unpacked: string; treeBytes: number } {
  const extra = path.join(work, 'extra');
  fs.mkdirSync(path.join(extra, 'bench'), { recursive: true });
  execFileSync('gcc', ['-static', '-O2', '-o', path.join(extra, 'bench', 'readbench'), path.join(ROOT, 'bench', 'c', 'readbench.c')]);
  // 64 MiB of real library bytes: compressible like binaries are.
  const fd = fs.openSync(path.join(extra, 'bench', 'data.bin'), 'w');
  let n = 0;
  const libdir = '/usr/lib/x86_64-linux-gnu';
  for (const f of fs.readdirSync(libdir).sort()) {
    const p = path.join(libdir, f);
    const st = fs.lstatSync(p);
    if (!st.isFile()) continue;
    const b = fs.readFileSync(p).subarray(0, 64 * MiB - n);
    fs.writeSync(fd, b);
    n += b.length;
    if (n >= 64 * MiB) break;
  }
  fs.closeSync(fd);
  const layers = [
    path.join(CACHE, 'rootfs', 'busybox'),
    { root: '/', paths: ['usr/lib/x86_64-linux-gnu', 'usr/lib64', 'lib64', 'lib'] },
    { root: '/', paths: ['usr/bin/python3.11', 'usr/lib/python3.11'] },
    extra,
  ];
  const layout = path.join(work, 'oci');
  buildOciLayout(layout, { layers, tag: 'big', cmd: ['/bin/sh'] });
  // The unpacked tree (the current path's input): the same layers applied in order (no whiteouts in them).
  const unpacked = path.join(work, 'unpacked');
  fs.mkdirSync(unpacked);
  for (const l of layers) {
    const [dir, paths] = typeof l === 'string' ? [l, ['.']] : [l.root, l.paths];
    execFileSync('sh', ['-c', `tar -C '${dir}' --numeric-owner -cf - ${paths.map((p) => `'${p}'`).join(' ')} | tar -C '${unpacked}' --numeric-owner -xpf -`]);
  }
  return { layout, unpacked, treeBytes: duBytes(unpacked) };
}

function config(runDir: string, store: string): Config {
  const cfg = defaultConfig();
  cfg.runtime.run_dir = runDir;
  cfg.runtime.cache_dir = CACHE;
  cfg['agent.kata'].dial_timeout = 120;
  cfg.image.store_dir = store;
  return cfg;
}

/** Times from t0 (before the Sandbox): started = VM booted (+ mkfs.erofs for a boot container on the current path), created = container created, first output. */
interface Started { sb: Sandbox; firstOutputMs: number; startedMs: number; createdMs: number; out: string }

/** Starts a sandbox whose boot container runs COMMAND; resolves at its first output. */
async function startAndRun(cfg: Config, driver: BlockDriver, id: string, rootfs: { image?: string; dir?: string }): Promise<Started> {
  const hv = new QemuHypervisor({ binary: cfg['hypervisor.qemu'].path, machine: 'pc', accel: 'tcg', blockDriver: driver });
  const t0 = Date.now();
  const sb = new Sandbox({ id, config: cfg, hypervisor: hv, bootContainers: [{ id: 'c', rootfs: rootfs.dir ?? '', rootfsShare: 'erofs', image: rootfs.image }] });
  await sb.start();
  const startedMs = Date.now() - t0;
  const spec = defaultSpec({ args: ['sh', '-c', `${COMMAND.map((a) => `'${a}'`).join(' ')}; exec sleep 600`] });
  await sb.createContainer('c', spec, rootfs.dir ?? '', rootfs.image ? { image: rootfs.image } : { rootfsShare: 'erofs' });
  const createdMs = Date.now() - t0;
  const out = new PassThrough();
  let o = '';
  const first = new Promise<number>((resolve) => out.once('data', () => resolve(Date.now())));
  out.on('data', (d) => (o += d));
  await sb.startContainer('c');
  void attachProcess(sb.agent, 'c', '', { stdout: out, stderr: out, terminal: false }).done.catch(() => undefined);
  const t1 = await Promise.race([first, new Promise<number>((_, rej) => setTimeout(() => rej(new Error(`no output from ${id} in 300 s`)), 300_000))]);
  await new Promise((r) => setTimeout(r, 200));
  if (!/hello from/.test(o)) throw new Error(`${id}: unexpected output ${JSON.stringify(o)}`);
  return { sb, firstOutputMs: t1 - t0, startedMs, createdMs, out: o };
}

async function guestJson(sb: Sandbox, script: string, n: number): Promise<Record<string, number>> {
  const id = `x${n}`;
  await sb.exec('c', id, defaultProcess({ args: ['sh', '-c', script] }));
  const out = new PassThrough();
  let o = '';
  out.on('data', (d) => (o += d));
  const st = await attachProcess(sb.agent, 'c', id, { stdout: out, stderr: out, terminal: false }).done;
  if (st.status !== 0) throw new Error(`guest: ${script}: ${o}`);
  return JSON.parse(o.trim().split('\n').pop()!) as Record<string, number>;
}

/** seq: first pass over the file; seq2: the same again (our device's verified-chunk cache is warm then); rand: 2000 × 4 KiB. */
interface Warm { seqMBs: number; seq2MBs: number; randMBs: number; direct: boolean }

async function warm(sb: Sandbox, round: number): Promise<Warm> {
  const seq = await guestJson(sb, '/bench/readbench seq /bench/data.bin', round * 3);
  const seq2 = await guestJson(sb, '/bench/readbench seq /bench/data.bin', round * 3 + 1);
  const rnd = await guestJson(sb, `/bench/readbench rand /bench/data.bin 2000 ${round + 1}`, round * 3 + 2);
  return { seqMBs: seq.MBs, seq2MBs: seq2.MBs, randMBs: rnd.MBs, direct: !!seq.direct && !!rnd.direct };
}


async function main(): Promise<void> {
  configureLogging({ level: 'error' });
  const rounds = Number(process.argv[2] ?? 3);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-image-'));
  const runDir = path.join(work, 'run');
  fs.mkdirSync(runDir);
  const stop: Array<() => Promise<void>> = [];
  try {
    log('building the image (host tree → 4-layer OCI layout) and its unpacked tree');
    const { layout, unpacked, treeBytes } = buildImage(work);
    const store = path.join(work, 'store');
    log('converting');
    const tc = Date.now();
    const conv = await convertImage(`${layout}:big`, { store, progress: !!process.stderr.isTTY });
    const convertMs = Date.now() - tc;
    const blobBytes = conv.record.blobs.reduce((a, b) => a + b.size, 0);
    const metaBytes = conv.record.metaSize;
    log(`image ${conv.id.slice(7, 19)}: tree ${(treeBytes / MiB).toFixed(0)} MiB, blobs ${(blobBytes / MiB).toFixed(0)} MiB, meta ${(metaBytes / MiB).toFixed(1)} MiB, converted in ${convertMs} ms`);

    const cold: { lazyMs: number; fetched: number; mkfsMs: number; lazyPhases: number[]; mkfsPhases: number[] }[] = [];
    const warmOurs: Warm[] = [], warmQemu: Warm[] = [], warmFile: Warm[] = [];
    for (let r = 0; r < rounds; r++) {
      // Cold: metadata only; every chunk comes from the server.
      const store2 = path.join(work, `store-cold-${r}`);
      fs.mkdirSync(path.join(store2, 'images'), { recursive: true });
      fs.cpSync(imageDir(store, imageIdHex(conv.id)), imageDir(store2, imageIdHex(conv.id)), { recursive: true });
      const server = await startBlobServer(blobsDir(store), 'bench/big');
      stop.push(() => server.close());
      const c2 = config(runDir, store2);
      c2.image.registry_url = server.url;
      c2.image.registry_name = 'bench/big';
      log(`round ${r + 1}/${rounds}: cold, lazy`);
      const a = await startAndRun(c2, 'vhost-user-blk', `lz${r}`, { image: conv.id });
      const fetched = server.stats.bytes;
      await a.sb.stop();
      log(`round ${r + 1}/${rounds}: cold, unpacked tree + mkfs.erofs`);
      const b = await startAndRun(config(runDir, store), 'virtio-blk', `mk${r}`, { dir: unpacked });
      cold.push({ lazyMs: a.firstOutputMs, fetched, mkfsMs: b.firstOutputMs, lazyPhases: [a.startedMs, a.createdMs, a.firstOutputMs], mkfsPhases: [b.startedMs, b.createdMs, b.firstOutputMs] });
      log(`  phases (started, created, first output) ms: lazy ${a.startedMs}/${a.createdMs}/${a.firstOutputMs}, mkfs.erofs ${b.startedMs}/${b.createdMs}/${b.firstOutputMs}`);
      log(`round ${r + 1}/${rounds}: warm reads, QEMU virtio-blk EROFS`);
      warmQemu.push(await warm(b.sb, r));
      await b.sb.stop();
      log(`round ${r + 1}/${rounds}: warm reads, unpacked tree's EROFS on our vhost-user-blk (file-backed)`);
      const o = await startAndRun(config(runDir, store), 'vhost-user-blk', `of${r}`, { dir: unpacked });
      warmFile.push(await warm(o.sb, r));
      await o.sb.stop();
      log(`round ${r + 1}/${rounds}: warm reads, converted image (blobs local)`);
      const w = await startAndRun(config(runDir, store), 'vhost-user-blk', `wm${r}`, { image: conv.id });
      warmOurs.push(await warm(w.sb, r));
      await w.sb.stop();
      fs.rmSync(store2, { recursive: true, force: true });
    }
    const f1 = (x: number) => x.toFixed(1);
    const lazyMs = median(cold.map((c) => c.lazyMs)), mkfsMs = median(cold.map((c) => c.mkfsMs));
    const fetched = median(cold.map((c) => c.fetched));
    const med = (ws: Warm[]) => ({ seq: median(ws.map((w) => w.seqMBs)), seq2: median(ws.map((w) => w.seq2MBs)), rand: median(ws.map((w) => w.randMBs)) });
    const wo = med(warmOurs), wq = med(warmQemu), wf = med(warmFile);
    const vs = (k: 'seq' | 'seq2' | 'rand') => `${f1(wq[k])}  (ratio ${(wo[k] / wq[k]).toFixed(2)}); ours file-backed ${f1(wf[k])} (ratio ${(wo[k] / wf[k]).toFixed(2)})`;
    const rows: Array<[string, string, string]> = [
      [`metric (median of ${rounds})`, 'converted image', 'unpacked tree + mkfs.erofs, QEMU virtio-blk'],
      ['start → first output of python3, ms', String(lazyMs), `${mkfsMs}  (ratio ${(lazyMs / mkfsMs).toFixed(2)})`],
      ['bytes fetched for it, MiB', `${f1(fetched / MiB)} of ${f1(blobBytes / MiB)} stored (${(100 * fetched / blobBytes).toFixed(1)}%)`, `tree ${f1(treeBytes / MiB)} MiB (fetched: ${(100 * fetched / treeBytes).toFixed(1)}%)`],
      ['warm seq read 64 MiB, 1st pass, MB/s', f1(wo.seq), vs('seq')],
      ['warm seq read 64 MiB, 2nd pass, MB/s', f1(wo.seq2), vs('seq2')],
      ['warm random 4 KiB reads, MB/s', f1(wo.rand), vs('rand')],
    ];
    process.stdout.write(`${table(rows)}\n`);
    process.stdout.write(`O_DIRECT in the guest: ours ${warmOurs.every((w) => w.direct)}, QEMU ${warmQemu.every((w) => w.direct)}, file-backed ${warmFile.every((w) => w.direct)}; conversion ${convertMs} ms\n`);
    process.stdout.write(`wrote ${writeResult('image-lazy', { machine: machine(), rounds, treeBytes, blobBytes, metaBytes, convertMs, cold, warmOurs, warmQemu, warmFile })}\n`);
  } finally {
    for (const s of stop) await s().catch(() => undefined);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e: Error) => { process.stderr.write(`${e.stack ?? e.message}\n`); process.exit(1); });
