/**
 * The CRI v1 test client (test/helpers/cri.ts) without containerd: a stand-in
 * runtime.v1 server on a unix socket, built from the same proto file, sees
 * what a kubelet-shaped request carries; failures come back as CriError with
 * the gRPC code. Golden bytes pin field numbers of proto/cri/api.proto to
 * upstream k8s.io/cri-api v1 (a wrong number would still round-trip between
 * our own client and server, but not with containerd).
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { parseProto } from '../../../src/protocols/protobuf/schema';
import { encodeMessage } from '../../../src/protocols/protobuf/codec';
import { grpcServiceDefinition } from '../../../src/protocols/protobuf/grpc-service';
import { CRI_PROTO, CriClient, CriError } from '../../helpers/cri';

const schema = parseProto(fs.readFileSync(CRI_PROTO, 'utf8'), CRI_PROTO);
const msg = (n: string) => schema.messages.get(`runtime.v1.${n}`)!;

describe('CRI v1 client (test/helpers/cri.ts)', function () {
  this.timeout(20000);

  it('proto/cri/api.proto has upstream field numbers (golden bytes)', () => {
    // RunPodSandboxRequest: config = 1, runtime_handler = 2; PodSandboxConfig: metadata = 1, hostname = 2,
    // port_mappings = 5; PodSandboxMetadata: name = 1; PortMapping: protocol = 1, container_port = 2, host_port = 3.
    const b = encodeMessage(msg('RunPodSandboxRequest'), {
      config: { metadata: { name: 'p' }, hostname: 'h', port_mappings: [{ protocol: 'UDP', container_port: 80, host_port: 8080 }] },
      runtime_handler: 'k',
    });
    expect(b.toString('hex')).to.equal('0a11' + '0a030a0170' + '120168' + '2a07080110501890' + '3f' + '12016b');
    // ExecSyncResponse: stdout = 1, stderr = 2, exit_code = 3; ContainerConfig: log_path = 11, tty = 14, linux = 15.
    expect(encodeMessage(msg('ExecSyncResponse'), { stdout: Buffer.from('o'), stderr: Buffer.from('e'), exit_code: 2 }).toString('hex')).to.equal('0a016f120165' + '1802');
    expect(encodeMessage(msg('ContainerConfig'), { log_path: 'l', tty: true, linux: {} }).toString('hex')).to.equal('5a016c' + '7001' + '7a00');
    // ContainerFilter: pod_sandbox_id = 3; ContainerStateValue.state = 1 with CONTAINER_EXITED = 2.
    expect(encodeMessage(msg('ContainerFilter'), { state: { state: 'CONTAINER_EXITED' }, pod_sandbox_id: 's' }).toString('hex')).to.equal('12020802' + '1a0173');
  });

  describe('against a stand-in CRI server', () => {
    let dir: string;
    let server: grpc.Server;
    let client: CriClient;
    const seen: Record<string, unknown>[] = [];

    before(async () => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cri-unit-'));
      server = new grpc.Server();
      const ok = <T>(fn: (req: Record<string, unknown>) => T) => (call: grpc.ServerUnaryCall<Record<string, unknown>, T>, cb: grpc.sendUnaryData<T>) => {
        seen.push(call.request);
        try {
          cb(null, fn(call.request));
        } catch (e) {
          cb(e as grpc.ServiceError);
        }
      };
      server.addService(grpcServiceDefinition(schema, 'runtime.v1.RuntimeService'), {
        Version: ok(() => ({ version: '0.1.0', runtime_name: 'stand-in', runtime_version: '1', runtime_api_version: 'v1' })),
        RunPodSandbox: ok(() => ({ pod_sandbox_id: 'pod-1' })),
        ExecSync: ok((r) => ({ stdout: Buffer.from(`ran ${(r.cmd as string[]).join(' ')}`), stderr: Buffer.alloc(0), exit_code: 3 })),
        ListContainers: ok(() => ({ containers: [{ id: 'c1', pod_sandbox_id: 'pod-1', metadata: { name: 'web', attempt: 0 }, state: 'CONTAINER_RUNNING', created_at: 1796060829206249000 }] })),
        StartContainer: ok(() => {
          throw Object.assign(new Error('no such container'), { code: grpc.status.NOT_FOUND, details: 'container "x" not found' });
        }),
      });
      server.addService(grpcServiceDefinition(schema, 'runtime.v1.ImageService'), {
        ImageStatus: ok((r) => ({ image: (r.image as { image: string }).image === 'there' ? { id: 'sha256:1', repo_tags: ['there'], size: 5 } : null })),
      });
      await new Promise<void>((res, rej) => server.bindAsync(`unix://${path.join(dir, 'cri.sock')}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
      client = new CriClient(path.join(dir, 'cri.sock'), 5000);
    });

    after(async () => {
      client?.close();
      await new Promise<void>((r) => server.tryShutdown(() => r()));
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('sends kubelet-shaped requests and reads the answers', async () => {
      expect((await client.version()).runtime_name).to.equal('stand-in');
      const id = await client.runPodSandbox({
        metadata: { name: 'p', uid: 'u', namespace: 'ns' }, labels: { app: 'x' },
        port_mappings: [{ container_port: 80, host_port: 8080 }], linux: { security_context: { namespace_options: { pid: 'CONTAINER' } } },
      }, 'kata-ts');
      expect(id).to.equal('pod-1');
      const req = seen.at(-1) as { runtime_handler: string; config: { labels: Record<string, string>; port_mappings: { protocol: string; host_port: number }[]; linux: { security_context: { namespace_options: { pid: string; network: string } } } } };
      expect(req.runtime_handler).to.equal('kata-ts');
      expect(req.config.labels).to.deep.equal({ app: 'x' });
      expect(req.config.port_mappings[0]).to.include({ protocol: 'TCP', host_port: 8080 });
      expect(req.config.linux.security_context.namespace_options).to.include({ pid: 'CONTAINER', network: 'POD' });
      const ex = await client.execSync('c1', ['echo', 'hi'], 5);
      expect(ex.stdout.toString()).to.equal('ran echo hi');
      expect(ex.exit_code).to.equal(3);
      expect((seen.at(-1) as { timeout: number }).timeout).to.equal(5);
      const ls = await client.listContainers({ pod_sandbox_id: 'pod-1', state: { state: 'CONTAINER_RUNNING' } });
      expect(ls[0]).to.deep.include({ id: 'c1', state: 'CONTAINER_RUNNING', labels: {} });
      expect((seen.at(-1) as { filter: { state: { state: string } } }).filter.state.state).to.equal('CONTAINER_RUNNING');
      expect(await client.imageStatus('there')).to.include({ id: 'sha256:1', size: 5 });
      expect(await client.imageStatus('absent'), 'an empty answer is null').to.equal(null);
    });

    it('turns a failed call into a CriError with the RPC, code and message', async () => {
      const err = await client.startContainer('x').then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(CriError);
      expect(err).to.include({ rpc: 'StartContainer', code: grpc.status.NOT_FOUND, details: 'container "x" not found' });
      const unimpl = await client.stopPodSandbox('p').then(() => undefined, (e: unknown) => e);
      expect((unimpl as CriError).code).to.equal(grpc.status.UNIMPLEMENTED);
    });
  });
});
