/**
 * gRPC AgentService implementation: one handler per RPC, each translating the
 * request onto AgentSandbox and its errors onto gRPC status codes — the only
 * place agent errors meet wire codes. The code comes from the KataError kind
 * (AgentError, StorageError 'failed-precondition', BundleError 'invalid');
 * anything else is INTERNAL. Every request first passes the agent policy
 * (policy.ts): a denial is PERMISSION_DENIED naming the rule.
 */
import * as grpc from '@grpc/grpc-js';
import type * as api from '../protocols/agent-api';
import { KataError, errorMessage } from '../common/errors';
import type { AgentError } from './container';
import type { AgentSandbox } from './sandbox';
import type { OutputPipe } from './output';
import { PolicyGate } from './policy';
import { agentServiceDefinition } from '../protocols/agent-api';

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void;

const STATUS: Record<AgentError['kind'], grpc.status> = {
  'not-found': grpc.status.NOT_FOUND, 'already-exists': grpc.status.ALREADY_EXISTS, invalid: grpc.status.INVALID_ARGUMENT,
  'failed-precondition': grpc.status.FAILED_PRECONDITION, 'permission-denied': grpc.status.PERMISSION_DENIED, internal: grpc.status.INTERNAL,
};

function toStatus(err: unknown): grpc.ServiceError {
  const message = errorMessage(err);
  const code = err instanceof KataError && Object.hasOwn(STATUS, err.kind) ? STATUS[err.kind as AgentError['kind']] : grpc.status.INTERNAL;
  return Object.assign(new Error(message), { code, details: message, metadata: new grpc.Metadata() });
}

function unary<Req, Res>(fn: (req: Req) => Promise<Res>): Unary<Req, Res> {
  return (call, cb) => {
    fn(call.request).then((r) => cb(null, r), (err) => cb(toStatus(err)));
  };
}

function streamOutput(sb: AgentSandbox, pick: (p: ReturnType<AgentSandbox['process']>) => OutputPipe) {
  return (call: grpc.ServerWritableStream<api.ProcessRef, api.ReadStreamResponse>) => {
    let pipe: OutputPipe;
    try {
      pipe = pick(sb.process(call.request));
    } catch (err) {
      call.destroy(toStatus(err));
      return;
    }
    let cancelled = false;
    call.on('cancelled', () => {
      cancelled = true;
      pipe.interrupt();
    });
    (async () => {
      for (;;) {
        const chunk = await pipe.read();
        if (cancelled) return;
        if (chunk === null) break;
        if (!call.write({ data: chunk })) await new Promise((r) => call.once('drain', r));
      }
      call.end();
    })().catch((err) => call.destroy(toStatus(err)));
  };
}

/**
 * The policy check at the edge: every handler is wrapped, so no RPC — also
 * one added later — runs before the gate (policy.ts) has admitted it.
 */
function guarded(gate: PolicyGate, handlers: grpc.UntypedServiceImplementation): grpc.UntypedServiceImplementation {
  const def = agentServiceDefinition();
  const out: grpc.UntypedServiceImplementation = {};
  for (const [rpc, h] of Object.entries(handlers)) {
    const streaming = def[rpc]?.responseStream ?? false;
    out[rpc] = ((call: grpc.ServerUnaryCall<unknown, unknown> & grpc.ServerWritableStream<unknown, unknown>, cb?: grpc.sendUnaryData<unknown>) => {
      try {
        gate.admit(rpc, call.request);
      } catch (err) {
        if (streaming) call.destroy(toStatus(err));
        else cb!(toStatus(err));
        return;
      }
      (h as (c: unknown, cb?: unknown) => void)(call, cb);
    }) as grpc.UntypedHandleCall;
  }
  return out;
}

export function agentHandlers(sb: AgentSandbox, gate: PolicyGate = new PolicyGate()): grpc.UntypedServiceImplementation {
  return guarded(gate, {
    CreateSandbox: unary<api.CreateSandboxRequest, api.Empty>(async (r) => (await sb.createSandbox(r), {})),
    DestroySandbox: unary<api.Empty, api.Empty>(async () => (await sb.destroySandbox(), {})),
    GetGuestDetails: unary<api.Empty, api.GuestDetailsResponse>(() => sb.guestDetails()),
    Check: unary<{ service: string }, api.HealthCheckResponse>(async () => ({ status: 'SERVING' })),
    CreateContainer: unary<api.CreateContainerRequest, api.Empty>(async (r) => (await sb.createContainer(r), {})),
    StartContainer: unary<api.StartContainerRequest, api.StartContainerResponse>(async (r) => ({ pid: await sb.startContainer(r.container_id) })),
    RemoveContainer: unary<api.RemoveContainerRequest, api.Empty>(async (r) => (await sb.removeContainer(r.container_id, r.timeout), {})),
    StatsContainer: unary<{ container_id: string }, api.StatsContainerResponse>((r) => sb.stats(r.container_id)),
    PauseContainer: unary<{ container_id: string }, api.Empty>(async (r) => (await sb.pauseContainer(r.container_id), {})),
    ResumeContainer: unary<{ container_id: string }, api.Empty>(async (r) => (await sb.resumeContainer(r.container_id), {})),
    UpdateContainer: unary<api.UpdateContainerRequest, api.Empty>(async (r) => (await sb.updateContainer(r), {})),
    GetOOMEvent: (call: grpc.ServerUnaryCall<api.Empty, api.OOMEvent>, cb: grpc.sendUnaryData<api.OOMEvent>) => {
      // A long poll: a caller that goes away must not take the next event with it.
      let gone = false;
      const { promise, cancel } = sb.waitOom();
      call.on('cancelled', () => {
        gone = true;
        cancel();
      });
      promise.then((id) => {
        if (gone) sb.requeueOom(id);
        else cb(null, { container_id: id });
      });
    },
    ExecProcess: unary<api.ExecProcessRequest, api.ExecProcessResponse>(async (r) => ({ pid: await sb.execProcess(r) })),
    SignalProcess: unary<api.SignalProcessRequest, api.Empty>(async (r) => (await sb.signalProcess(r), {})),
    WaitProcess: unary<api.ProcessRef, api.WaitProcessResponse>((r) => sb.waitProcess(r)),
    WriteStdin: unary<api.WriteStreamRequest, api.WriteStreamResponse>(async (r) => ({ len: await sb.process(r).writeStdin(r.data) })),
    CloseStdin: unary<api.ProcessRef, api.Empty>(async (r) => (sb.process(r).closeStdin(), {})),
    TtyWinResize: unary<api.TtyWinResizeRequest, api.Empty>(async (r) => (sb.process(r).resize(r.row, r.column), {})),
    StartDebugConsole: unary<api.DebugConsoleRequest, api.DebugConsoleResponse>((r) => sb.startDebugConsole(r)),
    GetGuestStats: unary<api.Empty, api.GuestStatsResponse>(() => sb.guestStats()),
    UpdateInterface: unary<api.UpdateInterfaceRequest, api.Interface>(async (r) => sb.network.updateInterface(r.interface)),
    UpdateRoutes: unary<api.UpdateRoutesRequest, api.Routes>(async (r) => sb.network.updateRoutes(r.routes)),
    ListInterfaces: unary<api.Empty, api.Interfaces>(async () => sb.network.listInterfaces()),
    ListRoutes: unary<api.Empty, api.Routes>(async () => sb.network.listRoutes()),
    AddARPNeighbors: unary<api.AddARPNeighborsRequest, api.Empty>(async (r) => (sb.network.addArpNeighbors(r.neighbors), {})),
    ReadStdout: streamOutput(sb, (p) => p.stdout),
    ReadStderr: streamOutput(sb, (p) => p.stderr),
  });
}
