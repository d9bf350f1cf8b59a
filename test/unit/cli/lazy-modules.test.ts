/**
 * What `kata-ts run` loads before its VM starts (README Performance, VM
 * templates: CLI start). A plain run must not load what only other commands
 * or options need: yargs (the image commands), winston (lines below the
 * level), grpc-js, and the converted-image code (src/runtime/image-rootfs:
 * the image store, LZ4, tar), which only `--image` uses. Checked in a fresh
 * Node process, since this one has loaded everything.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

/**
 * Module files a fresh Node holds after requiring the CLI entry and the run
 * path; `ownVm`: also what a run that starts its own VM loads then (not one
 * served by the VM cache).
 */
function loadedByRunPath(ownVm = true): string[] {
  const cli = path.resolve(__dirname, '..', '..', '..', 'src', 'cli');
  const own = ownVm ? ['run-sandbox', 'hypervisor-choice'].map((m) => `require(${JSON.stringify(path.resolve(cli, '..', 'runtime', `${m}.js`))});`).join(' ') : '';
  const script = `require(${JSON.stringify(path.join(cli, 'kata-ts.js'))}); require(${JSON.stringify(path.join(cli, 'run.js'))}); ${own}
    process.stdout.write(JSON.stringify(Object.keys(require.cache)));`;
  return JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' })) as string[];
}

describe('unit: cli modules loaded by a plain kata-ts run', function () {
  this.timeout(20000);

  it('loads the sandbox and the hypervisor, not the image store, yargs, winston or grpc-js', () => {
    const loaded = loadedByRunPath();
    // It did load the run path (the check below means something).
    expect(loaded.some((f) => f.endsWith(path.join('runtime', 'sandbox.js')))).to.equal(true);
    expect(loaded.some((f) => f.endsWith(path.join('hypervisor', 'qemu.js')))).to.equal(true);
    const unwanted = loaded.filter((f) => /[\\/](runtime[\\/]image-rootfs|image[\\/](tar|layer-stream|lazy-source|chunker)|hot[\\/]lz4)\.js$|[\\/]node_modules[\\/](yargs|winston|@grpc)[\\/]/.test(f));
    expect(unwanted).to.deep.equal([]);
  });

  it('a run from the VM cache loads no sandbox or hypervisor code before it claims', () => {
    const loaded = loadedByRunPath(false);
    expect(loaded.some((f) => f.endsWith(path.join('cli', 'run.js')))).to.equal(true);
    expect(loaded.filter((f) => /[\\/]runtime[\\/](sandbox|run-sandbox)\.js$|[\\/]hypervisor[\\/]qemu\.js$/.test(f))).to.deep.equal([]);
  });
});
