/**
 * The AgentService implementation: one handler per RPC of proto/agent.proto,
 * each translating the request onto AgentSandbox. Handlers are plain async
 * functions (unary) or async generators (server streaming), independent of
 * the transport; agentRpcServer() serves them over ttrpc (rpc-server.ts).
 *
 * agentStatus() is the only place agent errors meet wire codes (gRPC code
 * numbers, which ttrpc carries): the code comes from the KataError kind
 * (AgentError, StorageError 'failed-precondition', BundleError 'invalid');
 * anything else is INTERNAL. Every request first passes the agent policy
 * (policy.ts): a denial is PERMISSION_DENIED naming the rule.
 *
 * To add an RPC: declare it in proto/agent.proto (the single source of the
 * service) and add one line to the table in agentHandlers().
 */
import { reseedRandomDev, setGuestDateTime } from './identity';
import { onlineCpuMem } from './online-cpu-mem';
import { volumeStats, resizeVolume } from './volumes';
import type * as api from '../protocols/agent-api';
import { AGENT_SERVICE, agentMethods } from '../protocols/agent-api';
import { KataError, errorMessage } from '../common/errors';
import { Code } from '../protocols/ttrpc/codes';
import { EncodedMessage, RpcServer, type CallContext, type RpcMethod, type RpcStatus } from '../protocols/ttrpc/rpc-server';
import type { AgentError } from './container';
import type { AgentSandbox } from './sandbox';
import type { OutputPipe, SpliceSource } from './output';
import { PolicyGate } from './policy';
import { warmContainerPath, warmOptionsFor } from './warm-container';

export type UnaryHandler = (req: any, ctx: CallContext) => Promise<unknown>;
export type StreamHandler = (req: any, ctx: CallContext) => AsyncIterable<unknown>;
export type AgentHandlers = Record<string, UnaryHandler | StreamHandler>;

/** Largest agent message either way (requests carry OCI specs and stdin; replies stdout chunks). */
export const AGENT_MAX_MESSAGE = 16 * 1024 * 1024;

const STATUS: Record<AgentError['kind'], number> = {
  'not-found': Code.NotFound, 'already-exists': Code.AlreadyExists, invalid: Code.InvalidArgument,
  'failed-precondition': Code.FailedPrecondition, 'permission-denied': Code.PermissionDenied, internal: Code.Internal,
};

/** An error thrown by a handler (or the policy) as the status the host receives. */
export function agentStatus(err: unknown): RpcStatus {
  const message = errorMessage(err);
  const code = err instanceof KataError && Object.hasOwn(STATUS, err.kind) ? STATUS[err.kind as AgentError['kind']] : Code.Internal;
  return { code, message };
}

/**
 * ReadStreamResponse { data } as [tag + length prefix, ...chunks]: the
 * stdout path's only encoding work is a few bytes (README performance,
 * agent stdout). The tag is taken from the codec itself, so it follows
 * proto/agent.proto.
 */
function readStreamMessage(): (out: Buffer[] | SpliceSource) => EncodedMessage {
  const probe = agentMethods().get('ReadStdout')!.encodeResponse({ data: Buffer.from([0x55]) });
  const tag = probe.subarray(0, probe.length - 2);
  if (probe[probe.length - 2] !== 1 || probe[probe.length - 1] !== 0x55) throw new KataError('internal', 'ReadStreamResponse is not a single bytes field');
  return (out) => {
    let n = Array.isArray(out) ? out.reduce((t, c) => t + c.length, 0) : out.length;
    const len: number[] = [];
    while (n > 127) { len.push((n & 0x7f) | 0x80); n >>>= 7; }
    len.push(n);
    const prefix = Buffer.concat([tag, Buffer.from(len)]);
    // Bytes still in the pipe go as the message's tail: spliced by the connection.
    return Array.isArray(out) ? new EncodedMessage([prefix, ...out]) : new EncodedMessage([prefix], out);
  };
}

function streamOutput(sb: AgentSandbox, pick: (p: ReturnType<AgentSandbox['process']>) => OutputPipe): StreamHandler {
  let message: ((out: Buffer[] | SpliceSource) => EncodedMessage) | undefined;
  return async function* (req: api.ProcessRef, ctx: CallContext) {
    const pipe = pick(sb.process(req));
    message ??= readStreamMessage();
    // The host cancels by closing the stream's connection: wake the pending
    // read so the pipe is free for the next reader, with nothing lost.
    const onAbort = () => pipe.interrupt();
    ctx.signal.addEventListener('abort', onAbort);
    try {
      for (;;) {
        // The server has sent the previous message (and spliced its tail)
        // before it asks for the next.
        const out = await pipe.readSpliceable(undefined, ctx.signal);
        if (ctx.signal.aborted || out === null) return;
        yield message(out);
      }
    } finally {
      ctx.signal.removeEventListener('abort', onAbort);
      pipe.endSplice();
    }
  };
}

/**
 * The policy check at the edge: every handler is wrapped, so no RPC — also
 * one added later — runs before the gate (policy.ts) has admitted it.
 */
function guarded(gate: PolicyGate, handlers: AgentHandlers): AgentHandlers {
  const out: AgentHandlers = {};
  for (const [rpc, h] of Object.entries(handlers)) {
    const streaming = agentMethods().get(rpc)?.responseStream ?? false;
    out[rpc] = streaming
      ? async function* (req: unknown, ctx: CallContext) {
        gate.admit(rpc, req);
        yield* (h as StreamHandler)(req, ctx);
      }
      : async (req: unknown, ctx: CallContext) => {
        gate.admit(rpc, req);
        return (h as UnaryHandler)(req, ctx);
      };
  }
  return out;
}

export function agentHandlers(sb: AgentSandbox, gate: PolicyGate = new PolicyGate()): AgentHandlers {
  return guarded(gate, {
    CreateSandbox: async (r: api.CreateSandboxRequest) => (await sb.createSandbox(r), {}),
    DestroySandbox: async () => (await sb.destroySandbox(), {}),
    GetGuestDetails: () => sb.guestDetails(),
    Check: async () => ({ status: 'SERVING' }),
    CreateContainer: async (r: api.CreateContainerRequest) => (await sb.createContainer(r), {}),
    StartContainer: async (r: api.StartContainerRequest) => ({ pid: await sb.startContainer(r.container_id) }),
    RemoveContainer: async (r: api.RemoveContainerRequest) => (await sb.removeContainer(r.container_id, r.timeout), {}),
    StatsContainer: (r: { container_id: string }) => sb.stats(r.container_id),
    PauseContainer: async (r: { container_id: string }) => (await sb.pauseContainer(r.container_id), {}),
    ResumeContainer: async (r: { container_id: string }) => (await sb.resumeContainer(r.container_id), {}),
    UpdateContainer: async (r: api.UpdateContainerRequest) => (await sb.updateContainer(r), {}),
    GetOOMEvent: async (_r: api.Empty, ctx: CallContext) => {
      // A long poll: a caller that goes away must not take the next event with it.
      const { promise, cancel } = sb.waitOom();
      const onAbort = () => cancel();
      ctx.signal.addEventListener('abort', onAbort);
      const id = await promise;
      ctx.signal.removeEventListener('abort', onAbort);
      if (ctx.signal.aborted) {
        sb.requeueOom(id);
        throw new KataError('internal', 'caller gone');
      }
      return { container_id: id };
    },
    ExecProcess: async (r: api.ExecProcessRequest) => ({ pid: await sb.execProcess(r) }),
    SignalProcess: async (r: api.SignalProcessRequest) => (await sb.signalProcess(r), {}),
    WaitProcess: (r: api.ProcessRef) => sb.waitProcess(r),
    WriteStdin: async (r: api.WriteStreamRequest) => ({ len: await sb.process(r).writeStdin(r.data) }),
    CloseStdin: async (r: api.ProcessRef) => (sb.process(r).closeStdin(), {}),
    TtyWinResize: async (r: api.TtyWinResizeRequest) => (sb.process(r).resize(r.row, r.column), {}),
    StartDebugConsole: (r: api.DebugConsoleRequest) => sb.startDebugConsole(r),
    GetGuestStats: () => sb.guestStats(),
    UpdateInterface: async (r: api.UpdateInterfaceRequest) => sb.network.updateInterfaceAt(r.interface),
    UpdateRoutes: async (r: api.UpdateRoutesRequest) => sb.network.updateRoutes(r.routes),
    ListInterfaces: async () => sb.network.listInterfaces(),
    ListRoutes: async () => sb.network.listRoutes(),
    AddARPNeighbors: async (r: api.AddARPNeighborsRequest) => (sb.network.addArpNeighbors(r.neighbors), {}),
    ReseedRandomDev: async (r: api.ReseedRandomDevRequest) => (await reseedRandomDev(r.data), {}),
    SetGuestDateTime: async (r: api.SetGuestDateTimeRequest) => (setGuestDateTime(r.Sec, r.Usec), {}),
    OnlineCPUMem: async (r: api.OnlineCPUMemRequest) => (await onlineCpuMem(r), {}),
    GetVolumeStats: (r: api.VolumeStatsRequest) => volumeStats(r.volume_guest_path, sb.storages.mounted),
    ResizeVolume: async (r: api.ResizeVolumeRequest) => (await resizeVolume(r.volume_guest_path, r.size, sb.storages.mounted), {}),
    WarmContainerPath: () => warmContainerPath(sb, warmOptionsFor(sb.options)),
    ReadStdout: streamOutput(sb, (p) => p.stdout),
    ReadStderr: streamOutput(sb, (p) => p.stderr),
  });
}

/**
 * The handlers served over ttrpc with proto/agent.proto's codecs. An RPC
 * of the proto without a handler answers Unimplemented; a handler without an
 * RPC in the proto is a programming error caught here, at start-up.
 */
export function agentRpcServer(handlers: AgentHandlers, onProtocolError?: (why: string) => void): RpcServer {
  const defs = agentMethods();
  const methods = new Map<string, RpcMethod>();
  for (const [name, handle] of Object.entries(handlers)) {
    const d = defs.get(name);
    if (!d) throw new KataError('internal', `agent handler ${name} has no RPC in proto/agent.proto`);
    methods.set(name, { responseStream: d.responseStream, decodeRequest: d.decodeRequest, encodeResponse: d.encodeResponse, handle: handle as RpcMethod['handle'] });
  }
  return new RpcServer({ service: AGENT_SERVICE, methods, status: agentStatus, maxLength: AGENT_MAX_MESSAGE, onProtocolError });
}
