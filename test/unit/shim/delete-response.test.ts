/**
 * `containerd-shim-kata-ts-v2 delete` prints a containerd.task.v2.DeleteResponse
 * encoded with our own codec (src/shim/delete.ts, to keep protobufjs off the
 * path of every `ctr run --rm`): containerd decodes it with the real proto,
 * here protobufjs on proto/containerd/task/v2/shim.proto (messages.ts).
 */
import { expect } from 'chai';
import { encodeDeleteResponse } from '../../../src/shim/delete';
import { messageType, DECODE_OPTIONS } from '../../../src/protocols/ttrpc/messages';

describe('shim delete response', () => {
  const decode = (b: Buffer) => {
    const t = messageType('containerd.task.v2.DeleteResponse');
    return t.toObject(t.decode(b), DECODE_OPTIONS) as { pid: number; exit_status: number; exited_at: { seconds: number; nanos: number } };
  };

  it('decodes with containerd\'s DeleteResponse to the same pid, status and time', () => {
    const at = new Date(1764566400123);
    const r = decode(encodeDeleteResponse(4242, 137, at));
    expect(r.pid).to.equal(4242);
    expect(r.exit_status).to.equal(137);
    expect(r.exited_at.seconds).to.equal(1764566400);
    expect(r.exited_at.nanos).to.equal(123e6);
  });

  it('encodes zero fields as proto3 defaults that decode to zero', () => {
    const r = decode(encodeDeleteResponse(0, 0, new Date(0)));
    expect(r.pid).to.equal(0);
    expect(r.exit_status).to.equal(0);
    expect(r.exited_at.seconds).to.equal(0);
  });
});
