/**
 * Builtin VMM snapshot and restore (src/vmm/snapshot) with the test guest's
 * `count` mode, whose whole state (counter, accumulator, last serial byte)
 * lives in guest RAM and whose ticks come from the in-kernel PIT and PIC:
 *  - snapshot mid-run; two clones restored from it run at the same time,
 *    each continues the computation exactly where it stopped, and each sees
 *    only its own serial input (copy-on-write RAM, separate devices);
 *  - with an active virtio device (the echo device, polled by the guest)
 *    the transport and queue indices come back: both clones keep getting
 *    correct replies on fresh devices;
 *  - a request a device popped and never completed makes the snapshot
 *    wait, then refuse, leaving no state file and the VM running;
 *  - a restored VM snapshots again (its RAM scanned, zero pages skipped)
 *    and that second-generation snapshot restores and continues;
 *  - the memory file is sparse, the state file small;
 *  - bad input: truncated or corrupt state file, another VMM version, a
 *    memory file of the wrong size, the directory removed mid-restore,
 *    devices that do not match — one SnapshotError each, and no fd, thread
 *    or mapping left behind.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Machine } from '../../../src/vmm/machine';
import { decodeState, encodeState, MEMORY_FILE, SnapshotError, STATE_FILE } from '../../../src/vmm/snapshot/format';
import { buildGuest } from './guest-build';
import { checkCount, countLines, startCountGuest } from './count-guest';
import { EchoDevice } from './echo-device';
import { fdCount, kvmUsable, threadCount } from './helpers';
import { skipOrFail } from '../../helpers/skip';
import { until } from '../../helpers/until';

const mappingsOf = (file: string) => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(file)).length;

describe('vmm snapshot and restore (test guest)', function () {
  this.timeout(90000);
  let tmp: string;
  let snapDir: string;
  let atSnapshot: string; // the original's serial output when it was snapshotted
  const machines: Machine[] = [];

  before(async function () {
    const noKvm = kvmUsable();
    if (noKvm) skipOrFail(this, noKvm, { hostCannot: true });
    const noGuest = buildGuest().reason;
    if (noGuest) skipOrFail(this, noGuest);
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-vmm-snap-'));
    snapDir = path.join(tmp, 'snap');
    const g = startCountGuest();
    machines.push(g.machine);
    await until('20 count lines', () => (countLines(g.out()).length >= 20 ? true : undefined), 30000, 10);
    await g.machine.pause();
    const info = await g.machine.snapshot(snapDir);
    atSnapshot = g.out();
    expect(g.machine.isPaused, 'a paused machine stays paused after snapshot').to.equal(true);
    await g.machine.stop();
    g.machine.close();
    console.log(`    snapshot: ${info.pausedMs.toFixed(1)} ms paused, state ${info.stateBytes} B, memory ${info.memoryBytes >> 20} MiB with ${info.memoryDataBytes >> 10} KiB of data`);
  });

  after(async () => {
    for (const m of machines) { await m.stop(); m.close(); }
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('two concurrent restores both continue the guest exactly where it stopped, independently', async () => {
    const outs = [atSnapshot, atSnapshot];
    const clones = [0, 1].map((k) => Machine.restore(snapDir, { serialOut: (b) => { outs[k] += Buffer.from(b).toString('latin1'); } }));
    machines.push(...clones);
    const at = countLines(atSnapshot).length;
    clones.forEach((m) => m.start());
    // Give each its own serial byte once it has run a little.
    await until('both clones past the snapshot', () => (outs.every((o) => countLines(o).length >= at + 5) ? true : undefined), 30000, 10);
    clones[0].serial.input(Buffer.from('a'));
    clones[1].serial.input(Buffer.from('b'));
    await until('40 lines after the snapshot in both', () => (outs.every((o) => countLines(o).length >= at + 40) ? true : undefined), 30000, 10);
    for (const m of clones) { await m.stop(); expect(m.endReason?.kind).to.equal('stopped'); }
    outs.forEach((o, k) => {
      const lines = countLines(o);
      expect(checkCount(lines), `clone ${k}`).to.equal(undefined);
      const tags = new Set(lines.slice(at).map((l) => l.tag));
      const mine = k === 0 ? 'a' : 'b';
      expect([...tags].sort(), `clone ${k} tags`).to.deep.equal(['-', mine]);
    });
    // Same past, different futures: identical up to the snapshot, diverged after.
    const [l0, l1] = outs.map(countLines);
    expect(l0[at - 1]).to.deep.equal(l1[at - 1]);
    expect(l0[at + 39].acc).to.not.equal(l1[at + 39].acc);
  });

  it('an active virtio device: transport and queue indices restored, both clones keep getting replies', async () => {
    const dev = new EchoDevice();
    const g = startCountGuest(100000, { devices: [dev], extra: 'echo' });
    machines.push(g.machine);
    const echoes = (o: string) => [...o.matchAll(/^echo (\d+) (.*)\n/gm)].map((m) => ({ i: Number(m[1]), reply: m[2] }));
    await until('3 echo lines', () => (echoes(g.out()).length >= 3 ? true : undefined), 30000, 10);
    await g.machine.pause();
    const dir = path.join(tmp, 'snap-echo');
    await g.machine.snapshot(dir);
    const base = g.out();
    await g.machine.stop();
    const state = decodeState(fs.readFileSync(path.join(dir, STATE_FILE)));
    expect(state.meta.transports[0].active).to.equal(true);
    expect(state.meta.transports[0].queues[0].lastAvail).to.be.at.least(3);
    const devs = [new EchoDevice(), new EchoDevice()];
    const outs = [base, base];
    const clones = devs.map((d, k) => Machine.restore(dir, { devices: [d], serialOut: (b) => { outs[k] += Buffer.from(b).toString('latin1'); } }));
    machines.push(...clones);
    clones.forEach((m) => m.start());
    const at = echoes(base).length;
    await until('4 more echoes in both', () => (outs.every((o) => echoes(o).length >= at + 4) ? true : undefined), 30000, 10);
    for (const m of clones) await m.stop();
    outs.forEach((o, k) => {
      for (const e of echoes(o)) expect(e.reply, `clone ${k} echo ${e.i}`).to.equal(`pong:ping ${e.i}`);
      expect(checkCount(countLines(o)), `clone ${k}`).to.equal(undefined);
      expect(devs[k].seen.length, `clone ${k}'s own device served its requests`).to.be.at.least(4);
    });
  });

  it('refuses (after the drain timeout) while a device holds a popped request, leaves no state file, and the VM runs on', async () => {
    /** Pops every chain and never completes it: a request forever in flight. */
    class StuckDevice extends EchoDevice {
      override queueNotify(index: number): void { const q = this.ctx?.queues[index]; if (q) q.popBatch(); }
    }
    const g = startCountGuest(100000, { devices: [new StuckDevice()], extra: 'echo' });
    machines.push(g.machine);
    // The guest's first ping (tick 5) is popped and never answered: it now spins in vq_wait.
    await until('the guest to have sent its ping', () => (countLines(g.out()).length >= 5 ? true : undefined), 30000, 10);
    await new Promise((r) => setTimeout(r, 50));
    const dir = path.join(tmp, 'snap-stuck');
    let err: unknown;
    const t0 = Date.now();
    try { await g.machine.snapshot(dir); } catch (e) { err = e; }
    expect(err).to.be.instanceOf(SnapshotError);
    expect((err as SnapshotError).kind).to.equal('refused');
    expect((err as Error).message).to.match(/virtio requests still in flight after 2000 ms \(type 127: 1\)/);
    expect(Date.now() - t0).to.be.at.least(2000);
    expect(fs.existsSync(path.join(dir, STATE_FILE))).to.equal(false);
    expect(g.machine.isRunning && !g.machine.isPaused, 'resumed after the refusal').to.equal(true);
    await g.machine.stop();
  });

  it('a restored VM can be snapshotted again (no memfd: its RAM is scanned) and that snapshot restores too', async () => {
    let out = atSnapshot;
    const c1 = Machine.restore(snapDir, { serialOut: (b) => { out += Buffer.from(b).toString('latin1'); } });
    machines.push(c1);
    const at = countLines(atSnapshot).length;
    c1.start();
    await until('10 lines in the first clone', () => (countLines(out).length >= at + 10 ? true : undefined), 30000, 10);
    await c1.pause();
    const dir2 = path.join(tmp, 'snap-of-clone');
    const info = await c1.snapshot(dir2);
    const cut = out;
    await c1.stop();
    expect(info.memoryDataBytes).to.be.below(1 << 20); // zero pages skipped even without SEEK_DATA
    let out2 = cut;
    const c2 = Machine.restore(dir2, { serialOut: (b) => { out2 += Buffer.from(b).toString('latin1'); } });
    machines.push(c2);
    c2.start();
    await until('10 more lines in the second generation', () => (countLines(out2).length >= countLines(cut).length + 10 ? true : undefined), 30000, 10);
    await c2.stop();
    expect(checkCount(countLines(out2))).to.equal(undefined);
  });

  it('writes a sparse memory file and a small state file', () => {
    const st = fs.statSync(path.join(snapDir, MEMORY_FILE));
    expect(st.size).to.equal(64 << 20);
    expect(st.blocks * 512).to.be.below(2 << 20); // the guest touched a few dozen pages
    const state = fs.readFileSync(path.join(snapDir, STATE_FILE));
    expect(state.length).to.be.below(64 << 10);
    const s = decodeState(state);
    expect(s.meta.vcpus).to.equal(1);
    expect(s.meta.cmdline).to.equal('test=count n=100000');
    expect(s.meta.vcpu[0].msrs.map(([i]) => i)).to.include(0x10); // the TSC travels
  });

  it('refuses a snapshot of a machine that is not running', async () => {
    const g = buildGuest();
    const m = new Machine({ memoryBytes: 32 << 20, vcpus: 1, kernel: g.elf!, cmdline: 'test=serial' });
    try {
      let err: unknown;
      try { await m.snapshot(path.join(tmp, 'never')); } catch (e) { err = e; }
      expect(err).to.be.instanceOf(SnapshotError);
      expect((err as SnapshotError).kind).to.equal('refused');
      expect(fs.existsSync(path.join(tmp, 'never'))).to.equal(false);
    } finally { m.close(); }
  });

  describe('bad input: one clear error, nothing left behind', () => {
    let n = 0;
    /** A fresh copy of the good snapshot, altered by `spoil`. */
    const spoiled = (spoil: (dir: string) => void): string => {
      const d = path.join(tmp, `bad${n++}`);
      fs.mkdirSync(d);
      for (const f of [STATE_FILE, MEMORY_FILE]) fs.copyFileSync(path.join(snapDir, f), path.join(d, f));
      spoil(d);
      return d;
    };
    const expectRefused = (dir: string, kind: string, msg: RegExp, opts: Parameters<typeof Machine.restore>[1] = {}) => {
      const fds = fdCount(), threads = threadCount();
      let err: unknown;
      try { machines.push(Machine.restore(dir, opts)); } catch (e) { err = e; }
      expect(err, 'restore must fail').to.be.instanceOf(SnapshotError);
      expect((err as SnapshotError).kind).to.equal(kind);
      expect((err as Error).message).to.match(msg);
      expect(fdCount(), 'fds').to.equal(fds);
      expect(threadCount(), 'threads').to.equal(threads);
      expect(mappingsOf(path.join(dir, MEMORY_FILE)), 'memory file mappings').to.equal(0);
    };

    it('a truncated state file', () => {
      const d = spoiled((dir) => { const f = path.join(dir, STATE_FILE); fs.truncateSync(f, fs.statSync(f).size - 100); });
      expectRefused(d, 'format', /truncated/);
      const d2 = spoiled((dir) => fs.truncateSync(path.join(dir, STATE_FILE), 20));
      expectRefused(d2, 'format', /shorter than its 48-byte header/);
    });

    it('a corrupt state file (checksum)', () => {
      const d = spoiled((dir) => { const f = path.join(dir, STATE_FILE); const b = fs.readFileSync(f); b[b.length - 7] ^= 0x40; fs.writeFileSync(f, b); });
      expectRefused(d, 'checksum', /checksum mismatch/);
    });

    it('a state file from another VMM version', () => {
      const d = spoiled((dir) => {
        const f = path.join(dir, STATE_FILE);
        const s = decodeState(fs.readFileSync(f));
        s.meta.vmm = 'kata-ts-builtin-vmm/0';
        fs.writeFileSync(f, encodeState(s));
      });
      expectRefused(d, 'version', /written by "kata-ts-builtin-vmm\/0"/);
      const d2 = spoiled((dir) => { const f = path.join(dir, STATE_FILE); const b = fs.readFileSync(f); b.writeUInt32LE(99, 8); fs.writeFileSync(f, b); });
      expectRefused(d2, 'version', /format 99/);
    });

    it('a memory file of the wrong size', () => {
      const d = spoiled((dir) => fs.truncateSync(path.join(dir, MEMORY_FILE), 32 << 20));
      expectRefused(d, 'mismatch', /is 33554432 bytes; the state file says 67108864/);
    });

    it('the snapshot directory removed mid-restore', () => {
      const d = spoiled(() => {});
      expectRefused(d, 'io', /cannot open the snapshot memory file/, { hooks: { afterStateRead: () => fs.rmSync(d, { recursive: true, force: true }) } });
      expectRefused(path.join(tmp, 'no-such-snapshot'), 'io', /cannot read snapshot state/);
    });

    it('devices that do not match the snapshot', () => {
      const d = spoiled(() => {});
      expectRefused(d, 'mismatch', /the snapshot has 0 virtio device\(s\); the restore was given 1/, { devices: [new EchoDevice()] });
    });
  });
});
