/**
 * The shim takes a pod's agent policy from the annotation
 * io.katacontainers.config.agent.policy (base64 JSON): a malformed one is
 * InvalidArgument before any VM is asked for; a good one reaches the VM's
 * kernel command line as its sha256 pin (a stand-in hypervisor records the
 * boot request and refuses to boot).
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
import { POLICY_ANNOTATION, policySha256 } from '../../../src/protocols/agent-policy';

describe('unit: shim agent policy from the pod annotation (no VM)', () => {
  let dir: string;
  let served: ServedTaskService;
  let client: TtrpcClient;
  let asked = 0;
  const boots: VmConfig[] = [];

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-shim-policy-'));
    const cfg = defaultConfig();
    cfg.runtime.run_dir = path.join(dir, 'run');
    const hv = recordingHypervisor(boots);
    const svc = new TaskService({ config: cfg, sandboxId: 'sb', publisher: new MemoryPublisher(), onShutdown: () => undefined, hypervisor: async () => (asked++, hv) });
    served = await serveTaskService(svc, dir);
    client = served.client;
  });

  after(async () => {
    await served.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const create = async (annotation: string) => {
    const bundle = fs.mkdtempSync(path.join(dir, 'bundle-'));
    fs.mkdirSync(path.join(bundle, 'rootfs'));
    fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify({ ...defaultSpec({ args: ['true'] }), root: { path: 'rootfs' }, annotations: { [POLICY_ANNOTATION]: annotation } }));
    return client.request(TASK_SERVICE, 'Create', 'containerd.task.v2.CreateTaskRequest', 'containerd.task.v2.CreateTaskResponse', { id: 'c1', bundle })
      .then(() => ({ kind: 'OK', message: '' }), (e: TtrpcError) => ({ kind: e.kind, message: e.message }));
  };

  it('refuses a malformed policy annotation before asking for a VM', async () => {
    const notB64 = await create('{"version":1}');
    expect(notB64.kind).to.equal('InvalidArgument');
    expect(notB64.message).to.match(/io\.katacontainers\.config\.agent\.policy: not base64/);
    const bad = await create(Buffer.from('{"version":1,"requests":{"deny":["ExecProcess","Exec"]}}').toString('base64'));
    expect(bad.kind).to.equal('InvalidArgument');
    expect(bad.message).to.match(/policy\.requests\.deny\[1\]: unknown RPC "Exec"/);
    expect(asked).to.equal(0);
    expect(boots).to.have.length(0);
  });

  it('pins a good policy on the guest kernel command line', async () => {
    const text = '{"version":1,"requests":{"deny":["ExecProcess"]}}';
    const r = await create(Buffer.from(text).toString('base64'));
    expect(r.message).to.match(/no VM in unit tests/);
    expect(boots).to.have.length(1);
    expect(boots[0]!.kernelParams.split(' ')).to.include(`agent.policy_sha256=${policySha256(text)}`);
  });
});
