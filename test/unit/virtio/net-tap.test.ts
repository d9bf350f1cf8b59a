/**
 * virtio-net over a real tap: inside a network namespace the test creates
 * (`unshare --net`, gone when the child exits), the test guest's ARP request
 * leaves through virtio-net → TapBackend → the host kernel, and the kernel's
 * ARP reply comes back the same way. Skipped without root, /dev/net/tun,
 * unshare or /dev/kvm.
 */
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildGuest } from '../vmm/guest-build';
import { kvmUsable } from '../vmm/helpers';
import { skipOrFail } from '../../helpers/skip';

/** Why this cannot run here; `hostCannot` when no set-up could change it. */
function why(): { reason: string; hostCannot?: boolean } | undefined {
  if (process.getuid?.() !== 0) return { reason: 'not root (a tap needs CAP_NET_ADMIN)' };
  if (!fs.existsSync('/dev/net/tun')) return { reason: 'no /dev/net/tun in this kernel', hostCannot: true };
  try { execFileSync('unshare', ['--net', 'true'], { stdio: 'pipe' }); } catch (e) { return { reason: `unshare --net fails: ${(e as Error).message.split('\n')[0]}`, hostCannot: true }; }
  const noKvm = kvmUsable();
  if (noKvm) return { reason: noKvm, hostCannot: true };
  const noGuest = buildGuest().reason;
  return noGuest ? { reason: noGuest } : undefined;
}

describe('virtio-net tap backend (in a private network namespace)', function () {
  this.timeout(60000);
  before(function () {
    const w = why();
    if (w) skipOrFail(this, w.reason, { hostCannot: w.hostCannot });
  });

  it('the guest ARPs for the host through virtio-net and a tap; the kernel answers; the tap is gone afterwards', () => {
    const child = path.join(__dirname, 'net-tap-child.js');
    const r = spawnSync('unshare', ['--net', process.execPath, child], { encoding: 'utf8', timeout: 50000 });
    const last = r.stdout.trim().split('\n').pop() ?? '';
    let res: { name: string; out: string; ms: number; stats: { sent: number; received: number }; metrics: { txFrames: number; rxFrames: number }; neigh: string; gone: boolean; error?: string };
    try { res = JSON.parse(last); } catch { throw new Error(`child said: ${r.stdout}\n${r.stderr}`); }
    expect(res.error, res.error).to.equal(undefined);
    expect(res.name).to.match(/^kts\d+$/);
    expect(res.out).to.contain('net mac=02:00:00:00:99:02');
    expect(res.out).to.match(/net got len=\d+ type=0x806 arp_op=2 from=10\.99\.0\.1/);
    expect(res.stats.sent).to.be.greaterThan(0);
    expect(res.stats.received).to.be.greaterThan(0);
    expect(res.metrics.txFrames).to.equal(1);
    expect(res.neigh).to.contain('10.99.0.2'); // the kernel learnt the guest's address from its request
    expect(res.gone).to.equal(true);
    console.log(`      tap ${res.name}: guest ARP round trip, VM run ${res.ms.toFixed(0)} ms`);
  });
});
