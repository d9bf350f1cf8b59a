/**
 * Pod resizing through the shim and CRI, the way Kubernetes asks for it: a
 * container whose CreateContainer carries linux resources (cpu_quota /
 * cpu_period and a memory limit), in a kata-ts pod whose configuration leaves
 * room to grow (default_maxvcpus / default_maxmemory above the boot size).
 *
 * What README's "Pod resizing" promises, checked from inside the guest:
 *   - vCPUs = base + Σ ceil(quota / period): 1 + ceil(50000/100000) = 2
 *     online (a first container without limits sees 1 before);
 *   - memory = base + Σ limits: a DIMM of 128 MiB (the limit, rounded to
 *     128 MiB) that the guest onlines: MemTotal grows by it;
 *   - the container's cgroup has cpu.max = "50000 100000" and memory.max = the
 *     limit (crun writes them; the guest kernel has CFS bandwidth control);
 *   - a container beyond default_maxvcpus: StartContainer (where containerd
 *     makes the shim's task) fails with one clear error; removed, its demand
 *     gone (the same quota fits again once the first container leaves).
 * Then the pod is stopped and removed through CRI, and nothing is left.
 *
 * Under CI=true a missing prerequisite (containerd, CNI plugins, guest)
 * fails the suite instead of skipping it.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BUSYBOX, type CriContainerd, startCriContainerd, stopCriContainerd } from '../helpers/cri-containerd';
import { printContainerdLogOnFailure } from '../helpers/containerd';
import { CriError, type ContainerConfig, type LinuxContainerResources, type PodSandboxConfig } from '../helpers/cri';

const MIB = 1024 * 1024;
const LIMIT = 128 * MIB;
const IDLE = 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done';
/** Shell: the container's own cgroup directory (v2: one line, 0::<path>; "/" under a cgroup namespace). */
const CG = '/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup | head -1)';

describe('e2e: a CPU-quota + memory-limit container through CRI resizes the kata-ts pod', function () {
  this.timeout(600000);
  let cd: CriContainerd | undefined;

  before(async function () {
    cd = await startCriContainerd(this, 'kata-ts', () => '[hypervisor.qemu]\ndefault_maxvcpus = 2\ndefault_maxmemory = 1024\n');
  });

  after(() => stopCriContainerd(cd));

  afterEach(function () {
    printContainerdLogOnFailure(this, cd, { only: /level=(error|warning)/, lines: 15 });
  });

  it('cpu_quota 50000 / cpu_period 100000 + 128 MiB: the guest goes 1 → 2 online vCPUs and MemTotal grows by 128 MiB; cpu.max and memory.max in the container; beyond the maximum refused; the pod goes away leaving nothing', async () => {
    const c = cd!;
    const logDir = path.join(c.dir, 'pods', 'sized');
    fs.mkdirSync(logDir, { recursive: true });
    const pod: PodSandboxConfig = {
      metadata: { name: 'sized', uid: 'uid-sized', namespace: 'cri-test', attempt: 0 },
      hostname: 'sized-host',
      log_directory: logDir,
      linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
    };
    const container = (name: string, resources?: LinuxContainerResources): ContainerConfig => ({
      metadata: { name, attempt: 0 },
      image: { image: BUSYBOX },
      command: ['sh', '-c', IDLE],
      log_path: `${name}/0.log`,
      linux: resources ? { resources } : {},
    });
    const exec = async (id: string, script: string): Promise<string> => {
      const r = await c.cri.execSync(id, ['sh', '-c', script], 60);
      expect(r.exit_code, `${script}: ${r.stderr.toString()}`).to.equal(0);
      return r.stdout.toString().trim();
    };
    const memTotalKiB = async (id: string) => Number(/MemTotal:\s+(\d+)/.exec(await exec(id, 'cat /proc/meminfo'))![1]);

    const podId = await c.cri.runPodSandbox(pod, 'kata-ts');
    expect(c.qemuPids(), 'one VM for the pod').to.have.length(1);
    // Baseline: a container without limits sees the boot size.
    const plain = await c.cri.createContainer(podId, container('plain'), pod);
    await c.cri.startContainer(plain);
    expect(await exec(plain, 'cat /sys/devices/system/cpu/online')).to.equal('0');
    const memBefore = await memTotalKiB(plain);

    const sized = await c.cri.createContainer(podId, container('sized', { cpu_quota: 50000, cpu_period: 100000, memory_limit_in_bytes: LIMIT }), pod);
    await c.cri.startContainer(sized);
    expect(await exec(sized, `cat "${CG}/cpu.max"`)).to.equal('50000 100000');
    expect(await exec(sized, `cat "${CG}/memory.max"`)).to.equal(String(LIMIT));
    // 1 + ceil(50000 / 100000) = 2 vCPUs, online (OnlineCPUMem) before the container starts.
    expect(await exec(sized, 'cat /sys/devices/system/cpu/online')).to.equal('0-1');
    expect(await exec(sized, 'grep -c ^processor /proc/cpuinfo')).to.equal('2');
    expect(await exec(plain, 'nproc')).to.equal('2');
    // The 128 MiB DIMM: the guest onlines it by itself (memhp_default_state=online).
    const t0 = Date.now();
    let memAfter = await memTotalKiB(plain);
    while (memAfter < memBefore + 120 * 1024 && Date.now() - t0 < 60000) {
      await new Promise((res) => setTimeout(res, 500));
      memAfter = await memTotalKiB(plain);
    }
    expect(memAfter - memBefore, `MemTotal ${memBefore} → ${memAfter} KiB`).to.be.within(120 * 1024, 128 * 1024);
    expect(c.qemuPids(), 'still one VM: the pod grew, no new VM').to.have.length(1);

    // Beyond default_maxvcpus. containerd's CRI makes the task (the shim's
    // Create, where the runtime sizes the pod) at StartContainer, not at
    // CreateContainer: StartContainer fails with the runtime's one error.
    const big = await c.cri.createContainer(podId, container('big', { cpu_quota: 200000, cpu_period: 100000 }), pod);
    let err: unknown;
    try {
      await c.cri.startContainer(big);
    } catch (e) { err = e; }
    expect(err, 'StartContainer beyond the maximum must fail').to.be.instanceOf(CriError);
    expect((err as Error).message).to.include('needs 2 vCPU(s) and 0 MiB: the sandbox would need 4 vCPUs / 640 MiB, beyond its maximum of 2 vCPUs / 1024 MiB (default_maxvcpus, default_maxmemory)');
    // containerd marks a container whose start failed as exited.
    expect((await c.cri.containerStatus(big)).status.state).to.equal('CONTAINER_EXITED');
    await c.cri.removeContainer(big);
    expect((await c.cri.listContainers({ pod_sandbox_id: podId })).map((x) => x.metadata.name).sort()).to.deep.equal(['plain', 'sized']);
    expect(await exec(sized, 'cat /sys/devices/system/cpu/online')).to.equal('0-1');
    // The refused container's demand did not stay: once `sized` leaves, the
    // same quota fits again (it would be refused if `big`'s 2 vCPUs counted).
    await c.cri.stopContainer(sized, 5);
    await c.cri.removeContainer(sized);
    const again = await c.cri.createContainer(podId, container('again', { cpu_quota: 50000, cpu_period: 100000 }), pod);
    await c.cri.startContainer(again);
    expect(await exec(again, `cat "${CG}/cpu.max"`)).to.equal('50000 100000');

    await c.cri.stopPodSandbox(podId);
    await c.cri.removePodSandbox(podId);
    expect(await c.cri.listPodSandbox()).to.deep.equal([]);
    expect(await c.cri.listContainers()).to.deep.equal([]);
  });
});
