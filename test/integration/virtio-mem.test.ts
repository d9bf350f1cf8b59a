/**
 * Pod resizing with virtio-mem (memory_hotplug = "virtio-mem", the default)
 * on a real sandbox (QEMU, TCG here): booted with 512 MiB and one virtio-mem
 * device of 640 MiB (default_maxmemory 1152), requested-size 0.
 *
 * - A container with a 512 MiB limit makes the runtime set requested-size
 *   512 MiB; the guest's virtio_mem driver plugs and onlines it (MemTotal
 *   +512 MiB, no agent call) and the agent (vsock) carries on.
 * - The container touches 400 MiB; the host allocates it in the device's
 *   memfd (its st_blocks, read through QEMU's /proc/<pid>/fd).
 * - When it leaves the request goes back to 0, the guest unplugs, MemTotal
 *   is back and the memfd's blocks are punched out: the host has the memory
 *   back.
 * - Beyond the maximum: one error, the device's request unchanged.
 * - A guest that cannot unplug (virtio_mem.unplug_online=0 set in the
 *   guest): the shrink ends with a warning after the wait, not an error; the
 *   lower request stays and the VM runs on; once the guest can, the
 *   runtime's periodic re-set of the request gets it unplugged.
 * Grow and shrink times (create/remove call → size reached) are printed.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { requireGuest, testRunDir, testConfig, expectNothingLeft, copyBusyboxRootfs, leftoverQemu, CACHE, collectOutput } from '../helpers/guest';
import { selectHypervisor } from '../../src/hypervisor';
import { Sandbox } from '../../src/runtime/sandbox';
import type { QemuHypervisor } from '../../src/hypervisor/qemu';
import { defaultSpec, defaultProcess } from '../../src/runtime/spec';
import { configureLogging } from '../../src/common/log';
import type { VmResizer } from '../../src/resource/memory/resize';

const MIB = 1024 * 1024;
const DEVICE_MIB = 640;

type Caps = ReturnType<typeof defaultProcess>['capabilities'];
const withSysAdmin = (c: Caps): Caps => {
  const add = (l?: string[]) => [...(l ?? []), 'CAP_SYS_ADMIN'];
  return { ...c, bounding: add(c?.bounding), effective: add(c?.effective), permitted: add(c?.permitted) };
};
/** The resizer's record of its last virtio-mem resize (how long the guest took). */
const lastResize = (sb: Sandbox) => (sb as unknown as { memory: { resizer: VmResizer } }).memory.resizer.lastMemoryResize!;

describe('integration: pod resizing with virtio-mem (grow, use, shrink, host memory back)', function () {
  this.timeout(600000);
  let runDir: string;
  let sandbox: Sandbox | undefined;
  let hv: QemuHypervisor;
  let rootfs = '';
  let execSeq = 0;
  let qemuPid = 0;
  const figures: string[] = [];

  /** Runs a shell script in a container (with CAP_SYS_ADMIN when `admin`: c0 mounts a tmpfs). */
  const sh = async (cid: string, script: string, admin = false) => {
    const execId = `e${execSeq++}`;
    const proc = defaultProcess({ args: ['sh', '-c', script] });
    if (admin) proc.capabilities = withSysAdmin(proc.capabilities);
    await sandbox!.exec(cid, execId, proc);
    return await collectOutput(sandbox!.agent, cid, execId);
  };
  const memTotalMiB = async () => Number(/MemTotal:\s+(\d+)/.exec((await sh('c0', 'cat /proc/meminfo')).out)![1]) / 1024;
  const qom = async (property: string) => await hv.memoryQmp('qom-get', { path: '/machine/peripheral/vmem0', property }) as number;
  /** MiB the host has allocated in the virtio-mem device's memfd (QEMU's fd of that size). */
  const deviceHostMiB = () => {
    const dir = `/proc/${qemuPid}/fd`;
    for (const fd of fs.readdirSync(dir)) {
      let link = '';
      try { link = fs.readlinkSync(path.join(dir, fd)); } catch { continue; }
      if (!link.startsWith('/memfd:')) continue;
      const st = fs.statSync(path.join(dir, fd));
      if (st.size === DEVICE_MIB * MIB) return (st.blocks * 512) / MIB;
    }
    throw new Error(`no ${DEVICE_MIB} MiB memfd among QEMU ${qemuPid}'s fds`);
  };
  const specWithLimit = (mib: number, args = ['sleep', '600']) => {
    const s = defaultSpec({ args });
    s.linux = { ...s.linux, resources: { memory: { limit: mib * MIB } } };
    return s;
  };

  before(async function () {
    requireGuest(this);
    configureLogging({ silent: true });
    runDir = testRunDir();
    rootfs = path.join(runDir, 'rootfs');
    copyBusyboxRootfs(rootfs);
    const cfg = testConfig(runDir);
    cfg['hypervisor.qemu'].default_memory = 512;
    cfg['hypervisor.qemu'].default_maxmemory = 512 + DEVICE_MIB;
    cfg['hypervisor.qemu'].memory_hotplug = 'virtio-mem';
    // The virtio-blk root, as before DAX became the default: the -m line below has no NVDIMM in it.
    cfg['hypervisor.qemu'].disable_image_nvdimm = true;
    hv = (await selectHypervisor(cfg, 'qemu')).hv as QemuHypervisor;
    sandbox = new Sandbox({ id: 'vm1', config: cfg, hypervisor: hv, bootContainers: [{ id: 'c0', rootfs: path.join(CACHE, 'rootfs', 'busybox'), rootfsShare: 'erofs' }] });
    await sandbox.start();
    const c0 = defaultSpec({ args: ['sleep', '600'] });
    c0.process!.capabilities = withSysAdmin(c0.process!.capabilities);
    await sandbox.createContainer('c0', c0, path.join(CACHE, 'rootfs', 'busybox'));
    await sandbox.startContainer('c0');
    const ps = leftoverQemu(runDir);
    expect(ps, 'one QEMU').to.have.length(1);
    qemuPid = Number(ps[0].trim().split(/\s+/)[0]);
  });

  afterEach(function () {
    // A failed step: the guest's last words (an OOM, a driver message) say more than the QMP error.
    if (this.currentTest?.state === 'failed') console.log(hv.consoleTail(40));
  });

  after(async () => {
    for (const f of figures) console.log(`      ${f}`);
    await sandbox?.stop();
    if (!runDir) return;
    expectNothingLeft(runDir);
  });

  it('boots with one virtio-mem device of maxmemory - memory, nothing plugged, and no DIMM slots', async () => {
    const args = hv.commandLine((hv as unknown as { cfg: Parameters<QemuHypervisor['commandLine']>[0] }).cfg);
    expect(args.join(' ')).to.contain(`virtio-mem-pci,id=vmem0,memdev=vmem0-mem,requested-size=0`);
    expect(args[args.indexOf('-m') + 1]).to.equal(`512M,maxmem=${512 + DEVICE_MIB}M`);
    expect(await qom('size')).to.equal(0);
    expect(await qom('requested-size')).to.equal(0);
    expect(deviceHostMiB()).to.be.below(4);
    // Our vhost-user back-ends (the agent's vsock here) got the whole device region in their memory table
    // from the start, so a resize sends no new table and buffers in plugged memory translate.
    const regions = hv.guestMemory()!.regions();
    expect(regions.some((r) => r.size === DEVICE_MIB * MIB && r.gpa >= 4n << 30n), JSON.stringify(regions.map((r) => ({ gpa: `0x${r.gpa.toString(16)}`, mib: r.size / MIB })))).to.equal(true);
  });

  it('grows for a 512 MiB limit (guest MemTotal +512 MiB), the memory is used, and a shrink gives it back to the host', async () => {
    const before = await memTotalMiB();
    const tables = hv.guestMemory()!.regions();
    const t0 = Date.now();
    await sandbox!.createContainer('m1', specWithLimit(512), rootfs);
    const createMs = Date.now() - t0;
    const grow = lastResize(sandbox!);
    expect(grow).to.deep.include({ fromMiB: 0, toMiB: 512, reached: true });
    // The runtime waited for the guest to plug it.
    expect(await qom('size')).to.equal(512 * MIB);
    const grown = await memTotalMiB();
    expect(grown - before).to.be.within(500, 512);
    await sandbox!.startContainer('m1');
    // Touch 400 MiB inside the container (dd's buffer, inside its limit).
    const use = await sh('m1', 'dd if=/dev/zero of=/dev/null bs=400M count=1 2>&1 && echo used');
    expect(use.out, use.out).to.match(/used/);
    const touched = deviceHostMiB();
    // Movable user pages go to the hotplugged (ZONE_MOVABLE) memory first.
    expect(touched, 'host MiB in the device memfd after the container used memory').to.be.above(200);
    const t1 = Date.now();
    await sandbox!.removeContainer('m1');
    const removeMs = Date.now() - t1;
    const shrink = lastResize(sandbox!);
    expect(shrink).to.deep.include({ fromMiB: 512, toMiB: 0, reached: true });
    expect(await qom('size')).to.equal(0);
    expect(await qom('requested-size')).to.equal(0);
    expect(await memTotalMiB()).to.be.within(before - 1, before + 1);
    const after = deviceHostMiB();
    expect(after, 'host MiB left in the device memfd after the shrink').to.be.below(4);
    // The same memory table all along (no SET_MEM_TABLE for a resize).
    expect(hv.guestMemory()!.regions()).to.equal(tables);
    figures.push(`virtio-mem grow 0 → 512 MiB: ${grow.ms} ms (qom-set → size reached; the create call ${createMs} ms), shrink 512 → 0: ${shrink.ms} ms (the remove call ${removeMs} ms); host memory in the device memfd: ${touched.toFixed(0)} MiB after use → ${after.toFixed(1)} MiB after the shrink`);
    expect((await sh('c0', 'echo alive')).out).to.equal('alive\n');
  });

  it('refuses a container beyond the maximum with one error; the device request is unchanged', async () => {
    let err: unknown;
    try {
      await sandbox!.createContainer('big', specWithLimit(DEVICE_MIB + 128), rootfs);
    } catch (e) { err = e; }
    expect((err as Error).message).to.equal(`container big needs 0 vCPU(s) and ${DEVICE_MIB + 128} MiB: the sandbox would need 1 vCPUs / ${512 + DEVICE_MIB + 128} MiB, beyond its maximum of 1 vCPUs / ${512 + DEVICE_MIB} MiB (default_maxvcpus, default_maxmemory)`);
    expect(await qom('requested-size')).to.equal(0);
    expect(await qom('size')).to.equal(0);
  });

  it('a guest that cannot unplug (its driver told not to unplug online memory): a warning, the request stays, no crash; the runtime sets it again and the guest unplugs once it can', async () => {
    // The guest kernel's virtio_mem.unplug_online, through a fresh sysfs mount (the container's /sys is read-only).
    const unplugOnline = (v: 0 | 1) => sh('c0', `mkdir -p /tmp/sys && ([ -d /tmp/sys/module ] || mount -t sysfs sysfs /tmp/sys) && echo ${v} > /tmp/sys/module/virtio_mem/parameters/unplug_online && cat /tmp/sys/module/virtio_mem/parameters/unplug_online`, true);
    await sandbox!.createContainer('m2', specWithLimit(512), rootfs);
    expect(await qom('size')).to.equal(512 * MIB);
    const off = await unplugOnline(0);
    expect(off.out.trim(), off.out).to.equal('N');
    // The leave succeeds (a shrink the guest does not do is not the container's failure): the wait ends with a warning.
    await sandbox!.removeContainer('m2');
    expect(lastResize(sandbox!)).to.deep.include({ fromMiB: 512, toMiB: 0, reached: false });
    expect(await qom('requested-size')).to.equal(0);
    expect(await qom('size')).to.equal(512 * MIB);
    expect((await sh('c0', 'echo alive')).out).to.equal('alive\n');
    // The guest may unplug again: the runtime sets the request again (every 30 s) and the guest unplugs, with no resize asked.
    const on = await unplugOnline(1);
    expect(on.out.trim(), on.out).to.equal('Y');
    const t0 = Date.now();
    while (await qom('size') > 0) {
      if (Date.now() - t0 > 90000) throw new Error(`virtio-mem: ${(await qom('size')) / MIB} MiB still plugged 90 s after the guest could unplug (the runtime's retry)`);
      await new Promise((res) => setTimeout(res, 500));
    }
    const retryMs = Date.now() - t0;
    // And the next resize works as usual.
    await sandbox!.createContainer('m3', specWithLimit(100), rootfs);
    expect(await qom('size')).to.equal(128 * MIB);
    await sandbox!.removeContainer('m3');
    expect(await qom('size')).to.equal(0);
    expect(lastResize(sandbox!)).to.deep.include({ fromMiB: 128, toMiB: 0, reached: true });
    figures.push(`virtio-mem unplug refused by the guest: the leave ended with a warning after the wait, 512 MiB stayed plugged with the request at 0; once the guest could, the runtime's retry took it to 0 in ${retryMs} ms`);
  });
});
