/**
 * The owner side of kata-ctl's access to a running sandbox: a gRPC server
 * implementing the part of the AgentService that kata-ctl needs, each call
 * forwarded to the agent over the owner's own connection.
 *
 * Why a proxy in the owner: it applies the owner's configuration
 * (debug_console_enabled) and keeps kata-ctl away from the owner's
 * containers, whatever the agent itself allows. It dates from the
 * virtio-serial channel (one HTTP/2 session only the owner could hold); on
 * hybrid vsock a second process could dial the agent, and ctl-channel.ts
 * says what changing that would take.
 *
 * What is forwarded is an allowlist: health, guest details and stats,
 * container stats (read-only), and the debug console — starting one only
 * when the configuration allows it, and the process RPCs only for debug
 * console processes (container_id ""), never for the owner's containers.
 */
import * as grpc from '@grpc/grpc-js';
import type { Readable } from 'node:stream';
import type * as api from '../protocols/agent-api';
import { AgentCallError, type AgentClient } from './agent-client';

export interface CtlProxyOptions {
  /** [agent.kata] debug_console_enabled of the owner's configuration. */
  debugConsole: boolean;
  /**
   * kata-ctl direct-volume resize: the owner grows the disk on the host and
   * then asks the agent (ResizeVolume answers FAILED_PRECONDITION without it).
   */
  resizeVolume?: (guestPath: string, size: number) => Promise<void>;
}

const CODE_OF_KIND: Record<AgentCallError['kind'], grpc.status> = {
  'not-found': grpc.status.NOT_FOUND, 'already-exists': grpc.status.ALREADY_EXISTS, invalid: grpc.status.INVALID_ARGUMENT,
  'failed-precondition': grpc.status.FAILED_PRECONDITION, 'permission-denied': grpc.status.PERMISSION_DENIED, unavailable: grpc.status.UNAVAILABLE, deadline: grpc.status.DEADLINE_EXCEEDED,
  internal: grpc.status.INTERNAL,
};

function status(code: grpc.status, message: string): grpc.ServiceError {
  return Object.assign(new Error(message), { code, details: message, metadata: new grpc.Metadata() });
}

function toStatus(err: unknown): grpc.ServiceError {
  if (err instanceof AgentCallError) return status(CODE_OF_KIND[err.kind], err.message);
  return status(grpc.status.INTERNAL, err instanceof Error ? err.message : String(err));
}

export const DEBUG_CONSOLE_DISABLED = 'the debug console is disabled for this sandbox: set [agent.kata] debug_console_enabled = true in the configuration the sandbox was started with';

type UnaryHandler = (call: grpc.ServerUnaryCall<any, any>, cb: grpc.sendUnaryData<any>) => void;

function unary<Req>(fn: (req: Req) => Promise<unknown>, guard?: (req: Req) => grpc.ServiceError | undefined): UnaryHandler {
  return (call, cb) => {
    const denied = guard?.(call.request as Req);
    if (denied) return cb(denied);
    fn(call.request as Req).then((r) => cb(null, r), (err) => cb(toStatus(err)));
  };
}

/** Process RPCs reach debug console processes only. */
function consoleOnly(req: { container_id?: string }): grpc.ServiceError | undefined {
  return req.container_id ? status(grpc.status.PERMISSION_DENIED, 'kata-ctl may only address debug console processes (container_id "")') : undefined;
}

function forwardStream(open: (ref: api.ProcessRef) => Readable & { cancel(): void }) {
  return (call: grpc.ServerWritableStream<api.ProcessRef, api.ReadStreamResponse>) => {
    const denied = consoleOnly(call.request);
    if (denied) {
      call.destroy(denied);
      return;
    }
    const up = open(call.request);
    call.on('cancelled', () => up.cancel());
    up.on('data', (m: api.ReadStreamResponse) => {
      if (!call.write(m)) {
        up.pause();
        call.once('drain', () => up.resume());
      }
    });
    up.on('end', () => call.end());
    up.on('error', (err: grpc.ServiceError) => call.destroy(status(err.code ?? grpc.status.UNAVAILABLE, err.details || err.message)));
  };
}

export function ctlProxyHandlers(agent: AgentClient, opts: CtlProxyOptions): grpc.UntypedServiceImplementation {
  return {
    Check: unary(async () => ({ status: 'SERVING' })),
    GetGuestDetails: unary(() => agent.guestDetails()),
    GetGuestStats: unary(() => agent.guestStats()),
    GetVolumeStats: unary<api.VolumeStatsRequest>((r) => agent.volumeStats(r.volume_guest_path)),
    ResizeVolume: unary<api.ResizeVolumeRequest>(async (r) => (await opts.resizeVolume!(r.volume_guest_path, r.size), {}),
      () => (opts.resizeVolume ? undefined : status(grpc.status.FAILED_PRECONDITION, 'this sandbox\'s owner cannot resize volumes'))),
    StatsContainer: unary<{ container_id: string }>((r) => agent.statsContainer(r.container_id)),
    StartDebugConsole: unary<api.DebugConsoleRequest>((r) => agent.startDebugConsole(r),
      () => (opts.debugConsole ? undefined : status(grpc.status.FAILED_PRECONDITION, DEBUG_CONSOLE_DISABLED))),
    WaitProcess: unary<api.ProcessRef>((r) => agent.waitProcess(r), consoleOnly),
    SignalProcess: unary<api.SignalProcessRequest>((r) => agent.signalProcess(r), consoleOnly),
    WriteStdin: unary<api.WriteStreamRequest>(async (r) => ({ len: await agent.writeStdin(r, r.data) }), consoleOnly),
    CloseStdin: unary<api.ProcessRef>((r) => agent.closeStdin(r), consoleOnly),
    TtyWinResize: unary<api.TtyWinResizeRequest>((r) => agent.ttyWinResize(r), consoleOnly),
    ReadStdout: forwardStream((r) => agent.readStdout(r)),
    ReadStderr: forwardStream((r) => agent.readStderr(r)),
  };
}
