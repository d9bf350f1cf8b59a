/**
 * The shim's command line, grouping and task service edges without a VM:
 * Go-style flags, pod grouping by CRI annotations, and the task service
 * served over real ttrpc answering unknown ids, bad requests and
 * unsupported calls with the codes containerd expects.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseFlags, formatFlags } from '../../../src/shim/flags';
import { groupId, socketPath, bundleAnnotations } from '../../../src/shim/grouping';
import type { TtrpcClient } from '../../../src/protocols/ttrpc/client';
import type { TtrpcError } from '../../../src/protocols/ttrpc/codes';
import { encode } from '../../../src/protocols/ttrpc/messages';
import { TaskService } from '../../../src/shim/service';
import { TASK_SERVICE } from '../../../src/shim/registration';
import { serveTaskService, type ServedTaskService } from '../../helpers/shim-rig';
import { MemoryPublisher } from '../../../src/shim/events';
import { defaultConfig } from '../../../src/runtime/config';

describe('unit: shim flags and grouping', () => {
  it('parses containerd 1.6 start arguments in Go flag syntax', () => {
    const f = parseFlags(['-namespace', 'k8s.io', '--address=/run/c.sock', '-publish-binary', '/usr/bin/containerd', '-id', 'abc', '-debug', 'start']);
    expect(f).to.include({ namespace: 'k8s.io', address: '/run/c.sock', publishBinary: '/usr/bin/containerd', id: 'abc', debug: true, action: 'start' });
    expect(parseFlags(['-id', 'x', '-bundle', '/b', 'delete'])).to.include({ id: 'x', bundle: '/b', action: 'delete' });
    expect(parseFlags(formatFlags({ ...f, socket: '/s' }).concat('serve'))).to.include({ socket: '/s', id: 'abc', debug: true, action: 'serve' });
    expect(parseFlags(['-v']).action).to.equal('version');
    expect(() => parseFlags(['-bogus', 'start'])).to.throw(/flag provided but not defined: -bogus/);
    expect(() => parseFlags(['-id'])).to.throw(/flag needs an argument/);
  });

  it('groups pod members by io.kubernetes.cri annotations', () => {
    expect(groupId('c1', {})).to.equal('c1');
    expect(groupId('pod', { 'io.kubernetes.cri.container-type': 'sandbox', 'io.kubernetes.cri.sandbox-id': 'pod' })).to.equal('pod');
    expect(groupId('c2', { 'io.kubernetes.cri.container-type': 'container', 'io.kubernetes.cri.sandbox-id': 'pod' })).to.equal('pod');
    const a = socketPath('/run/containerd/containerd.sock', 'k8s.io', 'pod');
    expect(a).to.match(/^\/run\/containerd\/s\/[0-9a-f]{32}$/);
    expect(socketPath('/run/containerd/containerd.sock', 'default', 'pod')).to.not.equal(a);
    expect(bundleAnnotations('/nonexistent')).to.deep.equal({});
  });
});

describe('unit: shim task service over ttrpc (no VM)', () => {
  let dir: string;
  let served: ServedTaskService;
  let client: TtrpcClient;
  let shutdowns = 0;
  const call = (m: string, t: string, v: Record<string, unknown>, res = 'google.protobuf.Empty') =>
    client.request(TASK_SERVICE, m, `containerd.task.v2.${t}`, res, v);
  const codeOf = (p: Promise<unknown>) => p.then(() => 'OK', (e: TtrpcError) => e.kind);

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kts-shim-'));
    const cfg = defaultConfig();
    cfg.runtime.run_dir = dir;
    const svc = new TaskService({
      config: cfg, sandboxId: 'sb', publisher: new MemoryPublisher(), onShutdown: () => shutdowns++,
      hypervisor: async () => {
        throw new Error('no VM in unit tests');
      },
    });
    served = await serveTaskService(svc, dir);
    client = served.client;
  });

  after(async () => {
    await served.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('answers NotFound for ids that do not exist', async () => {
    expect(await codeOf(call('State', 'StateRequest', { id: 'nope' }, 'containerd.task.v2.StateResponse'))).to.equal('NotFound');
    expect(await codeOf(call('Start', 'StartRequest', { id: 'nope' }, 'containerd.task.v2.StartResponse'))).to.equal('NotFound');
    expect(await codeOf(call('Kill', 'KillRequest', { id: 'nope', signal: 9 }))).to.equal('NotFound');
    expect(await codeOf(call('Delete', 'DeleteRequest', { id: 'nope' }, 'containerd.task.v2.DeleteResponse'))).to.equal('NotFound');
    expect(await codeOf(call('Wait', 'WaitRequest', { id: 'nope' }, 'containerd.task.v2.WaitResponse'))).to.equal('NotFound');
    expect(await codeOf(call('Exec', 'ExecProcessRequest', { id: 'nope', exec_id: 'e' }))).to.equal('NotFound');
    expect(await codeOf(call('Pids', 'PidsRequest', { id: 'nope' }, 'containerd.task.v2.PidsResponse'))).to.equal('NotFound');
  });

  it('refuses invalid ids and bundles, and checkpoints, before touching a VM', async () => {
    const create = (v: Record<string, unknown>) => codeOf(call('Create', 'CreateTaskRequest', v, 'containerd.task.v2.CreateTaskResponse'));
    expect(await create({ id: '../evil', bundle: dir })).to.equal('InvalidArgument');
    expect(await create({ id: 'ok', bundle: '/nonexistent' })).to.equal('InvalidArgument');
    expect(await create({ id: 'ok', bundle: 'relative' })).to.equal('InvalidArgument');
    expect(await create({ id: 'ok', bundle: dir, checkpoint: '/x' })).to.equal('Unimplemented');
    expect(await create({ id: 'ok', bundle: dir })).to.equal('NotFound'); // no config.json
    fs.writeFileSync(path.join(dir, 'config.json'), '{"ociVersion":');
    expect(await create({ id: 'ok', bundle: dir })).to.equal('InvalidArgument');
    expect(await create({ id: 'ok', bundle: dir, rootfs: [{ type: 'bad type', source: 'x', options: [] }] })).to.equal('InvalidArgument');
    expect(await codeOf(call('Checkpoint', 'CheckpointTaskRequest', { id: 'ok' }))).to.equal('Unimplemented');
  });

  it('answers InvalidArgument for an undecodable request payload', async () => {
    const err = await client.call(TASK_SERVICE, 'State', Buffer.from([0x0a, 0x05, 0x41])).catch((e: TtrpcError) => e);
    expect((err as TtrpcError).kind).to.equal('InvalidArgument');
    // and a well-formed one still works afterwards
    expect(await codeOf(client.call(TASK_SERVICE, 'State', encode('containerd.task.v2.StateRequest', { id: 'x' })))).to.equal('NotFound');
  });

  it('Connect reports the shim pid; Shutdown with nothing left ends the shim once', async () => {
    const c = await call('Connect', 'ConnectRequest', { id: 'x' }, 'containerd.task.v2.ConnectResponse') as { shim_pid: number; version: string };
    expect(c.shim_pid).to.equal(process.pid);
    expect(c.version).to.match(/kata-ts/);
    await call('Shutdown', 'ShutdownRequest', { id: 'x' });
    await call('Shutdown', 'ShutdownRequest', { id: 'x' });
    await new Promise((r) => setImmediate(r));
    expect(shutdowns).to.equal(1);
  });
});
