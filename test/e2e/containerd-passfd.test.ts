/**
 * Passfd IO through containerd ([runtime] use_passfd_io = true): `ctr run`
 * whose container's stdio are vsock sockets of their own, copied by the
 * shim straight into containerd's fifos — 8 MiB of stdout intact, stdin and
 * its end, stderr apart, the exit status; and `ctr task exec` on its own
 * streams in a detached container. 2 VMs.
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IMAGE, RUNTIME, TestContainerd, startTestContainerd, stopTestContainerd } from '../helpers/containerd';
import { until } from '../helpers/until';

const MIB8 = 8 * 1024 * 1024;

describe('e2e: ctr with passfd IO', function () {
  this.timeout(300000);
  let cd: TestContainerd;
  const run = (args: string[], o: { input?: string } = {}) => cd.ctr(['run', '--runtime', RUNTIME, ...args], o);

  before(async function () {
    cd = await startTestContainerd(this);
    // Each shim reads the configuration when it starts: turn passfd IO on for this suite's.
    const cfg = path.join(cd.dir, 'kata-ts.toml');
    fs.writeFileSync(cfg, fs.readFileSync(cfg, 'utf8').replace('[runtime]\n', '[runtime]\nuse_passfd_io = true\n'));
  });

  after(async () => {
    await stopTestContainerd(cd);
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') process.stdout.write(`containerd log tail:\n${cd.log.split('\n').slice(-25).join('\n')}\n`);
  });

  it('ctr run --rm: stdout intact, stdin and its end, stderr apart, exit status; the stdio are sockets', async () => {
    const input = Array.from({ length: 700 }, (_, i) => `line ${i}`).join('\n') + '\n';
    const r = await run(['--rm', IMAGE, 'pf1', 'sh', '-c', 'for f in 0 1 2; do readlink /proc/$$/fd/$f >&2; done; wc -l >&2; yes abcdefgh | head -c 8388608; echo err >&2; exit 4'], { input });
    expect(r.stdout.length).to.equal(MIB8);
    expect(crypto.createHash('sha256').update(r.stdout).digest('hex')).to.equal(crypto.createHash('sha256').update(Buffer.alloc(MIB8, 'abcdefgh\n')).digest('hex'));
    const err = r.stderr.trim().split('\n');
    expect(err.slice(0, 3).every((l) => /^socket:\[\d+\]$/.test(l)), r.stderr).to.equal(true);
    expect(err.slice(3)).to.deep.equal(['700', 'err']);
    expect(r.code).to.equal(4);
    expect(cd.shimPids(), 'shim exits after --rm').to.deep.equal([]);
  });

  it('ctr task exec on its own streams in a detached container', async () => {
    const d = await run(['-d', IMAGE, 'pf2', 'sh', '-c', 'trap "exit 42" TERM; while :; do sleep 0.1; done']);
    expect(d.code, d.stderr).to.equal(0);
    try {
      const ex = await cd.ctr(['task', 'exec', '--exec-id', 'e1', 'pf2', 'sh', '-c', 'readlink /proc/$$/fd/1; echo exec-err >&2; exit 5']);
      expect(ex.code).to.equal(5);
      expect(ex.stdout).to.match(/^socket:\[\d+\]\n$/);
      expect(ex.stderr).to.equal('exec-err\n');
    } finally {
      await cd.ctr(['task', 'kill', '-s', 'SIGKILL', 'pf2']);
      await until('pf2 stopped', async () => ((await cd.ctr(['task', 'ls'])).stdout.split('\n').some((l) => /^pf2\s+\d+\s+STOPPED/.test(l)) ? true : undefined), 30000).catch(() => undefined);
      await cd.ctr(['task', 'delete', 'pf2']);
      await cd.ctr(['container', 'delete', 'pf2']);
      await until('shim gone', async () => (cd.shimPids().length === 0 ? true : undefined), 15000);
    }
  });
});
