/**
 * The small interface SandboxMemory (service.ts) drives a sandbox's balloon
 * through, with its two implementations: QEMU's virtio-balloon-pci over QMP
 * (`balloon`, `query-balloon`, `qom-get guest-stats`) and the builtin VMM's
 * own device (src/virtio/balloon), reached in-process. Both answer in QEMU's
 * terms — `actual` is the RAM the guest may use now (VM RAM minus the
 * balloon), statistics under QEMU's guest-stats names — so the checks on
 * untrusted guest figures stay in one place (service.ts balloon()).
 */
import type { BalloonDevice } from '../../virtio/balloon/device';

export interface BalloonQuery {
  /** RAM the guest may use now, in bytes, as the guest reports it (untrusted; any shape). */
  actualBytes: unknown;
  /** Guest statistics by QEMU's names (untrusted; any shape). */
  stats: unknown;
  /** What the device already found wrong with the guest's figures. */
  warnings?: string[];
  /** The device's own counters (the builtin VMM's: pages given back, bad input seen). */
  counters?: Record<string, number>;
}

export interface BalloonControl {
  /** Once at sandbox start (QEMU: turn statistics polling on). */
  start?(): Promise<void>;
  /** Ask the guest to keep `bytes` of RAM; it inflates or deflates at its own pace. */
  setTarget(bytes: number): Promise<void>;
  query(): Promise<BalloonQuery>;
}

type Qmp = (cmd: string, args?: Record<string, unknown>) => Promise<unknown>;

/** QEMU's virtio-balloon-pci (id balloon0), over QMP. */
export function qmpBalloon(qmp: Qmp): BalloonControl {
  const path = '/machine/peripheral/balloon0';
  return {
    // Guest statistics are pulled by QEMU every 2 s once asked for.
    start: async () => { await qmp('qom-set', { path, property: 'guest-stats-polling-interval', value: 2 }); },
    setTarget: async (bytes) => { await qmp('balloon', { value: bytes }); },
    query: async () => {
      const q = await qmp('query-balloon') as { actual?: unknown } | null;
      const g = await qmp('qom-get', { path, property: 'guest-stats' }).catch(() => undefined) as { stats?: unknown } | undefined;
      return { actualBytes: q?.actual, stats: g && typeof g === 'object' ? g.stats : undefined };
    },
  };
}

/** The builtin VMM's device: statistics are asked for at each query (the driver refills the held buffer). */
export function deviceBalloon(dev: BalloonDevice, ramBytes: number): BalloonControl {
  return {
    setTarget: async (bytes) => { dev.setTarget(bytes); },
    query: async () => {
      const s = await dev.requestStats(1000);
      return { actualBytes: ramBytes - dev.rawActual * 4096, stats: s.stats, warnings: s.warnings, counters: { ...dev.metrics } };
    },
  };
}
