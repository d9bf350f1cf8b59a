/**
 * Passfd IO against a real VM ([runtime] use_passfd_io = true): `kata-ts
 * run` whose container writes 32 MiB to a vsock socket of its own (intact,
 * sha256), stdin through and its end seen, stderr apart, the exact exit
 * status after the last byte; and an exec on its own streams through the
 * Sandbox API, in a container whose init also has them; and a sandbox
 * cloned from a VM template built with passfd IO on (the template's agent
 * listened before the save). The container's fds 0-2 are sockets (the
 * proof the agent does not relay them).
 */
import { expect } from 'chai';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { runCommand } from '../helpers/spawn';
import { kataCtl } from '../helpers/kata-ctl';
import { REPO, requireGuest, testRunDir, testConfig, writeTestConfig, expectNothingLeft, copyBusyboxRootfs } from '../helpers/guest';
import { selectHypervisor } from '../../src/hypervisor';
import { Sandbox } from '../../src/runtime/sandbox';
import { defaultSpec } from '../../src/runtime/spec';
import { configureLogging } from '../../src/common/log';
import { attachPassfd, openPassfdStreams } from '../../src/runtime/passfd-stdio';

const MIB32 = 32 * 1024 * 1024;

describe('integration: passfd IO (QEMU)', function () {
  this.timeout(300000);
  let runDir: string;
  let cfgFile: string;

  before(function () {
    requireGuest(this);
    configureLogging({ silent: true });
    runDir = testRunDir();
    cfgFile = writeTestConfig(runDir);
    fs.writeFileSync(cfgFile, fs.readFileSync(cfgFile, 'utf8').replace('[runtime]\n', '[runtime]\nuse_passfd_io = true\n'));
  });

  after(() => {
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  it('kata-ts run: 32 MiB of stdout intact, stdin and its end, stderr apart, exit status 3, stdio are sockets', async () => {
    const input = Array.from({ length: 3000 }, (_, i) => `line ${i}`).join('\n') + '\n';
    const script = 'for f in 0 1 2; do readlink /proc/$$/fd/$f >&2; done; wc -l >&2; yes 0123456789abcdef | head -c 33554432; echo err >&2; exit 3';
    const r = await runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), 'run', '--config', cfgFile, '--', 'sh', '-c', script], { input, timeoutMs: 240000 });
    const want = crypto.createHash('sha256').update(Buffer.alloc(MIB32, '0123456789abcdef\n')).digest('hex');
    expect(r.stdout.length).to.equal(MIB32);
    expect(crypto.createHash('sha256').update(r.stdout).digest('hex')).to.equal(want);
    const err = r.stderr.trim().split('\n');
    expect(err.slice(0, 3).every((l) => /^socket:\[\d+\]$/.test(l)), r.stderr).to.equal(true);
    expect(err.slice(3)).to.deep.equal(['3000', 'err']);
    expect(r.code).to.equal(3);
  });

  it('a clone of a VM template made with passfd IO on: its agent listens, stdout is a socket', async () => {
    const tplCfg = path.join(runDir, 'template.toml');
    fs.writeFileSync(tplCfg, `${fs.readFileSync(cfgFile, 'utf8')}[factory]\nenable_template = true\ntemplate_path = "${path.join(runDir, 'tpl')}"\n`);
    const init = await kataCtl(['factory', 'init', '--config', tplCfg], { timeoutMs: 240000 });
    expect(init.code, init.stderr).to.equal(0);
    try {
      const r = await runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), 'run', '--config', tplCfg, '--', 'sh', '-c', 'readlink /proc/$$/fd/1; grep -o "agent.passfd_listener_port=[0-9]*" /proc/cmdline; exit 6'], { timeoutMs: 240000 });
      // No "template stale ... cold boot" warning: it was a clone.
      expect(r.stderr).to.equal('');
      expect(r.stdout).to.match(/^socket:\[\d+\]\nagent\.passfd_listener_port=1027\n$/);
      expect(r.code).to.equal(6);
    } finally {
      const d = await kataCtl(['factory', 'destroy', '--config', tplCfg]);
      expect(d.code, d.stderr).to.equal(0);
    }
  });

  it('Sandbox API: an init and an exec each on their own streams; nothing left after', async () => {
    const rootfs = path.join(runDir, 'rootfs');
    copyBusyboxRootfs(rootfs);
    const cfg = testConfig(runDir);
    cfg.runtime.use_passfd_io = true;
    const hv = (await selectHypervisor(cfg, 'qemu')).hv;
    const sandbox = new Sandbox({ id: 'passfd1', config: cfg, hypervisor: hv, bootContainers: [{ id: 'c1', rootfs }] });
    try {
      await sandbox.start();
      const init = await openPassfdStreams(sandbox.vsockSocket, cfg.runtime.passfd_listener_port, { stdin: true, stdout: true, stderr: true });
      await sandbox.createContainer('c1', defaultSpec({ args: ['sh', '-c', 'read x; echo "init got $x"; cat; echo end'] }), rootfs, { stdio: init.ports });
      await sandbox.startContainer('c1');
      let initOut = '';
      const initIn = new PassThrough();
      const initAtt = attachPassfd(sandbox.agent, 'c1', '', init, { stdin: initIn, stdout: new Writable({ write: (c, _e, cb) => { initOut += c; cb(); } }), terminal: false });
      initIn.write('hello\n');
      const ex = await openPassfdStreams(sandbox.vsockSocket, cfg.runtime.passfd_listener_port, { stdin: false, stdout: true, stderr: true });
      await sandbox.exec('c1', 'e1', { args: ['sh', '-c', 'readlink /proc/$$/fd/1; echo exec-err >&2; exit 5'], cwd: '/', user: { uid: 0, gid: 0 } }, ex.ports);
      let out = '';
      let errText = '';
      const st = await attachPassfd(sandbox.agent, 'c1', 'e1', ex, {
        stdout: new Writable({ write: (c, _e, cb) => { out += c; cb(); } }),
        stderr: new Writable({ write: (c, _e, cb) => { errText += c; cb(); } }), terminal: false,
      }).done;
      expect(st.status).to.equal(5);
      expect(out).to.match(/^socket:\[\d+\]\n$/);
      expect(errText).to.equal('exec-err\n');
      initIn.end('more\n'); // then end of input: cat ends, the init exits
      const initSt = await initAtt.done;
      expect(initSt.status).to.equal(0);
      expect(initOut).to.equal('init got hello\nmore\nend\n');
      await sandbox.removeContainer('c1', 0);
    } finally {
      await sandbox.stop();
    }
  });
});
