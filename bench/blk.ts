/**
 * virtio-blk benchmark (issue 5): our device (src/virtio/blk) behind
 * vhost-user-blk-pci vs QEMU's own virtio-blk-pci, in one run, same TCG
 * guest set-up, same backing files:
 *
 *  boot      sandbox start (VM boot → agent ready) with the guest root
 *            image on each driver (the root image is read at every boot).
 *  seq read  `dd` of 48 MiB from a hotplugged raw disk inside a container
 *            (cold: each run reads a region it has not read before).
 *  seq write `dd conv=fsync` of 32 MiB to the same disk (ends in FLUSH).
 *
 *   npx tsc -p tsconfig.json && node dist/bench/blk.js [rounds]
 *
 * Writes build/bench/blk.json. Ratios are ours/QEMU's (throughput: higher
 * is better; boot time: lower is better). Under TCG the guest's own
 * instruction emulation dominates both; the ratio is what matters.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { configureLogging } from '../src/common/log';
import { defaultConfig } from '../src/runtime/config';
import { QemuHypervisor, type BlockDriver } from '../src/hypervisor/qemu';
import { Sandbox } from '../src/runtime/sandbox';
import { defaultProcess, defaultSpec } from '../src/runtime/spec';
import { attachProcess } from '../src/runtime/stdio';
import { machine, table, writeResult } from './native';
import { median } from './stats';

const CACHE = process.env.KATA_TS_CACHE ?? '/var/cache/kata-ts';
const MiB = 1 << 20;

interface Run { bootMs: number; readMBs: number; writeMBs: number }

async function one(driver: BlockDriver, round: number): Promise<Run> {
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-blk-'));
  const cfg = defaultConfig();
  cfg.runtime.run_dir = runDir;
  cfg.runtime.cache_dir = CACHE;
  const hv = new QemuHypervisor({ binary: cfg['hypervisor.qemu'].path, machine: 'pc', accel: 'tcg', blockDriver: driver, rootBlockDriver: driver });
  const rootfs = path.join(CACHE, 'rootfs', 'busybox');
  const sb = new Sandbox({ id: `b${round}`, config: cfg, hypervisor: hv, bootContainers: [{ id: 'c', rootfs, rootfsShare: 'erofs' }] });
  try {
    const t0 = Date.now();
    await sb.start();
    const bootMs = Date.now() - t0;
    const spec = defaultSpec({ args: ['sleep', '600'] });
    (spec.linux as Record<string, unknown>).resources = { devices: [{ allow: true, access: 'rwm' }] };
    await sb.createContainer('c', spec, rootfs);
    await sb.startContainer('c');
    const file = path.join(runDir, 'disk.raw');
    fs.writeFileSync(file, Buffer.alloc(0));
    fs.truncateSync(file, 96 * MiB);
    await hv.addDisk({ id: 'bench', path: file, readonly: false });
    let n = 0;
    const sh = async (script: string): Promise<string> => {
      const id = `x${n++}`;
      await sb.exec('c', id, defaultProcess({ args: ['sh', '-c', script] }));
      const out = new PassThrough();
      let o = '';
      out.on('data', (d) => (o += d));
      const st = await attachProcess(sb.agent, 'c', id, { stdout: out, stderr: out, terminal: false }).done;
      if (st.status !== 0) throw new Error(`guest script failed (${st.status}): ${o}`);
      return o;
    };
    const node = 'for i in $(seq 100); do for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = bench ] && [ ! -b /tmp/b ] && ' +
      'mknod /tmp/b b $(cut -d: -f1 $d/dev) $(cut -d: -f2 $d/dev); done; [ -b /tmp/b ] && break; sleep 0.1; done; [ -b /tmp/b ]';
    await sh(node);
    // Guest-side timing (/proc/uptime, 10 ms ticks) so exec/RPC overhead is
    // not counted; busybox's date and dd here print no sub-second times.
    const timed = async (cmd: string) => {
      const o = await sh(`read a _ < /proc/uptime; ${cmd} 2>/dev/null; read b _ < /proc/uptime; echo $a $b`);
      const [a, b] = o.trim().split('\n').pop()!.split(' ').map(Number);
      return Math.max(0.01, b - a);
    };
    const readS = await timed('dd if=/tmp/b of=/dev/null bs=1M count=48');
    const writeS = await timed('dd if=/dev/zero of=/tmp/b bs=1M count=32 seek=56 conv=fsync,notrunc');
    return { bootMs, readMBs: 48 / readS, writeMBs: 32 / writeS };
  } finally {
    await sb.stop();
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}


async function main(): Promise<void> {
  configureLogging({ level: 'error' });
  const rounds = Number(process.argv[2] ?? 3);
  const runs: Record<BlockDriver, Run[]> = { 'vhost-user-blk': [], 'virtio-blk': [] };
  // Interleaved so drift on this shared machine hits both alike.
  for (let r = 0; r < rounds; r++) {
    for (const d of ['vhost-user-blk', 'virtio-blk'] as const) runs[d].push(await one(d, r));
  }
  const med = (d: BlockDriver, k: keyof Run) => median(runs[d].map((x) => x[k]));
  const f = (x: number) => x.toFixed(1);
  const rows: Array<[string, string, string]> = (['bootMs', 'readMBs', 'writeMBs'] as const).map((k) => {
    const ours = med('vhost-user-blk', k), qemu = med('virtio-blk', k);
    return [k === 'bootMs' ? 'boot to agent ready, ms (root image on it)' : k === 'readMBs' ? 'seq read 48 MiB, MB/s' : 'seq write 32 MiB + fsync, MB/s',
      f(ours), `${f(qemu)}  (ratio ${(ours / qemu).toFixed(2)})`];
  });
  process.stdout.write(`${table([['metric (median of ' + rounds + ')', 'ours: vhost-user-blk', "QEMU's virtio-blk"], ...rows])}\n`);
  process.stdout.write(`wrote ${writeResult('blk', { machine: machine(), rounds, runs })}\n`);
}

main().catch((e: Error) => { process.stderr.write(`${e.stack ?? e.message}\n`); process.exit(1); });
