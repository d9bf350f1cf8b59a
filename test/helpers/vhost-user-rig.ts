/**
 * The vhost-user vsock rig shared by the unit tests and the vsock bench: our
 * virtio-vsock device (HybridVsock) behind our vhost-user backend, driven by
 * the fake QEMU front end (real unix socket, memfd, eventfds) with the
 * Linux-shaped guest driver on the far end of its two rings.
 *
 *   const r = await vsockRig({ tmpPrefix: 'x-' });
 *   ... r.guest, r.sock (the hybrid-vsock unix socket), r.fe, r.backend ...
 *   await closeVsockRig(r);
 *
 * Rig fields are read at close time, so a caller that restarts the rings
 * (new rx/tx/guest) assigns them back onto the rig and they get closed.
 */
import * as fs from 'node:fs';
import type * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../src/common/native';
import { VhostUserBackend } from '../../src/vhost-user/backend';
import { HybridVsock } from '../../src/virtio/vsock/hybrid';
import type { VsockDeviceOptions } from '../../src/virtio/vsock/device';
import { FakeFrontEnd, GUEST_RAM, type RingSet } from '../unit/vhost-user/fake-frontend';
import { GuestVsock } from '../unit/virtio/guest-vsock';

/** Ring geometry the rig uses (and a driver reset restarts with). */
export const VSOCK_RING_SIZE = 128;
export const VSOCK_RX_GPA = 0x10000n;
export const VSOCK_TX_GPA = 0x30000n;
export const VSOCK_GUEST_CID = 3n;
export const VSOCK_GUEST_AREA = 0x100000n;

export interface VsockRig {
  dir: string;
  /** The Firecracker-style hybrid-vsock unix socket on the host side. */
  sock: string;
  /** The vhost-user socket the front end connects to. */
  vuSock: string;
  hybrid: HybridVsock;
  backend: VhostUserBackend;
  fe: FakeFrontEnd;
  rx: RingSet;
  tx: RingSet;
  guest: GuestVsock;
  /** Host-side listeners the caller made; closed by closeVsockRig. */
  servers: net.Server[];
}

export interface VsockRigOptions {
  /** mkdtemp prefix under os.tmpdir(). */
  tmpPrefix?: string;
  /** File name of the hybrid-vsock socket inside the rig's directory. */
  sockName?: string;
  /** VhostUserBackend name (log tag). */
  backendName?: string;
  /** Called after each ring is enabled (0 = rx, 1 = tx), before the guest driver starts. */
  afterEnable?: (queue: number, backend: VhostUserBackend) => void | Promise<void>;
  /** Device window options (bufAlloc, windowBudget); defaults otherwise. */
  device?: Pick<VsockDeviceOptions, 'bufAlloc' | 'windowBudget'>;
}

export async function vsockRig(opts: VsockRigOptions = {}): Promise<VsockRig> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), opts.tmpPrefix ?? 'kata-vsock-'));
  const sock = path.join(dir, opts.sockName ?? 'vsock.sock');
  const vuSock = path.join(dir, 'vu.sock');
  const hybrid = new HybridVsock(sock, { guestCid: VSOCK_GUEST_CID, ...opts.device });
  await hybrid.listen();
  const backend = new VhostUserBackend({ socketPath: vuSock, device: hybrid.device, guestBytes: GUEST_RAM, queues: 2, name: opts.backendName });
  backend.listen();
  const fe = new FakeFrontEnd();
  fe.connect(vuSock);
  await fe.negotiate();
  await fe.setMemTable();
  const rx = await fe.startRing(0, VSOCK_RING_SIZE, VSOCK_RX_GPA, { eventIdx: true });
  const tx = await fe.startRing(1, VSOCK_RING_SIZE, VSOCK_TX_GPA, { eventIdx: true });
  for (const q of [0, 1]) {
    await fe.enable(q);
    await opts.afterEnable?.(q, backend);
  }
  const guest = new GuestVsock(fe, rx, tx, VSOCK_GUEST_CID, VSOCK_GUEST_AREA);
  return { dir, sock, vuSock, hybrid, backend, fe, rx, tx, guest, servers: [] };
}

export async function closeVsockRig(r: VsockRig): Promise<void> {
  r.guest.close();
  r.fe.close();
  r.backend.close();
  await r.hybrid.close();
  for (const s of r.servers) await new Promise<void>((res) => s.close(() => res()));
  const n = native();
  for (const rs of [r.rx, r.tx]) for (const fd of [rs.kick, rs.call, rs.err]) n.closeFd(fd);
  fs.rmSync(r.dir, { recursive: true, force: true });
}
