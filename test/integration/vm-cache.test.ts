/**
 * The pre-started VM cache through containerd (issue 16; src/factory/vm-cache-*.ts):
 * `kata-ctl factory init` with `[factory] vm_cache_number = 1` leaves one
 * pre-started shim holding a running clone; `ctr run --rm` claims it (the
 * claim's log line names the QEMU pid that was running before `ctr run`,
 * and the shim's 'sandbox ready' line says prestarted), the exit status is
 * the container's, the cache refills to 1 with another VM; a cached VM of a
 * rebuilt template is stale at claim time: it exits and the pod starts as a
 * clone with one line saying why; an entry whose QEMU dies leaves the cache
 * and the next start refills it; `factory destroy` leaves no QEMU, shim or
 * socket. A private containerd (test/helpers/containerd.ts) with the kernel
 * and image pinned as copies. Then a CRI pod through containerd's CRI
 * plugin: its one CNI interface takes the NIC the cached VM had plugged
 * before the claim (vm-cache-nic.ts): the guest's eth0 has the pod's IP and
 * the veth's MAC; no held tap (kvc*) is left in any namespace afterwards.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IMAGE, RUNTIME, TestContainerd, startTestContainerd, stopTestContainerd } from '../helpers/containerd';
import { BUSYBOX, CriContainerd, criUnavailable } from '../helpers/cri-containerd';
import type { PodSandboxConfig } from '../helpers/cri';
import { requireGuest } from '../helpers/guest';
import { REPO, pinGuestAssets } from '../helpers/guest';
import { runCommand } from '../helpers/spawn';
import { ip } from '../helpers/netns';
import { skipOrFail } from '../helpers/skip';
import { until } from '../helpers/until';
import { pidAlive } from '../../src/factory/vm-cache-store';

function cacheConfig(dir: string): string {
  // The DAX image beside the image, as the default configuration uses it.
  return `${pinGuestAssets(dir, { dax: true })}[factory]\nenable_template = true\ntemplate_path = "${path.join(dir, 'tpl')}"\nvm_cache_number = 1\n`;
}

async function kataCtl(cfgFile: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ctl'), '--config', cfgFile, ...args], { timeoutMs: 300000 });
}

interface CacheJson { number: number; dir: string; ready: { slot: number; pid: number; qemuPid: number }[]; starting: { slot: number; pid: number }[] }

async function cacheStatus(cfgFile: string): Promise<CacheJson> {
  const r = await kataCtl(cfgFile, ['factory', 'status', '--json']);
  return (JSON.parse(r.stdout) as { vmCache: CacheJson }).vmCache;
}

/** Mount points under `dir` (this process's mount namespace, as the shims'). */
function mountsUnder(dir: string): string[] {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m === dir || m.startsWith(`${dir}/`));
}

/** The cache's held taps (vm-cache-nic.ts) in our netns, or in `netns` (a name); only `names` when given (another run may hold its own). */
function heldTaps(netns?: string, names?: string[]): string[] {
  const out = netns ? ip('-n', netns, '-o', 'link') : ip('-o', 'link');
  return [...out.matchAll(/^\d+: (kvc[0-9a-f]{8})[:@]/gm)].map((m) => m[1]!).filter((n) => !names || names.includes(n));
}

/** The taps process `pid` holds an fd on (the tun driver's fdinfo names the interface). */
function tapsOf(pid: number): string[] {
  const out: string[] = [];
  let fds: string[] = [];
  try { fds = fs.readdirSync(`/proc/${pid}/fdinfo`); } catch { return out; }
  for (const fd of fds) {
    try {
      const m = fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').match(/^iff:\s*(\S+)/m);
      if (m && m[1]!.startsWith('kvc')) out.push(m[1]!);
    } catch { /* closed meanwhile */ }
  }
  return out;
}

/** Held tap names of the entries this suite saw (recorded while they lived). */
const seenTaps: string[] = [];

/** containerd log lines (JSON part) whose msg matches. */
function logLines(log: string, msg: RegExp): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const l of log.split('\n')) {
    const i = l.indexOf('{');
    if (i < 0) continue;
    try {
      const j = JSON.parse(l.slice(i)) as Record<string, unknown>;
      if (typeof j.msg === 'string' && msg.test(j.msg)) out.push(j);
    } catch { /* containerd's own line */ }
  }
  return out;
}

describe('integration: pre-started VM cache through ctr ([factory] vm_cache_number)', function () {
  this.timeout(600000);
  let cd: TestContainerd | undefined;
  let cfgFile = '';
  const seenPids: number[] = [];

  before(async function () {
    if (process.getuid?.() !== 0) skipOrFail(this, 'VM templates mount a tmpfs: run as root');
    cd = await startTestContainerd(this, (c) => cacheConfig(c.dir));
    cfgFile = path.join(cd.dir, 'kata-ts.toml');
  });

  after(async () => {
    if (!cd) return;
    try {
      await kataCtl(cfgFile, ['factory', 'destroy']);
    } finally {
      // Whatever a failure left: our cached shims by pid (the helper only knows containerd's).
      for (const pid of seenPids) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
      await stopTestContainerd(cd);
    }
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && cd) process.stdout.write(`containerd log tail:\n${cd.log.split('\n').slice(-25).join('\n')}\n`);
  });

  it('factory init fills the cache: one pre-started shim with a running QEMU', async () => {
    const init = await kataCtl(cfgFile, ['factory', 'init', '--json']);
    expect(init.code, init.stderr).to.equal(0);
    const st = JSON.parse(init.stdout) as { state: string; vmCache: CacheJson };
    expect(st.state).to.equal('valid');
    expect(st.vmCache.number).to.equal(1);
    expect(st.vmCache.ready, init.stderr).to.have.length(1);
    const e = st.vmCache.ready[0]!;
    seenPids.push(e.pid);
    expect(pidAlive(e.pid) && pidAlive(e.qemuPid)).to.equal(true);
    expect(cd!.qemuPids()).to.deep.equal([e.qemuPid]);
    expect(fs.existsSync(path.join(st.vmCache.dir, 'slot-0.sock'))).to.equal(true);
    // While it waited, its guest ran the container start path once (vm-cache-warm.ts), and cleanly.
    const entryLog = fs.readFileSync(path.join(st.vmCache.dir, 'slot-0.log'), 'utf8');
    const warmed = entryLog.split('\n').find((l) => l.includes('"msg":"cached VM: container path warmed"'));
    expect(warmed, entryLog).to.match(/"exitStatus":0[,}]/);
    expect(entryLog).to.not.match(/container-path warm-up (went wrong|failed)/);
    const text = await kataCtl(cfgFile, ['factory', 'status']);
    expect(text.stdout).to.match(/VM cache: {3}1\/1 ready/);
    const env = await kataCtl(cfgFile, ['env']);
    expect(env.stdout).to.match(/VM cache 1\/1 ready/);
  });

  it('ctr run --rm claims the cached VM: exact exit status, output, and the cache refills with another VM', async () => {
    const before = await cacheStatus(cfgFile);
    expect(before.ready).to.have.length(1);
    const cached = before.ready[0]!;
    // The pod's sandbox share is attached while the VM waits: its host side (mounts/ + the shared/ view) is there before the claim.
    const vmDir = (JSON.parse(fs.readFileSync(path.join(before.dir, 'slot-0.json'), 'utf8')) as { vmDir: string }).vmDir;
    expect(mountsUnder(vmDir), 'the cached VM\'s share, before the claim').to.include.members([path.join(vmDir, 'mounts'), path.join(vmDir, 'shared')]);
    // The container's rootfs comes through that share (ls reads it in the guest).
    const r = await cd!.ctr(['run', '--rm', '--runtime', RUNTIME, IMAGE, 'vc1', 'sh', '-c', 'echo from-the-cache; ls /bin/busybox; exit 7']);
    expect([r.code, r.stdout, r.stderr]).to.deep.equal([7, 'from-the-cache\n/bin/busybox\n', '']);
    // The VM that ran it was started before `ctr run`: start's claim line names its QEMU.
    const claims = logLines(cd!.log, /^claimed a pre-started VM/).filter((l) => l.id === 'vc1');
    expect(claims, 'one claim line for vc1').to.have.length(1);
    expect(claims[0]!.qemuPid).to.equal(cached.qemuPid);
    expect(claims[0]!.shimPid).to.equal(cached.pid);
    const ready = logLines(cd!.log, /^sandbox ready$/).filter((l) => l.sandbox === 'vc1');
    expect(ready.map((l) => (l.guest as { prestarted?: boolean }).prestarted)).to.deep.equal([true]);
    // No hotplug of the share at claim time: the sandbox took the attached one (a second add of its tag would have failed).
    expect(ready.map((l) => (l.guest as { sharePreattached?: boolean }).sharePreattached)).to.deep.equal([true]);
    expect(logLines(cd!.log, /cold boot|VM cache:/).filter((l) => l.id === 'vc1')).to.deep.equal([]);
    // The claimed shim and its VM are gone with the container, and nothing stays mounted in the share.
    await until('claimed shim gone', async () => (!pidAlive(cached.pid) && !pidAlive(cached.qemuPid) ? true : undefined), 30000);
    expect(mountsUnder(vmDir), 'mounts left of the claimed share').to.deep.equal([]);
    expect(fs.existsSync(vmDir), `${vmDir} left`).to.equal(false);
    // Refilled: one ready entry again, a new process and VM.
    const after = await until('cache refilled', async () => {
      const c = await cacheStatus(cfgFile);
      return c.ready.length === 1 ? c : undefined;
    }, 120000);
    seenPids.push(after.ready[0]!.pid);
    expect(after.ready[0]!.pid).to.not.equal(cached.pid);
    expect(after.starting).to.deep.equal([]);
    expect(cd!.qemuPids()).to.deep.equal([after.ready[0]!.qemuPid]);
  });

  it('a cached VM of a rebuilt template is stale at claim time: it exits, the pod starts as a clone with one line', async () => {
    const before = await cacheStatus(cfgFile);
    expect(before.ready).to.have.length(1);
    const stale = before.ready[0]!;
    // A rebuild as the cached VM sees it: the manifest's creation time changed (the key, and so the template's validity, did not).
    const manifest = path.join(cd!.dir, 'tpl', 'manifest.json');
    const m = JSON.parse(fs.readFileSync(manifest, 'utf8')) as { createdAt: string };
    m.createdAt = new Date().toISOString();
    fs.writeFileSync(manifest, JSON.stringify(m));
    const r = await cd!.ctr(['run', '--rm', '--runtime', RUNTIME, IMAGE, 'vc2', 'echo', 'after-rebuild']);
    expect([r.code, r.stdout, r.stderr]).to.deep.equal([0, 'after-rebuild\n', '']);
    const lines = logLines(cd!.log, /^VM cache: /).filter((l) => l.id === 'vc2');
    expect(lines, 'one fallback line').to.have.length(1);
    expect(lines[0]!.msg).to.match(/the VM template was rebuilt or removed since this VM was cached; starting a shim$/);
    const ready = logLines(cd!.log, /^sandbox ready$/).filter((l) => l.sandbox === 'vc2');
    expect(ready.map((l) => [(l.guest as { template?: boolean }).template, (l.guest as { prestarted?: boolean }).prestarted])).to.deep.equal([[true, undefined]]);
    await until('stale cached shim gone', async () => (!pidAlive(stale.pid) && !pidAlive(stale.qemuPid) ? true : undefined), 30000);
    // The claim refilled the slot it freed, from the template as it is now.
    const after = await until('cache refilled', async () => {
      const c = await cacheStatus(cfgFile);
      return c.ready.length === 1 ? c : undefined;
    }, 120000);
    seenPids.push(after.ready[0]!.pid);
    expect(after.ready[0]!.pid).to.not.equal(stale.pid);
  });

  it('a pod with io.katacontainers.* annotations (they may change its VM) does not use the cache: one line, a clone, the entry stays', async () => {
    const before = await cacheStatus(cfgFile);
    expect(before.ready).to.have.length(1);
    const r = await cd!.ctr(['run', '--rm', '--runtime', RUNTIME, '--annotation', 'io.katacontainers.example=1', IMAGE, 'vca', 'echo', 'annotated']);
    expect([r.code, r.stdout, r.stderr]).to.deep.equal([0, 'annotated\n', '']);
    const lines = logLines(cd!.log, /^VM cache not used/).filter((l) => l.id === 'vca');
    expect(lines.map((l) => l.msg)).to.deep.equal(['VM cache not used: the pod has io.katacontainers.example (may change its VM); starting a shim']);
    const ready = logLines(cd!.log, /^sandbox ready$/).filter((l) => l.sandbox === 'vca');
    expect(ready.map((l) => [(l.guest as { template?: boolean }).template, (l.guest as { prestarted?: boolean }).prestarted])).to.deep.equal([[true, undefined]]);
    expect((await cacheStatus(cfgFile)).ready.map((e) => e.pid)).to.deep.equal(before.ready.map((e) => e.pid));
  });

  it('an unclaimed entry whose QEMU dies leaves the cache; the next start falls back with one line and refills it', async () => {
    const before = await cacheStatus(cfgFile);
    expect(before.ready).to.have.length(1);
    const e = before.ready[0]!;
    process.kill(e.qemuPid, 'SIGKILL');
    await until('entry gone', async () => (!pidAlive(e.pid) ? true : undefined), 30000);
    const gone = await cacheStatus(cfgFile);
    expect([gone.ready, gone.starting]).to.deep.equal([[], []]);
    expect(fs.readdirSync(gone.dir).filter((f) => f.startsWith('vm-')), 'its VM directory').to.deep.equal([]);
    const r = await cd!.ctr(['run', '--rm', '--runtime', RUNTIME, IMAGE, 'vcd', 'echo', 'after-death']);
    expect([r.code, r.stdout]).to.deep.equal([0, 'after-death\n']);
    expect(logLines(cd!.log, /^VM cache: /).filter((l) => l.id === 'vcd').map((l) => l.msg)).to.deep.equal([`VM cache: no cached VM ready in ${gone.dir}; starting a shim`]);
    const after = await until('cache refilled', async () => {
      const c = await cacheStatus(cfgFile);
      return c.ready.length === 1 ? c : undefined;
    }, 120000);
    seenPids.push(after.ready[0]!.pid);
  });

  it('factory destroy stops the cache: no QEMU, no cached shim, no socket or directory left', async () => {
    const c = await cacheStatus(cfgFile);
    const taps = c.ready.flatMap((e) => tapsOf(e.pid));
    seenTaps.push(...taps);
    expect(taps, 'each waiting entry holds its pre-plugged NIC\'s tap').to.have.length(c.ready.length);
    const d = await kataCtl(cfgFile, ['factory', 'destroy', '--json']);
    expect(d.code, d.stderr).to.equal(0);
    expect((JSON.parse(d.stdout) as { removed: string[] }).removed).to.include(`cached VM (shim pid ${c.ready[0]!.pid})`);
    expect(c.ready.every((e) => !pidAlive(e.pid) && !pidAlive(e.qemuPid))).to.equal(true);
    expect(cd!.qemuPids()).to.deep.equal([]);
    expect(fs.existsSync(c.dir), `${c.dir} left`).to.equal(false);
    // The unclaimed entry's share went with it.
    expect(mountsUnder(c.dir), 'mounts left of an unclaimed share').to.deep.equal([]);
    // Nor its pre-plugged NIC's tap (it went with QEMU's fd and ours).
    expect(heldTaps(undefined, taps), 'held taps left').to.deep.equal([]);
    const after = await cacheStatus(cfgFile);
    expect([after.ready, after.starting]).to.deep.equal([[], []]);
  });

  it('with the template gone, ctr run falls back with one line and the cache is not refilled', async () => {
    const r = await cd!.ctr(['run', '--rm', '--runtime', RUNTIME, IMAGE, 'vc3', 'echo', 'cold']);
    expect([r.code, r.stdout]).to.deep.equal([0, 'cold\n']);
    const lines = logLines(cd!.log, /^VM cache: /).filter((l) => l.id === 'vc3');
    expect(lines.map((l) => l.msg)).to.deep.equal([`VM cache: no cached VM ready in ${path.join(cd!.runDir, 'vm-cache')}; starting a shim`]);
    expect((await cacheStatus(cfgFile)).starting).to.deep.equal([]);
    await until('shim gone', async () => (cd!.shimPids().length === 0 ? true : undefined), 15000);
    expect(cd!.qemuPids()).to.deep.equal([]);
  });
});

describe('integration: pre-started VM cache through CRI (kata-ts handler)', function () {
  this.timeout(600000);
  let cd: CriContainerd | undefined;
  let cfgFile = '';
  const seenPids: number[] = [];

  before(async function () {
    requireGuest(this);
    if (process.getuid?.() !== 0) skipOrFail(this, 'VM templates mount a tmpfs: run as root');
    const why = criUnavailable('kata-ts');
    if (why) skipOrFail(this, why);
    cd = new CriContainerd();
    await cd.start({ kataExtraConfig: cacheConfig(cd.dir) });
    cfgFile = path.join(cd.dir, 'kata-ts.toml');
    const init = await kataCtl(cfgFile, ['factory', 'init', '--json']);
    expect(init.code, init.stderr).to.equal(0);
    const c = (JSON.parse(init.stdout) as { vmCache: CacheJson }).vmCache;
    expect(c.ready, init.stderr).to.have.length(1);
    seenPids.push(c.ready[0]!.pid);
  });

  after(async () => {
    if (!cd) return;
    try {
      const d = await kataCtl(cfgFile, ['factory', 'destroy']);
      expect(d.code, d.stderr).to.equal(0);
      // Entries started by kata-ctl hold their tap in our netns, refills (spawned under containerd) in containerd's.
      expect([heldTaps(undefined, seenTaps), heldTaps(cd.netns, seenTaps)], 'held taps left after factory destroy').to.deep.equal([[], []]);
    } finally {
      for (const pid of seenPids) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
      const left = await cd.stop();
      expect(left, 'left behind after the suite (removed by force)').to.deep.equal({ pods: [], shims: [], qemu: [], mounts: [], cni: [] });
    }
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && cd) process.stdout.write(`containerd log tail:\n${cd.log.split('\n').slice(-25).join('\n')}\n`);
  });

  it('a pod starts from the cached VM (its interface on the NIC plugged before the claim), its container runs and logs, and the pod goes away', async () => {
    const cached = (await cacheStatus(cfgFile)).ready[0]!;
    // The cached VM's NIC is plugged already, on a tap in the entry's netns (kata-ctl started it: ours).
    const held = tapsOf(cached.pid);
    seenTaps.push(...held);
    expect(held, 'the cached VM holds one tap before the claim').to.have.length(1);
    expect(heldTaps(undefined, held), 'in our netns (kata-ctl started it)').to.deep.equal(held);
    const logDir = path.join(cd!.dir, 'pods', 'vcpod');
    fs.mkdirSync(logDir, { recursive: true });
    const config: PodSandboxConfig = { metadata: { name: 'vcpod', uid: 'vcpod', namespace: 'vmcache' }, hostname: 'vcpod', log_directory: logDir, linux: {} };
    const pod = await cd!.cri.runPodSandbox(config, 'kata-ts');
    try {
      const st = await cd!.cri.podSandboxStatus(pod, true);
      const podIp = st.status.network?.ip ?? '';
      const netns = (JSON.parse(st.info.info ?? '{}') as { runtimeSpec?: { linux?: { namespaces?: { type: string; path?: string }[] } } }).runtimeSpec?.linux?.namespaces?.find((n) => n.type === 'network')?.path ?? '';
      expect(podIp, 'CNI gave the pod an IP').to.match(/^\d+\.\d+\.\d+\.\d+$/);
      // (ip, not /sys: nsenter --net keeps the host's sysfs mount.)
      const vethMac = (await runCommand('/usr/bin/nsenter', [`--net=${netns}`, '--', 'ip', '-o', 'link', 'show', 'eth0'])).stdout.match(/link\/ether ([0-9a-f:]+)/)?.[1] ?? '';
      expect(vethMac).to.match(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
      // The held tap left our netns for the pod's, as tap0_kata.
      expect(heldTaps(undefined, held), 'the held tap moved into the pod netns').to.deep.equal([]);
      expect((await runCommand('/usr/bin/nsenter', [`--net=${netns}`, '--', 'ip', '-o', 'link', 'show', 'tap0_kata'])).stdout).to.contain('tap0_kata');
      const ctr = await cd!.cri.createContainer(pod, {
        metadata: { name: 'c' }, image: { image: BUSYBOX }, command: ['sh', '-c', 'echo pod-from-the-cache; hostname; if [ -e /sys/class/net/eth0 ]; then echo mac=$(cat /sys/class/net/eth0/address); ip -o -4 addr show dev eth0; echo has-eth0; else echo no-eth0; fi; sleep 3600'], log_path: 'c.log', linux: {},
      }, config);
      await cd!.cri.startContainer(ctr);
      const log = await until('container log', async () => {
        const f = path.join(logDir, 'c.log');
        const t = fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '';
        return /stdout F (has|no)-eth0\n/.test(t) ? t : undefined;
      }, 60000);
      expect(log, 'the pod interface reached the pre-started VM').to.match(/ stdout F has-eth0\n/);
      expect(log).to.match(/ stdout F pod-from-the-cache\n/);
      expect(log).to.match(/ stdout F vcpod\n/);
      expect(log, 'the guest eth0 took the veth\'s MAC').to.contain(` stdout F mac=${vethMac}\n`);
      expect(log, 'the guest eth0 has the pod\'s IP from CNI').to.match(new RegExp(`eth0\\s+inet ${podIp.replace(/\./g, '\\.')}/`));
      const claims = logLines(cd!.log, /^claimed a pre-started VM/).filter((l) => l.id === pod);
      expect(claims, 'the pod sandbox claimed the cached VM').to.have.length(1);
      expect(claims[0]!.qemuPid).to.equal(cached.qemuPid);
      const ready = logLines(cd!.log, /^sandbox ready$/).filter((l) => l.sandbox === pod);
      expect(ready.map((l) => (l.guest as { prestarted?: boolean }).prestarted)).to.deep.equal([true]);
      expect(ready.map((l) => (l.guest as { nicPreplugged?: boolean }).nicPreplugged), 'the pod took the NIC plugged before the claim').to.deep.equal([true]);
    } finally {
      await cd!.cri.stopPodSandbox(pod);
      await cd!.cri.removePodSandbox(pod);
    }
    await until('claimed shim and VM gone', async () => (!pidAlive(cached.pid) && !pidAlive(cached.qemuPid) ? true : undefined), 30000);
    const after = await until('cache refilled', async () => {
      const c = await cacheStatus(cfgFile);
      return c.ready.length === 1 ? c : undefined;
    }, 120000);
    seenPids.push(after.ready[0]!.pid);
    expect(cd!.qemuPids()).to.deep.equal([after.ready[0]!.qemuPid]);
    // The claimed tap went with the pod; the refill (spawned under containerd) holds one in containerd's netns.
    expect(heldTaps(undefined, held), 'the claimed tap left').to.deep.equal([]);
    const refill = tapsOf(after.ready[0]!.pid);
    seenTaps.push(...refill);
    expect(refill, 'the refilled entry holds one tap').to.have.length(1);
    expect(heldTaps(cd!.netns, refill), 'in containerd\'s netns').to.deep.equal(refill);
  });
});
