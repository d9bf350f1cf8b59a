/**
 * The agent's debug console on this host (no VM): the real pty helper
 * (guest/init/kata-pty.c compiled with the host's gcc, as the image build
 * does) and the native addon, driven through AgentSandbox exactly as the
 * gRPC service drives it. Skips, saying why, without gcc or the addon.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AgentSandbox } from '../../../src/agent/sandbox';
import { debugConsoleAllowed } from '../../../src/agent/debug-console';
import type { OciRuntime } from '../../../src/agent/oci-runtime';
import { buildPtyHelper } from '../../helpers/pty-helper';
import { skipOrFail } from '../../helpers/skip';

const noRuntime = {} as OciRuntime;

async function drain(sb: AgentSandbox, execId: string, which: 'stdout' | 'stderr' = 'stdout'): Promise<string> {
  const pipe = sb.process({ container_id: '', exec_id: execId })[which];
  let out = '';
  for (let c = await pipe.read(); c !== null; c = await pipe.read()) out += c.toString();
  return out;
}

describe('agent debug console (host, real pty helper)', function () {
  this.timeout(20000);
  let dir: string;
  let helper: string | undefined;
  let sb: AgentSandbox;

  before(function () {
    const b = buildPtyHelper();
    if (!b.helper) skipOrFail(this, b.why ?? 'pty helper not built');
    helper = b.helper;
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-dbg-'));
    sb = new AgentSandbox({ runtime: noRuntime, stateDir: dir, debugConsole: { enabled: true, ptyHelper: helper!, dir: path.join(dir, 'c') } });
  });

  after(async () => {
    sb?.consoles.killAll();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('reads the kernel command line flag', () => {
    expect(debugConsoleAllowed('console=ttyS0 agent.debug_console quiet')).to.equal(true);
    expect(debugConsoleAllowed('agent.debug_console=1')).to.equal(true);
    expect(debugConsoleAllowed('console=ttyS0 agent.debug_consoles')).to.equal(false);
    expect(debugConsoleAllowed('')).to.equal(false);
  });

  it('is refused when the guest was not booted with agent.debug_console', async () => {
    const off = new AgentSandbox({ runtime: noRuntime, stateDir: dir });
    const err = await off.startDebugConsole({ args: ['true'], terminal: false, rows: 0, columns: 0, env: [] }).catch((e: Error) => e);
    expect(err).to.be.instanceOf(Error);
    expect(err).to.have.property('kind', 'failed-precondition');
    expect((err as Error).message).to.match(/debug_console_enabled = true/);
  });

  it('runs one command with pipes and returns its status', async () => {
    const r = await sb.startDebugConsole({ args: ['sh', '-c', 'echo out; echo err >&2; exit 3'], terminal: false, rows: 0, columns: 0, env: ['X=y'] });
    expect(r.exec_id).to.match(/^debug-\d+$/);
    expect(r.pid).to.be.greaterThan(0);
    const [out, err, st] = await Promise.all([drain(sb, r.exec_id), drain(sb, r.exec_id, 'stderr'), sb.waitProcess({ container_id: '', exec_id: r.exec_id })]);
    expect(out).to.equal('out\n');
    expect(err).to.equal('err\n');
    expect(st.status).to.equal(3);
  });

  it('reports a missing command as not-found', async () => {
    const err = await sb.startDebugConsole({ args: ['/no/such/cmd'], terminal: false, rows: 0, columns: 0, env: [] }).catch((e: Error) => e);
    expect(err).to.have.property('kind', 'not-found');
  });

  it('gives a terminal of the requested size that follows resizes, and exits on Ctrl-D', async () => {
    const r = await sb.startDebugConsole({ args: ['/bin/sh'], terminal: true, rows: 30, columns: 100, env: ['PS1=$ '] });
    const ref = { container_id: '', exec_id: r.exec_id };
    const p = sb.process(ref);
    // One reader drains the pty until EOF (all slave fds closed); a small
    // pause between inputs lets each line's output land in order.
    const output = drain(sb, r.exec_id);
    const pause = () => new Promise((res) => setTimeout(res, 300));
    await p.writeStdin(Buffer.from('tty; stty size\n'));
    await pause();
    p.resize(40, 120);
    await p.writeStdin(Buffer.from('stty size\n'));
    await pause();
    p.closeStdin(); // ^D, as a user types it
    const st = await sb.waitProcess(ref);
    const out = await output;
    expect(st.status).to.equal(0);
    expect(out).to.match(/\/dev\/pts\/\d+/);
    expect(out).to.match(/^30 100\r?$/m);
    expect(out).to.match(/^40 120\r?$/m);
  });

  it('forwards signals to the command on the terminal', async () => {
    const r = await sb.startDebugConsole({ args: ['sleep', '30'], terminal: true, rows: 24, columns: 80, env: [] });
    const ref = { container_id: '', exec_id: r.exec_id };
    await sb.signalProcess({ ...ref, signal: 15 });
    const st = await sb.waitProcess(ref);
    expect(st.status).to.equal(128 + 15);
  });
});
