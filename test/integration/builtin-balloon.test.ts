/**
 * The builtin VMM's virtio-balloon (src/virtio/balloon) under KVM with the
 * purpose-built test guest (test/fixtures/vmm-guest, `test=balloon`): the
 * guest negotiates free page reporting, fills a page and inflates its PFN
 * (plus one far outside RAM), reports a free 8 KiB range, deflates, writes
 * `actual` — the real device on virtio-mmio, the real madvise on the real
 * guest RAM. The guest itself checks that the pages it gave away read back
 * as zeros (the host freed them), on the shared memfd (MADV_REMOVE) and on
 * the private anonymous RAM used with KSM (MADV_DONTNEED), where the guest
 * RAM is also advised MADV_MERGEABLE (VmFlags "mg" in /proc/self/smaps).
 * Full Linux with its balloon driver needs hardware KVM (not on this PVM
 * host): README "Builtin VMM".
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BuiltinHypervisor } from '../../src/hypervisor/builtin';
import { BalloonDevice } from '../../src/virtio/balloon/device';
import { kvmNative } from '../../src/vmm/kvm/native';
import { buildGuest } from '../unit/vmm/guest-build';
import { kvmUsable, runGuest } from '../unit/vmm/helpers';
import { skipOrFail } from '../helpers/skip';

const RAM = 64 << 20;

/** VmFlags of the mapping of this process that contains `addr`. */
function vmFlagsAt(addr: bigint): string[] {
  let inside = false;
  for (const l of fs.readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(l);
    if (m) { inside = BigInt('0x' + m[1]) <= addr && addr < BigInt('0x' + m[2]); continue; }
    if (inside && l.startsWith('VmFlags:')) return l.slice(8).trim().split(/\s+/);
  }
  throw new Error(`no mapping contains 0x${addr.toString(16)}`);
}

describe('builtin VMM: virtio-balloon with the test guest', function () {
  this.timeout(60000);
  before(function () {
    const noKvm = kvmUsable();
    if (noKvm) skipOrFail(this, noKvm, { hostCannot: true });
    const noGuest = buildGuest().reason;
    if (noGuest) skipOrFail(this, noGuest);
  });

  for (const mergeable of [false, true]) {
    it(`inflate and free page reporting give the pages back (${mergeable ? 'private anonymous RAM, MADV_MERGEABLE' : 'shared memfd'}); bad PFN counted; actual and num_pages`, async () => {
      // What the runtime's BuiltinHypervisor derives from the machine (ramBacking), known before boot here.
      const dev = new BalloonDevice({ ramBytes: RAM, backing: () => (mergeable ? 'anonymous' : 'shared-memfd') });
      dev.setTarget(RAM - (1 << 20)); // before boot: num_pages = 256
      const r = await runGuest('balloon', { devices: [dev], mergeableRam: mergeable, keep: true });
      try {
        expect(r.out).to.contain('virtio_mmio.device=4K@0xd0000000:5');
        expect(r.out).to.contain('balloon inflate used=0 page zero');
        expect(r.out).to.contain('balloon report used=0 range zero');
        expect(r.out).to.contain('balloon deflate used=0 num_pages=256');
        expect(r.machine.ramBacking).to.equal(mergeable ? 'anonymous' : 'shared-memfd');
        expect(dev.metrics).to.include({ inflatedPages: 1, badPfns: 1, reportedBytes: 8192, deflatedPages: 1, releaseErrors: 0, badRanges: 0, needsReset: 0 });
        expect(dev.metrics.releasedBytes).to.equal(4096 + 8192);
        expect(dev.actualPages).to.equal(1);
        const base = kvmNative().arrayBufferAddress(r.machine.hot.memory.buffer) + BigInt(r.machine.hot.guestBase);
        const flags = vmFlagsAt(base);
        if (mergeable) expect(flags).to.include('mg');
        else expect(flags).to.not.include('mg');
        expect(flags.includes('sh')).to.equal(!mergeable); // the memfd is MAP_SHARED; the anonymous RAM is private
      } finally {
        r.machine.close();
      }
    });
  }

  for (const ksm of [false, true]) {
    it(`BuiltinHypervisor({ balloon${ksm ? ', ksm' : ''} }): the balloon is the last virtio-mmio device and picks the madvise from the machine's RAM`, async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-bi-balloon-'));
      const hv = new BuiltinHypervisor({ balloon: true, ksm });
      try {
        const image = path.join(dir, 'root.raw');
        fs.writeFileSync(image, Buffer.alloc(1 << 20));
        await hv.start({ id: 'bb', dir: path.join(dir, 'vm'), kernel: buildGuest().elf!, image, vcpus: 1, memoryMiB: 64, kernelParams: 'test=balloon', disks: [], debug: false });
        expect(hv.vmm?.ramBacking).to.equal(ksm ? 'anonymous' : 'shared-memfd');
        let timer: NodeJS.Timeout | undefined;
        const reason = await Promise.race([hv.exited(), new Promise<string>((r) => { timer = setTimeout(() => r('timeout'), 20000); })]);
        clearTimeout(timer);
        expect(reason).to.match(/i8042/);
        const out = hv.consoleTail(100);
        // blk (rootfs), vsock, then the balloon
        expect(out).to.match(/virtio_mmio\.device=4K@0xd0000000:5 virtio_mmio\.device=4K@0xd0001000:6 virtio_mmio\.device=4K@0xd0002000:7/);
        expect(out).to.contain('balloon inflate used=0 page zero');
        expect(out).to.contain('balloon report used=0 range zero');
        expect(hv.balloon?.metrics).to.include({ inflatedPages: 1, reportedBytes: 8192, releaseErrors: 0 });
      } finally {
        await hv.stop();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
