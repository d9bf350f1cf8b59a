/**
 * The shim applies Kata's io.katacontainers.config.hypervisor.* annotations
 * from the sandbox container's spec (src/runtime/config-kata.ts): allowed by
 * enable_annotations, they size the VM it asks for; not allowed or malformed,
 * Create fails with InvalidArgument before any VM is asked for. A stand-in
 * hypervisor records the boot request and refuses to boot.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TtrpcClient } from '../../../src/protocols/ttrpc/client';
import type { TtrpcError } from '../../../src/protocols/ttrpc/codes';
import { TaskService } from '../../../src/shim/service';
import { TASK_SERVICE } from '../../../src/shim/registration';
import { recordingHypervisor, serveTaskService, type ServedTaskService } from '../../helpers/shim-rig';
import { MemoryPublisher } from '../../../src/shim/events';
import { defaultConfig } from '../../../src/runtime/config';
import { defaultSpec } from '../../../src/runtime/spec';
import type { VmConfig } from '../../../src/hypervisor/hypervisor';

describe('unit: shim hypervisor annotations (no VM)', () => {
  let dir: string;
  let served: ServedTaskService;
  let client: TtrpcClient;
  let asked = 0;
  const boots: VmConfig[] = [];
  const P = 'io.katacontainers.config.hypervisor.';

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-shim-anno-'));
    const cfg = defaultConfig();
    cfg.runtime.run_dir = path.join(dir, 'run');
    cfg['hypervisor.qemu'].enable_annotations = ['^default_memory$'];
    const hv = recordingHypervisor(boots);
    const svc = new TaskService({ config: cfg, sandboxId: 'sb', publisher: new MemoryPublisher(), onShutdown: () => undefined, hypervisor: async () => (asked++, hv) });
    served = await serveTaskService(svc, dir);
    client = served.client;
  });

  after(async () => {
    await served.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const create = async (annotations: Record<string, string>) => {
    const bundle = fs.mkdtempSync(path.join(dir, 'bundle-'));
    fs.mkdirSync(path.join(bundle, 'rootfs'));
    fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify({ ...defaultSpec({ args: ['true'] }), root: { path: 'rootfs' }, annotations }));
    return client.request(TASK_SERVICE, 'Create', 'containerd.task.v2.CreateTaskRequest', 'containerd.task.v2.CreateTaskResponse', { id: 'c1', bundle })
      .then(() => ({ kind: 'OK', message: '' }), (e: TtrpcError) => ({ kind: e.kind, message: e.message }));
  };

  it('refuses an annotation enable_annotations does not allow, and a bad value, before asking for a VM', async () => {
    const off = await create({ [`${P}default_vcpus`]: '2' });
    expect(off.kind).to.equal('InvalidArgument');
    expect(off.message).to.match(/annotation io\.katacontainers\.config\.hypervisor\.default_vcpus is not enabled/);
    const bad = await create({ [`${P}default_memory`]: '2G' });
    expect(bad.kind).to.equal('InvalidArgument');
    expect(bad.message).to.match(/"2G" is not a positive integer/);
    expect(asked).to.equal(0);
    expect(boots).to.have.length(0);
  });

  it('sizes the VM from an allowed annotation', async () => {
    const r = await create({ [`${P}default_memory`]: '1024' });
    expect(r.message).to.match(/no VM in unit tests/);
    expect(boots).to.have.length(1);
    expect(boots[0]!.memoryMiB).to.equal(1024);
  });
});
