/**
 * The pre-started VM cache's slots and claim protocol (src/factory/vm-cache-*.ts)
 * without VMs: a ClaimServer with stand-in handlers on a slot socket, the
 * claiming side as `start` runs it.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ClaimServer, type ClaimHandlers } from '../../../src/factory/vm-cache-server';
import { claimCachedVm, claimOne } from '../../../src/factory/vm-cache-claim';
import { parseClaim, ClaimError, type ClaimRequest } from '../../../src/factory/vm-cache-protocol';
import { acquireSlot, clearSlot, listSlots, releaseSlot, slotFile, type CacheEntryMeta } from '../../../src/factory/vm-cache-store';

const CONFIG = { path: '/etc/kata-ts/x.toml', sha256: 'ab'.repeat(32) };

function request(id: string, over: Partial<ClaimRequest> = {}): ClaimRequest {
  return { v: 1, flags: { id, namespace: 'ns', address: '/run/c.sock', publishBinary: '', bundle: `/b/${id}`, debug: false, socket: `/s/${id}` }, env: { TTRPC_ADDRESS: '/run/c.sock.ttrpc' }, config: CONFIG, ...over };
}

/** A dead pid: a process that ran and was reaped. */
function deadPid(): number {
  return spawnSync('true').pid!;
}

/** Registers slot `slot` as a ready entry of process `pid` (files only). */
function register(dir: string, slot: number, pid: number): void {
  fs.writeFileSync(slotFile(dir, slot, 'pid'), String(pid));
  const meta: CacheEntryMeta = {
    schemaVersion: 1, slot, pid, qemuPid: 0, config: CONFIG, debug: false, template: { key: 'k', createdAt: 't' },
    startedAt: new Date().toISOString(), readyAt: new Date().toISOString(), vmDir: path.join(dir, `vm-${slot}-00`),
  };
  fs.writeFileSync(slotFile(dir, slot, 'json'), JSON.stringify(meta));
}

describe('unit: pre-started VM cache — slots and claims', () => {
  let dir = '';
  const servers: ClaimServer[] = [];

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-vmc-'));
  });
  afterEach(() => {
    for (const s of servers.splice(0)) s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A cached entry in slot 0 of this process whose takeOver succeeds; records what happened. */
  async function entry(over: Partial<ClaimHandlers> = {}): Promise<{ server: ClaimServer; events: string[] }> {
    register(dir, 0, process.pid);
    const events: string[] = [];
    const server = new ClaimServer(slotFile(dir, 0, 'sock'), {
      check: () => undefined,
      unregister: () => { events.push('unregister'); releaseSlot(dir, 0); },
      takeOver: async (r) => { events.push(`takeOver ${r.flags.id}`); },
      abandon: (why) => { events.push(`abandon ${why}`); },
      ...over,
    });
    await server.listen();
    servers.push(server);
    return { server, events };
  }

  it('a slot has one holder: a second acquire fails while the first lives; a dead holder is replaced', () => {
    expect(acquireSlot(dir, 0)).to.equal(true);
    expect(acquireSlot(dir, 0, process.pid + 1)).to.equal(false);
    clearSlot(dir, 0);
    fs.writeFileSync(slotFile(dir, 1, 'pid'), String(deadPid()));
    expect(acquireSlot(dir, 1)).to.equal(true);
    expect(fs.readFileSync(slotFile(dir, 1, 'pid'), 'utf8')).to.equal(String(process.pid));
    releaseSlot(dir, 1, process.pid + 1); // not the holder: nothing happens
    expect(fs.existsSync(slotFile(dir, 1, 'pid'))).to.equal(true);
    releaseSlot(dir, 1);
    expect(fs.existsSync(slotFile(dir, 1, 'pid'))).to.equal(false);
  });

  it('listSlots: free, starting, ready; a dead holder\'s registration is removed', async () => {
    await entry();
    fs.writeFileSync(slotFile(dir, 1, 'pid'), String(process.pid));
    register(dir, 2, deadPid());
    fs.writeFileSync(slotFile(dir, 2, 'sock'), '');
    const s = listSlots(dir, 4);
    expect(s.map((x) => `${x.slot}:${x.state}`)).to.deep.equal(['0:ready', '1:starting', '2:free', '3:free']);
    expect(['pid', 'json', 'sock'].map((e) => fs.existsSync(slotFile(dir, 2, e as 'pid')))).to.deep.equal([false, false, false]);
  });

  it('of two concurrent claims exactly one wins; the entry leaves the cache once', async () => {
    const { events } = await entry();
    const deadline = Date.now() + 5000;
    const sock = slotFile(dir, 0, 'sock');
    const [a, b] = await Promise.all([claimOne(sock, request('a'), deadline), claimOne(sock, request('b'), deadline)]);
    expect([a.ok, b.ok].filter(Boolean)).to.have.length(1);
    const lost = (a.ok ? b : a) as { ok: false; error: string };
    // The loser either talked to it after the claim or found its socket closed.
    expect(lost.error).to.match(/already claimed|ECONNREFUSED|ENOENT|closed/);
    expect(events.filter((e) => e === 'unregister')).to.have.length(1);
    expect(events.filter((e) => e.startsWith('takeOver'))).to.have.length(1);
    expect(fs.existsSync(slotFile(dir, 0, 'pid'))).to.equal(false);
  });

  it('through claimCachedVm: two starts, one cached VM — one claims it, the other is told why not', async () => {
    await entry();
    const [a, b] = await Promise.all([claimCachedVm(dir, 1, request('a'), 3000), claimCachedVm(dir, 1, request('b'), 3000)]);
    expect([a.ok, b.ok].filter(Boolean)).to.have.length(1);
    const lost = (a.ok ? b : a) as { ok: false; reason: string };
    expect(lost.reason).to.match(/no cached VM (ready|could be claimed)/);
  });

  it('a malformed claim gets one clear error and leaves the entry as it was (a valid claim then succeeds)', async () => {
    const { events } = await entry();
    const sock = slotFile(dir, 0, 'sock');
    const raw = (line: string) => new Promise<string>((resolve) => {
      const c = net.createConnection(sock, () => c.write(line + '\n'));
      let out = '';
      c.on('data', (d) => { out += d.toString(); });
      c.on('close', () => resolve(out));
    });
    expect(JSON.parse(await raw('not json'))).to.deep.include({ ok: false });
    expect(JSON.parse(await raw('not json')).error).to.match(/^malformed claim: not JSON/);
    expect(JSON.parse(await raw(JSON.stringify({ ...request('x'), flags: { id: 'x' } }))).error).to.equal('malformed claim: flags.namespace must be a string');
    expect(events).to.deep.equal([]);
    expect(fs.existsSync(slotFile(dir, 0, 'pid'))).to.equal(true);
    expect(listSlots(dir, 1)[0]!.state).to.equal('ready');
    expect(await claimOne(sock, request('ok'), Date.now() + 3000)).to.deep.equal({ ok: true });
    expect(events).to.deep.equal(['unregister', 'takeOver ok']);
  });

  it('parseClaim names what is wrong', () => {
    expect(() => parseClaim('{"v":2}')).to.throw(ClaimError, 'malformed claim: expected {"v":1,…}');
    expect(() => parseClaim(JSON.stringify({ ...request('a'), flags: { ...request('a').flags, debug: 'no' } }))).to.throw(ClaimError, 'flags.debug must be a boolean');
    expect(() => parseClaim(JSON.stringify({ ...request('a'), flags: { ...request('a').flags, bundle: 'rel' } }))).to.throw(ClaimError, /absolute flags.bundle/);
    expect(() => parseClaim(JSON.stringify({ ...request('a'), env: { A: 1 } }))).to.throw(ClaimError, 'env must map names to strings');
    expect(parseClaim(JSON.stringify(request('a'))).flags.id).to.equal('a');
  });

  it('a stale entry (the template was rebuilt) is told so, leaves, and the claimer falls back', async () => {
    const { events } = await entry({ check: () => 'the VM template was rebuilt or removed since this VM was cached' });
    const r = await claimCachedVm(dir, 1, request('a'), 3000);
    expect(r).to.deep.equal({ ok: false, reason: 'no cached VM could be claimed: slot 0 (pid ' + process.pid + '): the VM template was rebuilt or removed since this VM was cached' });
    expect(events).to.deep.equal(['unregister', 'abandon stale: the VM template was rebuilt or removed since this VM was cached']);
  });

  it('a dead entry (holder gone, socket left) is skipped and removed', async () => {
    register(dir, 0, deadPid());
    // A socket file nobody listens on (bound by a process that exited without unlinking it).
    const bind = spawnSync('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', slotFile(dir, 0, 'sock')]);
    expect(bind.status, String(bind.stderr)).to.equal(0);
    expect(fs.existsSync(slotFile(dir, 0, 'sock'))).to.equal(true);
    const r = await claimCachedVm(dir, 1, request('a'), 3000);
    expect(r).to.deep.equal({ ok: false, reason: `no cached VM ready in ${dir}` });
    expect(['pid', 'json', 'sock'].map((e) => fs.existsSync(slotFile(dir, 0, e as 'pid')))).to.deep.equal([false, false, false]);
  });

  it('only an entry made with the same configuration file and debug setting is claimed', async () => {
    const { events } = await entry();
    const other = await claimCachedVm(dir, 1, request('a', { config: { path: CONFIG.path, sha256: 'cd'.repeat(32) } }), 3000);
    expect(other).to.deep.equal({ ok: false, reason: 'the 1 cached VM(s) were made with another configuration file or debug setting' });
    const dbg = request('b');
    dbg.flags.debug = true;
    expect((await claimCachedVm(dir, 1, dbg, 3000)).ok).to.equal(false);
    expect(events).to.deep.equal([]);
  });

  it('a claimer that goes away after the claim, before its ack, makes the entry abandon itself', async () => {
    let release: () => void = () => undefined;
    const { events } = await entry({ takeOver: () => new Promise<void>((r) => { release = r; }) });
    const c = net.createConnection(slotFile(dir, 0, 'sock'), () => c.write(JSON.stringify(request('a')) + '\n'));
    await new Promise<void>((r) => c.once('data', () => r()));
    c.destroy();
    await new Promise((r) => setTimeout(r, 100));
    release();
    expect(events).to.deep.equal(['unregister', 'abandon the claimer went away before acknowledging']);
  });
});
