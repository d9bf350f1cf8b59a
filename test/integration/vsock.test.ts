/**
 * vsock in a real QEMU (TCG) guest: our virtio-vsock device served over our
 * vhost-user backend to vhost-user-vsock-pci, the guest agent on AF_VSOCK,
 * the host on the hybrid vsock socket. One VM for the agent-channel cases
 * (many concurrent calls on many connections, refused ports), one
 * `kata-ts run` for a large stdout stream end to end (100 MiB).
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { QemuHypervisor } from '../../src/hypervisor/qemu';
import { connectVsock, dialAgent, waitForMarker, AGENT_VSOCK_PORT } from '../../src/protocols/agent-dialer';
import { AgentCallError, AgentClient } from '../../src/runtime/agent-client';
import { CACHE, REPO, expectNothingLeft, requireGuest, testRunDir, writeTestConfig } from '../helpers/guest';

describe('integration: vsock agent channel (QEMU, vhost-user)', function () {
  this.timeout(180000);
  let runDir: string;
  let hv: QemuHypervisor;
  let vsockSocket: string;
  const clients: AgentClient[] = [];

  before(async function () {
    requireGuest(this);
    runDir = testRunDir();
    hv = new QemuHypervisor({ binary: '/usr/bin/qemu-system-x86_64', machine: 'pc', accel: 'tcg' });
    const dir = path.join(runDir, 'vm');
    const vm = await hv.start({
      id: 'vsock-it', dir, kernel: path.join(CACHE, 'kernel', 'vmlinux'), image: path.join(CACHE, 'image', 'rootfs.erofs'),
      vcpus: 1, memoryMiB: 512, kernelParams: '', disks: [], debug: false,
    });
    vsockSocket = vm.agentSocket;
    await waitForMarker(vm.consoleLog, 120000, hv.exited());
  });

  after(async () => {
    for (const c of clients) c.close();
    if (hv) await hv.stop();
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  it('serves 200 concurrent agent calls over 8 separate vsock connections, each answered with its own reply', async () => {
    for (let i = 0; i < 8; i++) clients.push(new AgentClient(dialAgent(vsockSocket)));
    await Promise.all(clients.map((c) => c.check(30000)));
    const t0 = Date.now();
    // All 200 in flight at once. Even calls ask for the guest's details; odd
    // calls ask for the stats of a container that does not exist, whose
    // error names the id asked for: a reply delivered to the wrong call, or
    // lost, or doubled, shows up as a wrong or missing id.
    type Reply = { i: number; d?: Awaited<ReturnType<AgentClient['guestDetails']>>; e?: Error };
    const calls = Array.from({ length: 200 }, (_, i): Promise<Reply> => {
      const c = clients[i % clients.length];
      return i % 2 === 0
        ? c.guestDetails().then((d) => ({ i, d }), (e: Error) => ({ i, e }))
        : c.statsContainer(`absent-${i}`).then(() => ({ i }), (e: Error) => ({ i, e }));
    });
    const res = await Promise.all(calls);
    process.stdout.write(`      200 calls (100 GetGuestDetails, 100 StatsContainer) in ${Date.now() - t0} ms\n`);
    expect(res.map((r) => r.i)).to.deep.equal(Array.from({ length: 200 }, (_, i) => i));
    for (const r of res) {
      if (r.i % 2 === 0) {
        expect(r, `call ${r.i}`).to.not.have.property('e');
        const d = r.d!;
        expect(d.agent_version, `call ${r.i}`).to.match(/^\d+\.\d+\.\d+/);
        expect(d.kernel_release, `call ${r.i}`).to.match(/^6\.1\./);
        expect(Number(d.cpus), `call ${r.i}`).to.equal(1);
        expect(Number(d.mem_total_bytes), `call ${r.i}`).to.be.within(256 << 20, 512 << 20);
        expect(Number(d.uptime_ms), `call ${r.i}`).to.be.greaterThan(0);
      } else {
        const e = r.e as AgentCallError | undefined;
        expect(e, `call ${r.i} (StatsContainer of a missing container) succeeded`).to.be.instanceOf(AgentCallError);
        expect(e!.kind, `call ${r.i}`).to.equal('not-found');
        expect(e!.message, `call ${r.i} got another call's reply`).to.contain(`container absent-${r.i} not found`);
      }
    }
  });

  it('refuses a host connection to a guest port nobody listens on (guest RST), agent port still fine', async () => {
    let err = '';
    await connectVsock(vsockSocket, 4242, 20000).catch((e: Error) => { err = e.message; });
    expect(err).to.match(/refused/);
    const s = await connectVsock(vsockSocket, AGENT_VSOCK_PORT, 20000);
    s.destroy();
  });

  it('streams 100 MiB of container stdout intact through kata-ts run', async () => {
    // The producer repeats a 1 MiB - 3 B block (made once in the guest) with
    // cat: `yes | head -c 100M` alone costs the TCG guest ~30 s of CPU (head
    // copies in small pieces), which would measure busybox, not the channel.
    // The odd block length puts every repetition at a different phase of the
    // 17-byte line and of the 64 KiB vsock packets, so a lost, duplicated or
    // reordered packet changes the checksum.
    const block = 1048573;
    const reps = 100;
    const bytes = block * reps;
    const cfg = writeTestConfig(runDir);
    const one = Buffer.alloc(block, '0123456789abcdef\n');
    const want = crypto.createHash('md5');
    for (let i = 0; i < reps; i++) want.update(one);
    const script = `yes 0123456789abcdef | head -c ${block} > /tmp/block; i=0; while [ $i -lt ${reps} ]; do cat /tmp/block; i=$((i+1)); done`;
    const child = spawn(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), 'run', '--config', cfg, '--', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    const h = crypto.createHash('md5');
    let n = 0;
    let first = 0;
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { if (!first) first = Date.now(); h.update(d); n += d.length; });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const t0 = Date.now();
    const code = await new Promise<number | null>((r) => child.on('exit', r));
    const end = Date.now();
    expect(stderr).to.equal('');
    expect(code).to.equal(0);
    expect(n).to.equal(bytes);
    expect(h.digest('hex')).to.equal(want.digest('hex'));
    const secs = (end - first) / 1000;
    process.stdout.write(`      ${(bytes / 1048576).toFixed(0)} MiB stdout in ${end - t0} ms including boot; stream ${secs.toFixed(1)} s, ${(bytes / 1e6 / secs).toFixed(1)} MB/s\n`);
  });
});
