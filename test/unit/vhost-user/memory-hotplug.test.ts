/**
 * Memory hotplug as a vhost-user backend sees it: QEMU sends the whole
 * memory table again (SET_MEM_TABLE with one more memfd per DIMM) while the
 * rings run, and expects the device to carry on. Before this, the backend
 * reset the device on every table, which dropped all vsock connections —
 * the agent's channel died after a DIMM hotplug (issue 13).
 *
 * Checked here: RAM already mapped stays at its offset, a new file takes a
 * free slot, a file no longer named is unmapped (zero pages), a freed slot is
 * reused; and on a running vsock device a new table is acked (REPLY_ACK),
 * the device is not reset and the rings go on from where they were.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../../src/common/native';
import { HotMemory } from '../../../src/hot/memory';
import { VhostUserBackend } from '../../../src/vhost-user/backend';
import { VhostUserMemory, subtractRanges } from '../../../src/vhost-user/memory';
import { Req, VhostUserError } from '../../../src/vhost-user/protocol';
import { VsockDevice } from '../../../src/virtio/vsock/device';
import { FakeFrontEnd, GUEST_RAM, UVA_BASE } from './fake-frontend';

const MIB = 1 << 20;

function memTable(regions: Array<{ gpa: bigint; size: number; uva: bigint; offset: number }>): Buffer {
  const p = Buffer.alloc(8 + 32 * regions.length);
  p.writeUInt32LE(regions.length, 0);
  regions.forEach((r, i) => {
    p.writeBigUInt64LE(r.gpa, 8 + 32 * i);
    p.writeBigUInt64LE(BigInt(r.size), 16 + 32 * i);
    p.writeBigUInt64LE(r.uva, 24 + 32 * i);
    p.writeBigUInt64LE(BigInt(r.offset), 32 + 32 * i);
  });
  return p;
}

describe('vhost-user memory hotplug: a new memory table keeps the device running', function () {
  this.timeout(20000);

  it('subtractRanges leaves what no cut covers', () => {
    expect(subtractRanges([{ offset: 0, length: 100 }], [{ offset: 20, length: 10 }, { offset: 90, length: 50 }]))
      .to.deep.equal([{ offset: 0, length: 20 }, { offset: 30, length: 60 }]);
    expect(subtractRanges([{ offset: 0, length: 10 }], [{ offset: 0, length: 10 }])).to.deep.equal([]);
  });

  it('keeps mapped files in place, maps a new file in a free slot, unmaps a dropped one and reuses its slot', () => {
    const n = native();
    const hot = new HotMemory({ scratchBytes: 65536, guestRegions: [{ gpa: 0n, size: 4 * MIB }] });
    const mem = new VhostUserMemory(hot);
    const ram = n.memfdCreate('ram', MIB), dimm = n.memfdCreate('dimm', MIB), dimm2 = n.memfdCreate('dimm2', MIB);
    // memory.ts closes the fds it is given: hand it a fresh open of the same memfd each time.
    const dup = (fd: number) => fs.openSync(`/proc/self/fd/${fd}`, 'r+');
    try {
      const r1 = mem.set([{ gpa: 0n, size: BigInt(MIB), uva: 0x7f00_0000_0000n, mmapOffset: 0n }], [dup(ram)]);
      const ramOff = r1[0].offset;
      hot.u8[ramOff + 5] = 0x11;
      // Hotplug: the same RAM file plus a DIMM's memfd at 4 GiB.
      const r2 = mem.set([
        { gpa: 0n, size: BigInt(MIB), uva: 0x7f00_0000_0000n, mmapOffset: 0n },
        { gpa: 0x1_0000_0000n, size: BigInt(MIB), uva: 0x7f10_0000_0000n, mmapOffset: 0n },
      ], [dup(ram), dup(dimm)]);
      expect(mem.moved).to.equal(false);
      expect(r2[0].offset).to.equal(ramOff);
      expect(hot.u8[ramOff + 5]).to.equal(0x11);
      const dimmOff = r2[1].offset;
      expect(dimmOff).to.be.at.least(ramOff + MIB);
      hot.u8[dimmOff + 7] = 0x22;
      // Unplug: the DIMM's pages are no longer ours (zero pages), the RAM stays.
      mem.set([{ gpa: 0n, size: BigInt(MIB), uva: 0x7f00_0000_0000n, mmapOffset: 0n }], [dup(ram)]);
      expect(mem.moved).to.equal(false);
      expect(hot.u8[dimmOff + 7]).to.equal(0);
      expect(hot.u8[ramOff + 5]).to.equal(0x11);
      // Another DIMM takes the freed slot.
      const r4 = mem.set([
        { gpa: 0n, size: BigInt(MIB), uva: 0x7f00_0000_0000n, mmapOffset: 0n },
        { gpa: 0x1_0000_0000n, size: BigInt(MIB), uva: 0x7f20_0000_0000n, mmapOffset: 0n },
      ], [dup(ram), dup(dimm2)]);
      expect(r4[1].offset).to.equal(dimmOff);
      expect(hot.u8[dimmOff + 7]).to.equal(0);
      // Beyond the area: refused, old table kept.
      const big = n.memfdCreate('big', 4 * MIB);
      expect(() => mem.set([
        { gpa: 0n, size: BigInt(MIB), uva: 0x7f00_0000_0000n, mmapOffset: 0n },
        { gpa: 0x1_0000_0000n, size: BigInt(4 * MIB), uva: 0x7f30_0000_0000n, mmapOffset: 0n },
      ], [dup(ram), big])).to.throw(VhostUserError, /does not fit/);
      expect(mem.regions).to.have.length(2);
      expect(hot.u8[ramOff + 5]).to.equal(0x11);
    } finally {
      mem.unmapAll();
      for (const fd of [ram, dimm, dimm2]) n.closeFd(fd);
    }
  });

  it('a vsock device with running rings is not reset by a new table, acks it and goes on where it was', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-vu-hp-'));
    const sock = path.join(dir, 'vu.sock');
    const dev = new VsockDevice({ guestCid: 3 });
    let resets = 0;
    const reset = dev.reset.bind(dev);
    dev.reset = () => { resets++; reset(); };
    // Sized for the VM's maximum (RAM + one DIMM), as the runtime sizes it.
    const backend = new VhostUserBackend({ socketPath: sock, device: dev, guestBytes: GUEST_RAM + 2 * MIB, queues: 2 });
    backend.listen();
    const fe = new FakeFrontEnd();
    const n = native();
    const dimm = n.memfdCreate('dimm', 2 * MIB);
    try {
      fe.connect(sock);
      await fe.negotiate();
      await fe.setMemTable();
      const rx = await fe.startRing(0, 64, 0x10000n);
      const tx = await fe.startRing(1, 64, 0x30000n);
      await fe.enable(0); await fe.enable(1);
      expect(backend.isActive).to.equal(true);
      const sendTx = async (k: number, want: number) => {
        for (let i = 0; i < k; i++) {
          const g = 0x200000n + BigInt(tx.ring.usedIdx + i) * 64n;
          const h = Buffer.alloc(44); h.writeBigUInt64LE(3n, 0); h.writeBigUInt64LE(2n, 8); h.writeUInt16LE(1, 28); h.writeUInt16LE(5, 30);
          fe.mem.u8.set(h, fe.off(g, 44));
          tx.ring.add([{ gpa: g, len: 44 }], []);
        }
        n.eventfdWrite(tx.kick, 1);
        const end = Date.now() + 2000;
        while (tx.ring.usedIdx !== want && Date.now() < end) await new Promise((r) => setTimeout(r, 1));
        expect(tx.ring.usedIdx).to.equal(want);
      };
      await sendTx(3, 3);
      const resetsBefore = resets;
      // QEMU after device_add pc-dimm: the RAM again plus the DIMM at 4 GiB, NEED_REPLY set.
      await fe.ack(Req.SET_MEM_TABLE, memTable([
        { gpa: 0n, size: GUEST_RAM, uva: UVA_BASE, offset: 0 },
        { gpa: 0x1_0000_0000n, size: 2 * MIB, uva: 0x7f40_0000_0000n, offset: 0 },
      ]), [fe.memfd, dimm]);
      expect(backend.isActive).to.equal(true);
      expect(resets).to.equal(resetsBefore);
      expect(backend.memoryTables).to.equal(2);
      // The DIMM is guest memory the device can reach.
      const off = backend.module.translate(0x1_0000_0123n, 1);
      expect(off).to.be.a('number');
      // The rings go on from index 3.
      await sendTx(3, 6);
      expect(await fe.getVringBase(1)).to.equal(6);
      for (const fd of [rx.kick, rx.call, rx.err, tx.kick, tx.call, tx.err]) n.closeFd(fd);
    } finally {
      n.closeFd(dimm);
      fe.close();
      backend.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
