/**
 * Passfd IO without a VM: the agent's stream bookkeeping (src/agent/passfd.ts:
 * the 4-byte port header, take before/after arrival, unknown ports, bad
 * headers, unclaimed streams, all-or-nothing takes) on unix sockets, and the
 * whole path — host streams (src/runtime/passfd-stdio.ts) through a
 * hybrid-vsock stand-in to the agent service, which gives the sockets to the
 * process as its stdio (DirectRuntime runs it on the test host): output
 * intact, stdin and its end, stderr apart, exit status after the last byte,
 * exec, a host reader that goes away, bad ports refused with nothing left.
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { native } from '../../../src/common/native';
import { KataError } from '../../../src/common/errors';
import { PassfdStreams, childStdio, closePassed, passfdPortFromCmdline, HEADER_BYTES } from '../../../src/agent/passfd';
import { AgentSandbox } from '../../../src/agent/sandbox';
import { agentHandlers } from '../../../src/agent/service';
import { dialAgent } from '../../../src/protocols/agent-dialer';
import { AgentClient } from '../../../src/runtime/agent-client';
import { attachPassfd, openPassfdStreams } from '../../../src/runtime/passfd-stdio';
import { defaultSpec } from '../../../src/runtime/spec';
import { DirectRuntime } from '../../helpers/direct-runtime';
import { serveAgentOnUnix } from '../../helpers/agent-rig';
import { hybridVsockStandIn } from '../../helpers/hybrid-vsock';

const header = (port: number) => { const b = Buffer.alloc(HEADER_BYTES); b.writeUInt32LE(port, 0); return b; };
const LISTENER_PORT = 1027;

/** Connects a client to the agent's passfd unix listener. */
function dial(sock: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ path: sock, allowHalfOpen: true });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Everything a socket receives until its end. */
function readAll(s: net.Socket): Promise<Buffer> {
  const parts: Buffer[] = [];
  return new Promise((r) => { s.on('data', (d: Buffer) => parts.push(d)); s.once('end', () => r(Buffer.concat(parts))); s.once('close', () => r(Buffer.concat(parts))); s.resume(); });
}

/**
 * A hybrid vsock stand-in for the passfd listener: `CONNECT <port>\n` to the
 * listener port gets `OK <host port>\n` (a fresh number per connection, as
 * the device assigns) and a connection to the agent's passfd unix socket;
 * half-closes pass through (the device's SHUTDOWN_SEND).
 */
function hybrid(sock: string, passfdSock: string) {
  return hybridVsockStandIn(sock, LISTENER_PORT, (c, h) => {
    const up = net.connect({ path: passfdSock, allowHalfOpen: true });
    h.track(up);
    up.on('error', () => c.destroy());
    up.once('close', () => c.end());
    c.once('close', () => up.destroy()); // the host end gone: the guest's writes fail (the device's SHUTDOWN)
    up.once('connect', () => {
      h.ok();
      if (h.rest.length) up.write(h.rest);
      c.pipe(up);
      up.pipe(c);
      c.resume();
    });
  });
}

describe('unit: agent passfd IO', function () {
  this.timeout(30000);
  let dir: string;
  before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-passfd-')); });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('reads the listener port from the kernel command line (0: off)', () => {
    expect(passfdPortFromCmdline('quiet agent.passfd_listener_port=1027 random.trust_cpu=on')).to.equal(1027);
    expect(passfdPortFromCmdline('agent.passfd_listener_port=5000')).to.equal(5000);
    for (const c of ['', 'quiet', 'agent.passfd_listener_port=', 'agent.passfd_listener_port=0', 'agent.passfd_listener_port=x1', 'xagent.passfd_listener_port=9']) expect(passfdPortFromCmdline(c), c).to.equal(0);
  });

  it('maps passed sockets over the child stdio and leaves the rest', () => {
    expect(childStdio([10, 11, 12], undefined)).to.deep.equal([10, 11, 12]);
    expect(childStdio([10, 11, 12], { stdout: 21 })).to.deep.equal([10, 21, 12]);
    expect(childStdio([10, 11, 12], { stdin: 20, stdout: 21, stderr: 22 })).to.deep.equal([20, 21, 22]);
  });

  describe('stream bookkeeping', () => {
    let reg: PassfdStreams;
    let sock: string;
    let logs: string[];
    let i = 0;
    beforeEach(() => {
      logs = [];
      sock = path.join(dir, `l${i++}.sock`);
      reg = new PassfdStreams({ log: (m) => logs.push(m), headerWaitMs: 300, takeWaitMs: 300, unclaimedMs: 600 });
      reg.listenFd(native().unixListenNb(sock));
    });
    afterEach(() => { reg.close(); fs.rmSync(sock, { force: true }); });

    it('keys a stream by its 4-byte header and hands over exactly what follows it', async () => {
      const c = await dial(sock);
      const ended = readAll(c);
      c.write(Buffer.concat([header(4001), Buffer.from('hello')]));
      const fd = await reg.take(4001);
      const buf = Buffer.alloc(16);
      let n = -1;
      for (let k = 0; k < 100 && n < 0; k++) { n = native().readFd(fd, buf, 0, 16); if (n < 0) await new Promise((r) => setTimeout(r, 10)); }
      expect(buf.subarray(0, n).toString()).to.equal('hello');
      closePassed({ stdin: fd });
      await ended;
      expect(reg.waitingCount).to.equal(0);
    });

    it('a take that comes first waits for the stream', async () => {
      const taken = reg.take(4002);
      await new Promise((r) => setTimeout(r, 50));
      const c = await dial(sock);
      c.write(header(4002));
      const fd = await taken;
      expect(fd).to.be.greaterThan(2);
      native().closeFd(fd);
      c.destroy();
    });

    it('an unknown port is one clear not-found error after the wait', async () => {
      const err = await reg.take(4999).then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(KataError);
      expect((err as KataError<string>).kind).to.equal('not-found');
      expect((err as Error).message).to.match(/no passfd stream from host port 4999/);
    });

    it('closes a connection with a short, missing, zero or duplicate header, and keeps serving', async () => {
      const ends: Promise<Buffer>[] = [];
      const short = await dial(sock);
      ends.push(readAll(short));
      short.end(Buffer.from([1, 2]));
      const silent = await dial(sock);
      ends.push(readAll(silent));
      const zero = await dial(sock);
      ends.push(readAll(zero));
      zero.write(header(0));
      const first = await dial(sock);
      first.write(header(4003));
      await new Promise((r) => setTimeout(r, 50));
      const dup = await dial(sock);
      ends.push(readAll(dup));
      dup.write(header(4003));
      await Promise.all(ends);
      expect(reg.rejected).to.equal(4);
      expect(logs.join('\n')).to.match(/after 2 of 4 header bytes/).and.match(/no 4-byte port header within 300 ms/).and.match(/port header 0/).and.match(/already waiting/);
      const fd = await reg.take(4003); // the first one still works
      native().closeFd(fd);
      first.destroy();
      expect(reg.waitingCount).to.equal(0);
    });

    it('closes a stream nobody takes', async () => {
      const c = await dial(sock);
      const ended = readAll(c);
      c.write(header(4004));
      await ended;
      expect(logs.join('\n')).to.match(/host port 4004: no request took it/);
      expect(reg.waitingCount).to.equal(0);
    });

    it('takes all of a process\'s streams or none', async () => {
      const out = await dial(sock);
      const outEnded = readAll(out);
      out.write(header(4005));
      const err = await reg.takeAll({ stdout_port: 4005, stderr_port: 4006 }).then(() => undefined, (e: Error) => e);
      expect(err?.message).to.match(/host port 4006/);
      await outEnded; // the stdout stream it had taken is closed again
      const dupErr = await reg.takeAll({ stdout_port: 7, stderr_port: 7 }).then(() => undefined, (e: KataError<string>) => e);
      expect(dupErr?.kind).to.equal('invalid');
      expect(await reg.takeAll({ stdin_port: 0 })).to.deep.equal({});
    });
  });

  describe('through the agent service', () => {
    let sandbox: AgentSandbox;
    let passfd: PassfdStreams;
    let rig: Awaited<ReturnType<typeof serveAgentOnUnix>>;
    let hy: Awaited<ReturnType<typeof hybrid>>;
    let client: AgentClient;
    let vsock: string;
    let n = 0;
    const spec = (args: string[]) => JSON.stringify({ ...defaultSpec({ args }), root: { path: '/' } });

    beforeEach(async () => {
      const d = path.join(dir, `svc${n++}`);
      fs.mkdirSync(d);
      passfd = new PassfdStreams({ takeWaitMs: 500, log: () => undefined });
      passfd.listenFd(native().unixListenNb(path.join(d, 'passfd.sock')));
      sandbox = new AgentSandbox({ runtime: new DirectRuntime(), stateDir: path.join(d, 'state'), cgroupRoot: path.join(d, 'cgroup'), passfd });
      rig = await serveAgentOnUnix(agentHandlers(sandbox), path.join(d, 'agent.sock'));
      vsock = path.join(d, 'vsock.sock');
      hy = await hybrid(vsock, path.join(d, 'passfd.sock'));
      client = new AgentClient(dialAgent(rig.socket)); // the rig answers the handshake itself
      await client.check(5000);
    });
    afterEach(async () => {
      await sandbox.destroySandbox();
      client.close();
      await rig.close();
      await hy.close();
      expect(passfd.waitingCount).to.equal(0);
      passfd.close();
    });

    /** Collects a Writable's bytes. */
    const sink = () => {
      const parts: Buffer[] = [];
      const w = new Writable({ write: (c: Buffer, _e, cb) => { parts.push(c); cb(); } });
      return { w, text: () => Buffer.concat(parts).toString(), buf: () => Buffer.concat(parts) };
    };

    it('runs a container on its own stdio streams: stdin and its end, stderr apart, output intact, exit status last', async () => {
      const streams = await openPassfdStreams(vsock, LISTENER_PORT, { stdin: true, stdout: true, stderr: true });
      expect(Object.values(streams.ports).every((p) => typeof p === 'number' && p > 0)).to.equal(true);
      await client.createContainer({ container_id: 'c1', exec_id: '', storages: [], oci_spec_json: spec(['sh', '-c', 'cat; echo err >&2; head -c 3000000 /dev/zero | tr "\\0" q; exit 7']), ...streams.ports });
      await client.startContainer('c1');
      const out = sink();
      const err = sink();
      const stdin = new PassThrough();
      const att = attachPassfd(client, 'c1', '', streams, { stdin, stdout: out.w, stderr: err.w, terminal: false });
      stdin.end('hello passfd\n');
      const st = await att.done;
      expect(st.status).to.equal(7);
      expect(err.text()).to.equal('err\n');
      const want = Buffer.concat([Buffer.from('hello passfd\n'), Buffer.alloc(3000000, 'q')]);
      expect(crypto.createHash('sha256').update(out.buf()).digest('hex')).to.equal(crypto.createHash('sha256').update(want).digest('hex'));
      // The agent's ReadStdout of a passed stream just ends: nothing went through the agent.
      const r = client.readStdout({ container_id: 'c1', exec_id: '' });
      let relayed = 0;
      await new Promise<void>((res) => { r.on('data', (m: { data: Buffer }) => { relayed += m.data?.length ?? 0; }); r.on('end', () => res()); r.on('error', () => res()); });
      expect(relayed).to.equal(0);
    });

    it('runs an exec on its own streams', async () => {
      await client.createContainer({ container_id: 'c2', exec_id: '', storages: [], oci_spec_json: spec(['sleep', '30']) });
      await client.startContainer('c2');
      const streams = await openPassfdStreams(vsock, LISTENER_PORT, { stdin: false, stdout: true, stderr: true });
      await client.execProcess({ container_id: 'c2', exec_id: 'e1', process_json: JSON.stringify({ args: ['sh', '-c', 'echo from-exec; echo e2 >&2; exit 3'], cwd: '/' }), ...streams.ports });
      const out = sink();
      const err = sink();
      const st = await attachPassfd(client, 'c2', 'e1', streams, { stdout: out.w, stderr: err.w, terminal: false }).done;
      expect(st.status).to.equal(3);
      expect(out.text()).to.equal('from-exec\n');
      expect(err.text()).to.equal('e2\n');
    });

    it('a host reader that goes away closes that stream: the process sees EPIPE and its exit still comes', async () => {
      const streams = await openPassfdStreams(vsock, LISTENER_PORT, { stdin: false, stdout: true, stderr: false });
      await client.createContainer({ container_id: 'c3', exec_id: '', storages: [], oci_spec_json: spec(['sh', '-c', 'while :; do echo yyyyyyyyyyyyyyyyyyyy || exit 9; done']), ...streams.ports });
      await client.startContainer('c3');
      let writes = 0;
      const broken = new Writable({ write: (_c, _e, cb) => { writes++; cb(writes > 2 ? new Error('EPIPE: reader gone') : null); } });
      const st = await attachPassfd(client, 'c3', '', streams, { stdout: broken, terminal: false }).done;
      expect(writes).to.be.greaterThan(2);
      expect([9, 141]).to.include(st.status); // echo's EPIPE, or SIGPIPE
    });

    it('refuses an unknown port, a terminal, and a guest without a listener, with nothing left', async () => {
      const e1 = await client.createContainer({ container_id: 'c4', exec_id: '', storages: [], oci_spec_json: spec(['true']), stdout_port: 54321 }).then(() => undefined, (e: Error) => e);
      expect(e1?.message).to.match(/no passfd stream from host port 54321/);
      const streams = await openPassfdStreams(vsock, LISTENER_PORT, { stdin: false, stdout: true, stderr: false });
      const tty = JSON.stringify({ ...defaultSpec({ args: ['true'], terminal: true }), root: { path: '/' } });
      const e2 = await client.createContainer({ container_id: 'c4', exec_id: '', storages: [], oci_spec_json: tty, ...streams.ports }).then(() => undefined, (e: Error) => e);
      expect(e2?.message).to.match(/not for a terminal/);
      streams.close();
      // The id is free again: the failed creates left nothing.
      await client.createContainer({ container_id: 'c4', exec_id: '', storages: [], oci_spec_json: spec(['true']) });
      const bare = new AgentSandbox({ runtime: new DirectRuntime(), stateDir: path.join(dir, 'bare') });
      const e3 = await bare.startDebugConsole({ args: ['true'], terminal: false, rows: 0, columns: 0, env: [], stdout_port: 5 }).then(() => undefined, (e: Error) => e);
      expect(e3?.message).to.match(/no passfd listener.*agent\.passfd_listener_port/);
      const e4 = await openPassfdStreams(vsock, 4444, { stdin: true, stdout: true, stderr: false }, 2000).then(() => undefined, (e: Error) => e);
      expect(e4?.message).to.match(/cannot open a stdio stream.*vsock port 4444/);
    });
  });
});
