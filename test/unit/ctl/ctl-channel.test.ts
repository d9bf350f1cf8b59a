/**
 * kata-ctl → owner's ctl socket → agent, without a VM: the real agent
 * service (AgentSandbox + gRPC handlers, debug console with the real pty
 * helper) on a unix socket stands in for the guest, the owner's ctl channel
 * proxies to it, and kata-ctl's console client drives it through streams.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { PassThrough } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { AgentSandbox } from '../../../src/agent/sandbox';
import { agentHandlers } from '../../../src/agent/service';
import type { OciRuntime } from '../../../src/agent/oci-runtime';
import { dialAgent } from '../../../src/protocols/agent-dialer';
import { serveAgentOnUnix, type AgentRig } from '../../helpers/agent-rig';
import { AgentCallError, AgentClient } from '../../../src/runtime/agent-client';
import { ctlSocketPath, dialSandboxAgent, serveCtlChannel, type CtlChannel } from '../../../src/runtime/ctl-channel';
import { DEBUG_CONSOLE_DISABLED } from '../../../src/runtime/ctl-proxy';
import { runConsole } from '../../../src/ctl/console';
import { buildPtyHelper } from '../../helpers/pty-helper';
import { skipOrFail } from '../../helpers/skip';

function io(input: string) {
  const stdin = new PassThrough();
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  stderr.on('data', (d: Buffer) => (err += d.toString()));
  stdin.end(input);
  return { io: { stdin, stdout, stderr, env: { TERM: 'xterm' } }, out: () => out, err: () => err };
}

describe('ctl channel: kata-ctl → owner proxy → agent (no VM)', function () {
  this.timeout(20000);
  let dir: string;
  let agent: AgentRig | undefined;
  let owner: AgentClient;
  const channels: CtlChannel[] = [];
  const clients: AgentClient[] = [];
  let sb: AgentSandbox;

  before(async function () {
    const b = buildPtyHelper();
    if (!b.helper) skipOrFail(this, b.why ?? 'pty helper not built');
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-ctlch-'));
    sb = new AgentSandbox({ runtime: {} as OciRuntime, stateDir: dir, debugConsole: { enabled: true, ptyHelper: b.helper!, dir: path.join(dir, 'c') } });
    // The agent as in the guest (ttrpc behind the hybrid-vsock handshake); the owner dials it as the runtime does.
    agent = await serveAgentOnUnix(agentHandlers(sb), path.join(dir, 'agent.sock'));
    owner = new AgentClient(dialAgent(agent.socket));
    for (const [name, debugConsole] of [['on', true], ['off', false]] as const) {
      fs.mkdirSync(path.join(dir, name));
      channels.push(await serveCtlChannel(path.join(dir, name), owner, { debugConsole }));
    }
  });

  after(async () => {
    for (const c of clients) c.close();
    for (const c of channels) await c.close();
    owner?.close();
    sb?.consoles.killAll();
    await agent?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  const client = (name: string): AgentClient => {
    const c = dialSandboxAgent(path.join(dir, name));
    expect(c, 'ctl socket').to.not.equal(undefined);
    clients.push(c!);
    return c!;
  };

  it('serves the socket owner-only', () => {
    expect(fs.statSync(ctlSocketPath(path.join(dir, 'on'))).mode & 0o777).to.equal(0o600);
    expect(dialSandboxAgent(path.join(dir, 'nowhere'))).to.equal(undefined);
  });

  it('runs a command with stdin, stdout and stderr and returns its status', async () => {
    const t = io('abc\n');
    const st = await runConsole(client('on'), { command: ['sh', '-c', 'echo hi; read x; echo got $x; echo oops >&2; exit 4'], terminal: false }, t.io);
    expect(st).to.equal(4);
    expect(t.out()).to.equal('hi\ngot abc\n');
    expect(t.err()).to.equal('oops\n');
  });

  it('gives a terminal (size defaults to 24x80 when the host side is not a tty)', async () => {
    const t = io('');
    const st = await runConsole(client('on'), { command: ['sh', '-c', 'stty size; echo $TERM; tty'], terminal: true }, t.io);
    expect(st).to.equal(0);
    expect(t.out()).to.match(/^24 80\r\nxterm\r\n\/dev\/pts\/\d+\r\n$/);
  });

  it('forwards guest stats', async () => {
    const g = await client('on').guestStats(5000);
    expect(g.mem_total_bytes).to.be.closeTo(os.totalmem(), 1 << 20);
    expect(g.uptime_ms).to.be.greaterThan(0);
  });

  it('refuses the debug console when the owner configuration disables it', async () => {
    const err = await client('off').startDebugConsole({ args: [], terminal: false, rows: 0, columns: 0, env: [] }).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(AgentCallError);
    expect((err as AgentCallError).kind).to.equal('failed-precondition');
    expect((err as Error).message).to.equal(DEBUG_CONSOLE_DISABLED);
  });

  it("never reaches the owner's container processes or container lifecycle", async () => {
    const e1 = await client('on').waitProcess({ container_id: 'c1', exec_id: '' }).catch((e: unknown) => e);
    expect((e1 as AgentCallError).grpcCode).to.equal(grpc.status.PERMISSION_DENIED);
    const e2 = await client('on').removeContainer('c1', 0).catch((e: unknown) => e);
    expect((e2 as AgentCallError).grpcCode).to.equal(grpc.status.UNIMPLEMENTED);
  });

  it('loads grpc-js only when kata-ctl first connects (the owner of an idle sandbox never does)', () => {
    // A fresh process: this one has grpc-js loaded by the test itself.
    const script = `
      const net = require('node:net');
      const { serveCtlChannel, ctlSocketPath } = require(${JSON.stringify(path.resolve(__dirname, '../../../src/runtime/ctl-channel.js'))});
      const grpcLoaded = () => Object.keys(require.cache).some((m) => m.includes('@grpc'));
      (async () => {
        const ch = await serveCtlChannel(${JSON.stringify(path.join(dir, 'lazy'))}, {}, { debugConsole: false });
        const before = grpcLoaded();
        const mode = (require('node:fs').statSync(ctlSocketPath(${JSON.stringify(path.join(dir, 'lazy'))})).mode & 0o777).toString(8);
        await new Promise((resolve) => { const c = net.createConnection(ch.socket, () => setTimeout(() => { c.destroy(); resolve(); }, 300)); });
        const after = grpcLoaded();
        await ch.close();
        console.log(JSON.stringify({ before, after, mode, left: require('node:fs').readdirSync(${JSON.stringify(path.join(dir, 'lazy'))}) }));
      })();`;
    fs.mkdirSync(path.join(dir, 'lazy'));
    const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 15000 });
    expect(JSON.parse(out.trim().split('\n').pop()!)).to.deep.equal({ before: false, after: true, mode: '600', left: [] });
  });
});
