/**
 * `kata-ts run` end to end: real QEMU (TCG on these hosts) booting our guest
 * kernel and image, the agent running a container with crun.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCommand, type CommandResult } from '../helpers/spawn';
import { REPO, requireGuest, testRunDir, writeTestConfig, expectNothingLeft } from '../helpers/guest';

function kataTs(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CommandResult> {
  return runCommand(process.execPath, [path.join(REPO, 'bin', 'kata-ts'), ...args], opts);
}

describe('integration: kata-ts run (QEMU)', function () {
  this.timeout(180000);
  let runDir: string;
  let cfgFile: string;
  const run = (args: string[], o: { input?: string; timeoutMs?: number } = {}) => kataTs(['run', '--config', cfgFile, ...args], o);

  before(function () {
    requireGuest(this);
    runDir = testRunDir();
    cfgFile = writeTestConfig(runDir);
  });

  after(() => {
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  it('runs in the guest kernel, not the host one, and exits 0', async () => {
    const r = await run(['--', 'uname', '-r']);
    expect(r.stderr).to.equal('');
    expect(r.code).to.equal(0);
    expect(r.stdout.trim()).to.match(/^6\.1\./);
    expect(r.stdout.trim()).to.not.equal(os.release());
  });

  it('returns the exit status 3', async () => {
    const r = await run(['--', 'sh', '-c', 'echo out; echo err >&2; exit 3']);
    expect(r.code).to.equal(3);
    expect(r.stdout).to.equal('out\n');
    expect(r.stderr).to.equal('err\n');
  });

  it('reports a process killed by SIGKILL as 137', async () => {
    // The container's process itself must die of SIGKILL, not exit 137. It
    // is PID 1 of its pid namespace, and signals sent from inside the
    // namespace do not reach it (`kill -9 $$` is ignored). The guest kernel
    // sends this one: at the RLIMIT_CPU hard limit it SIGKILLs the process,
    // and signals from the kernel do reach a namespace's init. The loop never
    // ends by itself, so only the signal can make it exit.
    const r = await run(['--', 'sh', '-c', 'ulimit -t 1; while :; do :; done']);
    expect(r.stderr).to.equal('');
    expect(r.code).to.equal(137);
  });

  it('pipes stdin through and sees end of input', async () => {
    const input = Array.from({ length: 2000 }, (_, i) => `line ${i}`).join('\n') + '\n';
    const r = await run(['--', 'sh', '-c', 'wc -l; cat > /dev/null'], { input });
    expect(r.code).to.equal(0);
    expect(r.stdout.trim()).to.equal('2000');
  });

  it('pipes stdin straight into cat as the container process (busybox cat, sendfile from its stdin)', async () => {
    // cat as the container's own process copies its stdin with sendfile(2)
    // when it is a socket, which held the output until end of input and
    // hung the run (process.ts OutputFifos); a pipe makes it read(2).
    const r = await run(['--', 'cat'], { input: 'hello\nfrom stdin\n' });
    expect(r.stdout).to.equal('hello\nfrom stdin\n');
    expect(r.code).to.equal(0);
  });

  it('honours env, workdir and user', async () => {
    const r = await run(['-e', 'GREETING=hi there', '-w', '/tmp', '-u', '1000:100', '--', 'sh', '-c', 'echo "$GREETING"; pwd; id -u; id -g']);
    expect(r.code).to.equal(0);
    expect(r.stdout).to.equal('hi there\n/tmp\n1000\n100\n');
  });

  it('gives 127 and one clear line for an unknown command', async () => {
    const r = await run(['--', 'no-such-command']);
    expect(r.code).to.equal(127);
    expect(r.stderr.trim().split('\n')).to.have.length(1);
    expect(r.stderr).to.match(/no-such-command.*not found/);
  });

  it('runs an OCI bundle honouring its config.json', async () => {
    const bundle = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-bundle-'));
    try {
      fs.cpSync('/var/cache/kata-ts/rootfs/busybox', path.join(bundle, 'rootfs'), { recursive: true, verbatimSymlinks: true });
      fs.writeFileSync(path.join(bundle, 'rootfs', 'marker'), 'from-bundle\n');
      const spec = {
        ociVersion: '1.0.2', hostname: 'bundlehost',
        process: { terminal: false, user: { uid: 1, gid: 1 }, args: ['sh', '-c', 'cat /marker; hostname; id -u; echo $B; ulimit -n'], env: ['PATH=/bin', 'B=bee'], cwd: '/',
          rlimits: [{ type: 'RLIMIT_NOFILE', hard: 333, soft: 333 }] },
        root: { path: 'rootfs', readonly: true },
        linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }, { type: 'uts' }, { type: 'ipc' }] },
      };
      fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(spec));
      const r = await run(['--bundle', bundle]);
      expect(r.stderr).to.equal('');
      expect(r.stdout).to.equal('from-bundle\nbundlehost\n1\nbee\n333\n');
      expect(r.code).to.equal(0);
    } finally {
      fs.rmSync(bundle, { recursive: true, force: true });
    }
  });

  it('refuses bad input with one line and a non-zero status, leaving nothing running', async () => {
    const missing = await run(['--rootfs', '/nonexistent/rootfs', '--', 'true']);
    expect(missing.code).to.equal(125);
    expect(missing.stderr).to.match(/rootfs \/nonexistent\/rootfs is not a directory/);
    const badBundle = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-bad-'));
    try {
      fs.writeFileSync(path.join(badBundle, 'config.json'), '{"ociVersion": "1.0.2", "process": ');
      const bad = await run(['--bundle', badBundle]);
      expect(bad.code).to.equal(125);
      expect(bad.stderr).to.match(/config\.json is not valid JSON/);
      expect(bad.stderr.trim().split('\n')).to.have.length(1);
    } finally {
      fs.rmSync(badBundle, { recursive: true, force: true });
    }
    const builtin = await run(['--hypervisor', 'builtin', '--', 'true']);
    expect(builtin.code).to.equal(125);
    expect(builtin.stderr).to.match(/builtin/);
    const noCmd = await run([]);
    expect(noCmd.code).to.equal(125);
    expect(noCmd.stderr).to.match(/no command given/);
  });

  it('reports a guest that never comes up within the dial timeout', async () => {
    const f = writeTestConfig(runDir, '[hypervisor.qemu]\nkernel_params = "init=/bin/false"\n');
    const r = await kataTs(['run', '--config', f, '--', 'true']);
    expect(r.code).to.equal(125);
    expect(r.stderr.split('\n')[0]).to.match(/VM stopped before the agent came up|did not come up/);
  });

  it('runs on the microvm machine (virtio-mmio: our vhost-user rings at the 1024 entries Linux asks for there), with the density defaults giving way', async () => {
    const f = writeTestConfig(runDir, '[hypervisor.qemu]\nmachine_type = "microvm"\n');
    const r = await kataTs(['run', '--config', f, '--', 'sh', '-c', 'echo MARK; grep -c pmem /proc/partitions || true']);
    expect(r.stderr).to.equal('');
    expect(r.code).to.equal(0);
    expect(r.stdout).to.equal('MARK\n0\n');
  });
});
