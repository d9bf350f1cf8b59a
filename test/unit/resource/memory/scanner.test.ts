/**
 * src/resource/memory/scanner: the WASM page scanner over a memfd mapped into a
 * HotMemory exactly as the vhost-user backend maps QEMU's guest RAM. Its
 * counts are checked against an independent reference — a Python script
 * hashing the same memfd's bytes with SHA-1 per 4 KiB page — and holes of
 * the memfd must stay holes (the scan must not allocate guest RAM).
 * Cross-sandbox merging of summaries is checked against a brute-force count.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { HotMemory } from '../../../../src/hot/memory';
import { native } from '../../../../src/common/native';
import { PageScanner, crossSandbox, distinct, ScannerError, type ScanRegion } from '../../../../src/resource/memory/scanner';
import { skipOrFail } from '../../../helpers/skip';

const PAGE = 4096;
const MIB = 1024 * 1024;

/** The reference: per-page SHA-1 over a file, counting zero, distinct non-zero and duplicate pages. */
const REFERENCE_PY = `
import hashlib, sys
zero = bytes(4096); seen = {}; zeros = 0; pages = 0
with open(sys.argv[1], 'rb') as f:
    f.seek(int(sys.argv[2]))
    left = int(sys.argv[3])
    while left > 0:
        b = f.read(4096); left -= 4096; pages += 1
        if b == zero: zeros += 1; continue
        d = hashlib.sha1(b).digest(); seen[d] = seen.get(d, 0) + 1
nonzero = pages - zeros
print(pages, zeros, len(seen), nonzero - len(seen))
`;

function python(): string | undefined {
  for (const p of ['/usr/bin/python3', '/usr/local/bin/python3']) if (fs.existsSync(p)) return p;
  return undefined;
}

describe('memory/scanner', function () {
  this.timeout(60000);
  const n = native();
  let fd = -1;
  let hot: HotMemory;
  let mapped: Array<[number, number]> = [];

  /** A memfd of `bytes` mapped over the guest area of a fresh HotMemory. */
  function setUp(bytes: number): void {
    hot = new HotMemory({ scratchBytes: 1 << 20, guestRegions: [{ gpa: 0n, size: bytes }] });
    fd = n.memfdCreate('scan-test', bytes);
    n.mapFileOver(hot.memory.buffer, hot.guestBase, bytes, fd, 0);
    mapped.push([hot.guestBase, bytes]);
  }

  afterEach(() => {
    for (const [off, len] of mapped) n.unmapOver(hot.memory.buffer, off, len);
    mapped = [];
    if (fd >= 0) n.closeFd(fd);
    fd = -1;
  });

  /** Writes a recognisable mix: unique pages, repeated pages, zero pages written, holes never touched. */
  function fill(pages: number): { written: number } {
    let written = 0;
    for (let i = 0; i < pages; i++) {
      const at = hot.guestBase + i * PAGE;
      switch (i % 7) {
        case 0: case 1: // unique content
          hot.view.setUint32(at, i + 1, true);
          hot.view.setUint32(at + 4092, 0xabcd0000 + i, true);
          written++;
          break;
        case 2: // one of 5 repeated contents
          hot.u8.fill(0x10 + (i % 5), at, at + PAGE);
          written++;
          break;
        case 3: // a zero page the guest wrote (resident)
          hot.u8[at] = 1;
          hot.u8[at] = 0;
          written++;
          break;
        default: // holes: never touched
      }
    }
    return { written };
  }

  it('counts zero and duplicate pages like a SHA-1 reference over the same memory, reading only resident pages', async function () {
    const py = python();
    if (!py) skipOrFail(this, 'python3 (the reference tool) is not installed');
    const bytes = 8 * MIB;
    setUp(bytes);
    const pages = bytes / PAGE;
    const { written } = fill(pages);
    const regions: ScanRegion[] = [{ gpa: 0n, size: bytes, offset: hot.guestBase }];
    const scanner = new PageScanner({ hot, regions: () => regions }, { sliceBytes: 256 * 1024, rateBytesPerSec: 1 << 30 });
    const r = await scanner.scan();
    expect(r.residentPages).to.equal(written);
    const [refPages, refZeros, refDistinct, refDup] = execFileSync(py!, ['-c', REFERENCE_PY, `/proc/${process.pid}/fd/${fd}`, '0', String(bytes)], { encoding: 'utf8' })
      .trim().split(' ').map(Number);
    void refPages;
    // Holes read as zeros for the reference; the scanner never reads them.
    expect(r.zeroPages + (pages - r.residentPages)).to.equal(refZeros);
    expect(r.distinctPages).to.equal(refDistinct);
    expect(r.duplicatePages).to.equal(refDup);
    expect(r.savingBytes).to.equal((r.zeroPages + r.duplicatePages) * PAGE);
    expect(r.counts.reduce((a, c) => a + c, 0)).to.equal(r.residentPages - r.zeroPages);
    // The scan allocated nothing: still only the written pages are in the memfd.
    const resident = new Uint8Array(pages);
    expect(n.residentPages(hot.memory.buffer, hot.guestBase, bytes, resident)).to.equal(written);
    expect(r.slices).to.equal(bytes / (256 * 1024));
  });

  it('paces itself to the configured rate and yields between slices', async function () {
    const bytes = 4 * MIB;
    setUp(bytes);
    fill(bytes / PAGE);
    const regions: ScanRegion[] = [{ gpa: 0n, size: bytes, offset: hot.guestBase }];
    // 16 MiB/s over 4 MiB: ≥ 250 ms.
    const scanner = new PageScanner({ hot, regions: () => regions }, { sliceBytes: 256 * 1024, rateBytesPerSec: 16 * MIB });
    let ticks = 0;
    const t = setInterval(() => ticks++, 10);
    const r = await scanner.scan().finally(() => clearInterval(t));
    expect(r.durationMs).to.be.at.least(240);
    expect(ticks).to.be.at.least(3); // timers ran during the pass (few on a loaded host: 10 ms ticks slip)
    await scanner.scan().then(() => undefined);
    const p1 = scanner.scan();
    const second = await scanner.scan().then(() => undefined, (e: unknown) => e);
    expect(second).to.be.instanceOf(ScannerError);
    expect((second as Error).message).to.match(/already running/);
    await p1;
  });

  it('refuses a bad configuration with one clear error', function () {
    setUp(MIB);
    expect(() => new PageScanner({ hot, regions: () => [] }, { sliceBytes: 1000 })).to.throw(ScannerError, /multiple of 4096/);
    expect(() => new PageScanner({ hot, regions: () => [] }, { rateBytesPerSec: 0 })).to.throw(ScannerError, /positive/);
  });

  it('merges summaries across sandboxes like a brute-force count', function () {
    const mk = (id: string, zeroPages: number, hs: bigint[]) => ({ id, zeroPages, ...distinct(BigUint64Array.from(hs)) });
    const a = mk('a', 3, [1n, 1n, 2n, 5n]);
    const b = mk('b', 0, [2n, 3n, 3n, 3n]);
    const c = mk('c', 2, [5n, 2n, 9n]);
    const r = crossSandbox([a, b, c]);
    // brute force: all non-zero pages 11, distinct contents {1,2,3,5,9} = 5 → 6 duplicates; zero pages 5.
    expect(r.savingPages).to.equal(6 + 5);
    // contents held by more than one sandbox: 2 (a,b,c: +2), 5 (a,c: +1)
    expect(r.crossSavingPages).to.equal(3);
    expect(r.sharedPages.get('a')).to.equal(2); // 2 and 5
    expect(r.sharedPages.get('b')).to.equal(1);
    expect(r.sharedPages.get('c')).to.equal(2);
    // Σ per-sandbox saving + cross = host-wide
    const own = [a, b, c].reduce((s, x) => s + x.zeroPages + x.counts.reduce((q, k) => q + k - 1, 0), 0);
    expect(own + r.crossSavingPages).to.equal(r.savingPages);
  });
});
