/**
 * Volumes through containerd: `ctr run --mount type=bind,...` reaches the
 * container in the VM through the shim's volume share (read-only refused in
 * the guest, writes to a rw volume on the host), two containers of one pod
 * share a directory volume, a bad source is refused at Create with no VM,
 * shim or mount left — and nothing is left mounted after the containers go.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { IMAGE, RUNTIME, TestContainerd, startTestContainerd, stopTestContainerd } from '../helpers/containerd';
import { mountsUnder } from '../../src/runtime/volumes';
import { until } from '../helpers/until';

describe('e2e: ctr run --mount (volumes) with io.containerd.kata-ts.v2', function () {
  this.timeout(240000);
  let cd: TestContainerd;
  let host: string;
  const run = (args: string[]) => cd.ctr(['run', '--runtime', RUNTIME, ...args]);
  const bind = (src: string, dst: string, opts: string) => ['--mount', `type=bind,src=${src},dst=${dst},options=${opts}`];

  before(async function () {
    cd = await startTestContainerd(this);
    host = path.join(cd.dir, 'vol');
    fs.mkdirSync(host);
  });

  after(async () => {
    if (cd) expect(mountsUnder(cd.runDir), 'volume mounts left').to.deep.equal([]);
    await stopTestContainerd(cd);
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') process.stdout.write(`containerd log tail:\n${cd.log.split('\n').slice(-25).join('\n')}\n`);
  });

  it('a directory (rbind:ro) and a file (rbind:rw) volume: read, ro refused in the guest, rw lands on the host', async () => {
    const dir = path.join(host, 'cfg');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'setting'), 'on\n');
    const file = path.join(host, 'app.log');
    fs.writeFileSync(file, 'host line\n');
    const r = await run(['--rm', ...bind(dir, '/cfg', 'rbind:ro'), ...bind(file, '/var/app.log', 'rbind:rw'), IMAGE, 'vol1', 'sh', '-c',
      'cat /cfg/setting; touch /cfg/new 2>/dev/null && echo RO-WRITE || echo ro-refused; cat /var/app.log; echo guest line >> /var/app.log']);
    expect(r.stderr).to.equal('');
    expect(r.code).to.equal(0);
    expect(r.stdout).to.equal('on\nro-refused\nhost line\n');
    expect(fs.readFileSync(file, 'utf8')).to.equal('host line\nguest line\n');
    expect(fs.readdirSync(dir)).to.deep.equal(['setting']);
    await until('shim gone', async () => (cd.shimPids().length === 0 ? true : undefined), 15000);
    expect(mountsUnder(cd.runDir)).to.deep.equal([]);
  });

  it('two containers of one pod share a directory volume', async () => {
    const shared = path.join(host, 'empty-dir');
    fs.mkdirSync(shared);
    const pod = ['--annotation', 'io.kubernetes.cri.sandbox-id=vpod'];
    const a = await run(['-d', ...pod, '--annotation', 'io.kubernetes.cri.container-type=sandbox', ...bind(shared, '/shared', 'rbind:rw'), IMAGE, 'vpod', 'sh', '-c', 'echo from-a > /shared/a; sleep 600']);
    expect(a.code, a.stderr).to.equal(0);
    const b = await run(['-d', ...pod, '--annotation', 'io.kubernetes.cri.container-type=container', ...bind(shared, '/data', 'rbind:rw'), IMAGE, 'vpod-b', 'sleep', '600']);
    expect(b.code, b.stderr).to.equal(0);
    expect(cd.qemuPids(), 'one VM for the pod').to.have.length(1);
    const seen = await until('b to see a\'s file', async () => {
      const r = await cd.ctr(['task', 'exec', '--exec-id', `r${Date.now()}`, 'vpod-b', 'sh', '-c', 'cat /data/a 2>/dev/null']);
      return r.stdout ? r.stdout : undefined;
    });
    expect(seen).to.equal('from-a\n');
    for (const id of ['vpod-b', 'vpod']) {
      expect((await cd.ctr(['task', 'kill', '-s', 'SIGKILL', id])).code).to.equal(0);
      await until(`${id} stopped`, async () => ((await cd.ctr(['task', 'ls'])).stdout.split('\n').some((l) => l.startsWith(`${id} `) && /STOPPED/.test(l)) ? true : undefined));
      await cd.ctr(['task', 'delete', id]);
      expect((await cd.ctr(['container', 'delete', id])).code).to.equal(0);
    }
    expect(fs.readFileSync(path.join(shared, 'a'), 'utf8')).to.equal('from-a\n');
    await until('pod shim gone', async () => (cd.shimPids().length === 0 ? true : undefined), 15000);
    expect(cd.qemuPids()).to.deep.equal([]);
    expect(mountsUnder(cd.runDir)).to.deep.equal([]);
  });

  it('refuses a missing source and a socket at Create: one clear error, no VM, shim or mount left', async () => {
    const sock = path.join(host, 's.sock');
    const srv = net.createServer().listen(sock);
    await new Promise((r) => srv.once('listening', r));
    try {
      for (const [src, re, id] of [[path.join(host, 'missing'), /missing \(for \/x\) does not exist/, 'bad1'], [sock, /is a unix socket/, 'bad2']] as const) {
        const r = await run(['--rm', ...bind(src, '/x', 'rbind:ro'), IMAGE, id, 'true']);
        expect(r.code, r.stdout).to.not.equal(0);
        expect(r.stderr).to.match(re);
        await cd.ctr(['container', 'delete', id]);
      }
    } finally {
      srv.close();
    }
    await until('shims gone', async () => (cd.shimPids().length === 0 ? true : undefined), 15000);
    expect(cd.qemuPids()).to.deep.equal([]);
    expect(mountsUnder(cd.runDir)).to.deep.equal([]);
    const sbs = path.join(cd.runDir, 'sandboxes');
    expect(fs.existsSync(sbs) ? fs.readdirSync(sbs) : [], 'sandbox dirs left').to.deep.equal([]);
  });
});
