/**
 * A test-only virtio device (type 0x7f, one queue): for each chain it reads
 * the device-readable bytes and writes "pong:" + them into the writable
 * part, then interrupts if the ring asks. Exercises the virtio-mmio
 * transport through the real VirtioDevice interface and the WASM virtqueue.
 */
import type { ActivateContext, VirtioDevice } from '../../../src/virtio/device';
import { VIRTIO_RING_FEATURES } from '../../../src/virtio/device';

export class EchoDevice implements VirtioDevice {
  readonly deviceType = 0x7f;
  readonly queueMaxSizes = [16];
  readonly availableFeatures = VIRTIO_RING_FEATURES;
  readonly configSize = 0;
  ctx: ActivateContext | undefined;
  seen: string[] = [];
  resets = 0;
  needsResetReasons: string[] = [];
  ackFeatures(): void {}
  readConfig(_o: number, out: Uint8Array): void { out.fill(0); }
  writeConfig(): void {}
  activate(ctx: ActivateContext): void { this.ctx = ctx; }
  queueNotify(index: number): void {
    const q = this.ctx?.queues[index];
    if (!q) return;
    const n = q.popBatch();
    if (q.error) { this.needsResetReasons.push(q.error); this.ctx!.needsReset(`queue ${index}: ${q.error}`); return; }
    for (let i = 0; i < n; i++) {
      const b = q.buffers(i);
      const req = Buffer.concat(b.readable).toString('latin1').replace(/\0+$/, '');
      this.seen.push(req);
      const reply = Buffer.from(`pong:${req}\0`, 'latin1');
      let off = 0;
      for (const w of b.writable) { const k = reply.copy(w, 0, off); off += k; if (off >= reply.length) break; }
      q.pushUsed(b.head, off);
    }
    if (q.needsNotification()) this.ctx!.interrupt(index);
  }
  reset(): void { this.ctx = undefined; this.resets++; }
}
