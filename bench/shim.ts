/**
 * containerd shim benchmark (issue 6), one run, side by side:
 *   io.containerd.kata-ts.v2 (this shim, a VM per pod; TCG on PVM hosts)
 *   io.containerd.runc.v2    (containerd's own shim with runc)
 *   runsc through the runc shim (--runc-binary wrapper, --network=none), if installed
 * Measures `ctr run --rm IMAGE true` latency (median of N) and host memory
 * per running pod at 1 and P pods: PSS of each shim and all its descendants
 * (QEMU included), with QEMU's guest-RAM mapping excluded (the largest
 * mapping of at least the configured guest memory size).
 *
 *   npx tsc -p tsconfig.json && node dist/bench/shim.js [runs=3] [pods=10]
 *
 * Uses the private containerd of the e2e tests (test/helpers/containerd).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { IMAGE, TestContainerd } from '../test/helpers/containerd';
import { median } from './stats';

interface Peer { name: string; args: string[] }

function children(pid: number): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const ppid = Number(fs.readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
      if (ppid === pid) out.push(Number(d), ...children(Number(d)));
    } catch {
      /* exited */
    }
  }
  return out;
}

/** PSS in KiB, minus mappings of at least `excludeKiB` (guest RAM). */
function pssKiB(pid: number, excludeKiB: number): number {
  let total = 0;
  let size = 0;
  try {
    for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
      const m = /^(\w+):\s+(\d+) kB/.exec(line);
      if (!m) continue;
      if (m[1] === 'Size') size = Number(m[2]);
      if (m[1] === 'Pss' && size < excludeKiB) total += Number(m[2]);
    }
  } catch {
    /* exited */
  }
  return total;
}


async function main(): Promise<void> {
  const runs = Number(process.argv[2] ?? 3);
  const pods = Number(process.argv[3] ?? 10);
  const cd = new TestContainerd();
  const guestKiB = 512 * 1024;
  const peers: Peer[] = [
    { name: 'runc', args: ['--runtime', 'io.containerd.runc.v2'] },
    { name: 'kata-ts', args: ['--runtime', 'io.containerd.kata-ts.v2'] },
  ];
  let runsc = '';
  try {
    runsc = execFileSync('sh', ['-c', 'command -v runsc'], { encoding: 'utf8' }).trim();
  } catch {
    process.stdout.write('runsc not installed: skipped\n');
  }
  try {
    await cd.start();
    await cd.importImage();
    if (runsc) {
      const wrap = path.join(cd.dir, 'runsc-wrap');
      fs.writeFileSync(wrap, `#!/bin/sh\nexec ${runsc} --network=none "$@"\n`, { mode: 0o755 });
      peers.push({ name: 'runsc', args: ['--runtime', 'io.containerd.runc.v2', '--runc-binary', wrap] });
    }
    const rows: Record<string, { runMs: number; pss1: number; pssN: number }> = {};
    for (const p of peers) {
      const times: number[] = [];
      for (let i = 0; i < runs; i++) {
        const t0 = process.hrtime.bigint();
        const r = await cd.ctr(['run', '--rm', ...p.args, IMAGE, `${p.name}-rm-${i}`, 'true']);
        if (r.code !== 0) throw new Error(`${p.name} run: ${r.stderr}\ncontainerd log tail:\n${cd.log.split('\n').slice(-30).join('\n')}`);
        times.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
      const perPod = async (n: number) => {
        for (let i = 0; i < n; i++) {
          const r = await cd.ctr(['run', '-d', ...p.args, IMAGE, `${p.name}-pod-${n}-${i}`, 'sleep', '3600']);
          if (r.code !== 0) throw new Error(`${p.name} run -d: ${r.stderr}`);
        }
        await new Promise((r) => setTimeout(r, 2000));
        const shims = cd.strayProcesses('containerd-shim').filter((x) => x.args.includes(cd.socket)).map((x) => x.pid);
        let kib = 0;
        for (const s of shims) for (const pid of [s, ...children(s)]) kib += pssKiB(pid, guestKiB);
        for (let i = 0; i < n; i++) {
          const id = `${p.name}-pod-${n}-${i}`;
          await cd.ctr(['task', 'kill', '-s', 'SIGKILL', id]);
          await new Promise((r) => setTimeout(r, 300));
          await cd.ctr(['task', 'delete', '-f', id]);
          await cd.ctr(['container', 'delete', id]);
        }
        return kib / n / 1024;
      };
      rows[p.name] = { runMs: median(times), pss1: await perPod(1), pssN: await perPod(pods) };
      process.stdout.write(`${p.name}: ctr run --rm median ${rows[p.name]!.runMs.toFixed(0)} ms; PSS/pod ${rows[p.name]!.pss1.toFixed(1)} MiB (1 pod), ${rows[p.name]!.pssN.toFixed(1)} MiB (${pods} pods)\n`);
    }
    const base = rows.runc!;
    process.stdout.write(`\n| runtime | ctr run --rm (median of ${runs}) | x runc | PSS/pod, 1 pod | PSS/pod, ${pods} pods | x runc (${pods}) |\n|---|---|---|---|---|---|\n`);
    for (const [name, r] of Object.entries(rows)) {
      process.stdout.write(`| ${name} | ${r.runMs.toFixed(0)} ms | ${(r.runMs / base.runMs).toFixed(1)} | ${r.pss1.toFixed(1)} MiB | ${r.pssN.toFixed(1)} MiB | ${(r.pssN / base.pssN).toFixed(1)} |\n`);
    }
  } finally {
    const left = await cd.stop();
    if (left.shims.length || left.qemu.length || left.mounts.length) process.stdout.write(`cleaned up leftovers: ${JSON.stringify(left)}\n`);
  }
}

main().catch((err) => {
  process.stderr.write(`bench/shim: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
