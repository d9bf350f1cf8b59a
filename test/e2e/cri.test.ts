/**
 * Kubernetes pods through containerd's CRI plugin, driven over its gRPC
 * socket the way a kubelet drives it (test/helpers/cri.ts), against a
 * private containerd running in a network namespace of its own with a CNI
 * bridge + host-local + portmap network (test/helpers/cri-containerd.ts).
 *
 * Every `it` runs for the runc handler (the reference: it must pass, which
 * also validates the harness) and for kata-ts (one VM per pod). Two pods:
 *   - "server": containers `web` (busybox httpd on 8080, hostPort mapped)
 *     and `side`, both mounting one emptyDir (a host dir) at /shared;
 *   - "client": one container that dials the server pod.
 * (A third, short-lived pod carries an agent policy annotation, to check the
 * handler's pod_annotations.)
 * The pods are made once per handler, lazily, by the first `it` that needs
 * them, so a failure in one aspect (say, networking) fails its own `it`s
 * and leaves the others (logs, volumes, teardown) to report on their own.
 * The last `it` stops and removes everything through CRI and checks that
 * nothing is left: containers, sandboxes, shims, QEMU, mounts, pod netns,
 * veths, CNI cache entries.
 *
 * Under CI=true a missing prerequisite (containerd, CNI plugins, guest)
 * fails the suite instead of skipping it.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { BUSYBOX, type CriContainerd, HANDLERS, startCriContainerd, stopCriContainerd } from '../helpers/cri-containerd';
import { printContainerdLogOnFailure } from '../helpers/containerd';
import { CriError, type ContainerConfig, type PodSandboxConfig } from '../helpers/cri';
import { POLICY_ANNOTATION } from '../../src/protocols/agent-policy';
import { until } from '../helpers/until';

const HTTP_PORT = 8080;
const HOST_PORT = 18080;
const GRACE_SEC = 5;
/** A long-running container that exits 0 on SIGTERM, as a well-behaved app does. */
const IDLE = 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done';

interface Pod { id: string; config: PodSandboxConfig; ip: string; netns: string }
interface World {
  server: Pod; client: Pod;
  web: string; side: string; clientCtr: string;
  emptyDir: string;
}

function httpGet(host: string, port: number): string {
  return `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 ${host} ${port}`;
}

for (const handler of HANDLERS) {
  describe(`e2e: CRI pods through containerd (${handler})`, function () {
    this.timeout(handler === 'kata-ts' ? 400000 : 120000);
    let cd: CriContainerd;
    let world: Promise<World> | undefined;
    const expectVm = handler === 'kata-ts';

    const podConfig = (name: string, extra: Partial<PodSandboxConfig> = {}): PodSandboxConfig => {
      const logDir = path.join(cd.dir, 'pods', name);
      fs.mkdirSync(logDir, { recursive: true });
      return {
        metadata: { name, uid: `uid-${name}`, namespace: 'cri-test', attempt: 0 },
        hostname: `${name}-host`,
        log_directory: logDir,
        dns_config: { servers: [cd.gateway.replace(/\.1$/, '.53')], searches: ['svc.cri-test.local'], options: ['ndots:2'] },
        labels: { app: name },
        annotations: { 'test.kata-ts/pod': name },
        linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
        ...extra,
      };
    };
    const container = (name: string, script: string, mounts: ContainerConfig['mounts'] = []): ContainerConfig => ({
      metadata: { name, attempt: 0 },
      image: { image: BUSYBOX },
      command: ['sh', '-c', script],
      envs: [{ key: 'CTR_NAME', value: name }],
      mounts,
      labels: { ctr: name },
      log_path: `${name}/0.log`,
      linux: {},
    });
    const runPod = async (config: PodSandboxConfig): Promise<Pod> => {
      const id = await cd.cri.runPodSandbox(config, handler);
      const st = await cd.cri.podSandboxStatus(id, true);
      const info = JSON.parse(st.info.info ?? '{}') as { runtimeSpec?: { linux?: { namespaces?: { type: string; path?: string }[] } } };
      const netns = info.runtimeSpec?.linux?.namespaces?.find((n) => n.type === 'network')?.path ?? '';
      return { id, config, ip: st.status.network?.ip ?? '', netns };
    };
    const startContainer = async (pod: Pod, cfg: ContainerConfig): Promise<string> => {
      const id = await cd.cri.createContainer(pod.id, cfg, pod.config);
      await cd.cri.startContainer(id);
      return id;
    };

    /** Both pods and their containers, made once (the first `it` that asks pays). */
    const setUp = (): Promise<World> => {
      world ??= (async () => {
        const emptyDir = path.join(cd.dir, 'volumes', 'shared');
        fs.mkdirSync(emptyDir, { recursive: true });
        fs.writeFileSync(path.join(emptyDir, 'from-host'), 'host-wrote-this\n');
        const shared = [{ container_path: '/shared', host_path: emptyDir }];
        const server = await runPod(podConfig('server', { port_mappings: [{ protocol: 'TCP', container_port: HTTP_PORT, host_port: HOST_PORT }] }));
        const client = await runPod(podConfig('client'));
        const web = await startContainer(server, container('web',
          `mkdir -p /www && echo "served by $(hostname)" > /www/index.html && echo hello-stdout && echo hello-stderr >&2 && exec httpd -f -v -p ${HTTP_PORT} -h /www`, shared));
        const side = await startContainer(server, container('side', IDLE, shared));
        const clientCtr = await startContainer(client, container('client', IDLE));
        return { server, client, web, side, clientCtr, emptyDir };
      })();
      return world;
    };
    const exec = async (id: string, script: string) => {
      const r = await cd.cri.execSync(id, ['sh', '-c', script], 60);
      return { code: r.exit_code, out: r.stdout.toString(), err: r.stderr.toString() };
    };

    before(async function () {
      cd = await startCriContainerd(this, handler);
    });

    after(() => stopCriContainerd(cd));

    afterEach(function () {
      printContainerdLogOnFailure(this, cd, { only: /level=(error|warning)/, lines: 15 });
    });

    it('RunPodSandbox: two pods READY with IPs on the CNI bridge, one shim (and for kata-ts one VM) per pod', async () => {
      const w = await setUp();
      for (const pod of [w.server, w.client]) {
        const st = (await cd.cri.podSandboxStatus(pod.id)).status;
        expect(st.state).to.equal('SANDBOX_READY');
        expect(st.runtime_handler).to.equal(handler);
        expect(st.metadata.name).to.equal(pod.config.metadata.name);
        expect(st.labels).to.include({ app: pod.config.metadata.name });
        expect(pod.ip, 'pod IP from host-local').to.match(new RegExp(`^${cd.subnet.replace(/\.0\/24$/, '').replace(/\./g, '\\.')}\\.\\d+$`));
        expect(pod.netns, 'a pod network namespace made by CRI').to.match(/^\/var\/run\/netns\/cni-/);
      }
      expect(w.server.ip).to.not.equal(w.client.ip);
      const pods = await cd.cri.listPodSandbox({ state: { state: 'SANDBOX_READY' } });
      expect(pods.map((p) => p.metadata.name).sort()).to.deep.equal(['client', 'server']);
      expect(cd.shimPids(), 'one shim per pod').to.have.length(2);
      expect(cd.qemuPids(), expectVm ? 'one QEMU per pod, containers share it' : 'no VM under runc').to.have.length(expectVm ? 2 : 0);
    });

    it('CreateContainer ×2 + StartContainer in one pod: ContainerStatus and ListContainers say RUNNING', async () => {
      const w = await setUp();
      const st = (await cd.cri.containerStatus(w.web)).status;
      expect(st.state).to.equal('CONTAINER_RUNNING');
      expect(st.metadata.name).to.equal('web');
      expect(st.image.image).to.equal(BUSYBOX);
      expect(st.image_ref).to.match(/^sha256:[0-9a-f]{64}$/);
      expect(st.started_at).to.be.at.least(st.created_at);
      expect(st.log_path).to.equal(path.join(w.server.config.log_directory!, 'web', '0.log'));
      expect(st.mounts.map((m) => [m.container_path, m.host_path])).to.deep.include(['/shared', w.emptyDir]);
      const inServer = await cd.cri.listContainers({ pod_sandbox_id: w.server.id });
      expect(inServer.map((c) => `${c.metadata.name}:${c.state}`).sort()).to.deep.equal(['side:CONTAINER_RUNNING', 'web:CONTAINER_RUNNING']);
      const running = await cd.cri.listContainers({ state: { state: 'CONTAINER_RUNNING' } });
      expect(running.map((c) => c.metadata.name).sort()).to.deep.equal(['client', 'side', 'web']);
      const byLabel = await cd.cri.listContainers({ label_selector: { ctr: 'side' } });
      expect(byLabel.map((c) => c.id)).to.deep.equal([w.side]);
      expect(cd.qemuPids(), 'containers join their pod\'s VM').to.have.length(expectVm ? 2 : 0);
    });

    it('ExecSync: stdout, stderr and exit status apart; in the pod\'s kernel; env from the container config', async () => {
      const w = await setUp();
      const r = await exec(w.side, 'echo to-out; echo to-err >&2; echo $CTR_NAME; exit 7');
      expect(r).to.deep.equal({ code: 7, out: 'to-out\nside\n', err: 'to-err\n' });
      const k = await exec(w.side, 'uname -r');
      if (expectVm) expect(k.out.trim(), 'the guest kernel, not the host\'s').to.match(/^6\.1\./).and.not.equal(os.release());
      else expect(k.out.trim()).to.equal(os.release());
      const timedOut = await cd.cri.execSync(w.side, ['sleep', '30'], 2).then(() => 'returned', (e: CriError) => e.message);
      expect(timedOut, 'ExecSync honours its timeout').to.match(/timeout|deadline|timed out/i);
    });

    it('writes container output to log_path in the CRI log format', async () => {
      const w = await setUp();
      const file = path.join(w.server.config.log_directory!, 'web', '0.log');
      const lines = await until('both streams in the log', () => {
        const ls = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
        return ls.length >= 2 ? ls : undefined;
      }, 20000, 250);
      const parsed = lines.map((l) => /^(\S+) (stdout|stderr) (F|P) (.*)$/.exec(l));
      expect(parsed.every(Boolean), `CRI log lines: ${lines.join(' | ')}`).to.equal(true);
      for (const m of parsed) {
        expect(m![1], 'RFC 3339 timestamp with nanoseconds').to.match(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d)$/);
        expect(Math.abs(Date.parse(m![1]!) - Date.now())).to.be.below(10 * 60000);
      }
      expect(parsed.map((m) => `${m![2]} ${m![3]} ${m![4]}`)).to.include.members(['stdout F hello-stdout', 'stderr F hello-stderr']);
    });

    it('pod files: hostname, /etc/hostname, /etc/hosts and resolv.conf from the pod config', async () => {
      const w = await setUp();
      const r = await exec(w.side, 'hostname; cat /etc/hostname; grep -c localhost /etc/hosts; cat /etc/resolv.conf');
      expect(r.code, r.err).to.equal(0);
      const [hn, etcHn, hosts, ...resolv] = r.out.split('\n');
      expect(hn).to.equal('server-host');
      expect(etcHn).to.equal('server-host');
      expect(Number(hosts)).to.be.at.least(1);
      const dns = resolv.join('\n');
      expect(dns).to.include(`nameserver ${w.server.config.dns_config!.servers![0]}`);
      expect(dns).to.include('search svc.cri-test.local');
      expect(dns).to.include('options ndots:2');
    });

    it('emptyDir: one host dir bind-mounted into both containers of a pod is shared (and seen by the host)', async () => {
      const w = await setUp();
      const fromHost = await exec(w.web, 'cat /shared/from-host');
      expect(fromHost.out, fromHost.err).to.equal('host-wrote-this\n');
      const write = await exec(w.side, 'echo written-by-side > /shared/from-side && sync');
      expect(write.code, write.err).to.equal(0);
      const read = await exec(w.web, 'cat /shared/from-side');
      expect(read.out, read.err).to.equal('written-by-side\n');
      expect(fs.readFileSync(path.join(w.emptyDir, 'from-side'), 'utf8')).to.equal('written-by-side\n');
      fs.writeFileSync(path.join(w.emptyDir, 'late'), 'after-start\n');
      const late = await until('a host write seen in the container', async () => {
        const r = await exec(w.side, 'cat /shared/late 2>/dev/null');
        return r.out ? r.out : undefined;
      }, 10000, 250).catch(() => '(never)');
      expect(late).to.equal('after-start\n');
    });

    it('pod to pod: a TCP server in one pod answers a client in another pod', async () => {
      const w = await setUp();
      const r = await exec(w.clientCtr, httpGet(w.server.ip, HTTP_PORT));
      expect(r.out, `client pod → ${w.server.ip}:${HTTP_PORT}: ${r.err}`).to.match(/^HTTP\/1\.[01] 200/).and.include('served by server-host');
      // The server's side (httpd -v logs each peer to stderr): the connection came from the client pod's IP, no NAT between pods.
      const log = path.join(w.server.config.log_directory!, 'web', '0.log');
      const seen = await until('the server to log the client', () => (fs.readFileSync(log, 'utf8').includes(w.client.ip) ? true : undefined), 10000, 250).catch(() => false);
      expect(seen, `web's log names ${w.client.ip}: ${fs.readFileSync(log, 'utf8')}`).to.equal(true);
    });

    it('node to pod: containerd\'s netns reaches the pod\'s server over TCP', async () => {
      const w = await setUp();
      const r = await cd.inNetns('/usr/bin/curl', ['-sS', '-m', '20', `http://${w.server.ip}:${HTTP_PORT}/`]);
      expect(r.stdout, r.stderr).to.equal('served by server-host\n');
    });

    it('hostPort: the pod\'s port mapping answers on the node\'s address', async () => {
      const w = await setUp();
      const r = await cd.inNetns('/usr/bin/curl', ['-sS', '-m', '20', `http://${cd.gateway}:${HOST_PORT}/`]);
      expect(r.stdout, r.stderr).to.equal('served by server-host\n');
      // From the other pod too (hairpin through the bridge).
      const fromPod = await exec(w.clientCtr, httpGet(cd.gateway, HOST_PORT));
      expect(fromPod.out, fromPod.err).to.include('served by server-host');
    });

    it('bad input: a bind source that cannot exist gives one clear error at CreateContainer, nothing half set up', async () => {
      const w = await setUp();
      const file = path.join(cd.dir, 'volumes', 'a-file');
      fs.writeFileSync(file, 'x');
      const dangling = path.join(cd.dir, 'volumes', 'dangling');
      fs.symlinkSync(path.join(cd.dir, 'volumes', 'nowhere'), dangling);
      const mountsBefore = cd.mountsBelow().sort();
      for (const [name, source, why] of [['under-file', path.join(file, 'sub'), /not a directory/], ['dangling', dangling, /exists|no such file/i]] as const) {
        const err = await cd.cri.createContainer(w.server.id, container(`bad-${name}`, IDLE, [{ container_path: '/bad', host_path: source }]), w.server.config)
          .then((id) => `created ${id}`, (e: CriError) => e);
        expect(err, `${name}: CreateContainer must fail`).to.be.instanceOf(CriError);
        expect((err as CriError).details).to.include(source.replace(/\/sub$/, '')).and.match(why);
      }
      expect((await cd.cri.listContainers({ pod_sandbox_id: w.server.id })).map((c) => c.metadata.name).sort(), 'no container record left').to.deep.equal(['side', 'web']);
      expect(cd.mountsBelow().sort(), 'no mount left').to.deep.equal(mountsBefore);
      expect(fs.existsSync(path.join(cd.dir, 'volumes', 'nowhere')), 'the symlink target was not created').to.equal(false);
      expect((await cd.cri.podSandboxStatus(w.server.id)).status.state).to.equal('SANDBOX_READY');
      expect((await exec(w.side, 'echo still-fine')).out).to.equal('still-fine\n');
      expect(cd.qemuPids()).to.have.length(expectVm ? 2 : 0);
    });

    it('bad input: a volume path with ".." stays inside the container (or is refused with one clear error), nothing outside changes', async () => {
      const w = await setUp();
      const vol = path.join(cd.dir, 'volumes', 'dotdot');
      fs.mkdirSync(vol, { recursive: true });
      fs.writeFileSync(path.join(vol, 'marker'), 'dotdot-volume\n');
      const escape = `kts-escape-${path.basename(cd.dir)}`;
      const dest = `/shared/../../../../../${escape}`;
      const mountsBefore = cd.mountsBelow().sort();
      let id: string | undefined;
      let err: CriError | undefined;
      try {
        id = await cd.cri.createContainer(w.server.id, container('dotdot', IDLE, [{ container_path: dest, host_path: vol }]), w.server.config);
        await cd.cri.startContainer(id);
      } catch (e) {
        err = e as CriError;
      }
      expect(fs.existsSync(`/${escape}`), 'nothing created at the path outside the container').to.equal(false);
      if (err) {
        // Refused: one error naming the path, and no running half of it.
        expect(err.details).to.include('..');
        const left = (await cd.cri.listContainers({ pod_sandbox_id: w.server.id })).filter((c) => c.metadata.name === 'dotdot');
        expect(left.filter((c) => c.state === 'CONTAINER_RUNNING')).to.deep.equal([]);
        for (const c of left) await cd.cri.removeContainer(c.id);
        expect(cd.mountsBelow().sort()).to.deep.equal(mountsBefore);
      } else {
        // Accepted (runc): the volume lands at the cleaned path inside the container's own root.
        const r = await exec(id!, `cat /${escape}/marker`);
        expect(r.out, r.err).to.equal('dotdot-volume\n');
        await cd.cri.stopContainer(id!, GRACE_SEC);
        await cd.cri.removeContainer(id!);
      }
      expect((await exec(w.side, 'echo still-fine')).out).to.equal('still-fine\n');
    });

    it(`bad input: a unix socket as bind source ${expectVm ? 'is refused at StartContainer with one clear error (a socket cannot cross into the VM), nothing half set up' : 'is bound into the container (runc)'}`, async () => {
      const w = await setUp();
      const sock = path.join(cd.dir, 'volumes', 'app.sock');
      const listener = net.createServer((c) => c.end('from-host-socket\n')).listen(sock);
      await new Promise((r) => listener.once('listening', r));
      try {
        const mountsBefore = cd.mountsBelow().sort();
        const id = await cd.cri.createContainer(w.server.id, container('sock', IDLE, [{ container_path: '/run/app.sock', host_path: sock }]), w.server.config);
        const started = await cd.cri.startContainer(id).then(() => undefined, (e: CriError) => e);
        if (expectVm) {
          expect(started, 'StartContainer must fail').to.be.instanceOf(CriError);
          expect(started!.details).to.include(sock).and.match(/socket/);
          const st = (await cd.cri.containerStatus(id)).status;
          expect(st.state, 'not running').to.not.equal('CONTAINER_RUNNING');
          await cd.cri.removeContainer(id);
          expect(cd.mountsBelow().sort(), 'no mount left').to.deep.equal(mountsBefore);
          expect(cd.qemuPids(), 'the pod\'s VM lives on').to.have.length(2);
        } else {
          expect(started, started?.message).to.equal(undefined);
          const r = await exec(id, 'test -S /run/app.sock && echo is-a-socket');
          expect(r.out, r.err).to.equal('is-a-socket\n');
          await cd.cri.stopContainer(id, GRACE_SEC);
          await cd.cri.removeContainer(id);
        }
        expect((await cd.cri.listContainers({ pod_sandbox_id: w.server.id })).map((c) => c.metadata.name).sort()).to.deep.equal(['side', 'web']);
        expect((await exec(w.side, 'echo still-fine')).out).to.equal('still-fine\n');
      } finally {
        listener.close();
      }
    });

    it(`pod annotations io.katacontainers.* ${expectVm ? 'reach the kata-ts shim (the handler\'s pod_annotations): an agent policy from the pod allows one exec and denies another' : 'are not passed to runc (no pod_annotations on its handler)'}`, async () => {
      const policy = { version: 1, exec_process: { process: { args: [['echo', '[a-z-]+']] } } };
      const config = podConfig('policy', { annotations: { [POLICY_ANNOTATION]: Buffer.from(JSON.stringify(policy)).toString('base64'), 'other.example/keep-out': 'x' } });
      const pod = await runPod(config);
      try {
        const st = await cd.cri.podSandboxStatus(pod.id, true);
        const spec = (JSON.parse(st.info.info ?? '{}') as { runtimeSpec?: { annotations?: Record<string, string> } }).runtimeSpec;
        expect(spec?.annotations ?? {}, 'only io.katacontainers.* pass, and only for the handler that asks').to.not.have.property('other.example/keep-out');
        if (expectVm) expect(spec?.annotations).to.have.property(POLICY_ANNOTATION);
        else expect(spec?.annotations ?? {}).to.not.have.property(POLICY_ANNOTATION);
        const id = await startContainer(pod, container('guarded', IDLE));
        const ok = await cd.cri.execSync(id, ['echo', 'allowed'], 30);
        expect(ok.stdout.toString()).to.equal('allowed\n');
        const denied = await cd.cri.execSync(id, ['sh', '-c', 'echo pwned'], 30).then((r) => `ran: ${r.stdout.toString()}`, (e: CriError) => e.details);
        if (expectVm) expect(denied).to.match(/policy denied ExecProcess/).and.not.include('pwned\n');
        else expect(denied).to.equal('ran: pwned\n');
      } finally {
        await cd.cri.stopPodSandbox(pod.id);
        await cd.cri.removePodSandbox(pod.id);
      }
    });

    it('StopContainer, StopPodSandbox, RemovePodSandbox: exit statuses, then nothing left (shims, VMs, mounts, netns, veths, CNI state)', async () => {
      const w = await setUp();
      await cd.cri.stopContainer(w.side, GRACE_SEC);
      const side = (await cd.cri.containerStatus(w.side)).status;
      expect(side.state).to.equal('CONTAINER_EXITED');
      expect(side.exit_code, 'SIGTERM handled: exit 0').to.equal(0);
      expect(side.finished_at).to.be.at.least(side.started_at);
      expect((await cd.cri.containerStatus(w.web)).status.state, 'the other container of the pod is untouched').to.equal('CONTAINER_RUNNING');
      await cd.cri.removeContainer(w.side);
      expect((await cd.cri.listContainers({ pod_sandbox_id: w.server.id })).map((c) => c.metadata.name)).to.deep.equal(['web']);
      for (const pod of [w.server, w.client]) {
        await cd.cri.stopPodSandbox(pod.id);
        const st = (await cd.cri.podSandboxStatus(pod.id)).status;
        expect(st.state).to.equal('SANDBOX_NOTREADY');
        await cd.cri.stopPodSandbox(pod.id); // idempotent, as the kubelet relies on
      }
      expect((await cd.cri.containerStatus(w.web)).status.state, 'StopPodSandbox stops what runs in it').to.equal('CONTAINER_EXITED');
      for (const pod of [w.server, w.client]) {
        await cd.cri.removePodSandbox(pod.id);
        await cd.cri.removePodSandbox(pod.id); // idempotent
      }
      expect(await cd.cri.listPodSandbox()).to.deep.equal([]);
      expect(await cd.cri.listContainers()).to.deep.equal([]);
      await until('shims and VMs to exit', () => (cd.shimPids().length + cd.qemuPids().length === 0 ? true : undefined), 30000, 250)
        .catch(() => undefined);
      expect(cd.shimPids(), 'shims').to.deep.equal([]);
      expect(cd.qemuPids(), 'QEMU').to.deep.equal([]);
      expect(cd.mountsBelow(), 'mounts under containerd\'s dirs').to.deep.equal([]);
      for (const pod of [w.server, w.client]) expect(fs.existsSync(pod.netns), `pod netns ${pod.netns}`).to.equal(false);
      expect(await cd.vethsInNetns(), 'veths on the bridge').to.deep.equal([]);
      expect(cd.cniCacheEntries(), 'CNI result cache').to.deep.equal([]);
      expect(fs.readdirSync(path.join(cd.dir, 'cni-ipam', cd.network)).filter((f) => /^\d+\./.test(f)), 'IP leases').to.deep.equal([]);
      const sandboxes = path.join(cd.runDir, 'sandboxes');
      expect(fs.existsSync(sandboxes) ? fs.readdirSync(sandboxes) : [], 'kata-ts sandbox dirs').to.deep.equal([]);
    });
  });
}
