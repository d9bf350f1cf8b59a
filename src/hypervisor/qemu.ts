/**
 * QEMU hypervisor: QEMU runs as a child process of the runtime/shim, driven
 * over QMP (qmp.sock) and stopped with `quit`, then SIGTERM, then SIGKILL.
 *
 * Machine: `pc` by default (virtio-*-pci, ACPI hotplug on the root bus so
 * container disks can be added to a running sandbox), `q35`, or `microvm`
 * (virtio-mmio, boot-time disks only). The guest kernel boots directly
 * through its PVH entry (-kernel vmlinux); the root filesystem is the EROFS
 * guest image on the first virtio-blk disk. The agent channel is vsock:
 * our own vsock device (src/virtio/vsock) served to QEMU's
 * vhost-user-vsock-pci by our vhost-user backend inside this process
 * (src/vhost-user), exposed on the host as a hybrid vsock socket
 * (vsock.sock). vhost-user needs the guest RAM shareable, so RAM is a
 * memory-backend-memfd (share=on) bound through a NUMA node. Host
 * directories shared with the guest (container rootfs by default) are our
 * virtio-fs device (src/virtio/fs) behind vhost-user-fs-pci, one backend per
 * share, also served in this process.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { KataError } from '../common/errors';
import { logger } from '../common/log';
import { baseKernelParams, type DiskDevice, type Hypervisor, type VmConfig, type VmInfo } from './hypervisor';
import { QmpClient } from './qmp';
import { VhostUserBackend } from '../vhost-user/backend';
import { HybridVsock } from '../virtio/vsock/hybrid';
import { VirtioFsDevice } from '../virtio/fs/device';

export class QemuError extends KataError<'spawn' | 'exited' | 'qmp' | 'config'> {}

export interface QemuOptions {
  binary: string;
  machine: 'pc' | 'q35' | 'microvm';
  accel: 'kvm' | 'tcg';
}

/** The guest's vsock CID (§5.10.4: 3 is the first guest CID). */
export const GUEST_CID = 3;
/** Queue size of vhost-user-fs rings (QEMU's default is 128; 1024 is its maximum). */
const FS_QUEUE_SIZE = 1024;

export class QemuHypervisor implements Hypervisor {
  readonly name = 'qemu' as const;
  private child: ChildProcess | undefined;
  private qmp: QmpClient | undefined;
  private cfg: VmConfig | undefined;
  private exitReason: Promise<string> | undefined;
  private stopping = false;
  private readonly log = logger('qemu');
  private nextSlot = 8;
  private readonly diskSlots = new Map<string, number>();
  private vsock: HybridVsock | undefined;
  private vsockBackend: VhostUserBackend | undefined;
  private readonly fsBackends: Array<{ backend: VhostUserBackend; device: VirtioFsDevice }> = [];

  constructor(private readonly opts: QemuOptions) {}

  /** The full command line (exposed for tests and `--debug`). */
  commandLine(cfg: VmConfig): string[] {
    const mmio = this.opts.machine === 'microvm';
    const dev = (pci: string, mm: string, extra: string, addr?: number) =>
      `${mmio ? mm : pci},${extra}${!mmio && addr !== undefined ? `,addr=0x${addr.toString(16)}` : ''}`;
    const args = [
      '-name', `kata-ts-${cfg.id},debug-threads=on`,
      '-M', `${this.opts.machine},accel=${this.opts.accel}`,
      '-cpu', this.opts.accel === 'kvm' ? 'host' : 'max',
      '-smp', String(cfg.vcpus),
      '-m', `${cfg.memoryMiB}M`,
      // vhost-user backends map guest RAM: it must be a shared memfd.
      '-object', `memory-backend-memfd,id=mem,size=${cfg.memoryMiB}M,share=on`,
      '-numa', 'node,memdev=mem',
      '-nodefaults', '-nographic', '-no-user-config', '-no-reboot',
      '-kernel', cfg.kernel,
      '-append', `${baseKernelParams(cfg.debug)} ${cfg.kernelParams}`.trim(),
      '-chardev', `file,id=console,path=${path.join(cfg.dir, 'console.log')}`,
      '-serial', 'chardev:console',
      '-qmp', `unix:${path.join(cfg.dir, 'qmp.sock')},server=on,wait=off`,
      '-pidfile', path.join(cfg.dir, 'qemu.pid'),
      // root filesystem: always the first disk (/dev/vda), slot 3
      '-drive', `if=none,id=rootimg,file=${cfg.image},format=raw,readonly=on,cache=unsafe`,
      '-device', dev('virtio-blk-pci', 'virtio-blk-device', 'drive=rootimg,serial=kata-root', 3),
      // agent channel: vhost-user-vsock served by this process (start()).
      '-chardev', `socket,id=vsock,path=${path.join(cfg.dir, 'vhost-vsock.sock')}`,
      '-device', dev('vhost-user-vsock-pci', 'vhost-user-vsock-device', 'chardev=vsock', 4),
      '-device', dev('virtio-rng-pci', 'virtio-rng-device', 'id=rng', 5),
    ];
    (cfg.shares ?? []).forEach((sh, i) => {
      // vhost-user-fs-pci keeps the tag and queue count in QEMU's own config
      // space; queue-size must not exceed what our device offers.
      args.push('-chardev', `socket,id=fs${i},path=${path.join(cfg.dir, `vhost-fs-${i}.sock`)}`);
      args.push('-device', dev('vhost-user-fs-pci', 'vhost-user-fs-device', `chardev=fs${i},tag=${sh.tag},queue-size=${FS_QUEUE_SIZE}`, this.nextSlot++));
    });
    for (const d of cfg.disks) {
      const slot = this.nextSlot++;
      this.diskSlots.set(d.id, slot);
      args.push('-drive', `if=none,id=d-${d.id},file=${d.path},format=raw,readonly=${d.readonly ? 'on' : 'off'}`);
      args.push('-device', dev('virtio-blk-pci', 'virtio-blk-device', `id=dev-${d.id},drive=d-${d.id},serial=${d.id}`, slot));
    }
    return args;
  }

  async start(cfg: VmConfig): Promise<VmInfo> {
    for (const f of [cfg.kernel, cfg.image]) {
      if (!fs.existsSync(f)) throw new QemuError('config', `${f} does not exist (run scripts/setup.sh to build the guest)`);
    }
    if (!fs.existsSync(this.opts.binary)) throw new QemuError('config', `QEMU not found at ${this.opts.binary}`);
    for (const d of cfg.disks) if (!/^[A-Za-z0-9_-]{1,20}$/.test(d.id)) throw new QemuError('config', `disk id "${d.id}" must be 1-20 of [A-Za-z0-9_-] (virtio-blk serial)`);
    for (const sh of cfg.shares ?? []) {
      if (!/^[A-Za-z0-9_.-]{1,36}$/.test(sh.tag)) throw new QemuError('config', `virtio-fs tag "${sh.tag}" must be 1-36 of [A-Za-z0-9_.-]`);
      if (!fs.existsSync(sh.path) || !fs.statSync(sh.path).isDirectory()) throw new QemuError('config', `virtio-fs share ${sh.path} is not a directory`);
    }
    this.cfg = cfg;
    fs.mkdirSync(cfg.dir, { recursive: true });
    // The backend listens before QEMU starts: QEMU connects at start-up.
    this.vsock = new HybridVsock(path.join(cfg.dir, 'vsock.sock'), { guestCid: GUEST_CID });
    await this.vsock.listen();
    this.vsockBackend = new VhostUserBackend({
      socketPath: path.join(cfg.dir, 'vhost-vsock.sock'), device: this.vsock.device,
      guestBytes: cfg.memoryMiB * 1024 * 1024, queues: 2, name: 'vsock', // QEMU serves the event queue itself
    });
    this.vsockBackend.listen();
    (cfg.shares ?? []).forEach((sh, i) => {
      const device = new VirtioFsDevice({ tag: sh.tag, sharedDir: sh.path, queueSize: FS_QUEUE_SIZE });
      const backend = new VhostUserBackend({
        socketPath: path.join(cfg.dir, `vhost-fs-${i}.sock`), device,
        guestBytes: cfg.memoryMiB * 1024 * 1024, name: `fs${i}`,
      });
      backend.listen();
      this.fsBackends.push({ backend, device });
    });
    const args = this.commandLine(cfg);
    this.log.debug('starting qemu', { args });
    const child = spawn(this.opts.binary, args, { stdio: ['ignore', 'ignore', 'pipe'], detached: false });
    this.child = child;
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.length > 8192) stderr = stderr.slice(-8192);
    });
    this.exitReason = new Promise<string>((resolve) => {
      child.on('exit', (code, signal) => {
        const why = this.stopping ? 'stopped' : `QEMU exited (${signal ?? `status ${code}`})${stderr.trim() ? `: ${stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`;
        resolve(why);
      });
      child.on('error', (err) => resolve(`QEMU failed to start: ${err.message}`));
    });
    const qmp = new QmpClient();
    const connected = qmp.connect(path.join(cfg.dir, 'qmp.sock'), 15000).then(() => 'ok' as const);
    const res = await Promise.race([connected, this.exitReason]);
    if (res !== 'ok') {
      qmp.close();
      await this.closeBackends();
      throw new QemuError('exited', res);
    }
    this.qmp = qmp;
    return {
      hypervisor: 'qemu', pids: [child.pid ?? 0], agentSocket: path.join(cfg.dir, 'vsock.sock'),
      consoleLog: path.join(cfg.dir, 'console.log'), accel: this.opts.accel,
    };
  }

  exited(): Promise<string> {
    return this.exitReason ?? Promise.resolve('not started');
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      this.qmp?.close();
      await this.closeBackends();
      return;
    }
    this.stopping = true;
    const gone = new Promise<void>((r) => child.once('exit', () => r()));
    // unref'd: a pending grace timer must not keep the CLI alive after QEMU is gone
    const within = (ms: number) => Promise.race([gone.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);
    await this.qmp?.execute('quit').catch(() => undefined);
    if (!(await within(3000))) {
      child.kill('SIGTERM');
      if (!(await within(3000))) {
        child.kill('SIGKILL');
        await gone;
      }
    }
    this.qmp?.close();
    await this.closeBackends();
  }

  /** Our in-process device backends go with the VM. */
  private async closeBackends(): Promise<void> {
    for (const { backend, device } of this.fsBackends.splice(0)) {
      backend.close();
      device.close();
    }
    this.vsockBackend?.close();
    this.vsockBackend = undefined;
    await this.vsock?.close();
    this.vsock = undefined;
  }

  async pause(): Promise<void> {
    await this.requireQmp().execute('stop');
  }

  async resume(): Promise<void> {
    await this.requireQmp().execute('cont');
  }

  async addDisk(d: DiskDevice): Promise<void> {
    // microvm has no hotplug; q35's root complex (pcie.0) has none without root ports.
    if (this.opts.machine !== 'pc') throw new QemuError('config', `the ${this.opts.machine} machine cannot hotplug disks; use machine_type = "pc"`);
    const qmp = this.requireQmp();
    if (!/^[A-Za-z0-9_-]{1,20}$/.test(d.id)) throw new QemuError('config', `disk id "${d.id}" must be 1-20 of [A-Za-z0-9_-] (virtio-blk serial)`);
    const slot = this.nextSlot++;
    if (slot > 0x1f) throw new QemuError('config', 'no free PCI slot for another disk');
    await qmp.execute('blockdev-add', {
      'node-name': `d-${d.id}`, driver: 'raw', 'read-only': d.readonly,
      file: { driver: 'file', filename: d.path, 'read-only': d.readonly },
    });
    await qmp.execute('device_add', { driver: 'virtio-blk-pci', id: `dev-${d.id}`, drive: `d-${d.id}`, serial: d.id, addr: `0x${slot.toString(16)}` });
    this.diskSlots.set(d.id, slot);
  }

  async removeDisk(id: string): Promise<void> {
    const qmp = this.requireQmp();
    if (!this.diskSlots.has(id)) return;
    const deleted = new Promise<void>((resolve) => {
      const onEv = (name: string, data: { device?: string }) => {
        if (name === 'DEVICE_DELETED' && data.device === `dev-${id}`) {
          qmp.off('event', onEv);
          resolve();
        }
      };
      qmp.on('event', onEv);
      setTimeout(() => {
        qmp.off('event', onEv);
        resolve();
      }, 5000).unref();
    });
    await qmp.execute('device_del', { id: `dev-${id}` }).catch(() => undefined);
    await deleted;
    await qmp.execute('blockdev-del', { 'node-name': `d-${id}` }).catch(() => undefined);
    this.diskSlots.delete(id);
  }

  consoleTail(lines = 20): string {
    if (!this.cfg) return '';
    try {
      const txt = fs.readFileSync(path.join(this.cfg.dir, 'console.log'), 'utf8');
      return txt.split('\n').filter((l) => l.trim()).slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  private requireQmp(): QmpClient {
    if (!this.qmp) throw new QemuError('qmp', 'VM is not running');
    return this.qmp;
  }
}
