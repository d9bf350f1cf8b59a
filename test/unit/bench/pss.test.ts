/**
 * bench/pss.ts: a benchmark's memory figure is measured or it is an error —
 * never 0 MiB for a process that is gone or a file it cannot read (what
 * bench/boot.ts used to report).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { pssMiB, PssError } from '../../../bench/pss';

describe('unit: bench PSS reading', () => {
  it('measures a live process', () => {
    expect(pssMiB(process.pid)).to.be.greaterThan(1);
  });

  it('a process that is gone, no pid, or a file without Pss are errors, not 0 MiB', () => {
    const gone = spawnSync('true').pid!;
    expect(() => pssMiB(gone)).to.throw(PssError, new RegExp(`/proc/${gone}/smaps_rollup`));
    expect(() => pssMiB(0)).to.throw(PssError, /no process/);
    const proc = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-pss-'));
    try {
      fs.mkdirSync(path.join(proc, '42'));
      fs.writeFileSync(path.join(proc, '42', 'smaps_rollup'), 'Rss:  100 kB\n');
      expect(() => pssMiB(42, proc)).to.throw(PssError, /no Pss line/);
      fs.writeFileSync(path.join(proc, '42', 'smaps_rollup'), 'Rss:  100 kB\nPss:  2048 kB\n');
      expect(pssMiB(42, proc)).to.equal(2);
    } finally {
      fs.rmSync(proc, { recursive: true, force: true });
    }
  });
});
