/**
 * The template agent's warm-up (src/agent/warmup.ts): it serves its round
 * of RPCs through the real server, handlers and codecs with the outcomes it
 * expects (CreateSandbox and the reads succeed, errors for missing containers),
 * touches nothing outside its scratch directory but the network object it
 * is given, and leaves the scratch directory gone.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GuestNetwork } from '../../../src/agent/network';
import { TEMPLATE_WARMUP_PARAM, memoryPair, warmUp, warmUpForSnapshot, warmUpWanted } from '../../../src/agent/warmup';

/** Records the calls that would touch the guest's links; answers the reads with nothing. */
class RecordingNetwork extends GuestNetwork {
  readonly calls: string[] = [];
  constructor(private readonly resolv: string) {
    super(() => { throw new Error('no netlink in this test'); });
  }
  override loopbackUp(): void { this.calls.push('loopbackUp'); }
  override writeResolvConf(dns: string[]): Promise<void> {
    this.calls.push(`resolv:${dns.join(',')}`);
    return super.writeResolvConf(dns, this.resolv);
  }
  override listInterfaces(): any { this.calls.push('listInterfaces'); return { interfaces: [] }; }
  override listRoutes(): any { this.calls.push('listRoutes'); return { routes: [] }; }
}

describe('unit: agent warm-up before a VM template is saved', function () {
  this.timeout(20000);
  let dir: string;
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-warmup-')); });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('is wanted only with agent.warmup=1 on the command line (a template boot)', () => {
    expect(TEMPLATE_WARMUP_PARAM).to.equal('agent.warmup=1');
    expect(warmUpWanted('console=ttyS0 acpi=noirq agent.warmup=1 quiet')).to.equal(true);
    expect(warmUpWanted('console=ttyS0 quiet')).to.equal(false);
    expect(warmUpWanted('agent.warmup=10 xagent.warmup=1')).to.equal(false);
  });

  it('serves its RPCs with the expected outcomes, codes the rest, and leaves its scratch directory gone', async () => {
    const scratch = path.join(dir, 'warm-up');
    const net = new RecordingNetwork(path.join(scratch, 'resolv.conf'));
    const line = await warmUp(scratch, net);
    // No '; ' tail: every served RPC had the outcome the warm-up expects.
    expect(line).to.match(/^kata-agent: template warm-up: 15 RPCs served, 7 through the codec only, \d+ ms$/);
    expect(net.calls).to.deep.equal(['loopbackUp', 'resolv:nameserver 127.0.0.1', 'listInterfaces', 'listRoutes']);
    expect(fs.existsSync(scratch)).to.equal(false);
  });

  it('reports a path that did not behave as a clone\'s would, instead of failing the template', async () => {
    const scratch = path.join(dir, 'warm-up');
    const net = new RecordingNetwork(path.join(scratch, 'resolv.conf'));
    net.loopbackUp = () => { throw new Error('netlink refused'); };
    const line = await warmUp(scratch, net);
    expect(line).to.match(/15 RPCs served, .*; CreateSandbox: .*netlink refused/);
    expect(fs.existsSync(scratch)).to.equal(false);
  });

  it('a scratch directory it cannot make is one error on its line, not a throw (the template is still saved)', async () => {
    fs.writeFileSync(path.join(dir, 'file'), '');
    const line = await warmUp(path.join(dir, 'file', 'warm-up'), new RecordingNetwork(path.join(dir, 'r')));
    expect(line).to.match(/^kata-agent: template warm-up: 0 RPCs served, 0 through the codec only, \d+ ms; .*ENOTDIR/);
  });

  describe('at image build time, inside the agent snapshot\'s build (boot.ts -> main.ts prepare)', () => {
    it('the in-memory pair carries bytes both ways and ends the peer on end', async () => {
      const { agentEnd, hostEnd, stop } = await memoryPair();
      const got: string[] = [];
      agentEnd.on('data', (d: Buffer) => got.push(`a:${d}`));
      hostEnd.on('data', (d: Buffer) => got.push(`h:${d}`));
      const ended = new Promise((r) => agentEnd.once('end', r));
      hostEnd.write('ping');
      agentEnd.write('pong');
      hostEnd.end();
      await ended;
      expect(got).to.deep.equal(['a:ping', 'h:pong']);
      stop();
      expect(agentEnd.destroyed && hostEnd.destroyed).to.equal(true);
    });

    it('serves the same RPCs over in-memory streams with no addon, and leaves no handle and no scratch directory (Node snapshots only a drained loop)', async () => {
      const scratch = path.join(dir, 'snap-warm-up');
      const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length;
      const line = await warmUpForSnapshot(scratch);
      expect(line).to.match(/^kata-agent: snapshot warm-up: 15 RPCs served, 7 through the codec only, \d+ ms$/);
      expect(fs.existsSync(scratch)).to.equal(false);
      await new Promise((r) => setImmediate(r));
      expect((process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length).to.equal(handles);
    });

    it('the snapshot build\'s hook (main.ts prepare, called by boot.ts while Node builds the blob) runs it', async () => {
      const { prepare } = await import('../../../src/agent/main');
      expect(await prepare()).to.match(/^kata-agent: snapshot warm-up: 15 RPCs served, 7 through the codec only, \d+ ms$/);
    });
  });
});
