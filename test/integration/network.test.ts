/**
 * Pod networking end to end without containerd: `kata-ts run --net
 * host-netns PATH` in a network namespace this test sets up the way CNI
 * would (a veth with an address, a default route, a static neighbour; its
 * peer in a second namespace standing for the node). The container in the
 * VM sees the pod interface by its CNI name with the pod's address, MTU and
 * routes, reaches a server in the peer namespace over TCP, serves one that
 * the peer reaches, and leaves no tap or tc filter behind.
 */
import * as path from 'node:path';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { expect } from 'chai';
import { runCommand } from '../helpers/spawn';
import { REPO, expectNothingLeft, requireGuest, testRunDir, writeTestConfig } from '../helpers/guest';
import { PodNetns, ip } from '../helpers/netns';

describe('integration: pod network (kata-ts run --net host-netns)', function () {
  this.timeout(240000);
  const net = new PodNetns({ podCidr: '10.97.0.2/24', mtu: 1450, defaultRoute: true, prefix: 'ktsi' });
  const { pod, peer } = net;
  const tag = pod.slice(-6);
  let runDir: string;
  let cfgFile: string;
  let server: ChildProcess | undefined;
  let podMac = '';

  const run = (args: string[], timeoutMs = 200000) =>
    runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), 'run', '--config', cfgFile, ...args], { timeoutMs });

  before(function () {
    requireGuest(this);
    runDir = testRunDir();
    cfgFile = writeTestConfig(runDir);
    net.create();
    ip('-n', pod, 'neigh', 'add', '10.97.0.66', 'lladdr', '02:66:66:66:66:66', 'dev', 'eth0', 'nud', 'permanent');
    podMac = net.podMac();
    // The "node": an HTTP server in the peer namespace (Node's: Debian's
    // busybox-static wget/httpd are not used on the host side, its wget
    // segfaults here even on an IP literal).
    server = spawn('ip', ['netns', 'exec', peer, process.execPath, '-e',
      `require('http').createServer((q, s) => s.end('hello from the node ${tag}\\n')).listen(8080, '10.97.0.1')`], { stdio: 'ignore' });
  });

  after(async () => {
    if (server && server.exitCode === null && server.signalCode === null) {
      const gone = new Promise((res) => server!.once('exit', res));
      server.kill('SIGKILL');
      await gone;
    }
    net.destroy();
    if (runDir) expectNothingLeft(runDir);
  });

  it('gives the container the pod interface (name, MAC, address, MTU), its routes and neighbours, and DNS', async () => {
    const r = await run(['--net', 'host-netns', `/var/run/netns/${pod}`, '--dns', '10.97.0.53', '--',
      'sh', '-c', 'ip -o link show eth0; ip -o addr show eth0; ip route; ip neigh show 10.97.0.66; cat /etc/resolv.conf; ip -o link show lo']);
    expect(r.stderr).to.equal('');
    expect(r.code).to.equal(0);
    expect(r.stdout).to.match(/eth0: <[^>]*UP[^>]*> mtu 1450/);
    expect(r.stdout).to.contain(`link/ether ${podMac}`);
    expect(r.stdout).to.contain('inet 10.97.0.2/24');
    expect(r.stdout).to.match(/default via 10\.97\.0\.1 dev eth0/);
    expect(r.stdout).to.match(/10\.97\.0\.66 dev eth0 lladdr 02:66:66:66:66:66 .*PERMANENT/);
    expect(r.stdout).to.contain('nameserver 10.97.0.53');
    expect(r.stdout).to.match(/lo: <LOOPBACK,UP/);
  });

  it('reaches a TCP server in the peer namespace through the tc mirror', async () => {
    const r = await run(['--net', 'host-netns', `/var/run/netns/${pod}`, '--', 'sh', '-c', 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 20 10.97.0.1 8080']);
    expect(r.stderr).to.equal('');
    expect(r.stdout).to.match(/^HTTP\/1\.[01] 200 /);
    expect(r.stdout.endsWith(`\r\n\r\nhello from the node ${tag}\n`)).to.equal(true);
    expect(r.code).to.equal(0);
  });

  it('serves a TCP server in the VM that the peer namespace reaches', async () => {
    // A one-shot server: the container ends once it has served one client.
    const vm = run(['--net', 'host-netns', `/var/run/netns/${pod}`, '--', 'sh', '-c', `echo "served from the VM ${tag}" | nc -l -p 8081`]);
    let got = '';
    const deadline = Date.now() + 180000;
    while (Date.now() < deadline && !got.includes(tag)) {
      const r = await runCommand('ip', ['netns', 'exec', peer, '/bin/busybox', 'nc', '-w', '3', '10.97.0.2', '8081'], { timeoutMs: 10000 });
      got = r.stdout;
      if (!got.includes(tag)) await new Promise((res) => setTimeout(res, 1000));
    }
    expect(got).to.equal(`served from the VM ${tag}\n`);
    const v = await vm;
    expect(v.code).to.equal(0);
  });

  it('hotplugs an interface CNI adds while the pod runs, with its address, and traffic crosses it', async () => {
    const script = [
      'echo ready',
      'i=0; while [ $i -lt 240 ]; do if ip -o addr show eth1 2>/dev/null | grep -q "inet 10.95.0.2/24"; then break; fi; sleep 0.5; i=$((i+1)); done',
      'ip -o link show eth1; ip -o addr show eth1; ping -c 2 -W 5 10.95.0.1 >/dev/null && echo ping-ok',
    ].join('; ');
    const child = spawn(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), 'run', '--config', cfgFile, '--net', 'host-netns', `/var/run/netns/${pod}`, '--', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
    const deadline = Date.now() + 120000;
    while (!out.includes('ready') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect(out).to.contain('ready');
    // What CNI's bridge plugin does for a second network (e.g. Multus): a veth, an address, up.
    ip('link', 'add', 'eth1', 'netns', pod, 'type', 'veth', 'peer', 'name', 'vnode2', 'netns', peer);
    ip('-n', peer, 'addr', 'add', '10.95.0.1/24', 'dev', 'vnode2');
    ip('-n', peer, 'link', 'set', 'vnode2', 'up');
    ip('-n', pod, 'link', 'set', 'eth1', 'up');
    ip('-n', pod, 'addr', 'add', '10.95.0.2/24', 'dev', 'eth1');
    const eth1Mac = net.podMac('eth1');
    const timer = setTimeout(() => child.kill('SIGTERM'), 150000);
    const code = await exited;
    clearTimeout(timer);
    expect(err).to.equal('');
    expect(out).to.contain(`link/ether ${eth1Mac}`);
    expect(out).to.contain('inet 10.95.0.2/24');
    expect(out).to.contain('ping-ok');
    expect(code).to.equal(0);
    ip('-n', pod, 'link', 'del', 'eth1');
  });

  it('leaves no tap and no tc qdisc in the pod namespace after the runs', () => {
    expect(ip('-n', pod, '-o', 'link')).to.not.contain('tap0_kata');
    expect(execFileSync('tc', ['-n', pod, 'qdisc', 'show', 'dev', 'eth0'], { encoding: 'utf8' })).to.not.contain('ingress');
  });

  it('fails clearly, with nothing left, for a namespace that does not exist or a bad --net', async () => {
    const r = await run(['--net', 'host-netns', '/var/run/netns/kts-no-such-ns', '--', 'true']);
    expect(r.code).to.not.equal(0);
    expect(r.stderr).to.match(/network namespace \/var\/run\/netns\/kts-no-such-ns does not exist/);
    const b = await run(['--net', 'bridge', '--', 'true']);
    expect(b.code).to.not.equal(0);
    expect(b.stderr).to.match(/invalid --net "bridge": expected "none" or "host-netns PATH"/);
  });
});
