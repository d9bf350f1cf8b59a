/**
 * What the split and packed virtqueue tests share: the feature bits a rig
 * negotiates, and the assertion that a call fails with one VirtqueueError
 * kind (returning the error for further checks).
 */
import { expect } from 'chai';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VirtqueueError, type VirtqueueErrorKind } from '../../../src/hot/virtqueue';

export function features(o: { eventIdx?: boolean; indirect?: boolean }): bigint {
  return (o.eventIdx ? 1n << BigInt(VIRTIO_F_EVENT_IDX) : 0n) | (o.indirect ? 1n << BigInt(VIRTIO_F_INDIRECT_DESC) : 0n);
}

export function expectVqError(fn: () => unknown, kind: VirtqueueErrorKind): VirtqueueError {
  try {
    fn();
  } catch (e) {
    expect(e).to.be.instanceOf(VirtqueueError);
    expect((e as VirtqueueError).kind).to.equal(kind);
    return e as VirtqueueError;
  }
  throw new Error(`expected VirtqueueError ${kind}`);
}
