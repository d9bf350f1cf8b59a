/**
 * Pod start through CRI (issue 10), kata-ts against runc, side by side in one
 * run on one private containerd (test/helpers/cri-containerd: CRI plugin,
 * CNI bridge in its own netns): what a kubelet waits for before a pod's
 * first container runs —
 *   RunPodSandbox (sandbox + CNI network) → CreateContainer → StartContainer
 * of one busybox container, timed from the first call until StartContainer
 * returns (the container is running). Median of N per runtime, runtimes
 * interleaved run by run so background load hits both alike; teardown
 * (StopPodSandbox + RemovePodSandbox) is timed apart and not in the start.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/cri-start.js [runs=5]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BUSYBOX, CriContainerd, criUnavailable, HANDLERS, type Handler } from '../test/helpers/cri-containerd';
import type { PodSandboxConfig } from '../test/helpers/cri';
import { median } from './stats';


async function main(): Promise<void> {
  const runs = Number(process.argv[2] ?? 5);
  for (const h of HANDLERS) {
    const why = criUnavailable(h);
    if (why) throw new Error(`${h}: ${why}`);
  }
  const cd = new CriContainerd();
  const start: Record<Handler, number[]> = { runc: [], 'kata-ts': [] };
  const stop: Record<Handler, number[]> = { runc: [], 'kata-ts': [] };
  try {
    await cd.start();
    for (let i = 0; i < runs; i++) {
      for (const h of HANDLERS) {
        const name = `${h}-${i}`;
        const logDir = path.join(cd.dir, 'pods', name);
        fs.mkdirSync(logDir, { recursive: true });
        const config: PodSandboxConfig = { metadata: { name, uid: name, namespace: 'bench' }, hostname: name, log_directory: logDir, linux: {} };
        const t0 = process.hrtime.bigint();
        const pod = await cd.cri.runPodSandbox(config, h);
        const ctr = await cd.cri.createContainer(pod, {
          metadata: { name: 'c' }, image: { image: BUSYBOX }, command: ['sleep', '3600'], log_path: 'c.log', linux: {},
        }, config);
        await cd.cri.startContainer(ctr);
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        const st = (await cd.cri.containerStatus(ctr)).status.state;
        if (st !== 'CONTAINER_RUNNING') throw new Error(`${name}: container is ${st} after StartContainer`);
        const t1 = process.hrtime.bigint();
        await cd.cri.stopPodSandbox(pod);
        await cd.cri.removePodSandbox(pod);
        const stopMs = Number(process.hrtime.bigint() - t1) / 1e6;
        start[h].push(ms);
        stop[h].push(stopMs);
        process.stdout.write(`${name}: start ${ms.toFixed(0)} ms, stop+remove ${stopMs.toFixed(0)} ms\n`);
      }
    }
    const base = median(start.runc);
    process.stdout.write(`\n| runtime | pod start through CRI (median of ${runs}) | x runc | range | stop + remove (median) |\n|---|---|---|---|---|\n`);
    for (const h of HANDLERS) {
      const m = median(start[h]);
      process.stdout.write(`| ${h} | ${m.toFixed(0)} ms | ${(m / base).toFixed(1)} | ${Math.min(...start[h]).toFixed(0)}–${Math.max(...start[h]).toFixed(0)} ms | ${median(stop[h]).toFixed(0)} ms |\n`);
    }
  } finally {
    const left = await cd.stop();
    if (left.pods.length || left.shims.length || left.qemu.length || left.mounts.length || left.cni.length) process.stdout.write(`cleaned up leftovers: ${JSON.stringify(left)}\n`);
  }
}

main().catch((err) => {
  process.stderr.write(`bench/cri-start: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
