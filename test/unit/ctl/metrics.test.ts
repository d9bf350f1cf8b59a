/**
 * `kata-ctl metrics` without a VM: the exposition writer against an
 * independent parser (test/helpers/prometheus.ts), /proc readers against
 * this process and fixed guest /proc text, and the CLI (print and --listen
 * on loopback) over a fabricated live sandbox owned by this test process.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { render, Registry } from '../../../src/ctl/prometheus';
import { procStats } from '../../../src/ctl/metrics';
import { parseGuestStats } from '../../../src/agent/guest-stats';
import { processStartTime, writeState } from '../../../src/runtime/state';
import { parsePrometheus, sampleOf } from '../../helpers/prometheus';
import { kataCtl } from '../../helpers/kata-ctl';
import { REPO } from '../../helpers/guest';

describe('kata-ctl metrics', function () {
  this.timeout(30000);
  let runDir: string;
  let cfg: string;

  before(() => {
    runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-metrics-'));
    cfg = path.join(runDir, 'c.toml');
    fs.writeFileSync(cfg, `[runtime]\nrun_dir = "${runDir}"\n`);
    const dir = path.join(runDir, 'sandboxes', 'sb1');
    fs.mkdirSync(dir, { recursive: true });
    writeState(dir, {
      id: 'sb1', phase: 'running', hypervisor: 'qemu', accel: 'tcg', ownerPid: process.pid, ownerStartTime: processStartTime(process.pid),
      vmPids: [process.pid], vcpus: 2, memoryMiB: 256, createdAt: new Date().toISOString(), containers: [{ id: 'c1', state: 'running', pid: 1 }],
    });
  });

  after(() => fs.rmSync(runDir, { recursive: true, force: true }));

  it('writes valid exposition text, escaping label values', () => {
    const reg = new Registry();
    reg.add('x_total', 'counter', 'a help with \\ and\nnewline', { a: 'q"uote', b: 'back\\slash', c: 'new\nline' }, 1.5);
    reg.add('y', 'gauge', 'y', {}, NaN);
    reg.add('x_total', 'counter', 'ignored', { a: 'second' }, 2);
    const fams = parsePrometheus(reg.render());
    expect(fams.get('x_total')!.type).to.equal('counter');
    expect(fams.get('x_total')!.samples.map((s) => s.labels.a)).to.deep.equal(['q"uote', 'second']);
    expect(sampleOf(fams, 'x_total', { a: 'q"uote' })!.labels).to.deep.equal({ a: 'q"uote', b: 'back\\slash', c: 'new\nline' });
    expect(Number.isNaN(sampleOf(fams, 'y')!.value)).to.equal(true);
    expect(() => render([{ name: 'bad-name', help: '', type: 'gauge', samples: [] }])).to.throw(/invalid metric name/);
  });

  it('reads CPU, PSS and threads of a live process and nothing for a dead one', () => {
    const s = procStats(process.pid)!;
    expect(s.cpuSeconds).to.be.greaterThan(0);
    expect(s.pssBytes).to.be.greaterThan(1 << 20);
    expect(s.rssBytes).to.be.at.least(s.pssBytes);
    expect(s.threads).to.be.at.least(1);
    expect(procStats(0x3fffffff)).to.equal(undefined);
  });

  it('parses guest /proc text', () => {
    const g = parseGuestStats('MemTotal:  500000 kB\nMemFree:  1000 kB\nMemAvailable:  2000 kB\n', '0.50 0.25 0.10 1/42 99\n',
      'cpu  100 5 20 1000 3 1 2 0 0 0\ncpu0 1 2 3\n', '12.34 5.00\n');
    expect(g).to.deep.equal({ mem_total_bytes: 512000000, mem_available_bytes: 2048000, mem_free_bytes: 1024000, load1: 0.5, load5: 0.25, load15: 0.1,
      cpu_user_ms: 1050, cpu_system_ms: 230, cpu_idle_ms: 10030, uptime_ms: 12340, processes: 42 });
  });

  it('prints host metrics for every sandbox, guest_up 0 when its agent is unreachable', async () => {
    const r = await kataCtl(['--config', cfg, 'metrics']);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stderr).to.equal('kata-ctl: guest metrics unavailable for sb1: no ctl channel\n');
    const fams = parsePrometheus(r.stdout);
    expect(sampleOf(fams, 'kata_sandboxes', { status: 'running' })!.value).to.equal(1);
    expect(sampleOf(fams, 'kata_sandbox_info', { sandbox_id: 'sb1' })!.labels).to.include({ hypervisor: 'qemu', accel: 'tcg', phase: 'running' });
    expect(sampleOf(fams, 'kata_sandbox_memory_bytes', { sandbox_id: 'sb1' })!.value).to.equal(256 * 1048576);
    // owner and VMM are the same pid here (as with the builtin VMM): one series
    const cpu = fams.get('kata_host_process_cpu_seconds_total')!;
    expect(cpu.type).to.equal('counter');
    expect(cpu.samples).to.have.length(1);
    expect(cpu.samples[0]!.labels).to.deep.equal({ sandbox_id: 'sb1', role: 'runtime+vmm', pid: String(process.pid) });
    expect(sampleOf(fams, 'kata_host_process_pss_bytes', { sandbox_id: 'sb1' })!.value).to.be.greaterThan(0);
    expect(sampleOf(fams, 'kata_guest_up', { sandbox_id: 'sb1' })!.value).to.equal(0);
  });

  it('refuses an unknown sandbox', async () => {
    const r = await kataCtl(['--config', cfg, 'metrics', 'nope']);
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/no sandbox "nope"/);
  });

  it('--listen serves /metrics on loopback until SIGTERM', async () => {
    const child = spawn(process.execPath, [path.join(REPO, 'bin', 'kata-ctl'), '--config', cfg, 'metrics', '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        let err = '';
        child.stderr!.on('data', (d: Buffer) => {
          err += d.toString();
          const m = /serving metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(err);
          if (m) resolve(m[1]!);
        });
        child.once('exit', () => reject(new Error(`exited: ${err}`)));
      });
      const get = (u: string) => new Promise<{ status: number; type: string; body: string }>((resolve, reject) => {
        http.get(u, (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
        }).on('error', reject);
      });
      const ok = await get(url);
      expect(ok.status).to.equal(200);
      expect(ok.type).to.equal('text/plain; version=0.0.4; charset=utf-8');
      expect(sampleOf(parsePrometheus(ok.body), 'kata_sandbox_vcpus', { sandbox_id: 'sb1' })!.value).to.equal(2);
      expect((await get(url.replace('/metrics', '/'))).status).to.equal(404);
      const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
      child.kill('SIGTERM');
      expect(await exited).to.equal(0);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});
