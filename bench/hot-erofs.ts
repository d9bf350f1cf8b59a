/**
 * EROFS read-everything throughput, side by side in one run (issue 3): read
 * every regular file of an -zlz4hc image (made by mkfs.erofs 1.5 from
 * /usr/lib/x86_64-linux-gnu) with src/hot/erofs (assembly/erofs + lz4)
 * vs the kernel's erofs (loop mount, warm page cache, read from Node with
 * the same 1 MiB chunks; the page cache then holds decoded data, so this
 * is the kernel's warm upper bound) vs `fsck.erofs --extract` (erofs-utils'
 * userspace reader, decoding and writing every file). Plain `fsck.erofs`
 * in 1.5 checks metadata only; it is reported for context, not compared.
 * The kernel peer needs root and loop devices; it is skipped otherwise.
 *
 *   npx tsc -p tsconfig.json && bash scripts/build-wasm.sh && node dist/bench/hot-erofs.js
 *
 * Writes build/bench/hot-erofs.json.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErofsImage } from '../src/hot/erofs';
import { ROOT, best, machine, table, writeResult } from './native';

const CHUNK = 1 << 20;

function image(): { file: string; bytes: number } {
  const file = path.join(ROOT, 'build', 'bench', 'usrlib-lz4hc.erofs');
  if (!fs.existsSync(file)) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    execFileSync('mkfs.erofs', ['--quiet', '-zlz4hc', file, '/usr/lib/x86_64-linux-gnu'], { stdio: 'ignore' });
  }
  return { file, bytes: fs.statSync(file).size };
}

function readAllOurs(img: ErofsImage): number {
  let total = 0;
  const walk = (nid: number) => {
    for (const e of img.readdirNid(nid)) {
      if (e.name === '.' || e.name === '..') continue;
      if (e.type === 'dir') walk(e.nid);
      else if (e.type === 'file') {
        const size = img.inode(e.nid).size;
        for (let off = 0; off < size; off += CHUNK) total += img.readNid(e.nid, off, Math.min(CHUNK, size - off)).length;
      }
    }
  };
  walk(img.sb.rootNid);
  return total;
}

function readAllKernel(dir: string, buf: Buffer): number {
  let total = 0;
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        const fd = fs.openSync(p, 'r');
        for (let n = fs.readSync(fd, buf, 0, CHUNK, null); n > 0; n = fs.readSync(fd, buf, 0, CHUNK, null)) total += n;
        fs.closeSync(fd);
      }
    }
  };
  walk(dir);
  return total;
}

function timeCmd(cmd: string, args: string[], rounds: number, before?: () => void): number | undefined {
  let b = Infinity;
  for (let i = 0; i < rounds; i++) {
    before?.();
    const t = process.hrtime.bigint();
    const r = spawnSync(cmd, args, { stdio: 'ignore' });
    const s = Number(process.hrtime.bigint() - t) / 1e9;
    if (r.status !== 0) return undefined;
    b = Math.min(b, s);
  }
  return b;
}

function main(): void {
  const { file, bytes } = image();
  const img = ErofsImage.open(file);
  const logical = readAllOurs(img); // warm-up; also the byte count
  const ours = best(3, () => readAllOurs(img));
  img.close();
  const results: Record<string, unknown> = { machine: machine(), unit: 'MB/s of file data', image: { file, bytes, fileBytes: logical } };
  const r: Record<string, number | undefined> = { 'kata-ts (AS reader)': logical / ours / 1e6 };

  // Kernel erofs over a loop mount, warm cache.
  let kernel: number | undefined;
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-erofs-mnt-'));
  try {
    const m = spawnSync('mount', ['-t', 'erofs', '-o', 'loop,ro', file, mnt], { stdio: 'ignore' });
    if (m.status === 0) {
      try {
        const buf = Buffer.allocUnsafe(CHUNK);
        const n = readAllKernel(mnt, buf);
        if (n !== logical) throw new Error(`kernel read ${n} bytes, ours ${logical}`);
        kernel = n / best(3, () => readAllKernel(mnt, buf)) / 1e6;
      } finally {
        spawnSync('umount', [mnt], { stdio: 'ignore' });
      }
    }
  } finally {
    fs.rmSync(mnt, { recursive: true, force: true });
  }
  r['kernel erofs (loop mount, warm)'] = kernel;
  const fsck = timeCmd('fsck.erofs', [file], 3);
  r['fsck.erofs (metadata only, context)'] = fsck ? logical / fsck / 1e6 : undefined;
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-erofs-x-'));
  try {
    const ex = timeCmd('fsck.erofs', [`--extract=${path.join(out, 'x')}`, file], 2, () => fs.rmSync(path.join(out, 'x'), { recursive: true, force: true }));
    r['fsck.erofs --extract'] = ex ? logical / ex / 1e6 : undefined;
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
  const ratios: Record<string, number | undefined> = {
    'ours / kernel': kernel ? r['kata-ts (AS reader)']! / kernel : undefined,
    'ours / fsck.erofs --extract': r['fsck.erofs --extract'] ? r['kata-ts (AS reader)']! / r['fsck.erofs --extract']! : undefined,
  };
  Object.assign(results, { mbps: r, ratios });
  console.log(`EROFS -zlz4hc image of /usr/lib/x86_64-linux-gnu: ${(bytes / 1048576).toFixed(0)} MiB image, ${(logical / 1048576).toFixed(0)} MiB of file data`);
  console.log(table(Object.entries(r).map(([k, v]) => [k, v === undefined ? 'n/a' : v.toFixed(0), 'MB/s'])));
  console.log(table(Object.entries(ratios).map(([k, v]) => [k, v === undefined ? 'n/a' : v.toFixed(2) + '×', ''])));
  console.log(`\nwrote ${writeResult('hot-erofs', results)}`);
}

main();
