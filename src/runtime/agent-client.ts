/**
 * Host side of the agent API: typed, promise-returning calls over an
 * AgentWire — ttrpc over vsock to the guest (src/protocols/agent-dialer),
 * or a grpc-js client (kata-ctl's channel to a sandbox owner,
 * ctl-channel.ts). Errors are wrapped in AgentCallError carrying the RPC
 * name and the status code (gRPC code numbers, which ttrpc carries too).
 */
import type * as grpc from '@grpc/grpc-js';
import type { Readable } from 'node:stream';
import type * as api from '../protocols/agent-api';
import type { AgentWire, AgentWireError } from '../protocols/agent-dialer';
import { KataError } from '../common/errors';
import { Code } from '../protocols/ttrpc/codes';
import { logger } from '../common/log';

// Created on first use: a logger made at import time would miss the CLI's configureLogging.
let rpcLog: ReturnType<typeof logger> | undefined;

export class AgentCallError extends KataError<'not-found' | 'already-exists' | 'invalid' | 'failed-precondition' | 'permission-denied' | 'unavailable' | 'deadline' | 'internal'> {
  constructor(readonly rpc: string, readonly grpcCode: number, details: string) {
    const kind = ({ [Code.NotFound]: 'not-found', [Code.AlreadyExists]: 'already-exists', [Code.InvalidArgument]: 'invalid',
      [Code.FailedPrecondition]: 'failed-precondition', [Code.PermissionDenied]: 'permission-denied', [Code.Unavailable]: 'unavailable', [Code.DeadlineExceeded]: 'deadline' } as Record<number, AgentCallError['kind']>)[grpcCode] ?? 'internal';
    super(kind, details);
  }
}

type Ref = api.ProcessRef;

/** A grpc-js client (kata-ctl's ctl socket) as an AgentWire. */
class GrpcWire implements AgentWire {
  constructor(private readonly client: grpc.Client) {}

  ready(timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) =>
      this.client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(Object.assign(new Error(`agent unreachable: ${err.message}`), { code: Code.Unavailable })) : resolve())));
  }

  unary(method: string, req: unknown, timeoutMs?: number): Promise<unknown> {
    const g = require('@grpc/grpc-js') as typeof grpc;
    return new Promise((resolve, reject) => {
      const fn = (this.client as unknown as Record<string, (r: unknown, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: unknown) => void) => void>)[method]!;
      const opts: grpc.CallOptions = timeoutMs ? { deadline: Date.now() + timeoutMs } : {};
      fn.call(this.client, req, new g.Metadata(), opts, (err, res) => {
        if (err) reject(Object.assign(new Error(err.details || err.message), { code: err.code, details: err.details }));
        else resolve(res);
      });
    });
  }

  stream(method: string, req: unknown): Readable & { cancel(): void } {
    const fn = (this.client as unknown as Record<string, (r: unknown) => grpc.ClientReadableStream<api.ReadStreamResponse>>)[method]!;
    return fn.call(this.client, req);
  }

  close(): void {
    this.client.close();
  }
}

export class AgentClient {
  private readonly wire: AgentWire;

  constructor(conn: AgentWire | grpc.Client) {
    this.wire = 'waitForReady' in conn ? new GrpcWire(conn) : conn;
  }

  private async call<Req, Res>(method: string, req: Req, timeoutMs?: number): Promise<Res> {
    const t0 = Date.now();
    try {
      const res = (await this.wire.unary(method, req, timeoutMs)) as Res;
      // Per-RPC latency at debug level: where a slow start spends its time (README performance).
      (rpcLog ??= logger('agent-client')).debug('agent rpc', { rpc: method, ms: Date.now() - t0 });
      return res;
    } catch (err) {
      const e = err as AgentWireError;
      throw new AgentCallError(method, typeof e.code === 'number' ? e.code : Code.Unavailable, e.details || e.message);
    }
  }

  private stream(method: string, req: Ref): Readable & { cancel(): void } {
    return this.wire.stream(method, req);
  }

  /** Waits until the agent answers Check (the connection may still be coming up). */
  async check(timeoutMs: number): Promise<void> {
    try {
      await this.wire.ready(timeoutMs);
    } catch (err) {
      throw new AgentCallError('Check', Code.Unavailable, `agent unreachable: ${(err as Error).message}`);
    }
    const r = await this.call<{ service: string }, api.HealthCheckResponse>('Check', { service: '' }, timeoutMs);
    if (r.status !== 'SERVING') throw new AgentCallError('Check', Code.Unavailable, `agent is ${r.status}`);
  }

  createSandbox(req: api.CreateSandboxRequest): Promise<api.Empty> { return this.call('CreateSandbox', req); }
  /** A cached VM's container-path warm-up (src/agent/warm-container.ts), before CreateSandbox only. */
  warmContainerPath(timeoutMs: number): Promise<api.WarmContainerPathResponse> { return this.call('WarmContainerPath', {}, timeoutMs); }
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
  /** A template clone's RNG reseed and clock (src/factory/sandbox-clone.ts). */
  reseedRandomDev(data: Buffer): Promise<api.Empty> { return this.call('ReseedRandomDev', { data }); }
  setGuestDateTime(sec: number, usec: number): Promise<api.Empty> { return this.call('SetGuestDateTime', { Sec: sec, Usec: usec }); }
  onlineCpuMem(nbCpus: number, opts: { wait?: boolean; cpuOnly?: boolean } = {}): Promise<api.Empty> {
    return this.call('OnlineCPUMem', { wait: opts.wait ?? true, nb_cpus: nbCpus, cpu_only: opts.cpuOnly ?? false });
  }
  /** Direct volumes (src/agent/volumes.ts): statfs of a volume's guest mount; online grow. */
  volumeStats(guestPath: string): Promise<api.VolumeStatsResponse> { return this.call('GetVolumeStats', { volume_guest_path: guestPath }); }
  resizeVolume(guestPath: string, size: number): Promise<api.Empty> { return this.call('ResizeVolume', { volume_guest_path: guestPath, size }); }
  updateInterface(iface: api.Interface): Promise<api.Interface> { return this.call('UpdateInterface', { interface: iface }); }
  updateRoutes(routes: api.Route[]): Promise<api.Routes> { return this.call('UpdateRoutes', { routes: { routes } }); }
  listInterfaces(): Promise<api.Interfaces> { return this.call('ListInterfaces', {}); }
  listRoutes(): Promise<api.Routes> { return this.call('ListRoutes', {}); }
  addArpNeighbors(neighbors: api.ARPNeighbor[]): Promise<api.Empty> { return this.call('AddARPNeighbors', { neighbors: { neighbors } }); }
  readStdout(ref: Ref): Readable & { cancel(): void } { return this.stream('ReadStdout', ref); }
  readStderr(ref: Ref): Readable & { cancel(): void } { return this.stream('ReadStderr', ref); }

  close(): void {
    this.wire.close();
  }
}
