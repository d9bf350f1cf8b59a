import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startCloneMemory, dataExtents } from '../../../src/factory/memory';
import { requireNative } from './native-helper';

describe('unit: factory clone memory (data extents into a memfd)', function () {
  let tmp: string;
  before(function () { requireNative(this); });
  beforeEach(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-mem-unit-')); });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  /** A 4 MiB sparse file with data at [0, 4K) and [1 MiB, 1 MiB + 8K). */
  function sparse(): string {
    const f = path.join(tmp, 'memory');
    const fd = fs.openSync(f, 'w');
    fs.writeSync(fd, Buffer.alloc(4096, 0x11), 0, 4096, 0);
    fs.writeSync(fd, Buffer.alloc(8192, 0x22), 0, 8192, 1 << 20);
    fs.ftruncateSync(fd, 4 << 20);
    fs.closeSync(fd);
    return f;
  }

  it('finds the data extents and copies only them; the copy reads back the same bytes', async () => {
    const f = sparse();
    const fd = fs.openSync(f, 'r');
    const ext = dataExtents(fd, 4 << 20);
    fs.closeSync(fd);
    // Filesystems may round extents up to their block size, never drop data.
    expect(ext.length).to.be.within(1, 2);
    const covered = ext.reduce((n, [a, b]) => n + b - a, 0);
    expect(covered).to.be.at.least(4096 + 8192).and.lessThan(4 << 20);
    const m = startCloneMemory(f, 4 << 20);
    try {
      expect((await m.done).copied).to.equal(covered);
      expect(m.path).to.equal(`/proc/${process.pid}/fd/${m.fd}`);
      const copy = fs.readFileSync(m.path);
      expect(copy.length).to.equal(4 << 20);
      expect(copy.equals(fs.readFileSync(f))).to.equal(true);
    } finally {
      fs.closeSync(m.fd);
    }
  });

  it('refuses a memory file of another size than the template says, leaking no fd', () => {
    const f = sparse();
    const fds = fs.readdirSync('/proc/self/fd').length;
    expect(() => startCloneMemory(f, 8 << 20)).to.throw(/holds 4194304 bytes, the template's RAM is 8388608/);
    expect(fs.readdirSync('/proc/self/fd').length).to.equal(fds);
  });
});
