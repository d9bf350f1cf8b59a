/**
 * bin/containerd-shim-kata-ts-v2 is both a sh script and the JavaScript file
 * node runs. containerd 1.6 runs `<shim> ... -bundle DIR delete` after every
 * shim disconnect and waits for it; when the bundle's shim still runs and
 * its rootfs is unmounted, the sh part answers that `delete` itself (the
 * DeleteResponse delete.ts would print) without starting node. Every other
 * case goes to node unchanged. A stand-in `node` first on PATH records
 * whether it was started (and refuses to do anything), so these tests fail
 * with a launcher that always starts node.
 */
import { expect } from 'chai';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { REPO } from '../../helpers/guest';
import { skipOrFail } from '../../helpers/skip';
import { BUNDLE_MARKER } from '../../../src/shim/marker';
import { messageType, DECODE_OPTIONS } from '../../../src/protocols/ttrpc/messages';

const LAUNCHER = path.join(REPO, 'bin', 'containerd-shim-kata-ts-v2');

describe('unit: shim launcher, delete without node', () => {
  let dir: string;
  let bundle: string;
  let fakeBin: string;
  let shim: ChildProcess | undefined;

  const nodeCalls = () => path.join(dir, 'node-called');
  /** Runs the launcher as containerd does (cwd: the bundle), with the stand-in node first on PATH. */
  const run = (args: string[]) => {
    fs.rmSync(nodeCalls(), { force: true });
    const r = spawnSync(LAUNCHER, args, { cwd: bundle, env: { ...process.env, PATH: `${fakeBin}:${process.env.PATH}` } });
    const called = fs.existsSync(nodeCalls()) ? fs.readFileSync(nodeCalls(), 'utf8').trim() : undefined;
    return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString(), called };
  };
  const deleteArgs = ['-namespace', 'k8s.io', '-address', '/run/none/containerd.sock', '-publish-binary', '/usr/bin/containerd', '-id', 'c1', '-bundle', '', 'delete'];
  const args = () => deleteArgs.map((a, i) => (i === 9 ? bundle : a));
  /** The marker the shim writes; its sandbox directory exists while the shim serves the pod. */
  const writeMarker = (shimPid: number, sandboxDir = path.join(dir, 'sandbox')) => fs.writeFileSync(path.join(bundle, BUNDLE_MARKER), JSON.stringify({ sandboxId: 'sb', sandboxDir, runDir: dir, shimPid }));
  const decode = (b: Buffer) => {
    const t = messageType('containerd.task.v2.DeleteResponse');
    return t.toObject(t.decode(b), DECODE_OPTIONS) as { pid: number; exit_status: number; exited_at?: { seconds: number; nanos: number } };
  };

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-quick-delete-'));
    bundle = path.join(dir, 'bundle');
    fs.mkdirSync(path.join(bundle, 'rootfs'), { recursive: true });
    fs.mkdirSync(path.join(dir, 'sandbox'));
    fakeBin = path.join(dir, 'bin');
    fs.mkdirSync(fakeBin);
    fs.writeFileSync(path.join(fakeBin, 'node'), `#!/bin/sh\necho "$*" > '${nodeCalls()}'\nexit 3\n`, { mode: 0o755 });
    // A live process whose command line names the shim, as the bundle's serving shim's does.
    shim = spawn('bash', ['-c', 'exec -a containerd-shim-kata-ts-v2 sleep 60'], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 200));
  });

  after(async () => {
    if (shim && shim.exitCode === null && shim.signalCode === null) {
      const gone = new Promise((r) => shim!.once('exit', r));
      shim.kill('SIGKILL');
      await gone;
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('answers delete itself while the bundle\'s shim runs and its rootfs is unmounted', () => {
    writeMarker(shim!.pid!);
    const before = Math.floor(Date.now() / 1000);
    const r = run(args());
    expect(r.called, 'node was started').to.equal(undefined);
    expect(r.status).to.equal(0);
    expect(r.stderr).to.equal('');
    const d = decode(r.stdout);
    expect(d.pid).to.equal(0);
    expect(d.exit_status).to.equal(137); // as delete.ts: a task killed with its shim
    expect(d.exited_at!.seconds).to.be.within(before, Math.floor(Date.now() / 1000));
  });

  it('waits for a shim whose sandbox is gone (on its way out after Shutdown) to exit first', async () => {
    const leaving = spawn('bash', ['-c', 'exec -a containerd-shim-kata-ts-v2 sleep 0.4'], { stdio: 'ignore' });
    const exited = new Promise((r) => leaving.once('exit', r));
    await new Promise((r) => setTimeout(r, 100));
    writeMarker(leaving.pid!, path.join(dir, 'sandbox-gone'));
    const t0 = Date.now();
    const r = await new Promise<{ status: number | null; out: Buffer; called: boolean }>((resolve) => {
      fs.rmSync(nodeCalls(), { force: true });
      const c = spawn(LAUNCHER, args(), { cwd: bundle, env: { ...process.env, PATH: `${fakeBin}:${process.env.PATH}` } });
      const out: Buffer[] = [];
      c.stdout.on('data', (d: Buffer) => out.push(d));
      c.on('close', (status) => resolve({ status, out: Buffer.concat(out), called: fs.existsSync(nodeCalls()) }));
    });
    await exited;
    expect(r.called, 'node was started').to.equal(false);
    expect(r.status).to.equal(0);
    expect(decode(r.out).exit_status).to.equal(137);
    expect(Date.now() - t0, 'answered only once the shim was gone').to.be.at.least(200);
  });

  it('counts a shim that exited but is not reaped yet (a zombie of containerd, its subreaper) as gone', async () => {
    // The parent execs sleep and never reaps: the shim stand-in stays a zombie after 0.3 s.
    const parent = spawn('sh', ['-c', 'bash -c "exec -a containerd-shim-kata-ts-v2 sleep 0.3" & echo $!; exec sleep 5'], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      const pid = Number(await new Promise<string>((r) => parent.stdout!.once('data', (d: Buffer) => r(d.toString()))));
      writeMarker(pid, path.join(dir, 'sandbox-gone'));
      const t0 = Date.now();
      const r = await new Promise<{ status: number | null; out: Buffer }>((resolve) => {
        const c = spawn(LAUNCHER, args(), { cwd: bundle, env: { ...process.env, PATH: `${fakeBin}:${process.env.PATH}` } });
        const out: Buffer[] = [];
        c.stdout.on('data', (d: Buffer) => out.push(d));
        c.on('close', (status) => resolve({ status, out: Buffer.concat(out) }));
      });
      const ms = Date.now() - t0;
      expect(r.status).to.equal(0);
      expect(decode(r.out).exit_status).to.equal(137);
      expect(ms, 'answered once the shim exited, not after the 1 s bound').to.be.below(800);
    } finally {
      const gone = new Promise((r) => parent.once('exit', r));
      parent.kill('SIGKILL');
      await gone;
    }
  });

  it('takes -bundle=DIR, and the working directory when there is no -bundle', () => {
    writeMarker(shim!.pid!);
    const eq = run(args().flatMap((a, i) => (i === 8 ? [] : i === 9 ? [`-bundle=${bundle}`] : [a])));
    expect(eq.called).to.equal(undefined);
    expect(decode(eq.stdout).exit_status).to.equal(137);
    const cwd = run(args().filter((_, i) => i !== 8 && i !== 9));
    expect(cwd.called).to.equal(undefined);
    expect(decode(cwd.stdout).exit_status).to.equal(137);
  });

  it('leaves to node a bundle whose shim is gone, one without a marker, a bad marker, and every other action', () => {
    const dead = spawnSync('true').pid!;
    writeMarker(dead);
    expect(run(args()).called).to.equal(`${LAUNCHER} ${args().join(' ')}`);
    fs.writeFileSync(path.join(bundle, BUNDLE_MARKER), '{"sandboxId":"sb"}');
    expect(run(args()).called).to.match(/ delete$/);
    fs.rmSync(path.join(bundle, BUNDLE_MARKER));
    expect(run(args()).called).to.match(/ delete$/);
    writeMarker(process.pid); // alive, but not a shim (node running mocha)
    expect(run(args()).called).to.match(/ delete$/);
    writeMarker(shim!.pid!);
    const start = run(args().map((a) => (a === 'delete' ? 'start' : a)));
    expect(start.called).to.match(/ start$/);
    expect(start.status).to.equal(3);
  });

  it('leaves to node a bundle whose rootfs is still mounted', function () {
    if (process.getuid?.() !== 0) skipOrFail(this, 'a bind mount on the rootfs needs root');
    writeMarker(shim!.pid!);
    const src = fs.mkdtempSync(path.join(dir, 'src-'));
    execFileSync('mount', ['--bind', src, path.join(bundle, 'rootfs')]);
    try {
      expect(run(args()).called).to.match(/ delete$/);
    } finally {
      execFileSync('umount', [path.join(bundle, 'rootfs')]);
    }
  });

  it('is still the JavaScript launcher when node runs it', () => {
    const out = execFileSync(process.execPath, [LAUNCHER, '-v']).toString();
    expect(out).to.match(/^containerd-shim-kata-ts-v2:\n {2}Version: kata-ts /);
  });
});
