/**
 * kata-ctl cleanup after a runtime was killed with volumes mounted (as root,
 * real bind mounts): the stale sandbox's (writable) volume mounts are unmounted, its
 * directory removed, and the host data behind the volumes left intact — a
 * recursive delete through a bind mount would have emptied the source.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { writeState } from '../../../src/runtime/state';
import { mountsUnder, planVolumes, SandboxVolumes } from '../../../src/runtime/volumes';
import type { CleanupEntry } from '../../../src/ctl/sandboxes';
import { kataCtl } from '../../helpers/kata-ctl';

describe('kata-ctl cleanup of a stale sandbox with volumes (root)', function () {
  this.timeout(60000);
  let runDir: string;

  before(function () {
    if (process.getuid?.() !== 0) this.skip();
    runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-ts-cleanup-vol-'));
  });

  after(() => {
    if (!runDir) return;
    for (const m of mountsUnder(runDir)) spawnSync('umount', ['-l', m.target]);
    fs.rmSync(runDir, { recursive: true, force: true });
  });

  it('unmounts the volumes, removes the sandbox dir and keeps the host data', async () => {
    const src = path.join(runDir, 'host-data');
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'precious'), 'keep me');
    const sb = path.join(runDir, 'sandboxes', 'dead1');
    fs.mkdirSync(sb, { recursive: true });
    const vols = new SandboxVolumes(path.join(sb, 'shared'));
    await vols.add('c1', planVolumes('c1', [{ destination: '/data', type: 'bind', source: src, options: ['rbind'] }], path.join(sb, 'shared')).volumes);
    // The owner is gone without cleaning up (SIGKILL): a dead pid owns the state.
    const deadPid = spawnSync('true').pid!;
    writeState(sb, {
      id: 'dead1', phase: 'running', hypervisor: 'qemu', accel: 'tcg', ownerPid: deadPid, ownerStartTime: 1, vmPids: [],
      vcpus: 1, memoryMiB: 512, createdAt: new Date(Date.now() - 90_000).toISOString(), containers: [{ id: 'c1', state: 'running', pid: 1 }],
    });
    expect(mountsUnder(sb).length, 'mounts, shared and the volume in each').to.equal(4);
    const cfg = path.join(runDir, 'c.toml');
    fs.writeFileSync(cfg, `[runtime]\nrun_dir = "${runDir}"\n`);
    const r = await kataCtl(['--config', cfg, 'cleanup', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const out = JSON.parse(r.stdout) as { removed: CleanupEntry[] };
    expect(out.removed.map((e) => [e.id, e.removed])).to.deep.equal([['dead1', true]]);
    expect(mountsUnder(runDir)).to.deep.equal([]);
    expect(fs.existsSync(sb)).to.equal(false);
    expect(fs.readFileSync(path.join(src, 'precious'), 'utf8')).to.equal('keep me');
  });
});
