/**
 * virtio-balloon (virtio 1.2 §5.5, src/virtio/balloon) driven by the
 * driver-side ring writer over a HotMemory with two guest regions and a
 * hole between them (the PCI hole's shape): inflate/deflate/stats/free page
 * reporting, the config space, every bad-input case (PFNs outside RAM,
 * ranges outside RAM or straddling a region end, odd lengths, a lying
 * `actual`, garbage statistics), and which madvise calls reach the addon —
 * a recorder substituted for native().madvise — plus the real syscall on
 * the three kinds of guest RAM (private anonymous, shared memfd,
 * MAP_PRIVATE file).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../../src/common/native';
import { HotMemory } from '../../../src/hot/memory';
import { VirtioModule, type Virtqueue } from '../../../src/hot/virtqueue';
import { VIRTIO_RING_FEATURES, type ActivateContext } from '../../../src/virtio/device';
import { BalloonDevice } from '../../../src/virtio/balloon/device';
import {
  BalloonError, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_PAGE_REPORTING, VIRTIO_BALLOON_F_STATS_VQ, queueRoles,
} from '../../../src/virtio/balloon/constants';
import { adviceFor, insideOneRegion, type Madvice, type RamBacking } from '../../../src/virtio/balloon/release';
import { parseStats } from '../../../src/virtio/balloon/stats';
import { kvmNative } from '../../../src/vmm/kvm/native';
import { DriverRing, ringLayout } from '../hot/driver-ring';

const MIB = 1 << 20;
/** Region 0: GPA [0, 8 MiB); hole [8, 16 MiB); region 1: GPA [16, 20 MiB). */
const REGIONS = [{ gpa: 0n, size: 8 * MIB }, { gpa: 16n * BigInt(MIB), size: 4 * MIB }];
const RAM = 12 * MIB;
const ALL = VIRTIO_RING_FEATURES | VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_DEFLATE_ON_OOM | VIRTIO_BALLOON_F_PAGE_REPORTING;
const DATA = 0x100000n;

interface Call { offset: number; length: number; advice: Madvice }

function statEntries(entries: Array<[number, bigint]>): Buffer {
  const b = Buffer.alloc(10 * entries.length);
  entries.forEach(([tag, val], i) => { b.writeUInt16LE(tag, 10 * i); b.writeBigUInt64LE(val, 10 * i + 2); });
  return b;
}

describe('virtio/balloon device', function () {
  this.timeout(20000);
  let hot: HotMemory, module: VirtioModule, dev: BalloonDevice, rings: DriverRing[], vqs: Virtqueue[];
  let calls: Call[], irqs: number[], configChanges: number, resets: string[], backing: RamBacking;

  function setup(features = ALL, madvise?: (buf: ArrayBuffer, o: number, l: number, a: Madvice) => void, prepare?: (h: HotMemory) => void, ramBytes = RAM): void {
    hot = new HotMemory({ scratchBytes: 1 << 20, guestRegions: REGIONS });
    // Guest RAM backing is mapped before the driver writes its rings (as a VM's is before boot).
    prepare?.(hot);
    module = new VirtioModule(hot);
    calls = []; irqs = []; configChanges = 0; resets = []; backing = 'shared-memfd';
    dev = new BalloonDevice({
      ramBytes, backing: () => backing,
      madvise: madvise ?? ((_b, offset, length, advice) => { calls.push({ offset, length, advice }); }),
    });
    dev.ackFeatures(features);
    const n = queueRoles(features).length;
    rings = []; vqs = [];
    for (let i = 0; i < n; i++) {
      const l = ringLayout(0x10000n + BigInt(i) * 0x4000n, 16);
      rings.push(new DriverRing(hot, { size: 16, ...l, eventIdx: false, indirect: false }));
      const vq = module.createQueue({ maxSize: 16 });
      vq.activate({ size: 16, features, descGpa: l.descGpa, availGpa: l.availGpa, usedGpa: l.usedGpa });
      vqs.push(vq);
    }
    const ctx: ActivateContext = {
      memory: { hot, module, translate: (gpa, len) => module.translate(gpa, len) },
      queues: vqs, features,
      interrupt: (i) => irqs.push(i),
      configChanged: () => configChanges++,
      needsReset: (r) => resets.push(r),
    };
    dev.activate(ctx);
  }

  const off = (gpa: bigint) => hot.gpaToOffset(gpa, 1);

  /** Adds a device-readable PFN buffer (raw bytes allowed for odd lengths) and kicks. */
  function sendPfns(q: number, pfns: number[] | Buffer): { id: number; len: number } | undefined {
    const b = Buffer.isBuffer(pfns) ? pfns : Buffer.from(new Uint32Array(pfns).buffer);
    hot.u8.set(b, off(DATA));
    rings[q].add([{ gpa: DATA, len: b.length }], []);
    dev.queueNotify(q);
    return rings[q].getBuf();
  }

  function report(ranges: Array<{ gpa: bigint; len: number }>): { id: number; len: number } | undefined {
    rings[3].add([], ranges, { direct: true });
    dev.queueNotify(3);
    return rings[3].getBuf();
  }

  describe('queues and config space', () => {
    it('numbers the queues as Linux and QEMU do: stats and reporting only when negotiated, consecutively', () => {
      expect(queueRoles(ALL)).to.deep.equal(['inflate', 'deflate', 'stats', 'reporting']);
      expect(queueRoles(VIRTIO_RING_FEATURES | VIRTIO_BALLOON_F_PAGE_REPORTING)).to.deep.equal(['inflate', 'deflate', 'reporting']);
      expect(queueRoles(VIRTIO_RING_FEATURES)).to.deep.equal(['inflate', 'deflate']);
    });

    it('offers stats, deflate-on-oom and page reporting, never MUST_TELL_HOST or PAGE_POISON', () => {
      setup();
      expect(dev.availableFeatures & ALL).to.equal(ALL);
      expect(dev.availableFeatures & 0b10001n).to.equal(0n);
      expect(dev.queueMaxSizes).to.have.length(4);
    });

    it('setTarget writes num_pages = RAM - target and raises a config change; bad targets are refused', () => {
      setup();
      const cfg = new Uint8Array(8);
      dev.setTarget(RAM - 4 * MIB);
      dev.readConfig(0, cfg);
      expect(new DataView(cfg.buffer).getUint32(0, true)).to.equal(1024);
      expect(configChanges).to.equal(1);
      for (const bad of [0, -1, RAM + 4096, 1.5, NaN]) expect(() => dev.setTarget(bad)).to.throw(BalloonError, /balloon target/);
      expect(dev.targetPages).to.equal(1024);
    });

    it('takes the RAM size from guest memory at activation (a restored VM has the snapshot\'s size)', () => {
      setup(ALL, undefined, undefined, 64 * MIB);
      expect(() => dev.setTarget(RAM + 4096)).to.throw(BalloonError, /must be in 1\.\.12582912/);
      dev.setTarget(RAM);
      expect(dev.targetPages).to.equal(0);
    });

    it('keeps the driver\'s actual; a lying actual (more than RAM) is counted and not believed', () => {
      setup();
      const a = new Uint8Array(4);
      new DataView(a.buffer).setUint32(0, 512, true);
      dev.writeConfig(4, a);
      expect(dev.actualPages).to.equal(512);
      new DataView(a.buffer).setUint32(0, RAM / 4096 + 1, true);
      dev.writeConfig(4, a);
      expect(dev.actualPages).to.equal(undefined);
      expect(dev.metrics.lyingActual).to.equal(1);
      // num_pages is the device's: a driver write there changes nothing.
      dev.writeConfig(0, new Uint8Array([9, 9, 9, 9]));
      expect(dev.targetPages).to.equal(0);
    });
  });

  describe('inflate and deflate', () => {
    it('gives inflated pages back, adjacent PFNs in one madvise, and returns the buffer', () => {
      setup();
      const used = sendPfns(0, [0x200, 0x201, 0x202, 0x300]);
      expect(used?.len).to.equal(0);
      expect(calls).to.deep.equal([
        { offset: off(0x200000n), length: 3 * 4096, advice: 'remove' },
        { offset: off(0x300000n), length: 4096, advice: 'remove' },
      ]);
      expect(dev.metrics.inflatedPages).to.equal(4);
      expect(dev.metrics.releasedBytes).to.equal(4 * 4096);
      expect(irqs).to.deep.equal([0]);
    });

    it('uses MADV_DONTNEED for private RAM (anonymous, or a snapshot mapped MAP_PRIVATE)', () => {
      setup();
      backing = 'anonymous';
      sendPfns(0, [0x10]);
      backing = 'private-file';
      sendPfns(0, [0x11]);
      expect(calls.map((c) => c.advice)).to.deep.equal(['dontneed', 'dontneed']);
      expect(adviceFor('shared-memfd')).to.equal('remove');
    });

    it('PFNs outside guest RAM (the hole, past the end, 2^32-1) are counted, never advised', () => {
      setup();
      sendPfns(0, [0x900, 0x1400, 0xffffffff, 0x205]);
      expect(calls).to.deep.equal([{ offset: off(0x205000n), length: 4096, advice: 'remove' }]);
      expect(dev.metrics.badPfns).to.equal(3);
      expect(dev.metrics.inflatedPages).to.equal(1);
      expect(resets).to.deep.equal([]);
    });

    it('the last page below the hole and the first above it are two ranges, not one across the hole', () => {
      setup();
      sendPfns(0, [0x7ff, 0x1000]);
      // Back to back in the Memory, but not in the guest: two calls, each inside one region.
      expect(off(0x1000000n)).to.equal(off(0x7ff000n) + 4096);
      expect(calls).to.deep.equal([
        { offset: off(0x7ff000n), length: 4096, advice: 'remove' },
        { offset: off(0x1000000n), length: 4096, advice: 'remove' },
      ]);
      expect(dev.metrics.badRanges).to.equal(0);
    });

    it('an odd-length PFN buffer: the whole PFNs are used, the tail counted', () => {
      setup();
      const b = Buffer.alloc(10);
      b.writeUInt32LE(0x20, 0); b.writeUInt32LE(0x40, 4); b.writeUInt16LE(0xffff, 8);
      sendPfns(0, b);
      expect(calls.map((c) => c.offset)).to.deep.equal([off(0x20000n), off(0x40000n)]);
      expect(dev.metrics.oddLengths).to.equal(1);
    });

    it('deflate counts the pages back and advises nothing; bad PFNs counted', () => {
      setup();
      const used = sendPfns(1, [0x200, 0x201, 0x5000]);
      expect(used).to.not.equal(undefined);
      expect(calls).to.deep.equal([]);
      expect(dev.metrics.deflatedPages).to.equal(2);
      expect(dev.metrics.badPfns).to.equal(1);
    });

    it('a failing madvise is counted and the buffer still returned', () => {
      setup(ALL, () => { throw new Error('madvise: EINVAL'); });
      expect(sendPfns(0, [0x30])).to.not.equal(undefined);
      expect(dev.metrics.releaseErrors).to.equal(1);
      expect(dev.metrics.releasedBytes).to.equal(0);
    });
  });

  describe('free page reporting', () => {
    it('gives each reported range back (4 MiB blocks as Linux reports them) and returns the buffer', () => {
      setup();
      const used = report([{ gpa: 0x400000n, len: 4 * MIB }, { gpa: 0x1000000n, len: 2 * MIB }]);
      expect(used?.len).to.equal(0);
      expect(calls).to.deep.equal([
        { offset: off(0x400000n), length: 4 * MIB, advice: 'remove' },
        { offset: off(0x1000000n), length: 2 * MIB, advice: 'remove' },
      ]);
      expect(dev.metrics.reportedBytes).to.equal(6 * MIB);
      expect(irqs).to.deep.equal([3]);
    });

    it('an unaligned range: only the whole pages inside go back, counted', () => {
      setup();
      report([{ gpa: 0x400800n, len: 0x2000 }, { gpa: 0x500000n, len: 100 }]);
      expect(calls).to.deep.equal([{ offset: off(0x401000n), length: 4096, advice: 'remove' }]);
      expect(dev.metrics.oddLengths).to.equal(2);
    });

    for (const [what, range] of [
      ['in the hole', { gpa: 0x900000n, len: 4096 }],
      ['straddling the end of region 0 (into the hole)', { gpa: 0x7ff000n, len: 8192 }],
      ['straddling the end of RAM', { gpa: 0x13ff000n, len: 8192 }],
      ['far outside RAM', { gpa: 0xfffff000n, len: 4096 }],
    ] as const) {
      it(`a range ${what}: the walker refuses the chain (needs reset), no madvise`, () => {
        setup();
        report([range]);
        expect(calls).to.deep.equal([]);
        expect(resets).to.have.length(1);
        expect(dev.metrics.needsReset).to.equal(1);
        // The device leaves its queues alone until reset.
        sendPfns(0, [0x10]);
        expect(calls).to.deep.equal([]);
      });
    }

    it('the releaser itself refuses any range outside one region, whatever the caller', () => {
      setup();
      const r0 = hot.guestRegions[0], r1 = hot.guestRegions[1];
      expect(insideOneRegion(hot, r0.offset, r0.size)).to.equal(true);
      expect(insideOneRegion(hot, r0.offset + r0.size - 4096, 8192)).to.equal(false); // across the seam
      expect(insideOneRegion(hot, r1.offset + r1.size - 4096, 8192)).to.equal(false); // past the end
      expect(insideOneRegion(hot, r0.offset - 4096, 4096)).to.equal(false); // scratch below RAM
      expect(insideOneRegion(hot, r0.offset + 1, 4096)).to.equal(false);
      expect(insideOneRegion(hot, r0.offset, 100)).to.equal(false);
      expect(insideOneRegion(hot, r0.offset, 0)).to.equal(false);
    });

    it('without STATS_VQ the reporting queue is index 2', () => {
      setup(VIRTIO_RING_FEATURES | VIRTIO_BALLOON_F_PAGE_REPORTING);
      rings[2].add([], [{ gpa: 0x400000n, len: 4096 }]);
      dev.queueNotify(2);
      expect(calls).to.deep.equal([{ offset: off(0x400000n), length: 4096, advice: 'remove' }]);
    });
  });

  describe('statistics', () => {
    const SG = 0x180000n;
    function addStats(b: Buffer): void {
      hot.u8.set(b, off(SG));
      rings[2].add([{ gpa: SG, len: b.length }], []);
      dev.queueNotify(2);
    }

    it('holds the buffer; requestStats hands it back and resolves with the refilled figures', async () => {
      setup();
      addStats(statEntries([[4, 100n * BigInt(MIB) / 100n], [5, 8n * BigInt(MIB)], [3, 77n]]));
      expect(rings[2].getBuf()).to.equal(undefined); // held by the device
      expect(dev.stats.stats['stat-total-memory']).to.equal(8 * MIB);
      const p = dev.requestStats(5000);
      const back = rings[2].getBuf();
      expect(back).to.not.equal(undefined);
      expect(irqs).to.include(2);
      addStats(statEntries([[4, 2n * BigInt(MIB)], [5, 8n * BigInt(MIB)], [6, 3n * BigInt(MIB)]]));
      const s = await p;
      expect(s.stats).to.deep.equal({ 'stat-free-memory': 2 * MIB, 'stat-total-memory': 8 * MIB, 'stat-available-memory': 3 * MIB });
      expect(dev.metrics.statsUpdates).to.equal(2);
      expect(dev.metrics.badStats).to.equal(0);
    });

    it('garbage statistics: unknown tags, byte counts beyond RAM, a ragged length — warned, counted, dropped', () => {
      setup();
      const b = Buffer.concat([statEntries([[99, 1n], [7, BigInt(RAM) + 1n], [3, 5n]]), Buffer.from([1, 2, 3])]);
      addStats(b);
      expect(dev.stats.stats).to.deep.equal({ 'stat-minor-faults': 5 });
      expect(dev.stats.warnings).to.have.length(3);
      expect(dev.metrics.badStats).to.equal(1);
    });

    it('free above total: all statistics dropped', () => {
      const r = parseStats(statEntries([[4, 9n * BigInt(MIB)], [5, 8n * BigInt(MIB)]]), RAM);
      expect(r.stats).to.deep.equal({});
      expect(r.warnings.join()).to.match(/more free memory than total/);
      expect(parseStats(statEntries([[2, (1n << 63n)]]), RAM).stats).to.deep.equal({});
    });

    it('releaseHeld (before a snapshot) uses the held buffer, so no chain stays in flight', () => {
      setup();
      addStats(statEntries([[5, 8n * BigInt(MIB)]]));
      expect(vqs[2].lastAvailIdx - vqs[2].nextUsedIdx).to.equal(1);
      dev.releaseHeld();
      expect(vqs[2].lastAvailIdx - vqs[2].nextUsedIdx).to.equal(0);
      expect(rings[2].getBuf()).to.not.equal(undefined);
      dev.releaseHeld(); // nothing held: no-op
      expect(vqs[2].nextUsedIdx).to.equal(1);
    });

    it('requestStats without a held buffer answers the last figures at once', async () => {
      setup();
      const s = await dev.requestStats(10);
      expect(s.at).to.equal(0);
    });
  });

  describe('the real madvise on the three kinds of guest RAM', () => {
    const PAGE = 0x300000n;
    function fillPage(v: number): void { hot.u8.fill(v, off(PAGE), off(PAGE) + 4096); }
    const pageBytes = () => Buffer.from(hot.u8.subarray(off(PAGE), off(PAGE) + 4096));
    let tmp: string | undefined;
    let fd = -1;
    afterEach(() => {
      if (fd >= 0) native().closeFd(fd);
      fd = -1;
      if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
      tmp = undefined;
    });

    it('private anonymous (the WASM Memory itself): DONTNEED frees the page, it reads as zeros', () => {
      setup(ALL, native().madvise!.bind(native()));
      backing = 'anonymous';
      fillPage(0xab);
      const vec = new Uint8Array(1);
      expect(native().residentPages(hot.memory.buffer, off(PAGE), 4096, vec)).to.equal(1);
      sendPfns(0, [Number(PAGE >> 12n)]);
      // Residency first: reading the page afterwards maps a zero page again.
      expect(native().residentPages(hot.memory.buffer, off(PAGE), 4096, vec)).to.equal(0);
      expect(pageBytes().every((x) => x === 0)).to.equal(true);
      expect(dev.metrics.releaseErrors).to.equal(0);
    });

    it('shared memfd (a cold-booted builtin VM): REMOVE punches the page out of the memfd', () => {
      let r0 = { offset: 0, size: 0 };
      setup(ALL, native().madvise!.bind(native()), (h) => {
        r0 = h.guestRegions[0];
        fd = native().memfdCreate('balloon-test', r0.size);
        native().mapFileOver(h.memory.buffer, r0.offset, r0.size, fd, 0);
      });
      fillPage(0xcd);
      const vec = new Uint8Array(1);
      // mincore on a shared memfd mapping reports the file's pages (whether the memfd holds it).
      const inFile = () => native().residentPages(hot.memory.buffer, off(PAGE), 4096, vec);
      expect(inFile()).to.equal(1);
      const blocks = fs.fstatSync(fd).blocks;
      sendPfns(0, [Number(PAGE >> 12n)]);
      expect(inFile()).to.equal(0);
      expect(fs.fstatSync(fd).blocks).to.be.lessThan(blocks + 8); // the PFN buffer's page came, ours went
      expect(pageBytes().every((x) => x === 0)).to.equal(true);
      // For contrast: DONTNEED on the shared mapping leaves the memfd's page (and its content) in place.
      fillPage(0xcd);
      native().madvise!(hot.memory.buffer, off(PAGE), 4096, 'dontneed');
      expect(inFile()).to.equal(1);
      expect(pageBytes()[0]).to.equal(0xcd);
      native().unmapOver(hot.memory.buffer, r0.offset, r0.size);
    });

    it('MAP_PRIVATE snapshot file (a restored VM): DONTNEED drops the private copy, the file\'s page shows again', () => {
      setup(ALL, native().madvise!.bind(native()));
      backing = 'private-file';
      const r0 = hot.guestRegions[0];
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-balloon-'));
      const file = path.join(tmp, 'memory.bin');
      const content = Buffer.alloc(r0.size, 0x11);
      fs.writeFileSync(file, content);
      fd = fs.openSync(file, 'r');
      kvmNative().mapFilePrivateOver(hot.memory.buffer, r0.offset, r0.size, fd, 0);
      fillPage(0xee);
      sendPfns(0, [Number(PAGE >> 12n)]);
      expect(pageBytes().every((x) => x === 0x11)).to.equal(true);
      expect(fs.readFileSync(file).subarray(0x300000, 0x301000).every((x) => x === 0x11)).to.equal(true);
      expect(dev.metrics.releaseErrors).to.equal(0);
      native().unmapOver(hot.memory.buffer, r0.offset, r0.size);
      fs.closeSync(fd);
      fd = -1;
    });
  });
});
