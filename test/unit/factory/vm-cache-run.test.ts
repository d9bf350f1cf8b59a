/**
 * `kata-ts run`'s claim mode of the VM cache (src/factory/vm-cache-run-*.ts)
 * without VMs: its lines are parsed strictly (malformed ones refused with
 * what is wrong), the stdio fds go through a real unix socket with
 * SCM_RIGHTS (three or refused, none or a timeout refused), and a
 * ClaimServer hands a run claim to its run handler — or refuses it, the
 * entry staying, when it has none; a stale one is refused for the run too.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../../src/common/native';
import { ClaimError } from '../../../src/factory/vm-cache-protocol';
import { checkStdioFds, isRunClaim, parseRunClaim, parseRunControl, parseRunReport, type RunClaimRequest } from '../../../src/factory/vm-cache-run-protocol';
import { receiveStdioFds } from '../../../src/factory/vm-cache-run-serve';
import { claimRunOne } from '../../../src/factory/vm-cache-run-claim';
import { ClaimServer, type ClaimHandlers } from '../../../src/factory/vm-cache-server';
import { claimFromSlots } from '../../../src/factory/vm-cache-claim';
import { releaseSlot, slotFile, type CacheEntryMeta } from '../../../src/factory/vm-cache-store';
import { requireNative } from './native-helper';

const CONFIG = { path: '/etc/kata-ts/x.toml', sha256: 'ab'.repeat(32) };

function runRequest(over: Partial<RunClaimRequest['run']> = {}): RunClaimRequest {
  return {
    v: 1, mode: 'run', flags: { debug: false }, config: CONFIG,
    run: { id: 'run-1', spec: { ociVersion: '1.0.2', process: { args: ['echo', 'hi'], cwd: '/' } } as RunClaimRequest['run']['spec'], rootfs: '/var/cache/kata-ts/rootfs/busybox', rootfsShare: 'virtiofs', rootfsOverlay: true, dns: [], ...over },
  };
}

function malformed(fn: () => unknown, msg: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).to.be.instanceOf(ClaimError);
  expect((err as ClaimError).kind).to.equal('malformed');
  expect((err as Error).message).to.match(msg);
}

describe('unit: VM cache run claims — protocol lines', () => {
  it('parses a run claim and tells it from a shim claim', () => {
    const line = JSON.stringify(runRequest());
    expect(isRunClaim(line)).to.equal(true);
    expect(isRunClaim('{"v":1,"flags":{}}')).to.equal(false);
    expect(isRunClaim('not json')).to.equal(false);
    expect(parseRunClaim(line)).to.deep.equal(runRequest());
  });

  it('refuses malformed run claims, naming what is wrong', () => {
    malformed(() => parseRunClaim('{'), /not JSON/);
    malformed(() => parseRunClaim('[1]'), /expected an object/);
    malformed(() => parseRunClaim(JSON.stringify({ ...runRequest(), v: 2 })), /expected \{"v":1,"mode":"run"/);
    malformed(() => parseRunClaim(JSON.stringify({ ...runRequest(), flags: {} })), /flags.debug must be a boolean/);
    malformed(() => parseRunClaim(JSON.stringify({ ...runRequest(), config: { path: 1 } })), /config must be/);
    malformed(() => parseRunClaim(JSON.stringify(runRequest({ id: '../x' }))), /run.id must be a sandbox id/);
    malformed(() => parseRunClaim(JSON.stringify(runRequest({ rootfs: 'rel/dir' }))), /run.rootfs must be an absolute path/);
    malformed(() => parseRunClaim(JSON.stringify(runRequest({ rootfsShare: 'nfs' as 'virtiofs' }))), /rootfsShare must be "virtiofs" or "erofs"/);
    malformed(() => parseRunClaim(JSON.stringify(runRequest({ rootfsOverlay: 'yes' as unknown as boolean }))), /rootfsOverlay must be a boolean/);
    malformed(() => parseRunClaim(JSON.stringify(runRequest({ dns: [1] as unknown as string[] }))), /run.dns must be a list of strings/);
    malformed(() => parseRunClaim(JSON.stringify(runRequest({ spec: { process: { args: [] } } as unknown as RunClaimRequest['run']['spec'] }))), /process.args/);
    malformed(() => parseRunClaim(JSON.stringify({ ...runRequest(), logLevel: 'loud' })), /logLevel must be/);
  });

  it('control lines: signals and sizes, anything else refused', () => {
    expect(parseRunControl('{"signal":"SIGINT"}')).to.deep.equal({ signal: 'SIGINT' });
    expect(parseRunControl('{"resize":{"rows":24,"cols":80}}')).to.deep.equal({ resize: { rows: 24, cols: 80 } });
    malformed(() => parseRunControl('{"signal":"SIGKILL"}'), /signal must be one of SIGINT, SIGTERM, SIGHUP/);
    malformed(() => parseRunControl('{"resize":{"rows":0,"cols":80}}'), /integer rows and cols/);
    malformed(() => parseRunControl('{"resize":{"rows":2.5,"cols":80}}'), /integer rows and cols/);
    malformed(() => parseRunControl('{"hello":1}'), /expected \{"signal"/);
    malformed(() => parseRunControl('SIGINT'), /not JSON/);
  });

  it('report lines: started, exit status, error with its code', () => {
    expect(parseRunReport('{"started":true}')).to.deep.equal({ started: true });
    expect(parseRunReport('{"exit":7}')).to.deep.equal({ exit: 7 });
    expect(parseRunReport('{"error":"boom","code":125}')).to.deep.equal({ error: 'boom', code: 125 });
    malformed(() => parseRunReport('{"exit":256}'), /exit must be an integer in 0..255/);
    malformed(() => parseRunReport('{"exit":"0"}'), /exit must be an integer/);
    malformed(() => parseRunReport('{"error":"boom"}'), /integer code/);
    malformed(() => parseRunReport('{}'), /expected \{"started":true\}/);
  });

  it('stdio fds: exactly three, and none lost in transit', () => {
    expect(checkStdioFds([5, 6, 7])).to.deep.equal([5, 6, 7]);
    malformed(() => checkStdioFds([]), /passed 0 fd\(s\), expected 3 \(stdin, stdout, stderr\)/);
    malformed(() => checkStdioFds([5, 6]), /passed 2 fd\(s\)/);
    malformed(() => checkStdioFds([5, 6, 7], true), /truncated/);
  });
});

describe('unit: VM cache run claims — fds and the claim server', function () {
  let dir = '';
  const servers: ClaimServer[] = [];

  before(function () {
    requireNative(this);
  });
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-vmcr-'));
  });
  afterEach(() => {
    for (const s of servers.splice(0)) s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Connects to `sock` and sends one message with `fds`. */
  function pass(sock: string, fds: number[]): void {
    const n = native();
    const fd = n.unixConnect(sock);
    try {
      n.sendMsg(fd, Buffer.from('stdio'), fds);
    } finally {
      n.closeFd(fd);
    }
  }

  it('receives three fds that refer to what was passed', async () => {
    const sock = path.join(dir, 'stdio.sock');
    const file = path.join(dir, 'out');
    const fd = fs.openSync(file, 'w');
    const { ready } = receiveStdioFds(sock, 5000);
    pass(sock, [fd, fd, fd]);
    const got = await ready;
    fs.closeSync(fd);
    expect(got).to.have.length(3);
    fs.writeSync(got[1], 'through the passed fd');
    for (const f of got) fs.closeSync(f);
    expect(fs.readFileSync(file, 'utf8')).to.equal('through the passed fd');
    expect(fs.existsSync(sock), 'the one-shot socket is removed').to.equal(false);
  });

  it('refuses two fds, and a connection without any; times out with none', async () => {
    const fd = fs.openSync('/dev/null', 'r');
    try {
      const a = receiveStdioFds(path.join(dir, 'a.sock'), 5000);
      pass(path.join(dir, 'a.sock'), [fd, fd]);
      await a.ready.then(() => expect.fail('accepted two fds'), (e: Error) => expect(e.message).to.match(/passed 2 fd\(s\), expected 3/));
      const b = receiveStdioFds(path.join(dir, 'b.sock'), 5000);
      pass(path.join(dir, 'b.sock'), []);
      await b.ready.then(() => expect.fail('accepted no fds'), (e: Error) => expect(e.message).to.match(/passed 0 fd\(s\)/));
      const c = receiveStdioFds(path.join(dir, 'c.sock'), 100);
      await c.ready.then(() => expect.fail('resolved without a claimer'), (e: Error) => expect(e.message).to.match(/did not pass its stdio within 100 ms/));
      expect(fs.readdirSync(dir)).to.deep.equal([]);
    } finally {
      fs.closeSync(fd);
    }
  });

  /** A registered slot-0 entry of this process whose handlers record events. */
  async function entry(over: Partial<ClaimHandlers>): Promise<string[]> {
    fs.writeFileSync(slotFile(dir, 0, 'pid'), String(process.pid));
    const meta: CacheEntryMeta = {
      schemaVersion: 1, slot: 0, pid: process.pid, qemuPid: 0, config: CONFIG, debug: false, template: { key: 'k', createdAt: 't' },
      startedAt: new Date().toISOString(), readyAt: new Date().toISOString(), vmDir: path.join(dir, 'vm-0-00'),
    };
    fs.writeFileSync(slotFile(dir, 0, 'json'), JSON.stringify(meta));
    const events: string[] = [];
    const server = new ClaimServer(slotFile(dir, 0, 'sock'), {
      check: () => undefined,
      unregister: () => { events.push('unregister'); releaseSlot(dir, 0); },
      takeOver: async () => { events.push('takeOver'); },
      abandon: (why) => { events.push(`abandon ${why}`); },
      ...over,
    });
    await server.listen();
    servers.push(server);
    return events;
  }

  it('a run claim reaches the run handler with the claimer\'s fds; its exit status comes back', async () => {
    const stdioSock = path.join(dir, 'stdio.sock');
    const events = await entry({
      run: (req, conn) => {
        events.push(`run ${req.run.id}`);
        const { ready } = receiveStdioFds(stdioSock, 5000);
        conn.write(JSON.stringify({ ok: true, phase: 'claimed', stdio: stdioSock }) + '\n');
        void ready.then((fds) => {
          fs.writeSync(fds[1], 'out from the entry');
          for (const f of fds) fs.closeSync(f);
          conn.end(JSON.stringify({ started: true }) + '\n' + JSON.stringify({ exit: 7 }) + '\n');
        });
      },
    });
    const out = path.join(dir, 'stdout');
    const fd = fs.openSync(out, 'w');
    try {
      const r = await claimFromSlots(dir, 1, runRequest(), 5000, claimRunOne([fd, fd, fd]));
      expect(r.ok, JSON.stringify(r)).to.equal(true);
      if (!r.ok) return;
      let started = false;
      r.value.onStarted(() => { started = true; });
      expect(await r.value.done).to.deep.equal({ exit: 7 });
      expect(started).to.equal(true);
    } finally {
      fs.closeSync(fd);
    }
    expect(fs.readFileSync(out, 'utf8')).to.equal('out from the entry');
    expect(events).to.deep.equal(['unregister', 'run run-1']);
  });

  it('an entry without a run handler refuses a run claim and stays in the cache', async () => {
    const events = await entry({});
    const r = await claimFromSlots(dir, 1, runRequest(), 3000, claimRunOne());
    expect(r.ok).to.equal(false);
    expect(!r.ok && r.reason).to.match(/this cached VM does not serve run claims/);
    expect(events).to.deep.equal([]);
    expect(fs.existsSync(slotFile(dir, 0, 'pid'))).to.equal(true);
  });

  it('a stale entry refuses a run claim and leaves (abandon)', async () => {
    const events = await entry({ check: () => 'the VM template was rebuilt', run: () => { events.push('run'); } });
    const r = await claimFromSlots(dir, 1, runRequest(), 3000, claimRunOne());
    expect(!r.ok && r.reason).to.match(/the VM template was rebuilt/);
    expect(events).to.deep.equal(['unregister', 'abandon stale: the VM template was rebuilt']);
  });

  it('an entry that dies after taking the fds: the claimer\'s session fails with one clear error', async () => {
    const stdioSock = path.join(dir, 'stdio.sock');
    await entry({
      run: (_req, conn) => {
        const { ready } = receiveStdioFds(stdioSock, 5000);
        conn.write(JSON.stringify({ ok: true, phase: 'claimed', stdio: stdioSock }) + '\n');
        void ready.then((fds) => { for (const f of fds) fs.closeSync(f); conn.destroy(); });
      },
    });
    const fd = fs.openSync('/dev/null', 'w');
    try {
      const r = await claimFromSlots(dir, 1, runRequest(), 5000, claimRunOne([fd, fd, fd]));
      expect(r.ok).to.equal(true);
      if (!r.ok) return;
      await r.value.done.then(() => expect.fail('resolved'), (e: Error) => expect(e.message).to.match(/ended without reporting the container's exit status/));
    } finally {
      fs.closeSync(fd);
    }
  });
});
