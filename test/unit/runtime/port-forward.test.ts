/**
 * CRI port-forward's host side (src/runtime/port-forward.ts) against the
 * real kernel, without a VM: a pod netns (test/helpers/netns.ts), the
 * forwarder's listener and nat rule in it, a hybrid vsock stand-in whose
 * port-1028 streams go to the agent's code (src/agent/port-forward.ts) in
 * this process, and "guest" TCP servers on this namespace's 127.0.0.1.
 * A client inside the pod netns dials 127.0.0.1:PORT as containerd does:
 * any port reaches its server (nothing declared), bytes both ways with a
 * half-close; a port nobody serves, and a VM that is gone, reset the
 * client and leave the forwarder serving; close() leaves no rule and no
 * listener; a netns that does not exist is one clear error.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { PortForwarder, RULE_COMMENT } from '../../../src/runtime/port-forward';
import { servePortForward } from '../../../src/agent/port-forward';
import { PORT_FORWARD_VSOCK_PORT } from '../../../src/protocols/port-forward';
import { skipOrFail } from '../../helpers/skip';
import { PodNetns, ip, podNetworkPrerequisiteMissing } from '../../helpers/netns';
import { dialInNetns as dial } from '../../helpers/port-forward';
import { hybridVsockStandIn } from '../../helpers/hybrid-vsock';

/** Only what the assertions compare. */
const dialInNetns = async (ns: string, port: number, payload: number) => { const r = await dial(ns, port, payload); delete r.text; return r; };

const log = { debug: () => undefined, warn: (m: string, meta?: object) => warnings.push(`${m} ${JSON.stringify(meta ?? {})}`) };
let warnings: string[] = [];

/** The hybrid vsock device's stand-in: CONNECT 1028 -> the agent's port-forward code; any other port refused. */
function hybridVsock(sock: string): Promise<{ close(): Promise<void> }> {
  return hybridVsockStandIn(sock, PORT_FORWARD_VSOCK_PORT, (c, h) => {
    h.ok();
    if (h.rest.length) c.unshift(h.rest);
    void servePortForward(c, { log: (m) => warnings.push(`agent: ${m}`) });
  }, 3000);
}

/** PortForwarder.start where it must give a forwarder (lo is up). */
async function started(o: Parameters<typeof PortForwarder.start>[0]): Promise<PortForwarder> {
  const f = await PortForwarder.start(o);
  if (!f) throw new Error('PortForwarder.start gave none with the loopback up');
  return f;
}

const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');
const natRules = (netnsPath: string) => execFileSync('nsenter', [`--net=${netnsPath}`, 'iptables', '-t', 'nat', '-S', 'OUTPUT'], { encoding: 'utf8' });

describe('unit/runtime/port-forward (host forwarder in a pod netns)', function () {
  this.timeout(60_000);
  const pod = new PodNetns({ podCidr: '10.95.0.2/24', prefix: 'ktpf' });
  let dir: string;
  let vsock: string;
  let hybrid: { close(): Promise<void> } | undefined;
  let fwd: PortForwarder | undefined;
  const servers: net.Server[] = [];

  before(function () {
    const w = podNetworkPrerequisiteMissing();
    if (w) skipOrFail(this, w);
    try {
      execFileSync('iptables', ['-V']);
      execFileSync('nsenter', ['-V']);
    } catch {
      skipOrFail(this, 'iptables and nsenter (util-linux) are needed');
    }
    pod.create();
    ip('-n', pod.pod, 'link', 'set', 'lo', 'up'); // CNI's loopback plugin does this in a real pod
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-pfh-'));
    vsock = path.join(dir, 'vsock.sock');
  });

  beforeEach(async () => {
    warnings = [];
    hybrid = await hybridVsock(vsock);
  });

  afterEach(async () => {
    await fwd?.close();
    fwd = undefined;
    await hybrid?.close();
    for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  });

  after(() => {
    pod.destroy();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A "guest" server on this namespace's 127.0.0.1: answers "echo:" + the whole request, then ends. */
  async function echoServer(): Promise<number> {
    const s = net.createServer({ allowHalfOpen: true }, (c) => {
      const parts: Buffer[] = [];
      c.on('data', (d: Buffer) => parts.push(d));
      c.on('end', () => c.end(Buffer.concat([Buffer.from('echo:'), ...parts])));
    });
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    return (s.address() as net.AddressInfo).port;
  }

  it('carries any port dialled in the netns to the guest, both ways, with a half-close', async () => {
    fwd = await started({ netns: pod.podPath, vsockSocket: () => vsock, log });
    expect(natRules(pod.podPath)).to.contain(RULE_COMMENT).and.contain(`--to-ports ${fwd.listenPort}`);
    for (const size of [0, 1, 2 * 1024 * 1024 + 3]) {
      const port = await echoServer();
      const got = await dialInNetns(pod.pod, port, size);
      expect(got, `payload ${size}`).to.deep.equal({ len: size + 5, sha: sha(Buffer.concat([Buffer.from('echo:'), Buffer.alloc(size, 5)])) });
    }
    expect(fwd.stats).to.deep.equal({ forwarded: 3, reset: 0 });
    expect(warnings).to.deep.equal([]);
  });

  it('resets the client for a port nobody serves in the guest, and keeps serving', async () => {
    fwd = await started({ netns: pod.podPath, vsockSocket: () => vsock, log });
    const free = net.createServer();
    await new Promise<void>((r) => free.listen(0, '127.0.0.1', r));
    const port = (free.address() as net.AddressInfo).port;
    await new Promise((r) => free.close(r));
    expect(await dialInNetns(pod.pod, port, 10)).to.deep.equal({ err: 'ECONNRESET' });
    const live = await echoServer();
    expect((await dialInNetns(pod.pod, live, 3)).len).to.equal(8);
    expect(fwd.stats).to.deep.equal({ forwarded: 1, reset: 1 });
  });

  it('resets the client when the VM is gone (its vsock socket refuses or is unknown)', async () => {
    let gone = false;
    fwd = await started({ netns: pod.podPath, vsockSocket: () => { if (gone) throw new Error('sandbox is not running'); return path.join(dir, 'no-such.sock'); }, log });
    const port = await echoServer();
    expect(await dialInNetns(pod.pod, port, 1)).to.deep.equal({ err: 'ECONNRESET' });
    gone = true;
    expect(await dialInNetns(pod.pod, port, 1)).to.deep.equal({ err: 'ECONNRESET' });
    expect(fwd.stats.reset).to.equal(2);
    expect(warnings).to.have.length(2);
    expect(warnings[0]).to.match(/cannot reach the guest/);
    expect(warnings[1]).to.match(/sandbox is not running/);
  });

  it('close() removes the rule and the listener; in the netns 127.0.0.1 is plain again', async () => {
    const f = await started({ netns: pod.podPath, vsockSocket: () => vsock, log });
    const port = await echoServer();
    await f.close();
    await f.close(); // idempotent
    expect(natRules(pod.podPath)).not.to.contain(RULE_COMMENT);
    // Nothing listens in the pod netns now: the dial is refused there (the echo server is in ours).
    expect(await dialInNetns(pod.pod, port, 1)).to.deep.equal({ err: 'ECONNREFUSED' });
    expect(await dialInNetns(pod.pod, f.listenPort, 1)).to.deep.equal({ err: 'ECONNREFUSED' });
  });

  it('does nothing (no listener, no rule) in a pod netns whose loopback never came up: nothing there can dial localhost', async () => {
    // An interface with an address and lo down: 127.0.0.1 is no local address there (bind gives EADDRNOTAVAIL).
    const bare = new PodNetns({ podCidr: '10.94.0.2/24', prefix: 'ktpb' }).create();
    try {
      const f = await PortForwarder.start({ netns: bare.podPath, vsockSocket: () => vsock, log });
      await f?.close();
      expect(f).to.equal(undefined);
      expect(natRules(bare.podPath)).not.to.contain(RULE_COMMENT);
      expect(warnings).to.deep.equal([]);
    } finally {
      bare.destroy();
    }
  });

  it('refuses a netns that does not exist with one clear error and leaves nothing', async () => {
    let err: Error | undefined;
    await PortForwarder.start({ netns: path.join(dir, 'no-such-netns'), vsockSocket: () => vsock, log }).catch((e: Error) => { err = e; });
    expect(err?.message).to.match(/open\(netns\): No such file or directory/);
  });
});
