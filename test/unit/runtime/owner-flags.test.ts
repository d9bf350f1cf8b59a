/**
 * The owner process's start (src/runtime/owner-flags.ts): Node accepts the
 * flags and they take effect (a child started with them reports them in its
 * execArgv and V8's young-generation limit), and the environment gets one
 * malloc arena unless it already chose.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { OWNER_NODE_FLAGS, ownerEnv } from '../../../src/runtime/owner-flags';

describe('unit: owner process flags', function () {
  it('are accepted by this node and take effect in the child', function () {
    const r = spawnSync(process.execPath, [...OWNER_NODE_FLAGS, '-e',
      'const v8 = require("v8"); process.stdout.write(JSON.stringify({ argv: process.execArgv, arena: process.env.MALLOC_ARENA_MAX, newSpace: v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space").space_size }))'],
    { encoding: 'utf8', env: ownerEnv({ PATH: process.env.PATH }) });
    expect(r.status, r.stderr).to.equal(0);
    const out = JSON.parse(r.stdout) as { argv: string[]; arena: string; newSpace: number };
    expect(out.argv.slice(0, OWNER_NODE_FLAGS.length)).to.deep.equal([...OWNER_NODE_FLAGS]);
    expect(out.arena).to.equal('1');
    // --max-semi-space-size=1: new space (two 1 MiB semi-spaces at most) never above 2 MiB.
    expect(out.newSpace).to.be.at.most(2 * 1024 * 1024);
  });

  it('keep an environment\'s own MALLOC_ARENA_MAX and every other variable', function () {
    expect(ownerEnv({ MALLOC_ARENA_MAX: '4', A: 'b' })).to.deep.equal({ MALLOC_ARENA_MAX: '4', A: 'b' });
    expect(ownerEnv({ A: 'b' })).to.deep.equal({ MALLOC_ARENA_MAX: '1', A: 'b' });
  });
});
