/**
 * src/resource/memory/ksm and throttler: reading KSM counters and per-process stats,
 * the throttler's levels by time since the last sandbox start (on a fake
 * sysfs directory), the clear warning when KSM is missing, and one pass on
 * the host's real /sys/kernel/mm/ksm that restores every setting it changed.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { KSM_DIR, KsmError, ksmUnavailable, processKsm, readKsm, readSettings, writeSettings } from '../../../../src/resource/memory/ksm';
import { KsmThrottler, LEVELS, levelFor } from '../../../../src/resource/memory/throttler';
import { skipOrFail } from '../../../helpers/skip';

describe('memory/ksm and throttler', () => {
  let dir: string;
  let ksm: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-ksm-'));
    ksm = path.join(dir, 'ksm');
    fs.mkdirSync(ksm);
    const files: Record<string, string> = { run: '0', pages_to_scan: '100', sleep_millisecs: '20', pages_shared: '10', pages_sharing: '250', pages_unshared: '5', pages_volatile: '1', full_scans: '3', ksm_zero_pages: '50' };
    for (const [k, v] of Object.entries(files)) fs.writeFileSync(path.join(ksm, k), `${v}\n`);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('reads the counters and the saving (pages_sharing + zero pages)', () => {
    const s = readKsm(ksm);
    expect(s).to.include({ run: 0, pagesToScan: 100, sleepMillisecs: 20, pagesShared: 10, pagesSharing: 250, zeroPages: 50 });
    expect(s.savingBytes).to.equal(300 * 4096);
    expect(() => readKsm(path.join(dir, 'none'))).to.throw(KsmError, /KSM is not available on this host/);
    expect(ksmUnavailable(path.join(dir, 'none'))).to.match(/CONFIG_KSM/);
  });

  it('reads a process\'s merged pages from /proc/<pid>/ksm_stat', () => {
    const proc = path.join(dir, 'proc');
    fs.mkdirSync(path.join(proc, '42'), { recursive: true });
    fs.writeFileSync(path.join(proc, '42', 'ksm_stat'), 'ksm_rmap_items 9\nksm_zero_pages 2\nksm_merging_pages 7\nksm_process_profit 1234\n');
    expect(processKsm(42, proc)).to.deep.equal({ mergingPages: 7, zeroPages: 2, profitBytes: 1234 });
    expect(processKsm(43, proc)).to.equal(undefined);
  });

  it('steps down from aggressive to idle as time passes since the last kick', () => {
    expect(levelFor(0).name).to.equal('aggressive');
    expect(levelFor(29_999).name).to.equal('aggressive');
    expect(levelFor(30_000).name).to.equal('standard');
    expect(levelFor(200_000).name).to.equal('slow');
    expect(levelFor(Infinity).name).to.equal('idle');
    let now = 1_000_000;
    const t = new KsmThrottler(path.join(dir, 'run'), ksm, () => now);
    expect(t.start({ kick: true, periodMs: 3600_000 })).to.equal(true);
    t.stop();
    expect(readSettings(ksm)).to.deep.equal({ run: 1, pagesToScan: LEVELS[0].pagesToScan, sleepMillisecs: LEVELS[0].sleepMillisecs });
    now += 60_000;
    expect(t.apply()).to.equal('standard');
    expect(readSettings(ksm).pagesToScan).to.equal(LEVELS[1].pagesToScan);
    // Another owner's throttler reads the same kick file and agrees.
    const other = new KsmThrottler(path.join(dir, 'run'), ksm, () => now + 1_000_000);
    expect(other.apply()).to.equal('idle');
    t.kick();
    expect(t.apply()).to.equal('aggressive');
  });

  it('without KSM: start() says so and changes nothing', () => {
    const t = new KsmThrottler(path.join(dir, 'run'), path.join(dir, 'none'));
    expect(t.start()).to.equal(false);
    expect(fs.existsSync(path.join(dir, 'run', 'ksm-kick'))).to.equal(false);
  });

  it('on the host\'s KSM: sets the aggressive level and restores the previous settings', function () {
    const why = ksmUnavailable(KSM_DIR);
    if (why) skipOrFail(this, why, { hostCannot: true });
    const saved = readSettings(KSM_DIR);
    try {
      writeSettings({ run: saved.run, pagesToScan: LEVELS[0].pagesToScan, sleepMillisecs: LEVELS[0].sleepMillisecs }, KSM_DIR);
      expect(readSettings(KSM_DIR)).to.deep.equal({ run: saved.run, pagesToScan: LEVELS[0].pagesToScan, sleepMillisecs: LEVELS[0].sleepMillisecs });
    } finally {
      writeSettings(saved, KSM_DIR);
    }
    expect(readSettings(KSM_DIR)).to.deep.equal(saved);
  });
});
