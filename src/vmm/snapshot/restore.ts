/**
 * Restore side of a builtin-VMM snapshot: read and validate the state file,
 * open the memory file (size checked against the state), and — from inside
 * the new Machine's constructor, after its KVM VM, memory and devices exist
 * and before any vCPU runs — put VM, vCPU and device state back.
 * Any failure throws SnapshotError and the constructor closes everything it
 * made (no half-started VM, no fd, mapping or thread left).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { logger } from '../../common/log';
import type { Machine } from '../machine';
import { decodeState, MEMORY_FILE, SnapshotError, STATE_FILE, type SnapshotState } from './format';
import { openMemoryFile } from './memory-file';
import { applyVcpu, applyVm } from './vcpu-state';

/** Fault injection for tests: called between reading the state file and opening the memory file. */
export interface RestoreHooks { afterStateRead?: () => void }

export interface OpenedSnapshot { state: SnapshotState; memoryFd: number; dir: string }

export function openSnapshot(dir: string, hooks: RestoreHooks = {}): OpenedSnapshot {
  let raw: Buffer;
  try {
    raw = fs.readFileSync(path.join(dir, STATE_FILE));
  } catch (cause) {
    throw new SnapshotError('io', `cannot read snapshot state ${path.join(dir, STATE_FILE)}: ${(cause as Error).message}`, { cause });
  }
  const state = decodeState(raw);
  hooks.afterStateRead?.();
  const memoryFd = openMemoryFile(path.join(dir, MEMORY_FILE), state.meta.memoryFileBytes);
  return { state, memoryFd, dir };
}

/** Puts the saved state into machine `m` (vCPUs created, not started). */
export function applySnapshot(m: Machine, s: SnapshotState): void {
  if (m.transports.length !== s.meta.transports.length) {
    throw new SnapshotError('mismatch', `the snapshot has ${s.meta.transports.length} virtio device(s); the restore was given ${m.transports.length}`);
  }
  applyVm(m.vm.vmFd, s.vm);
  m.vcpus.forEach((v, i) => applyVcpu(v.native, i, s.vcpu[i], s.meta.vcpu[i]));
  m.serial.loadState(s.meta.serial);
  m.rtc.loadState(s.meta.rtc);
  m.transports.forEach((t, i) => t.restoreState(s.meta.transports[i]));
  logger('vmm-snapshot').info('snapshot restored', { vcpus: s.meta.vcpus, memoryBytes: s.meta.memoryBytes, devices: s.meta.transports.length, createdAt: s.meta.createdAt });
}
