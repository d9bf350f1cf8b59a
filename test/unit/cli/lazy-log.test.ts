/**
 * Lazy logging (src/common/log.ts), which keeps winston off kata-ts run's
 * path to QEMU: lines below the level are dropped without loading winston,
 * lines at or above it come out in Kata's shape, and a logger made before
 * configureLogging() follows the new configuration.
 */
import { expect } from 'chai';
import { PassThrough } from 'node:stream';
import { configureLogging, logger } from '../../../src/common/log';

function capture(): { stream: PassThrough; lines: () => Record<string, unknown>[] } {
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (d: Buffer) => (text += d.toString()));
  return { stream, lines: () => text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe('unit: lazy logging (common/log)', () => {
  after(() => configureLogging({ silent: true }));

  it('drops lines below the level and writes the others in Kata\'s shape', async () => {
    const c = capture();
    configureLogging({ level: 'warn', stream: c.stream, source: 'test' });
    const log = logger('mod', { sandbox: 's1' });
    log.info('not shown', { a: 1 });
    log.debug('not shown either');
    log.warn('shown', { a: 2 });
    await new Promise((r) => setImmediate(r));
    const lines = c.lines();
    expect(lines).to.have.length(1);
    expect(lines[0]).to.include({ level: 'warn', msg: 'shown', module: 'mod', sandbox: 's1', source: 'test', a: 2 });
    expect(lines[0]!.time).to.be.a('string');
  });

  it('a logger made before configureLogging follows the new stream and level', async () => {
    const early = logger('early');
    const c = capture();
    configureLogging({ level: 'debug', stream: c.stream, source: 'test' });
    early.debug('now at debug');
    early.child({ extra: 'x' }).info('child line');
    await new Promise((r) => setImmediate(r));
    expect(c.lines().map((l) => [l.msg, l.module, l.extra])).to.deep.equal([['now at debug', 'early', undefined], ['child line', 'early', 'x']]);
  });

  it('silent drops everything', async () => {
    const c = capture();
    configureLogging({ silent: true, stream: c.stream });
    logger('m').error('nothing');
    await new Promise((r) => setImmediate(r));
    expect(c.lines()).to.deep.equal([]);
  });
});
