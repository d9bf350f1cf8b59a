/**
 * kata-ctl balloon and pages for a builtin-VMM sandbox: SandboxMemory over
 * the builtin VMM's own virtio-balloon (balloon-control.ts deviceBalloon)
 * and its in-process guest RAM (the page scanner's source), with a guest
 * played by the driver-side ring writer: the target reaches num_pages with
 * a config change, `actual` and statistics come back in QEMU's terms, a
 * lying `actual` or garbage statistics are warnings, a target beyond RAM is
 * one error with nothing changed, and the scanner counts the pages the
 * guest wrote.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configureLogging } from '../../../../src/common/log';
import { HotMemory } from '../../../../src/hot/memory';
import { VirtioModule } from '../../../../src/hot/virtqueue';
import { SandboxMemory } from '../../../../src/resource/memory/service';
import { deviceBalloon } from '../../../../src/resource/memory/balloon-control';
import { BalloonDevice } from '../../../../src/virtio/balloon/device';
import { VIRTIO_BALLOON_F_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ } from '../../../../src/virtio/balloon/constants';
import { VIRTIO_RING_FEATURES } from '../../../../src/virtio/device';
import { DriverRing, ringLayout } from '../../hot/driver-ring';

const MIB = 1024 * 1024;
const RAM = 16 * MIB;
const SG = 0x180000n;

function statBuf(entries: Array<[number, bigint]>): Buffer {
  const b = Buffer.alloc(10 * entries.length);
  entries.forEach(([t, v], i) => { b.writeUInt16LE(t, 10 * i); b.writeBigUInt64LE(v, 10 * i + 2); });
  return b;
}

describe('memory: the builtin VMM\'s balloon and page scanner', () => {
  let dir: string, hot: HotMemory, dev: BalloonDevice, stats: DriverRing, m: SandboxMemory, configChanges: number;
  let timer: NodeJS.Timeout | undefined;
  before(() => configureLogging({ silent: true }));

  /** The guest: answers every returned statistics buffer with `next()`'s figures (Linux's stats_handle_request). */
  async function boot(next: () => Buffer): Promise<void> {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-balloon-bi-'));
    hot = new HotMemory({ scratchBytes: 1 << 20, guestRegions: [{ gpa: 0n, size: RAM }] });
    const module = new VirtioModule(hot);
    const features = VIRTIO_RING_FEATURES | VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_PAGE_REPORTING;
    dev = new BalloonDevice({ ramBytes: RAM, backing: () => 'anonymous', madvise: () => {} });
    dev.ackFeatures(features);
    const rings: DriverRing[] = [];
    const vqs = [0, 1, 2, 3].map((i) => {
      const l = ringLayout(0x10000n + BigInt(i) * 0x4000n, 8);
      rings.push(new DriverRing(hot, { size: 8, ...l, eventIdx: false, indirect: false }));
      const vq = module.createQueue({ maxSize: 8 });
      vq.activate({ size: 8, features, ...l });
      return vq;
    });
    configChanges = 0;
    dev.activate({
      memory: { hot, module, translate: (g, n) => module.translate(g, n) }, queues: vqs, features,
      interrupt: () => {}, configChanged: () => configChanges++, needsReset: () => {},
    });
    stats = rings[2];
    const give = () => {
      const b = next();
      hot.u8.set(b, hot.gpaToOffset(SG, b.length));
      stats.add([{ gpa: SG, len: b.length }], []);
      dev.queueNotify(2);
    };
    give();
    timer = setInterval(() => { if (stats.getBuf()) give(); }, 2);
    m = await SandboxMemory.start({
      id: 'bi', dir, memoryMiB: RAM / MIB, balloon: true, balloonControl: deviceBalloon(dev, RAM),
      source: { hot, regions: () => hot.guestRegions },
      scanner: { enabled: false, rateMiB: 1024, intervalSec: 60 },
    });
  }

  afterEach(async () => {
    if (timer) clearInterval(timer);
    await m?.close();
    dev?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const setActual = (pages: number) => { const a = new Uint8Array(4); new DataView(a.buffer).setUint32(0, pages, true); dev.writeConfig(4, a); };

  it('sets the target (num_pages, config change) and reads actual and fresh statistics in QEMU\'s terms', async () => {
    let free = 5n * BigInt(MIB);
    await boot(() => statBuf([[4, (free += BigInt(MIB))], [5, BigInt(12 * MIB)], [6, 7n * BigInt(MIB)]]));
    const r = await m.balloon(12);
    expect(dev.targetPages).to.equal(1024);
    expect(configChanges).to.equal(1);
    expect(r.actualMiB).to.equal(16); // the guest has not inflated yet
    setActual(1024);
    const r2 = await m.balloon();
    expect(r2.actualMiB).to.equal(12);
    expect(r2.ramMiB).to.equal(16);
    expect(r2.warnings).to.deep.equal([]);
    const s = r2.stats as Record<string, number>;
    expect(s['stat-total-memory']).to.equal(12 * MIB);
    // Each query asks the driver again: free memory moved on.
    expect(s['stat-free-memory']).to.be.greaterThan(6 * MIB);
  });

  it('a target beyond the VM\'s RAM or not positive is one error, nothing changes', async () => {
    await boot(() => statBuf([[5, BigInt(12 * MIB)]]));
    for (const bad of [17, 0, -1]) await m.balloon(bad).then(() => expect.fail(`target ${bad} accepted`), (e: Error) => expect(e.message).to.match(/balloon target/));
    expect(dev.targetPages).to.equal(0);
    expect(configChanges).to.equal(0);
  });

  it('a lying actual and garbage statistics are warnings, never figures', async () => {
    await boot(() => Buffer.concat([statBuf([[4, BigInt(RAM) * 2n], [77, 1n]]), Buffer.from([1])]));
    setActual(RAM / 4096 + 10);
    const r = await m.balloon();
    expect(r.actualMiB).to.equal(undefined);
    const w = (r.warnings as string[]).join('\n');
    expect(w).to.match(/outside the VM's 16 MiB/);
    expect(w).to.match(/exceeds the VM's RAM/);
    expect(w).to.match(/unknown statistics tag 77/);
    expect(w).to.match(/not a multiple of 10/);
    expect(r.stats).to.deep.equal({});
    expect(dev.metrics.lyingActual).to.equal(1);
    // The device's counters reach kata-ctl balloon --json.
    expect((r.counters as Record<string, number>).lyingActual).to.equal(1);
    expect((r.counters as Record<string, number>).badStats).to.be.at.least(1);
  });

  it('kata-ctl pages: the scanner reads the builtin guest RAM in place', async () => {
    await boot(() => statBuf([]));
    // Three identical pages and one other, at 8 MiB (away from the rings).
    const base = hot.gpaToOffset(8n * BigInt(MIB), 4 * 4096);
    for (let i = 0; i < 3; i++) hot.u8.fill(0x5a, base + i * 4096, base + (i + 1) * 4096);
    hot.u8.fill(0x11, base + 3 * 4096, base + 4 * 4096);
    const r = await m.scan();
    expect(r.ramBytes).to.equal(RAM);
    expect(r.duplicatePages).to.be.at.least(2);
    expect(r.residentPages).to.be.at.least(4);
  });
});
