/**
 * The guest agent's API (proto/agent.proto), read at run time by our
 * own proto3 reader and codec (src/protocols/protobuf: @grpc/proto-loader
 * and protobufjs cost ~2.5 s of every boot when loaded under instruction
 * emulation) and described here as TypeScript types so both sides (host
 * client in src/runtime, server in src/agent) are checked against one
 * definition. Objects have proto-loader's shape: field names as in the
 * proto (keepCase), 64-bit numbers as numbers, enums as names, defaults set.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { parseProto, type ProtoSchema } from './protobuf/schema';
import { grpcServiceDefinition } from './protobuf/grpc-service';
import { decodeMessage, encodeMessage } from './protobuf/codec';

export const AGENT_PROTO = path.resolve(__dirname, '..', '..', '..', 'proto', 'agent.proto');

export interface Empty {}
/** driver_options: for the driver, not the mount (virtiofs: "pci-path=PATH", where the share's device is). */
export interface Storage { driver: string; source: string; fstype: string; options: string[]; mount_point: string; driver_options?: string[] }
export interface CreateSandboxRequest { sandbox_id: string; hostname: string; dns: string[]; sysctls: Record<string, string>; policy_json: string }
/** A container's device (proto/agent.proto Device): type "blk" at PCI path vm_path, seen at container_path. */
export interface Device { id: string; type: string; vm_path: string; container_path: string; options: string[] }
/** Passfd IO (proto/agent.proto): host-side vsock ports of the process's stdio streams; 0 or absent: not passed. */
export interface StdioPorts { stdin_port?: number; stdout_port?: number; stderr_port?: number }
export interface CreateContainerRequest extends StdioPorts { container_id: string; exec_id: string; storages: Storage[]; oci_spec_json: string; devices?: Device[] }
export interface StartContainerRequest { container_id: string }
export interface StartContainerResponse { pid: number }
export interface RemoveContainerRequest { container_id: string; timeout: number }
export interface ExecProcessRequest extends StdioPorts { container_id: string; exec_id: string; process_json: string }
export interface ExecProcessResponse { pid: number }
export interface SignalProcessRequest { container_id: string; exec_id: string; signal: number }
export interface ProcessRef { container_id: string; exec_id: string }
export interface WaitProcessResponse { status: number; signal: number; exited_at_ms: number }
export interface WriteStreamRequest { container_id: string; exec_id: string; data: Buffer }
export interface WriteStreamResponse { len: number }
export interface ReadStreamResponse { data: Buffer }
export interface TtyWinResizeRequest { container_id: string; exec_id: string; row: number; column: number }
export interface StatsContainerResponse {
  cpu_usage_usec: number; cpu_user_usec: number; cpu_system_usec: number;
  memory_usage_bytes: number; memory_limit_bytes: number; pids_current: number;
  io_read_bytes: number; io_write_bytes: number;
  pids_limit: number; memory_oom: number; memory_oom_kill: number;
  cpu_nr_periods: number; cpu_nr_throttled: number; cpu_throttled_usec: number; memory_max_usage_bytes: number;
}
export interface UpdateContainerRequest { container_id: string; resources_json: string }
export interface OOMEvent { container_id: string }
export interface GuestDetailsResponse {
  agent_version: string; kernel_release: string; mem_total_bytes: number; cpus: number;
  uptime_ms: number; crun_version: string;
}
export interface DebugConsoleRequest extends StdioPorts { args: string[]; terminal: boolean; rows: number; columns: number; env: string[] }
export interface DebugConsoleResponse { exec_id: string; pid: number }
export interface GuestStatsResponse {
  mem_total_bytes: number; mem_available_bytes: number; mem_free_bytes: number;
  load1: number; load5: number; load15: number;
  cpu_user_ms: number; cpu_system_ms: number; cpu_idle_ms: number; uptime_ms: number; processes: number;
}
export type IPFamily = 'v4' | 'v6';
export interface IPAddress { family: IPFamily; address: string; mask: string }
export interface Interface {
  device: string; name: string; ip_addresses: IPAddress[]; mtu: number; hw_addr: string;
  device_path: string; type: string; raw_flags: number;
}
export interface Interfaces { interfaces: Interface[] }
export interface Route { dest: string; gateway: string; device: string; source: string; scope: number; family: IPFamily; flags: number }
export interface Routes { routes: Route[] }
export interface ARPNeighbor { to_ip_address: IPAddress | null; device: string; lladdr: string; state: number; flags: number }
export interface UpdateInterfaceRequest { interface: Interface | null }
export interface UpdateRoutesRequest { routes: Routes | null }
/** VM template clones (src/factory, agent/identity.ts): Kata's shapes. */
export interface ReseedRandomDevRequest { data: Buffer }
export interface SetGuestDateTimeRequest { Sec: number; Usec: number }
/** Pod resizing (src/agent/online-cpu-mem.ts): Kata's shape. */
export interface OnlineCPUMemRequest { wait: boolean; nb_cpus: number; cpu_only: boolean }
/** Direct volumes (src/agent/volumes.ts): Kata's shapes. */
export interface VolumeStatsRequest { volume_guest_path: string }
export interface VolumeUsage { available: number; total: number; used: number; unit: 'UNKNOWN' | 'BYTES' | 'INODES' }
export interface VolumeStatsResponse { usage: VolumeUsage[]; volume_condition: { abnormal: boolean; message: string } | null }
export interface ResizeVolumeRequest { volume_guest_path: string; size: number }
export interface AddARPNeighborsRequest { neighbors: { neighbors: ARPNeighbor[] } | null }
/** A cached VM's container-path warm-up (src/agent/warm-container.ts); the request is empty. */
export interface WarmContainerPathResponse {
  total_ms: number; mount_ms: number; create_ms: number; start_ms: number; wait_ms: number; remove_ms: number;
  exit_status: number; errors: string[];
}
export interface HealthCheckResponse { status: 'UNKNOWN' | 'SERVING' | 'NOT_SERVING' }

/** The service's full name: the ttrpc Request.service and the gRPC path prefix. */
export const AGENT_SERVICE = 'katats.agent.v1.AgentService';

let schemaCache: ProtoSchema | undefined;
let cached: grpc.ServiceDefinition | undefined;
let methodsCache: Map<string, AgentMethod> | undefined;

function agentSchema(): ProtoSchema {
  return (schemaCache ??= parseProto(fs.readFileSync(AGENT_PROTO, 'utf8'), AGENT_PROTO));
}

/**
 * One RPC of the AgentService as the ttrpc transport sees it: its shape and
 * the codec of its messages. Built from proto/agent.proto, the single source
 * of the service: an RPC added there appears here (and in the policy's RPC
 * list) without another table to edit.
 */
export interface AgentMethod {
  name: string;
  requestStream: boolean;
  responseStream: boolean;
  encodeRequest(v: unknown): Buffer;
  decodeRequest(b: Buffer): unknown;
  encodeResponse(v: unknown): Buffer;
  decodeResponse(b: Buffer): unknown;
}

/** Every RPC of the AgentService by name, loaded once. */
export function agentMethods(): ReadonlyMap<string, AgentMethod> {
  if (methodsCache) return methodsCache;
  const svc = agentSchema().services.get(AGENT_SERVICE)!;
  methodsCache = new Map(svc.methods.map((m) => [m.name, {
    name: m.name, requestStream: m.requestStream, responseStream: m.responseStream,
    encodeRequest: (v: unknown) => encodeMessage(m.request, v as Record<string, unknown>),
    decodeRequest: (b: Buffer) => decodeMessage(m.request, b),
    encodeResponse: (v: unknown) => encodeMessage(m.response, v as Record<string, unknown>),
    decodeResponse: (b: Buffer) => decodeMessage(m.response, b),
  }]));
  return methodsCache;
}

/** The AgentService as a grpc-js definition (the host's kata-ctl channel), loaded once. */
export function agentServiceDefinition(): grpc.ServiceDefinition {
  return (cached ??= grpcServiceDefinition(agentSchema(), AGENT_SERVICE));
}

/**
 * Client constructor for the AgentService over gRPC, with the caller's
 * grpc-js: the guest agent imports this module and must neither load nor
 * bundle grpc-js (README performance, agent transport).
 */
export function agentClientConstructor(g: typeof grpc): grpc.ServiceClientConstructor {
  return g.makeGenericClientConstructor(agentServiceDefinition(), 'AgentService');
}
