/**
 * Snapshot of a running builtin-VMM machine into a directory (Firecracker's
 * "full snapshot"): pause every vCPU (each re-enters KVM_RUN once with
 * immediate_exit so pending IO completes), wait for the virtio devices to
 * finish the requests they popped, save VM and vCPU state, device state and
 * the sparse memory file, then resume if the machine was running.
 *
 * Files appear in an order that never pairs a new memory file with an old
 * state file: state.bin is removed first and written last (rename), so a
 * directory with a state.bin always holds a complete snapshot.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { logger } from '../../common/log';
import type { Machine } from '../machine';
import { encodeState, MEMORY_FILE, SnapshotError, STATE_FILE, VMM_STATE_VERSION, type SnapshotMeta } from './format';
import { writeMemoryFile } from './memory-file';
import { captureVcpu, captureVm, savableMsrs, xsaveSize } from './vcpu-state';

export interface SnapshotInfo {
  dir: string;
  /** Wall time with the vCPUs paused, ms. */
  pausedMs: number;
  stateBytes: number;
  memoryBytes: number;
  /** Bytes of the memory file that hold data (the rest are holes). */
  memoryDataBytes: number;
}

/** How long a snapshot waits for in-flight virtio requests before refusing. */
export const DRAIN_TIMEOUT_MS = 2000;

export async function saveSnapshot(m: Machine, dir: string): Promise<SnapshotInfo> {
  if (!m.isRunning) throw new SnapshotError('refused', 'snapshot needs a started machine that has not ended');
  const wasPaused = m.isPaused;
  const t0 = process.hrtime.bigint();
  await m.pause();
  try {
    // Buffers a device keeps on purpose (the balloon's statistics) go back first, else they count as in flight.
    for (const t of m.transports) t.device.releaseHeld?.();
    for (const deadline = Date.now() + DRAIN_TIMEOUT_MS; m.transports.some((t) => t.inFlight() > 0);) {
      if (Date.now() > deadline) {
        const busy = m.transports.filter((t) => t.inFlight() > 0).map((t) => `type ${t.device.deviceType}: ${t.inFlight()}`).join(', ');
        throw new SnapshotError('refused', `virtio requests still in flight after ${DRAIN_TIMEOUT_MS} ms (${busy}); snapshot refused`);
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    if (!m.isRunning) throw new SnapshotError('refused', `the machine ended while pausing for the snapshot: ${m.endReason?.reason}`);
    const msrs = savableMsrs(m.vm.kvmFd, m.vcpus[0].native);
    const xsaveBytes = xsaveSize(m.vm.vmFd);
    const vcpuBlobs: Array<Record<string, Buffer>> = [];
    const vcpuMeta: SnapshotMeta['vcpu'] = [];
    m.vcpus.forEach((v, i) => {
      const c = captureVcpu(v.native, msrs, m.cpuidOf(i), xsaveBytes);
      vcpuBlobs.push(c.blobs);
      vcpuMeta.push(c.meta);
    });
    const vm = captureVm(m.vm.vmFd);
    const meta: SnapshotMeta = {
      vmm: VMM_STATE_VERSION, memoryBytes: m.memoryBytes, memoryFileBytes: m.hot.guestBytes, vcpus: m.vcpus.length,
      cmdline: m.cmdline, createdAt: new Date().toISOString(), vcpu: vcpuMeta,
      serial: m.serial.saveState(), rtc: m.rtc.saveState(), transports: m.transports.map((t) => t.saveState()),
    };
    fs.mkdirSync(dir, { recursive: true });
    const stateFile = path.join(dir, STATE_FILE);
    fs.rmSync(stateFile, { force: true });
    const ram = m.hot.u8.subarray(m.hot.guestBase, m.hot.guestBase + m.hot.guestBytes);
    const mem = writeMemoryFile(path.join(dir, `${MEMORY_FILE}.tmp`), ram, m.vm.memoryFd);
    fs.renameSync(path.join(dir, `${MEMORY_FILE}.tmp`), path.join(dir, MEMORY_FILE));
    const state = encodeState({ meta, vm, vcpu: vcpuBlobs });
    fs.writeFileSync(`${stateFile}.tmp`, state, { mode: 0o600 });
    fs.renameSync(`${stateFile}.tmp`, stateFile);
    const pausedMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const info = { dir, pausedMs, stateBytes: state.length, memoryBytes: mem.bytes, memoryDataBytes: mem.dataBytes };
    logger('vmm-snapshot').info('snapshot saved', info);
    return info;
  } catch (err) {
    for (const f of [`${MEMORY_FILE}.tmp`, `${STATE_FILE}.tmp`]) fs.rmSync(path.join(dir, f), { force: true });
    throw err instanceof SnapshotError ? err : new SnapshotError('io', `snapshot failed: ${(err as Error).message}`, { cause: err });
  } finally {
    if (!wasPaused && m.isRunning) m.resume();
  }
}
