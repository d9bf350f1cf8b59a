/**
 * Host side of the agent API: typed, promise-returning calls over the gRPC
 * client from src/protocols/agent-dialer. gRPC status errors are wrapped in
 * AgentCallError carrying the RPC name and the status code name.
 */
import * as grpc from '@grpc/grpc-js';
import type { Readable } from 'node:stream';
import type * as api from '../protocols/agent-api';
import { KataError } from '../common/errors';

export class AgentCallError extends KataError<'not-found' | 'already-exists' | 'invalid' | 'failed-precondition' | 'permission-denied' | 'unavailable' | 'deadline' | 'internal'> {
  constructor(readonly rpc: string, readonly grpcCode: number, details: string) {
    const kind = ({ [grpc.status.NOT_FOUND]: 'not-found', [grpc.status.ALREADY_EXISTS]: 'already-exists', [grpc.status.INVALID_ARGUMENT]: 'invalid',
      [grpc.status.FAILED_PRECONDITION]: 'failed-precondition', [grpc.status.PERMISSION_DENIED]: 'permission-denied', [grpc.status.UNAVAILABLE]: 'unavailable', [grpc.status.DEADLINE_EXCEEDED]: 'deadline' } as Record<number, AgentCallError['kind']>)[grpcCode] ?? 'internal';
    super(kind, details);
  }
}

type Ref = api.ProcessRef;

export class AgentClient {
  constructor(private readonly client: grpc.Client) {}

  private call<Req, Res>(method: string, req: Req, timeoutMs?: number): Promise<Res> {
    return new Promise((resolve, reject) => {
      const fn = (this.client as unknown as Record<string, (r: Req, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: Res) => void) => void>)[method]!;
      const opts: grpc.CallOptions = timeoutMs ? { deadline: Date.now() + timeoutMs } : {};
      fn.call(this.client, req, new grpc.Metadata(), opts, (err, res) => {
        if (err) reject(new AgentCallError(method, err.code, err.details || err.message));
        else resolve(res);
      });
    });
  }

  private stream(method: string, req: Ref): Readable & { cancel(): void } {
    const fn = (this.client as unknown as Record<string, (r: Ref) => grpc.ClientReadableStream<api.ReadStreamResponse>>)[method]!;
    return fn.call(this.client, req);
  }

  /** Waits until the agent answers Check (the channel may still be connecting). */
  async check(timeoutMs: number): Promise<void> {
    await new Promise<void>((resolve, reject) =>
      this.client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(new AgentCallError('Check', grpc.status.UNAVAILABLE, `agent unreachable: ${err.message}`)) : resolve())));
    const r = await this.call<{ service: string }, api.HealthCheckResponse>('Check', { service: '' }, timeoutMs);
    if (r.status !== 'SERVING') throw new AgentCallError('Check', grpc.status.UNAVAILABLE, `agent is ${r.status}`);
  }

  createSandbox(req: api.CreateSandboxRequest): Promise<api.Empty> { return this.call('CreateSandbox', req); }
  destroySandbox(timeoutMs = 10000): Promise<api.Empty> { return this.call('DestroySandbox', {}, timeoutMs); }
  guestDetails(): Promise<api.GuestDetailsResponse> { return this.call('GetGuestDetails', {}); }
  createContainer(req: api.CreateContainerRequest): Promise<api.Empty> { return this.call('CreateContainer', req); }
  async startContainer(id: string): Promise<number> { return (await this.call<api.StartContainerRequest, api.StartContainerResponse>('StartContainer', { container_id: id })).pid; }
  removeContainer(id: string, timeout: number): Promise<api.Empty> { return this.call('RemoveContainer', { container_id: id, timeout }); }
  statsContainer(id: string): Promise<api.StatsContainerResponse> { return this.call('StatsContainer', { container_id: id }); }
  pauseContainer(id: string): Promise<api.Empty> { return this.call('PauseContainer', { container_id: id }); }
  resumeContainer(id: string): Promise<api.Empty> { return this.call('ResumeContainer', { container_id: id }); }
  updateContainer(req: api.UpdateContainerRequest): Promise<api.Empty> { return this.call('UpdateContainer', req); }
  /** Long poll: resolves with the next OOM-killed container (no deadline). */
  getOomEvent(): Promise<api.OOMEvent> { return this.call('GetOOMEvent', {}); }
  async execProcess(req: api.ExecProcessRequest): Promise<number> { return (await this.call<api.ExecProcessRequest, api.ExecProcessResponse>('ExecProcess', req)).pid; }
  signalProcess(req: api.SignalProcessRequest): Promise<api.Empty> { return this.call('SignalProcess', req); }
  waitProcess(ref: Ref): Promise<api.WaitProcessResponse> { return this.call('WaitProcess', ref); }
  async writeStdin(ref: Ref, data: Buffer): Promise<number> { return (await this.call<api.WriteStreamRequest, api.WriteStreamResponse>('WriteStdin', { ...ref, data })).len; }
  closeStdin(ref: Ref): Promise<api.Empty> { return this.call('CloseStdin', ref); }
  ttyWinResize(req: api.TtyWinResizeRequest): Promise<api.Empty> { return this.call('TtyWinResize', req); }
  startDebugConsole(req: api.DebugConsoleRequest): Promise<api.DebugConsoleResponse> { return this.call('StartDebugConsole', req); }
  guestStats(timeoutMs?: number): Promise<api.GuestStatsResponse> { return this.call('GetGuestStats', {}, timeoutMs); }
  updateInterface(iface: api.Interface): Promise<api.Interface> { return this.call('UpdateInterface', { interface: iface }); }
  updateRoutes(routes: api.Route[]): Promise<api.Routes> { return this.call('UpdateRoutes', { routes: { routes } }); }
  listInterfaces(): Promise<api.Interfaces> { return this.call('ListInterfaces', {}); }
  listRoutes(): Promise<api.Routes> { return this.call('ListRoutes', {}); }
  addArpNeighbors(neighbors: api.ARPNeighbor[]): Promise<api.Empty> { return this.call('AddARPNeighbors', { neighbors: { neighbors } }); }
  readStdout(ref: Ref): Readable & { cancel(): void } { return this.stream('ReadStdout', ref); }
  readStderr(ref: Ref): Readable & { cancel(): void } { return this.stream('ReadStderr', ref); }

  close(): void {
    this.client.close();
  }
}
