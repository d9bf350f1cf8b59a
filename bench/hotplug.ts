/**
 * Hotplug latency per device kind (issue 14): request → usable in the guest,
 * through the sandbox's device manager, in one running pod per block
 * driver, side by side in one run:
 *
 *   blk, ours     our virtio-blk behind vhost-user-blk-pci (chardev-add +
 *                 device_add), until the guest's block device exists at
 *                 the PCI path the manager handed out;
 *   blk, QEMU's   QEMU's own virtio-blk-pci (blockdev-add + device_add), the
 *                 peer, same test;
 *   fs, ours      our virtio-fs behind vhost-user-fs-pci, until the guest's
 *                 virtio_fs driver is bound to it (mountable). No peer here:
 *                 virtiofsd is not installed on these hosts.
 *   unplug        device_del until the guest released it (DEVICE_DELETED).
 *
 * How "usable" is seen without counting an exec's start-up: a poller runs
 * in a container (exec'd before the request, it says "go" when running)
 * and exits as soon as the guest has one more virtio block device (or
 * bound virtio-fs device) than when it started; the time is from the
 * attach call to the host seeing the poller's exit. The unplug time is
 * capped by the runtime's 5 s wait for the guest's release.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/hotplug.js [rounds]
 *
 * Writes build/bench/hotplug.json. Under TCG on a shared 2-core host the
 * guest's own probing dominates; read the ratio, not the milliseconds.
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
import type { DeviceSpec } from '../src/resource/devices/device-manager';
import { machine, table, writeResult } from './native';
import { median } from './stats';

const CACHE = process.env.KATA_TS_CACHE ?? '/var/cache/kata-ts';

interface Sample { plugMs: number; unplugMs: number }

async function measure(driver: BlockDriver, kinds: Array<'blk' | 'fs'>, rounds: number): Promise<Record<string, Sample[]>> {
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-hp-'));
  const cfg = defaultConfig();
  cfg.runtime.run_dir = runDir;
  cfg.runtime.cache_dir = CACHE;
  const hv = new QemuHypervisor({ binary: cfg['hypervisor.qemu'].path, machine: 'pc', accel: 'tcg', blockDriver: driver });
  const rootfs = path.join(CACHE, 'rootfs', 'busybox');
  const sb = new Sandbox({ id: `hp-${driver === 'virtio-blk' ? 'q' : 'o'}`, config: cfg, hypervisor: hv, bootContainers: [{ id: 'c', rootfs, rootfsShare: 'erofs' }] });
  const out: Record<string, Sample[]> = {};
  try {
    await sb.start();
    await sb.createContainer('c', defaultSpec({ args: ['sleep', '3600'] }), rootfs);
    await sb.startContainer('c');
    const disk = path.join(runDir, 'disk.raw');
    fs.writeFileSync(disk, Buffer.alloc(0));
    fs.truncateSync(disk, 16 << 20);
    const dir = path.join(runDir, 'share');
    fs.mkdirSync(dir);
    let n = 0;
    for (const kind of kinds) {
      out[kind] = [];
      for (let r = 0; r < rounds; r++) {
        // Waits for one more virtio block device / bound virtio-fs device than there was when it started.
        const count = kind === 'blk' ? 'ls /sys/block | grep -c ^vd' : 'ls /sys/bus/virtio/drivers/virtiofs 2>/dev/null | grep -c ^virtio';
        const execId = `p${n++}`;
        await sb.exec('c', execId, defaultProcess({ args: ['sh', '-c', `n=$(${count}); echo go; until [ "$(${count})" -gt "$n" ]; do :; done`] }));
        const stream = new PassThrough();
        let seen = '';
        const started = new Promise<void>((resolve) => stream.on('data', (d) => { seen += d; if (seen.includes('go')) resolve(); }));
        const done = attachProcess(sb.agent, 'c', execId, { stdout: stream, stderr: stream, terminal: false }).done;
        done.catch(() => undefined); // awaited below; a failure before that must not crash the run
        await started;
        const id = `${kind}${r}`;
        const spec: DeviceSpec = kind === 'blk' ? { kind: 'blk', id, path: disk, readonly: false } : { kind: 'fs', id, path: dir };
        const t0 = process.hrtime.bigint();
        const dev = await sb.devices.attach(spec, 'bench');
        const st = await done;
        const plugMs = Number(process.hrtime.bigint() - t0) / 1e6;
        if (st.status !== 0) throw new Error(`poller failed: ${seen}`);
        const t1 = process.hrtime.bigint();
        await sb.devices.detach(id, 'bench');
        const unplugMs = Number(process.hrtime.bigint() - t1) / 1e6;
        // Not counted: let a late DEVICE_DELETED free the slot before the next round.
        const slot = parseInt(dev.pciPath!, 16);
        for (let w = 0; w < 300 && hv.slotsInUse().includes(slot); w++) await new Promise((r) => setTimeout(r, 200));
        out[kind].push({ plugMs, unplugMs });
        process.stderr.write(`  ${driver} ${kind} round ${r + 1}: plug ${plugMs.toFixed(0)} ms, unplug ${unplugMs.toFixed(0)} ms\n`);
      }
    }
    return out;
  } finally {
    await sb.stop();
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}


async function main(): Promise<void> {
  configureLogging({ level: 'error' });
  const rounds = Number(process.argv[2] ?? 5);
  const ours = await measure('vhost-user-blk', ['blk', 'fs'], rounds);
  const qemu = await measure('virtio-blk', ['blk'], rounds);
  const m = (s: Sample[], k: keyof Sample) => median(s.map((x) => x[k]));
  const f = (x: number) => x.toFixed(0);
  const rows: Array<[string, string, string]> = [
    [`median of ${rounds}, ms`, 'ours', "QEMU's (peer)"],
    ['blk: request → block device in the guest', f(m(ours.blk, 'plugMs')), `${f(m(qemu.blk, 'plugMs'))}  (ratio ${(m(ours.blk, 'plugMs') / m(qemu.blk, 'plugMs')).toFixed(2)})`],
    ['blk: unplug → released', f(m(ours.blk, 'unplugMs')), `${f(m(qemu.blk, 'unplugMs'))}  (ratio ${(m(ours.blk, 'unplugMs') / m(qemu.blk, 'unplugMs')).toFixed(2)})`],
    ['fs: request → virtio_fs bound in the guest', f(m(ours.fs, 'plugMs')), 'no peer (no virtiofsd here)'],
    ['fs: unplug → released', f(m(ours.fs, 'unplugMs')), '-'],
  ];
  process.stdout.write(`${table(rows)}\n`);
  process.stdout.write(`wrote ${writeResult('hotplug', { machine: machine(), rounds, ours, qemu, loadavg: os.loadavg() })}\n`);
}

main().catch((e: Error) => { process.stderr.write(`${e.stack ?? e.message}\n`); process.exit(1); });
