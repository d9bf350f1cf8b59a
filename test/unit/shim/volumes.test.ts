/**
 * The shim refuses a bad volume at Create before anything is set up: no
 * hypervisor is asked for, no sandbox directory is made, and containerd
 * gets InvalidArgument with the path in the message.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TaskService } from '../../../src/shim/service';
import { MemoryPublisher } from '../../../src/shim/events';
import { toTtrpcError } from '../../../src/shim/errors';
import { defaultConfig } from '../../../src/runtime/config';
import { defaultSpec } from '../../../src/runtime/spec';
import type { OciMount } from '../../../src/protocols/oci';

describe('unit: shim Create with a bad volume', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-shim-vol-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const cases: [string, (d: string) => OciMount, RegExp][] = [
    ['a missing source', (d) => ({ destination: '/x', type: 'bind', source: path.join(d, 'gone'), options: ['rbind', 'ro'] }), /gone \(for \/x\) does not exist/],
    ['a .. in the source', (d) => ({ destination: '/x', type: 'bind', source: `${d}/../${path.basename(d)}`, options: ['rbind'] }), /has a "\.\." component/],
    ['a .. in the destination', (d) => ({ destination: '/x/../etc', type: 'bind', source: d, options: ['rbind'] }), /destination "\/x\/\.\.\/etc"/],
  ];
  for (const [what, mount, re] of cases) {
    it(`${what}: InvalidArgument, no VM, no sandbox dir`, async () => {
      const runDir = path.join(dir, 'run');
      const bundle = path.join(dir, 'bundle');
      fs.mkdirSync(path.join(bundle, 'rootfs'), { recursive: true });
      const spec = defaultSpec({ args: ['true'] });
      spec.mounts = [mount(dir)];
      fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(spec));
      const cfg = defaultConfig();
      cfg.runtime.run_dir = runDir;
      let hypervisors = 0;
      const svc = new TaskService({
        config: cfg, sandboxId: 'sb', publisher: new MemoryPublisher(), onShutdown: () => undefined,
        hypervisor: async () => {
          hypervisors++;
          throw new Error('no VM in unit tests');
        },
      });
      let err: unknown;
      await svc.create({ id: 'c1', bundle, rootfs: [], terminal: false, stdin: '', stdout: '', stderr: '', checkpoint: '', parent_checkpoint: '' } as never).catch((e) => (err = e));
      const t = toTtrpcError(err, 'Create');
      expect(t.kind).to.equal('InvalidArgument');
      expect(t.message).to.match(re);
      expect(hypervisors, 'no VM asked for').to.equal(0);
      expect(fs.existsSync(path.join(runDir, 'sandboxes', 'sb')), 'no sandbox dir').to.equal(false);
      await svc.teardown();
    });
  }
});
