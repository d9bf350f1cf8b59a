/**
 * A private containerd with its CRI plugin on, for tests that drive it the
 * way a kubelet does (test/helpers/cri.ts): own root, state, sockets and
 * config under one temp dir, and run INSIDE a network namespace the helper
 * creates (`ip netns add`), so the CNI bridge, its iptables rules (portmap)
 * and ip_forward live there and never on the host. Pods get their own netns
 * from CRI, attached to that bridge by Debian's CNI plugins (/usr/lib/cni:
 * bridge + host-local on a private /24, + portmap).
 *
 * Handlers: `runc` (io.containerd.runc.v2) and `kata-ts` (written into the
 * config by the same code as `kata-ctl install containerd`). The sandbox
 * ("pause") image and the busybox images are built locally
 * (buildBusyboxImage) and imported into the `k8s.io` namespace: no registry.
 * `restrict_oom_score_adj = true`: root here lacks CAP_SYS_RESOURCE, and
 * without it no sandbox starts, even with runc.
 *
 * stop() leaves nothing behind: pods (through CRI), containerd, shims and
 * QEMU, mounts under the dir, the CNI cache entries of this network, the
 * netns (with the bridge in it) and the dir.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { expect } from 'chai';
import { CACHE, REPO, guestAvailable } from './guest';
import { skipOrFail } from './skip';
import { buildBusyboxImage } from './containerd';
import { runCommand, type CommandResult } from './spawn';
import { CriClient } from './cri';
import { installContainerdRuntime } from '../../src/ctl/containerd-config';

export const CRI_NAMESPACE = 'k8s.io';
export const BUSYBOX = 'docker.io/kata-ts-test/busybox:latest';
/** The sandbox image: busybox that sleeps until told to stop, as pause does. */
export const PAUSE = 'docker.io/kata-ts-test/busybox:pause';
export const HANDLERS = ['runc', 'kata-ts'] as const;
export type Handler = (typeof HANDLERS)[number];
const CNI_BIN = '/usr/lib/cni';
/** libcni's cache (go-cni does not move it): entries are named `<network>-<id>-<ifname>`. */
const CNI_CACHE = '/var/lib/cni/results';

/** Why CRI tests cannot run here (for `handler`), or undefined. Every one is
 * something set-up installs or builds, so tests pass it to skipOrFail (fails under CI). */
export function criUnavailable(handler: Handler): string | undefined {
  for (const b of ['/usr/bin/containerd', '/usr/bin/ctr', '/usr/sbin/runc', '/bin/busybox', '/usr/bin/nsenter', '/usr/sbin/ip', '/usr/sbin/iptables']) {
    if (!fs.existsSync(b)) return `${b} missing (apt-get install containerd runc busybox-static util-linux iproute2 iptables)`;
  }
  for (const p of ['bridge', 'host-local', 'portmap', 'loopback']) {
    if (!fs.existsSync(path.join(CNI_BIN, p))) return `CNI plugin ${CNI_BIN}/${p} missing (apt-get install containernetworking-plugins)`;
  }
  if (process.getuid?.() !== 0) return 'CRI tests need root';
  if (handler === 'kata-ts') return guestAvailable();
  return undefined;
}

export interface CriContainerdOptions {
  /** Extra lines for kata-ts's configuration.toml. */
  kataExtraConfig?: string;
}

export class CriContainerd {
  readonly dir: string;
  readonly socket: string;
  /** kata-ts's run dir (its sandboxes, QEMU pid files). */
  readonly runDir: string;
  readonly netns: string;
  readonly network: string;
  /** The pods' /24 and the bridge's (gateway's) address in it. */
  readonly subnet: string;
  readonly gateway: string;
  readonly bridge = 'ktscri0';
  private proc: ChildProcess | undefined;
  private logTail = '';
  private client: CriClient | undefined;

  constructor() {
    // Short path: unix socket paths (ours and the shims') must fit in 108 bytes.
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ktscri-'));
    this.socket = path.join(this.dir, 'c.sock');
    const tag = crypto.randomBytes(3).toString('hex');
    // kata-ts's run dir is short and outside the temp dir: CRI's ids are 64
    // hex digits, and the sockets in a sandbox dir (<run_dir>/sandboxes/<id>/
    // vhost-vsock.sock) must fit in 108 bytes; under a test TMPDIR they do not.
    this.runDir = `/run/kc-${tag.slice(0, 4)}`;
    this.netns = `ktscri-${tag}`;
    this.network = `ktscri-${tag}`;
    // Any /24 will do inside our own netns; a random one keeps logs of two runs apart.
    const third = 1 + (crypto.randomBytes(1)[0]! % 250);
    this.subnet = `10.89.${third}.0/24`;
    this.gateway = `10.89.${third}.1`;
  }

  get netnsPath(): string {
    return `/run/netns/${this.netns}`;
  }

  /** containerd's own log (CRI plugin and shim lines), for failure messages. */
  get log(): string {
    return this.logTail;
  }

  get cri(): CriClient {
    if (!this.client) this.client = new CriClient(this.socket);
    return this.client;
  }

  async start(opts: CriContainerdOptions = {}): Promise<void> {
    execFileSync('ip', ['netns', 'add', this.netns]);
    execFileSync('ip', ['-n', this.netns, 'link', 'set', 'lo', 'up']);
    const bin = path.join(this.dir, 'bin');
    for (const d of [bin, this.runDir, path.join(this.dir, 'net.d'), path.join(this.dir, 'cni-ipam')]) fs.mkdirSync(d, { recursive: true });
    fs.symlinkSync(path.join(REPO, 'bin', 'containerd-shim-kata-ts-v2'), path.join(bin, 'containerd-shim-kata-ts-v2'));
    const kataCfg = path.join(this.dir, 'kata-ts.toml');
    fs.writeFileSync(kataCfg, `[runtime]\nrun_dir = "${this.runDir}"\ncache_dir = "${CACHE}"\n[agent.kata]\ndial_timeout = 120\n${opts.kataExtraConfig ?? ''}`);
    fs.writeFileSync(path.join(this.dir, 'net.d', '10-ktscri.conflist'), JSON.stringify({
      cniVersion: '0.4.0',
      name: this.network,
      plugins: [
        {
          type: 'bridge', bridge: this.bridge, isGateway: true, ipMasq: false, hairpinMode: true,
          ipam: { type: 'host-local', dataDir: path.join(this.dir, 'cni-ipam'), ranges: [[{ subnet: this.subnet, gateway: this.gateway }]], routes: [{ dst: '0.0.0.0/0' }] },
        },
        { type: 'portmap', capabilities: { portMappings: true }, snat: true },
      ],
    }, null, 2));
    const cfg = path.join(this.dir, 'config.toml');
    fs.writeFileSync(cfg, [
      'version = 2',
      `root = "${this.dir}/root"`,
      `state = "${this.dir}/state"`,
      'oom_score = 0',
      'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
      '[grpc]', `  address = "${this.socket}"`,
      '[ttrpc]', `  address = "${this.socket}.ttrpc"`,
      '[debug]', '  address = ""', '  level = "info"',
      '[metrics]', '  address = ""',
      '[plugins."io.containerd.internal.v1.opt"]', `  path = "${this.dir}/opt"`,
      '[plugins."io.containerd.grpc.v1.cri"]',
      `  sandbox_image = "${PAUSE}"`,
      '  stream_server_address = "127.0.0.1"',
      '  stream_server_port = "0"',
      '  enable_selinux = false',
      '  disable_apparmor = true',
      '  restrict_oom_score_adj = true',
      '  [plugins."io.containerd.grpc.v1.cri".containerd]',
      '    snapshotter = "overlayfs"',
      '    default_runtime_name = "runc"',
      '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
      '      runtime_type = "io.containerd.runc.v2"',
      '  [plugins."io.containerd.grpc.v1.cri".cni]',
      `    bin_dir = "${CNI_BIN}"`,
      `    conf_dir = "${this.dir}/net.d"`,
      '    max_conf_num = 1',
    ].join('\n') + '\n');
    // The kata-ts handler goes in the way users add it: kata-ctl install containerd's code.
    installContainerdRuntime(cfg, { backup: false });
    // nsenter --net joins only the network namespace: containerd's mounts
    // (rootfs, shm, pod netns files) stay in the host's mount namespace,
    // where the leak checks see them.
    // cwd: containerd creates a missing relative bind source relative to it; keep that in our dir.
    const proc = spawn('/usr/bin/nsenter', [`--net=${this.netnsPath}`, '--', '/usr/bin/containerd', '--config', cfg], {
      cwd: this.dir,
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, KATA_TS_CONFIG: kataCfg },
    });
    this.proc = proc;
    proc.stderr!.on('data', (d: Buffer) => {
      this.logTail = (this.logTail + d.toString()).slice(-40000);
      if (process.env.KATA_TS_E2E_LOG) process.stderr.write(d);
    });
    for (let i = 0; i < 300; i++) {
      if (proc.exitCode !== null) throw new Error(`containerd exited: ${this.logTail.slice(-2000)}`);
      try {
        const st = await this.cri.status();
        const ready = (t: string) => st.status?.conditions.find((c) => c.type === t)?.status;
        if (ready('RuntimeReady') && ready('NetworkReady')) break;
      } catch {
        /* not listening yet */
      }
      await new Promise((res) => setTimeout(res, 100));
      if (i === 299) throw new Error(`containerd's CRI did not become ready: ${this.logTail.slice(-2000)}`);
    }
    await this.importImages();
  }

  ctr(args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<CommandResult> {
    return runCommand('/usr/bin/ctr', ['--address', this.socket, '-n', CRI_NAMESPACE, ...args], opts);
  }

  private async importImages(): Promise<void> {
    const pause = { tag: 'pause', config: { Entrypoint: ['/bin/sh', '-c', 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'], Cmd: null } };
    const tar = buildBusyboxImage(this.dir, [pause]);
    const r = await this.ctr(['images', 'import', '--all-platforms', tar]);
    if (r.code !== 0) throw new Error(`ctr import failed: ${r.stderr}`);
    fs.rmSync(tar);
    fs.rmSync(path.join(this.dir, 'oci'), { recursive: true, force: true });
    for (const img of [BUSYBOX, PAUSE]) {
      if (!(await this.cri.imageStatus(img))) throw new Error(`CRI does not see ${img} after the import`);
    }
  }

  /** Runs a command in containerd's network namespace (the "node" side of the pods' bridge). */
  inNetns(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<CommandResult> {
    return runCommand('/usr/bin/nsenter', [`--net=${this.netnsPath}`, '--', cmd, ...args], opts);
  }

  /** Pids of processes whose command line mentions `match` (shims, QEMU). */
  private processes(match: string): { pid: number; args: string }[] {
    const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
    return out.split('\n').map((l) => l.trim()).filter((l) => l.includes(match) && !l.includes(' ps '))
      .map((l) => ({ pid: Number(l.split(/\s+/)[0]), args: l.slice(l.indexOf(' ') + 1) }));
  }

  /** Shims (any runtime) serving this containerd. */
  shimPids(): number[] {
    return this.processes('containerd-shim').filter((p) => p.args.includes(this.socket)).map((p) => p.pid);
  }

  qemuPids(): number[] {
    return this.processes('qemu-system').filter((p) => p.args.includes(this.runDir)).map((p) => p.pid);
  }

  /** Mounts under containerd's dir or kata-ts's run dir. */
  mountsBelow(): string[] {
    return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '')
      .filter((m) => m.startsWith(this.dir + '/') || m.startsWith(this.runDir + '/'));
  }

  cniCacheEntries(): string[] {
    try {
      return fs.readdirSync(CNI_CACHE).filter((f) => f.startsWith(`${this.network}-`));
    } catch {
      return [];
    }
  }

  /** Interfaces in containerd's netns besides lo and the bridge: one veth per live pod. */
  async vethsInNetns(): Promise<string[]> {
    const r = await runCommand('ip', ['-n', this.netns, '-o', 'link', 'show']);
    return r.stdout.split('\n').map((l) => /^\d+:\s+([^:@]+)/.exec(l)?.[1] ?? '').filter((n) => n && n !== 'lo' && n !== this.bridge);
  }

  /** Removes every pod through CRI (as a kubelet would), then stops
   * everything; returns what had to be removed by force (should be nothing). */
  async stop(): Promise<{ pods: string[]; shims: number[]; qemu: number[]; mounts: string[]; cni: string[] }> {
    const left = { pods: [] as string[], shims: [] as number[], qemu: [] as number[], mounts: [] as string[], cni: [] as string[] };
    const proc = this.proc;
    if (proc && proc.exitCode === null) {
      try {
        for (const p of await this.cri.listPodSandbox()) {
          left.pods.push(`${p.metadata.name} (${p.state})`);
          await this.cri.stopPodSandbox(p.id).catch(() => undefined);
          await this.cri.removePodSandbox(p.id).catch(() => undefined);
        }
      } catch {
        /* CRI unreachable: the forced cleanup below still runs */
      }
    }
    this.client?.close();
    this.client = undefined;
    left.shims = this.shimPids();
    left.qemu = this.qemuPids();
    if (proc && proc.exitCode === null) {
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      const exited = async (ms: number) => {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([gone, new Promise((r) => (timer = setTimeout(r, ms)))]);
        clearTimeout(timer);
        return proc.exitCode !== null || proc.signalCode !== null;
      };
      if (!(await exited(10000))) {
        proc.kill('SIGKILL');
        await exited(5000);
      }
      // Our end of its stderr: a shim that inherited the pipe must not keep this process alive.
      proc.stderr?.destroy();
    }
    for (const pid of [...this.shimPids(), ...this.qemuPids()]) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    left.mounts = this.mountsBelow();
    for (let i = 0; i < 2; i++) {
      for (const m of this.mountsBelow().sort().reverse()) {
        try {
          execFileSync('umount', ['-l', m]);
        } catch {
          /* already gone */
        }
      }
    }
    left.cni = this.cniCacheEntries();
    for (const f of left.cni) fs.rmSync(path.join(CNI_CACHE, f), { force: true });
    // Deleting the netns takes the bridge, veths and iptables rules with it.
    try {
      execFileSync('ip', ['netns', 'delete', this.netns], { stdio: 'ignore' });
    } catch {
      /* never created */
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
    fs.rmSync(this.runDir, { recursive: true, force: true });
    // One turn of the event loop, so containerd's process handle finishes closing.
    await new Promise((r) => setImmediate(r));
    return left;
  }
}

/**
 * A CRI suite's `before`: a private containerd with CRI for `handler`
 * (`kataExtraConfig`, given the instance so it can name paths in its dir,
 * appended to kata-ts's configuration), or a skip — a failure under
 * CI=true — naming what is missing.
 */
export async function startCriContainerd(ctx: Mocha.Context, handler: Handler = 'kata-ts', kataExtraConfig?: (cd: CriContainerd) => string): Promise<CriContainerd> {
  const why = criUnavailable(handler);
  if (why) skipOrFail(ctx, why);
  const cd = new CriContainerd();
  await cd.start({ kataExtraConfig: kataExtraConfig?.(cd) });
  return cd;
}

/** A CRI suite's `after`: removes the pods as a kubelet would, stops containerd, and fails if anything had to be removed by force. */
export async function stopCriContainerd(cd: CriContainerd | undefined): Promise<void> {
  if (!cd) return;
  const left = await cd.stop();
  expect(left, 'left behind after the suite (removed by force)').to.deep.equal({ pods: [], shims: [], qemu: [], mounts: [], cni: [] });
}
