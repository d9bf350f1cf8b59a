/**
 * SET_MEM_TABLE against hostile tables (decision 2: the front end is
 * another process): a region that passes the end of its file must be
 * refused, because mapping it succeeds and the first access to a page past
 * EOF kills the backend process with SIGBUS. Found by test/fuzz
 * (vhost-user target, regions checked against their memfds).
 */
import { expect } from 'chai';
import { native } from '../../../src/common/native';
import { HotMemory } from '../../../src/hot/memory';
import { VhostUserMemory } from '../../../src/vhost-user/memory';
import { VhostUserError } from '../../../src/vhost-user/protocol';

describe('vhost-user memory table: regions must lie inside their files', () => {
  const hot = new HotMemory({ scratchBytes: 65536, guestRegions: [{ gpa: 0n, size: 1 << 20 }] });
  const mem = new VhostUserMemory(hot);
  after(() => mem.unmapAll());

  it('refuses a region whose offset + size passes the end of its memfd, and keeps the old table', () => {
    const n = native();
    const ok = mem.set([{ gpa: 0n, size: 0x10000n, uva: 0x7f00_0000_0000n, mmapOffset: 0n }], [n.memfdCreate('vu-ok', 0x10000)]);
    expect(ok).to.have.length(1);
    for (const [size, off] of [[0x20000n, 0n], [0x10000n, 0x1000n], [0x1000n, 0x10000n]] as const) {
      const fd = n.memfdCreate('vu-short', 0x10000);
      expect(() => mem.set([{ gpa: 0n, size, uva: 0x7f00_0000_0000n, mmapOffset: off }], [fd]))
        .to.throw(VhostUserError, /passes the end of its 65536-byte file/);
    }
    // The old mapping is untouched and readable.
    expect(mem.regions).to.have.length(1);
    expect(hot.u8[mem.regions[0]!.offset + 0xffff]).to.equal(0);
  });
});
