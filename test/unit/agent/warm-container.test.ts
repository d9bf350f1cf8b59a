/**
 * A cached VM's container-path warm-up in the agent (src/agent/warm-container.ts,
 * the WarmContainerPath RPC): it runs one throwaway /bin/true container
 * through the real AgentSandbox/Container path (the DirectRuntime test
 * double stands for crun, a recording mounter for busybox mount), with the
 * guest's root bind-mounted read-only; it leaves nothing behind (scratch
 * directory, the container's cgroup directory, runtime state), also when a
 * step fails; it is refused once CreateSandbox came or a container exists
 * (a claimed or normal sandbox), and the pod's CreateSandbox waits for a
 * warm-up still running. Through the service's handler table, so the
 * policy gate and the RPC name are the real ones.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { AgentSandbox } from '../../../src/agent/sandbox';
import { AgentError } from '../../../src/agent/container';
import { agentHandlers, type UnaryHandler } from '../../../src/agent/service';
import { WARM_CONTAINER_ID, warmContainerPath, warmOptionsFor } from '../../../src/agent/warm-container';
import type { Mounter } from '../../../src/agent/storage';
import type { SpawnOptions } from '../../../src/agent/oci-runtime';
import type { OciSpec } from '../../../src/protocols/oci';
import type { WarmContainerPathResponse } from '../../../src/protocols/agent-api';
import type { CallContext } from '../../../src/protocols/ttrpc/rpc-server';
import { DirectRuntime } from '../../helpers/direct-runtime';

/** DirectRuntime that keeps each bundle's spec, can hold the start back, and may leave state behind. */
class RecordingRuntime extends DirectRuntime {
  specs: OciSpec[] = [];
  deleted: string[] = [];
  leaveState = false;
  holdMs = 0;
  override run(id: string, bundleDir: string, opts: SpawnOptions): ChildProcess {
    this.specs.push(JSON.parse(fs.readFileSync(path.join(bundleDir, 'config.json'), 'utf8')) as OciSpec);
    if (this.holdMs) {
      const spec = this.specs[this.specs.length - 1]!;
      spec.process!.args = ['/bin/sh', '-c', `sleep ${this.holdMs / 1000}`];
      fs.writeFileSync(path.join(bundleDir, 'config.json'), JSON.stringify(spec));
    }
    return super.run(id, bundleDir, opts);
  }
  async hasState(): Promise<boolean> { return this.leaveState; }
  override async delete(id: string): Promise<void> {
    this.deleted.push(id);
    await super.delete(id);
  }
}

/** Records mounts; "mounts" by putting a /bin/true into the target (the rootfs check looks there), gone again at the unmount. */
class RecordingMounter implements Mounter {
  calls: string[] = [];
  failMount = false;
  async mount(source: string, target: string, fstype: string, options: string[]): Promise<void> {
    this.calls.push(`mount ${fstype} ${source} ${target} ${options.join(',')}`);
    if (this.failMount) throw new Error('mount: permission denied (test)');
    fs.mkdirSync(path.join(target, 'bin'));
    fs.copyFileSync('/bin/true', path.join(target, 'bin', 'true'));
  }
  async umount(target: string): Promise<void> {
    this.calls.push(`umount ${target}`);
    fs.rmSync(path.join(target, 'bin'), { recursive: true, force: true });
  }
}

const ctx = { signal: new AbortController().signal } as CallContext;

describe('unit: agent WarmContainerPath (a cached VM runs the container start path once)', function () {
  this.timeout(20000);
  let dir: string;
  let runtime: RecordingRuntime;
  let mounter: RecordingMounter;
  let sb: AgentSandbox;
  let cgroupRoot: string;
  let scratch: string;
  const warm = () => (agentHandlers(sb).WarmContainerPath as UnaryHandler)({}, ctx) as Promise<WarmContainerPathResponse>;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-warm-container-'));
    runtime = new RecordingRuntime();
    mounter = new RecordingMounter();
    cgroupRoot = path.join(dir, 'cgroup');
    fs.mkdirSync(cgroupRoot);
    sb = new AgentSandbox({ runtime, stateDir: path.join(dir, 'run', 'containers'), mounter, cgroupRoot });
    scratch = warmOptionsFor(sb.options).scratch!;
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('runs one /bin/true container from a read-only bind of the root, through the guest bundle, and removes everything', async () => {
    const r = await warm();
    expect(r.errors).to.deep.equal([]);
    expect(r.exit_status).to.equal(0);
    expect(r.total_ms).to.be.at.least(r.create_ms + r.start_ms);
    expect(scratch).to.equal(path.join(dir, 'run', 'warm-container'));
    const rootfs = path.join(scratch, 'rootfs');
    expect(mounter.calls).to.deep.equal([`umount ${rootfs}`, `mount none / ${rootfs} bind,ro`, `umount ${rootfs}`]);
    // The real bundle code made the spec: the cgroup path, default mounts, read-only root.
    expect(runtime.specs).to.have.length(1);
    const s = runtime.specs[0]!;
    expect(s.process!.args).to.deep.equal(['/bin/true']);
    expect(s.root).to.deep.equal({ path: rootfs, readonly: true });
    expect(s.linux!.cgroupsPath).to.equal(`/kata-ts/${WARM_CONTAINER_ID}`);
    expect(s.mounts!.map((m) => m.destination)).to.include.members(['/proc', '/dev', '/sys', '/sys/fs/cgroup']);
    expect(s.linux!.namespaces!.map((n) => n.type)).to.have.members(['pid', 'ipc', 'uts', 'mount']);
    // Nothing left: scratch, the container in the real sandbox, crun state (none here: no delete).
    expect(fs.existsSync(scratch)).to.equal(false);
    expect(sb.containers.size).to.equal(0);
    expect(runtime.deleted).to.deep.equal([]);
    // The VM is still waiting for its pod: a second warm-up is allowed.
    expect(sb.pristine).to.equal(true);
    expect((await warm()).errors).to.deep.equal([]);
  });

  it('removes a cgroup directory and runtime state a killed crun would leave behind', async () => {
    runtime.leaveState = true;
    fs.mkdirSync(path.join(cgroupRoot, WARM_CONTAINER_ID));
    const r = await warm();
    expect(r.errors).to.deep.equal([]);
    expect(runtime.deleted).to.include(WARM_CONTAINER_ID);
    expect(fs.existsSync(path.join(cgroupRoot, WARM_CONTAINER_ID))).to.equal(false);
    expect(fs.existsSync(scratch)).to.equal(false);
  });

  it('reports a failed step (the mount) without throwing, runs no container, and cleans up', async () => {
    mounter.failMount = true;
    const r = await warm();
    expect(r.errors.join('; ')).to.match(/mount: permission denied \(test\)/);
    expect(r.exit_status).to.equal(-1);
    expect(runtime.specs).to.have.length(0);
    expect(fs.existsSync(scratch)).to.equal(false);
    expect(mounter.calls.filter((c) => c.startsWith('umount'))).to.have.length(1); // only the stale-mount check: nothing was mounted
  });

  it('is refused after CreateSandbox and once a container exists (a pod\'s VM)', async () => {
    await sb.createSandbox({ sandbox_id: 'pod', hostname: '', dns: [], sysctls: {}, policy_json: '' });
    const err = await warm().then(() => undefined, (e: unknown) => e);
    expect(err).to.be.instanceOf(AgentError);
    expect((err as AgentError).kind).to.equal('failed-precondition');
    expect((err as Error).message).to.match(/only for a VM waiting for its pod/);
    expect(mounter.calls).to.deep.equal([]);

    const other = new AgentSandbox({ runtime, stateDir: path.join(dir, 'other', 'containers'), mounter, cgroupRoot });
    const spec = { ociVersion: '1.0.2', process: { args: ['/bin/true'], cwd: '/', user: { uid: 0, gid: 0 } }, root: { path: '/' } };
    await other.createContainer({ container_id: 'c1', exec_id: '', storages: [], oci_spec_json: JSON.stringify(spec) });
    const err2 = await warmContainerPath(other, warmOptionsFor(other.options)).then(() => undefined, (e: unknown) => e);
    expect((err2 as AgentError).kind).to.equal('failed-precondition');
    expect(runtime.specs).to.have.length(0);
    await other.destroySandbox();
  });

  it('holds the pod\'s CreateSandbox until a running warm-up has cleaned up, and refuses a second one meanwhile', async () => {
    runtime.holdMs = 300;
    const w = warm();
    await new Promise((r) => setTimeout(r, 50));
    const second = await warm().then(() => undefined, (e: unknown) => e);
    expect((second as Error).message).to.match(/already running/);
    // What CreateSandbox finds when it goes on: the warm-up's container gone and its scratch removed.
    const seen = sb.createSandbox({ sandbox_id: 'pod', hostname: '', dns: [], sysctls: {}, policy_json: '' })
      .then(() => ({ scratch: fs.existsSync(scratch), running: [...runtime.children.values()].some((c) => c.exitCode === null && c.signalCode === null) }));
    expect(await seen).to.deep.equal({ scratch: false, running: false });
    expect((await w).errors).to.deep.equal([]);
    expect(runtime.specs).to.have.length(1);
    expect(fs.existsSync(scratch)).to.equal(false);
    expect(sb.pristine).to.equal(false);
  });
});
