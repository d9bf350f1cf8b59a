/**
 * A private containerd for end-to-end tests: root, state, sockets and config
 * under one temp dir (nothing outside it is read or written), our shim put on
 * its PATH, kata-ts configured through $KATA_TS_CONFIG with its own run dir.
 * A tiny OCI image is built at test time from Debian's busybox-static (an
 * OCI image layout tar, imported with `ctr images import`; no registry).
 *
 * stop() leaves nothing behind: containerd, every shim and QEMU started
 * under the temp dir, mounts below it, and the dir itself.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { expect } from 'chai';
import { CACHE, REPO, requireGuest } from './guest';
import { skipOrFail } from './skip';
import { runCommand, type CommandResult } from './spawn';

export type CtrResult = CommandResult;

export const IMAGE = 'docker.io/kata-ts-test/busybox:latest';
export const USER_IMAGE = 'docker.io/kata-ts-test/busybox:user';
export const RUNTIME = 'io.containerd.kata-ts.v2';

/** Why containerd tests cannot run here, or undefined. */
export function containerdAvailable(): string | undefined {
  for (const b of ['/usr/bin/containerd', '/usr/bin/ctr', '/bin/busybox']) if (!fs.existsSync(b)) return `${b} missing (apt-get install containerd busybox-static)`;
  if (process.getuid?.() !== 0) return 'containerd tests need root';
  return undefined;
}

function sha256(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

/** An image config (OCI `config` object) for one more tag of the busybox image. */
export interface ExtraTag { tag: string; config: Record<string, unknown> }

/** Builds an OCI image layout tar with two tags (plus `extra`) over one busybox layer. */
export function buildBusyboxImage(dir: string, extra: ExtraTag[] = []): string {
  const rootfs = path.join(dir, 'layer-root');
  for (const d of ['bin', 'etc', 'tmp', 'home', 'root', 'proc', 'sys', 'dev']) fs.mkdirSync(path.join(rootfs, d), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
  fs.chmodSync(path.join(rootfs, 'bin', 'busybox'), 0o755);
  const applets = execFileSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).split('\n').filter(Boolean);
  for (const a of applets) if (a !== 'busybox') fs.symlinkSync('busybox', path.join(rootfs, 'bin', a));
  fs.writeFileSync(path.join(rootfs, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n');
  fs.writeFileSync(path.join(rootfs, 'etc', 'group'), 'root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n');
  fs.chmodSync(path.join(rootfs, 'tmp'), 0o1777);
  const layoutDir = path.join(dir, 'oci');
  const blobs = path.join(layoutDir, 'blobs', 'sha256');
  fs.mkdirSync(blobs, { recursive: true });
  const layerTar = path.join(dir, 'layer.tar');
  execFileSync('tar', ['--numeric-owner', '--owner=0', '--group=0', '--sort=name', '--mtime=@0', '-C', rootfs, '-cf', layerTar, '.']);
  const tarBytes = fs.readFileSync(layerTar);
  const gz = execFileSync('gzip', ['-n', '-c', layerTar], { maxBuffer: 64 << 20 });
  const put = (b: Buffer) => {
    const d = sha256(b);
    fs.writeFileSync(path.join(blobs, d), b);
    return { digest: `sha256:${d}`, size: b.length };
  };
  const layer = put(gz);
  const manifests = [];
  const tags: ExtraTag[] = [
    { tag: 'latest', config: {} },
    { tag: 'user', config: { User: '1000:1000', Env: ['PATH=/bin', 'FROM_IMAGE=image-env', 'HOME=/home'], WorkingDir: '/home' } },
    ...extra,
  ];
  for (const { tag, config: imageConfig } of tags) {
    const config = put(Buffer.from(JSON.stringify({
      architecture: 'amd64', os: 'linux',
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['sh'], ...imageConfig },
      rootfs: { type: 'layers', diff_ids: [`sha256:${sha256(tarBytes)}`] },
    })));
    const manifest = put(Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...layer }],
    })));
    manifests.push({
      mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest,
      annotations: { 'io.containerd.image.name': `docker.io/kata-ts-test/busybox:${tag}`, 'org.opencontainers.image.ref.name': tag },
    });
  }
  fs.writeFileSync(path.join(layoutDir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  fs.writeFileSync(path.join(layoutDir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests }));
  const out = path.join(dir, 'busybox-oci.tar');
  execFileSync('tar', ['-C', layoutDir, '-cf', out, '.']);
  fs.rmSync(rootfs, { recursive: true, force: true });
  fs.rmSync(layerTar);
  return out;
}

export class TestContainerd {
  readonly dir: string;
  readonly socket: string;
  readonly runDir: string;
  readonly namespace = 'kts';
  private proc: ChildProcess | undefined;
  private logTail = '';

  constructor() {
    // Short path: unix socket paths (ours and the shims') must fit in 108 bytes.
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ktsc-'));
    this.socket = path.join(this.dir, 'c.sock');
    this.runDir = path.join(this.dir, 'run');
  }

  async start(kataExtraConfig = ''): Promise<void> {
    const bin = path.join(this.dir, 'bin');
    fs.mkdirSync(bin);
    fs.mkdirSync(this.runDir);
    fs.symlinkSync(path.join(REPO, 'bin', 'containerd-shim-kata-ts-v2'), path.join(bin, 'containerd-shim-kata-ts-v2'));
    const kataCfg = path.join(this.dir, 'kata-ts.toml');
    fs.writeFileSync(kataCfg, `[runtime]\nrun_dir = "${this.runDir}"\ncache_dir = "${CACHE}"\n[agent.kata]\ndial_timeout = 120\n${kataExtraConfig}`);
    const cfg = path.join(this.dir, 'config.toml');
    fs.writeFileSync(cfg, [
      'version = 2',
      `root = "${this.dir}/root"`,
      `state = "${this.dir}/state"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
      '[grpc]', `  address = "${this.socket}"`,
      '[ttrpc]', `  address = "${this.socket}.ttrpc"`,
      '[debug]', `  address = ""`, '  level = "info"',
      '[metrics]', '  address = ""',
    ].join('\n') + '\n');
    const proc = spawn('/usr/bin/containerd', ['--config', cfg], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, KATA_TS_CONFIG: kataCfg },
    });
    this.proc = proc;
    proc.stderr!.on('data', (d: Buffer) => {
      this.logTail = (this.logTail + d.toString()).slice(-20000);
      if (process.env.KATA_TS_E2E_LOG) process.stderr.write(d);
    });
    for (let i = 0; i < 200; i++) {
      if (proc.exitCode !== null) throw new Error(`containerd exited: ${this.logTail.slice(-2000)}`);
      const r = await this.ctr(['version']);
      if (r.code === 0) return;
      await new Promise((res) => setTimeout(res, 100));
    }
    throw new Error(`containerd did not come up: ${this.logTail.slice(-2000)}`);
  }

  /** containerd's own log (shim logs included), for failure messages. */
  get log(): string {
    return this.logTail;
  }

  ctr(args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<CtrResult> {
    return runCommand('/usr/bin/ctr', ['--address', this.socket, '-n', this.namespace, ...args], opts);
  }

  async importImage(): Promise<void> {
    const tar = buildBusyboxImage(this.dir);
    const r = await this.ctr(['images', 'import', '--all-platforms', tar]);
    if (r.code !== 0) throw new Error(`ctr import failed: ${r.stderr}`);
    const ls = await this.ctr(['images', 'ls', '-q']);
    for (const img of [IMAGE, USER_IMAGE]) if (!ls.stdout.includes(img)) throw new Error(`image ${img} missing after import: ${ls.stdout}`);
  }

  /** Pids of processes whose command line mentions our dir (shims, QEMU). */
  strayProcesses(match: string): { pid: number; args: string }[] {
    const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
    return out.split('\n').map((l) => l.trim()).filter((l) => l.includes(match) && !l.includes(' ps '))
      .map((l) => ({ pid: Number(l.split(/\s+/)[0]), args: l.slice(l.indexOf(' ') + 1) }));
  }

  shimPids(): number[] {
    return this.strayProcesses('containerd-shim-kata-ts-v2').filter((p) => p.args.includes(this.socket)).map((p) => p.pid);
  }

  qemuPids(): number[] {
    return this.strayProcesses('qemu-system').filter((p) => p.args.includes(this.runDir)).map((p) => p.pid);
  }

  mountsBelow(): string[] {
    return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(this.dir + '/'));
  }

  /** Stops everything and removes the dir; returns what had to be killed (should be nothing). */
  async stop(): Promise<{ shims: number[]; qemu: number[]; mounts: string[] }> {
    const left = { shims: this.shimPids(), qemu: this.qemuPids(), mounts: [] as string[] };
    const proc = this.proc;
    if (proc && proc.exitCode === null) {
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
      if (proc.exitCode === null) proc.kill('SIGKILL');
    }
    for (const pid of [...left.shims, ...left.qemu]) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    left.mounts = this.mountsBelow();
    for (const m of left.mounts.sort().reverse()) {
      try {
        execFileSync('umount', ['-l', m]);
      } catch {
        /* already gone */
      }
    }
    for (const m of this.mountsBelow().sort().reverse()) execFileSync('umount', ['-l', m]);
    fs.rmSync(this.dir, { recursive: true, force: true });
    return left;
  }
}

/**
 * The e2e suites' `before`: a private containerd started with the test
 * images imported (and `kataExtraConfig` appended to kata-ts's configuration), or a skip (a failure under CI=true) naming what is
 * missing — the guest or containerd itself.
 */
export async function startTestContainerd(ctx: Mocha.Context, kataExtraConfig?: (cd: TestContainerd) => string): Promise<TestContainerd> {
  requireGuest(ctx);
  const why = containerdAvailable();
  if (why) skipOrFail(ctx, why);
  const cd = new TestContainerd();
  await cd.start(kataExtraConfig?.(cd));
  await cd.importImage();
  return cd;
}

/** The e2e suites' `after`: stops containerd and fails if any shim, VM or mount was left running. */
export async function stopTestContainerd(cd: TestContainerd | undefined): Promise<void> {
  if (!cd) return;
  const left = await cd.stop();
  expect(left, 'left running after the suite').to.deep.equal({ shims: [], qemu: [], mounts: [] });
}

/**
 * The e2e suites' `afterEach`: after a failed test, prints the tail of
 * containerd's log (the shim's and CRI's lines), filtered to what explains
 * failures; a passing test prints nothing.
 */
export function printContainerdLogOnFailure(ctx: Mocha.Context, cd: { log: string } | undefined, opts: { only?: RegExp; lines?: number } = {}): void {
  if (ctx.currentTest?.state !== 'failed' || !cd) return;
  const lines = cd.log.split('\n').filter((l) => !opts.only || opts.only.test(l));
  process.stdout.write(`containerd log tail:\n${lines.slice(-(opts.lines ?? 25)).join('\n')}\n`);
}
