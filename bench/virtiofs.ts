/**
 * virtio-fs benchmark (issue 5), two parts in one run:
 *
 * 1. server — our FUSE server (src/virtio/fs) driven in-process with real
 *    request bytes, no VM: LOOKUP+GETATTR, CREATE+RELEASE+UNLINK and 1 MiB
 *    READs, against the same operations through Node's fs on the same
 *    directory (the host's own cost, the floor we add protocol work to).
 * 2. vm — the same TCG guest booted twice through `kata-ts run` on the same
 *    host directory: once with the rootfs on our virtio-fs (vhost-user-fs),
 *    once on the EROFS path (image on QEMU's virtio-blk + tmpfs overlay).
 *    Inside, a shell script times small-file create / stat (ls -l) /
 *    unlink and sequential read (64 MiB, cold) and write (64 MiB + sync)
 *    with /proc/uptime. On the EROFS path writes land in the guest's tmpfs
 *    overlay (RAM), so "write" there is an upper bound, not a like-for-like.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/virtiofs.js [server|vm]
 *
 * Needs the guest built (scripts/setup.sh) for part 2. Writes
 * build/bench/virtiofs.json.
 */
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configureLogging } from '../src/common/log';
import { PassthroughFs } from '../src/virtio/fs/passthrough';
import { FuseServer } from '../src/virtio/fs/server';
import { cstr, FuseClient, u32s, u64s } from '../test/unit/virtio/fs-client';
import { ROOT, machine, table, writeResult } from './native';

const CACHE = process.env.KATA_TS_CACHE ?? '/var/cache/kata-ts';

async function timeit(fn: () => Promise<void> | void): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

async function serverBench(): Promise<Record<string, number>> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-bench-vfs-'));
  const pfs = new PassthroughFs(dir);
  const c = new FuseClient(new FuseServer(pfs));
  await c.init();
  const N = 5000;
  fs.mkdirSync(path.join(dir, 'files'));
  for (let i = 0; i < N; i++) fs.writeFileSync(path.join(dir, 'files', `f${i}`), 'x');
  const d = await c.lookup(1, 'files');
  const r: Record<string, number> = {};
  r.fuse_lookup_getattr_ops = (2 * N) / await timeit(async () => {
    for (let i = 0; i < N; i++) { const e = await c.lookup(d.nodeid, `f${i}`); await c.getattr(e.nodeid); }
  });
  r.node_stat_ops = (2 * N) / await timeit(() => {
    for (let i = 0; i < N; i++) { fs.lstatSync(path.join(dir, 'files', `f${i}`)); fs.lstatSync(path.join(dir, 'files', `f${i}`)); }
  });
  const m = await c.mkdir(1, 'new');
  r.fuse_create_unlink_ops = N / await timeit(async () => {
    for (let i = 0; i < N; i++) {
      const e = await c.create(m.nodeid, `n${i}`);
      await c.release(e.fh);
      await c.ok(10, m.nodeid, cstr(`n${i}`));
      await c.raw(2, e.nodeid, u64s(1));
    }
  });
  r.node_create_unlink_ops = N / await timeit(() => {
    for (let i = 0; i < N; i++) { const p = path.join(dir, 'new', `m${i}`); fs.closeSync(fs.openSync(p, 'w')); fs.unlinkSync(p); }
  });
  const big = path.join(dir, 'big');
  const SIZE = 256 << 20;
  fs.writeFileSync(big, crypto.randomBytes(SIZE));
  const b = await c.lookup(1, 'big');
  const fh = await c.open(b.nodeid, 0);
  const CH = 1 << 20;
  const out = Buffer.alloc(16 + CH);
  r.fuse_read_mbs = SIZE / (1 << 20) / await timeit(async () => {
    for (let off = 0; off < SIZE; off += CH) {
      const req = Buffer.concat([Buffer.alloc(40), u64s(fh, off), u32s(CH, 0), u64s(0), u32s(0, 0)]);
      req.writeUInt32LE(req.length, 0); req.writeUInt32LE(15, 4);
      await c.server.handle([req], [out]);
    }
  });
  const fd = fs.openSync(big, 'r');
  const buf = Buffer.alloc(CH);
  r.node_read_mbs = SIZE / (1 << 20) / await timeit(() => { for (let off = 0; off < SIZE; off += CH) fs.readSync(fd, buf, 0, CH, off); });
  fs.closeSync(fd);
  pfs.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return r;
}

const GUEST_SCRIPT = `
t() { cut -d' ' -f1 /proc/uptime; }
cd /bench
a=$(t); mkdir d; i=0; while [ $i -lt 1000 ]; do : > d/f$i; i=$((i+1)); done; b=$(t)
ls -l d > /dev/null; c=$(t)
rm -r d; e=$(t)
cat big > /dev/null; f=$(t)
dd if=/dev/zero of=out bs=1M count=64 2>/dev/null; sync; g=$(t)
rm -f out
echo "create=$(echo "$b - $a" | bc) stat=$(echo "$c - $b" | bc) unlink=$(echo "$e - $c" | bc) read=$(echo "$f - $e" | bc) write=$(echo "$g - $f" | bc)"
`;

function vmBench(): Record<string, Record<string, number>> | undefined {
  if (!fs.existsSync(path.join(CACHE, 'image', 'rootfs.erofs'))) {
    process.stdout.write('  vm part skipped: guest not built (scripts/setup.sh)\n');
    return undefined;
  }
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-bench-vfsvm-'));
  const rootfs = path.join(base, 'rootfs');
  fs.cpSync(path.join(CACHE, 'rootfs', 'busybox'), rootfs, { recursive: true, verbatimSymlinks: true });
  fs.mkdirSync(path.join(rootfs, 'bench'));
  fs.writeFileSync(path.join(rootfs, 'bench', 'big'), crypto.randomBytes(64 << 20));
  const runDir = path.join(base, 'run');
  fs.mkdirSync(runDir);
  const cfg = path.join(base, 'config.toml');
  fs.writeFileSync(cfg, `[runtime]\nrun_dir = "${runDir}"\ncache_dir = "${CACHE}"\n`);
  const out: Record<string, Record<string, number>> = {};
  for (const mode of ['virtiofs', 'erofs']) {
    const t0 = Date.now();
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'kata-ts'), 'run', '--config', cfg, '--rootfs', rootfs, '--rootfs-share', mode, '--memory', '768', '--', 'sh', '-c', GUEST_SCRIPT], { encoding: 'utf8', timeout: 300000 });
    const m = /create=(\S+) stat=(\S+) unlink=(\S+) read=(\S+) write=(\S+)/.exec(r.stdout);
    if (r.status !== 0 || !m) {
      process.stdout.write(`  vm ${mode} failed: ${r.stderr.trim() || r.stdout.trim()}\n`);
      continue;
    }
    const [create, stat, unlink, read, write] = m.slice(1).map(Number);
    out[mode] = {
      create_ops: 1000 / create, stat_ops: 1000 / stat, unlink_ops: 1000 / unlink,
      read_mbs: 64 / read, write_mbs: 64 / write, total_s: (Date.now() - t0) / 1000,
    };
  }
  fs.rmSync(base, { recursive: true, force: true });
  return out;
}

async function main(): Promise<void> {
  configureLogging({ level: 'error' });
  const which = process.argv[2];
  const result: Record<string, unknown> = { machine: machine() };
  const fmt = (v: number | undefined, d = 0) => (v === undefined || !isFinite(v) ? 'n/a' : v.toFixed(d));
  if (!which || which === 'server') {
    const s = await serverBench();
    result.server = s;
    process.stdout.write('virtio-fs FUSE server in-process (no VM) vs Node fs on the same directory\n');
    process.stdout.write(table([
      ['LOOKUP+GETATTR', `${fmt(s.fuse_lookup_getattr_ops)} ops/s`, `lstat x2: ${fmt(s.node_stat_ops)} ops/s (${(s.fuse_lookup_getattr_ops / s.node_stat_ops).toFixed(2)}x)`],
      ['CREATE+RELEASE+UNLINK+FORGET', `${fmt(s.fuse_create_unlink_ops)} ops/s`, `open+close+unlink: ${fmt(s.node_create_unlink_ops)} ops/s (${(s.fuse_create_unlink_ops / s.node_create_unlink_ops).toFixed(2)}x)`],
      ['READ 1 MiB (warm)', `${fmt(s.fuse_read_mbs)} MB/s`, `readSync: ${fmt(s.node_read_mbs)} MB/s (${(s.fuse_read_mbs / s.node_read_mbs).toFixed(2)}x)`],
    ]) + '\n');
  }
  if (!which || which === 'vm') {
    const v = vmBench();
    if (v) {
      result.vm = v;
      const a = v.virtiofs, b = v.erofs;
      const row = (name: string, k: string, unit: string): [string, string, string] =>
        [name, `${fmt(a?.[k], 1)} ${unit}`, `erofs+overlay: ${fmt(b?.[k], 1)} ${unit}${a && b ? ` (${(a[k] / b[k]).toFixed(2)}x)` : ''}`];
      process.stdout.write('\nTCG guest, container rootfs on our virtio-fs vs EROFS on QEMU virtio-blk (+tmpfs overlay)\n');
      process.stdout.write(table([
        row('create 1000 files', 'create_ops', 'ops/s'), row('ls -l 1000 files', 'stat_ops', 'ops/s'),
        row('rm -r 1000 files', 'unlink_ops', 'ops/s'), row('read 64 MiB cold', 'read_mbs', 'MB/s'),
        row('write 64 MiB + sync', 'write_mbs', 'MB/s (erofs: tmpfs)'),
      ]) + '\n');
    }
  }
  process.stdout.write(`\nwrote ${writeResult('virtiofs', result)}\n`);
}

void main();
