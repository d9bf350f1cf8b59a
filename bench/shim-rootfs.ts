/**
 * Which way should the shim give containerd's rootfs to the guest?
 * ([runtime] rootfs_share, issue 11.) One private containerd, runs
 * interleaved so both modes see the same machine:
 *   virtiofs — the snapshot mount shared as it is (writes land in it, as
 *              under runc);
 *   erofs    — mkfs.erofs of the snapshot at Create, a read-only virtio-blk
 *              disk, a tmpfs overlay in the guest.
 * Measures `ctr run --rm IMAGE true` (start to exit, VM boot included) and
 * the same with 500 small files created in the container's /tmp (metadata
 * through the rootfs path). Medians of N.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/shim-rootfs.js [runs=5]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IMAGE, RUNTIME, TestContainerd } from '../test/helpers/containerd';
import { median } from './stats';

const MODES = ['virtiofs', 'erofs'] as const;
const WORKLOADS: Record<string, string[]> = {
  'ctr run --rm true': ['true'],
  '+ 500 files in /tmp': ['sh', '-c', 'i=0; while [ $i -lt 500 ]; do echo x > /tmp/f$i; i=$((i+1)); done'],
};


async function main(): Promise<void> {
  const runs = Number(process.argv[2] ?? 5);
  const cd = new TestContainerd();
  await cd.start();
  const cfg = path.join(cd.dir, 'kata-ts.toml');
  const base = fs.readFileSync(cfg, 'utf8');
  const times = new Map<string, number[]>();
  let n = 0;
  try {
    await cd.importImage();
    for (let r = 0; r < runs; r++) {
      for (const [name, cmd] of Object.entries(WORKLOADS)) {
        for (const mode of r % 2 ? [...MODES].reverse() : MODES) {
          // The shim reads its configuration when it starts: one per run.
          fs.writeFileSync(cfg, base.replace('[agent.kata]', `rootfs_share = "${mode}"\n[agent.kata]`));
          const t0 = process.hrtime.bigint();
          const res = await cd.ctr(['run', '--rm', '--runtime', RUNTIME, IMAGE, `b${n++}`, ...cmd]);
          const ms = Number(process.hrtime.bigint() - t0) / 1e6;
          if (res.code !== 0) throw new Error(`${mode} ${name}: exit ${res.code}: ${res.stderr}\n${cd.log.split('\n').slice(-10).join('\n')}`);
          const key = `${name}|${mode}`;
          times.set(key, [...(times.get(key) ?? []), ms]);
          process.stderr.write(`${mode.padEnd(8)} ${name.padEnd(22)} ${ms.toFixed(0)} ms\n`);
        }
      }
    }
  } finally {
    await cd.stop();
  }
  console.log(`| workload (median of ${runs}) | virtiofs | erofs | virtiofs / erofs |`);
  console.log('| --- | --- | --- | --- |');
  for (const name of Object.keys(WORKLOADS)) {
    const v = median(times.get(`${name}|virtiofs`)!);
    const e = median(times.get(`${name}|erofs`)!);
    console.log(`| ${name} | ${(v / 1000).toFixed(2)} s | ${(e / 1000).toFixed(2)} s | ${(v / e).toFixed(2)}× |`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
