/**
 * waitForMarker (src/protocols/agent-dialer.ts): its failures are DialErrors,
 * KataErrors whose kind says whether the agent timed out or the VM exited.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AGENT_READY_MARKER, DialError, waitForMarker } from '../../../src/protocols/agent-dialer';
import { KataError } from '../../../src/common/errors';

describe('unit: agent dialer boot wait', function () {
  this.timeout(10000);
  let dir: string;
  let log: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-dialer-'));
    log = path.join(dir, 'console.log');
    fs.writeFileSync(log, 'booting\n');
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('times out with a DialError of kind "timeout"', async () => {
    const err = await waitForMarker(log, 200, new Promise(() => undefined)).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(DialError);
    expect(err).to.be.instanceOf(KataError);
    expect((err as DialError).kind).to.equal('timeout');
    expect((err as Error).name).to.equal('DialError');
    expect((err as Error).message).to.match(/did not come up/);
  });

  it('a VM that exits gives kind "vm-exited" naming why', async () => {
    const err = await waitForMarker(log, 5000, Promise.resolve('QEMU exited (status 1)')).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(DialError);
    expect((err as DialError).kind).to.equal('vm-exited');
    expect((err as Error).message).to.match(/QEMU exited \(status 1\)/);
  });

  it('resolves with the rest of the marker line', async () => {
    fs.appendFileSync(log, `${AGENT_READY_MARKER} {"t":1}\n`);
    expect((await waitForMarker(log, 2000, new Promise(() => undefined))).trim()).to.equal('{"t":1}');
  });
});
