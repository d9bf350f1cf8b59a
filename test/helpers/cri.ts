/**
 * A Kubernetes CRI v1 client (runtime.v1.RuntimeService and ImageService)
 * for tests and benchmarks: what a kubelet sends to containerd's CRI plugin,
 * over its gRPC unix socket, on @grpc/grpc-js. The wire format comes from
 * proto/cri/api.proto (a trimmed, wire-exact copy of k8s.io/cri-api v1),
 * read by our own proto3 reader and codec (src/protocols/protobuf), the same
 * path the agent API takes, so there is no protobufjs at run time.
 *
 * Objects have the codec's shape: proto field names, int64 as numbers
 * (nanosecond timestamps lose their last bits: fine for ordering), enums as
 * names, absent fields at their defaults. Requests may leave fields out.
 * A failed call rejects with a CriError carrying the gRPC code and the
 * server's message, named after the RPC.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { parseProto } from '../../src/protocols/protobuf/schema';
import { grpcServiceDefinition } from '../../src/protocols/protobuf/grpc-service';

export const CRI_PROTO = path.resolve(__dirname, '..', '..', '..', 'proto', 'cri', 'api.proto');

// ─── message shapes (the subset of runtime.v1 the proto file carries) ───

export type Protocol = 'TCP' | 'UDP' | 'SCTP';
export type NamespaceMode = 'POD' | 'CONTAINER' | 'NODE' | 'TARGET';
export type ContainerState = 'CONTAINER_CREATED' | 'CONTAINER_RUNNING' | 'CONTAINER_EXITED' | 'CONTAINER_UNKNOWN';
export type PodSandboxState = 'SANDBOX_READY' | 'SANDBOX_NOTREADY';

export interface KeyValue { key: string; value: string }
export interface PortMapping { protocol?: Protocol; container_port: number; host_port?: number; host_ip?: string }
export interface Mount {
  container_path: string; host_path: string; readonly?: boolean; selinux_relabel?: boolean;
  propagation?: 'PROPAGATION_PRIVATE' | 'PROPAGATION_HOST_TO_CONTAINER' | 'PROPAGATION_BIDIRECTIONAL';
}
export interface NamespaceOption { network?: NamespaceMode; pid?: NamespaceMode; ipc?: NamespaceMode; target_id?: string }
export interface Int64Value { value: number }
export interface DNSConfig { servers?: string[]; searches?: string[]; options?: string[] }
export interface PodSandboxMetadata { name: string; uid: string; namespace: string; attempt?: number }
export interface LinuxSandboxSecurityContext {
  namespace_options?: NamespaceOption; run_as_user?: Int64Value; readonly_rootfs?: boolean;
  supplemental_groups?: number[]; privileged?: boolean; run_as_group?: Int64Value;
}
export interface LinuxPodSandboxConfig { cgroup_parent?: string; security_context?: LinuxSandboxSecurityContext; sysctls?: Record<string, string> }
export interface PodSandboxConfig {
  metadata: PodSandboxMetadata; hostname?: string; log_directory?: string; dns_config?: DNSConfig;
  port_mappings?: PortMapping[]; labels?: Record<string, string>; annotations?: Record<string, string>;
  linux?: LinuxPodSandboxConfig;
}
export interface ImageSpec { image: string; annotations?: Record<string, string> }
export interface LinuxContainerResources {
  cpu_period?: number; cpu_quota?: number; cpu_shares?: number; memory_limit_in_bytes?: number;
  oom_score_adj?: number; cpuset_cpus?: string; cpuset_mems?: string; unified?: Record<string, string>;
  memory_swap_limit_in_bytes?: number;
}
export interface LinuxContainerSecurityContext {
  capabilities?: { add_capabilities?: string[]; drop_capabilities?: string[] }; privileged?: boolean;
  namespace_options?: NamespaceOption; run_as_user?: Int64Value; run_as_username?: string;
  readonly_rootfs?: boolean; supplemental_groups?: number[]; no_new_privs?: boolean; run_as_group?: Int64Value;
}
export interface ContainerMetadata { name: string; attempt?: number }
/** A host device in the container: containerd writes it into linux.devices with the host's numbers (and a cgroup rule). */
export interface Device { container_path: string; host_path: string; permissions?: string }
export interface ContainerConfig {
  metadata: ContainerMetadata; image: ImageSpec; command?: string[]; args?: string[]; working_dir?: string;
  envs?: KeyValue[]; mounts?: Mount[]; devices?: Device[]; labels?: Record<string, string>; annotations?: Record<string, string>;
  log_path?: string; stdin?: boolean; stdin_once?: boolean; tty?: boolean;
  linux?: { resources?: LinuxContainerResources; security_context?: LinuxContainerSecurityContext };
}

export interface VersionResponse { version: string; runtime_name: string; runtime_version: string; runtime_api_version: string }
export interface RuntimeCondition { type: string; status: boolean; reason: string; message: string }
export interface StatusResponse { status: { conditions: RuntimeCondition[] } | null; info: Record<string, string> }
export interface PodSandboxStatus {
  id: string; metadata: PodSandboxMetadata; state: PodSandboxState; created_at: number;
  network: { ip: string; additional_ips: { ip: string }[] } | null;
  linux: { namespaces: { options: Required<NamespaceOption> | null } | null } | null;
  labels: Record<string, string>; annotations: Record<string, string>; runtime_handler: string;
}
export interface PodSandboxStatusResponse { status: PodSandboxStatus; info: Record<string, string> }
export interface PodSandbox {
  id: string; metadata: PodSandboxMetadata; state: PodSandboxState; created_at: number;
  labels: Record<string, string>; annotations: Record<string, string>; runtime_handler: string;
}
export interface PodSandboxFilter { id?: string; state?: { state: PodSandboxState }; label_selector?: Record<string, string> }
export interface Container {
  id: string; pod_sandbox_id: string; metadata: ContainerMetadata; image: ImageSpec; image_ref: string;
  state: ContainerState; created_at: number; labels: Record<string, string>; annotations: Record<string, string>;
}
export interface ContainerFilter { id?: string; state?: { state: ContainerState }; pod_sandbox_id?: string; label_selector?: Record<string, string> }
export interface ContainerStatus {
  id: string; metadata: ContainerMetadata; state: ContainerState; created_at: number; started_at: number;
  finished_at: number; exit_code: number; image: ImageSpec; image_ref: string; reason: string; message: string;
  labels: Record<string, string>; annotations: Record<string, string>; mounts: Required<Mount>[]; log_path: string;
}
export interface ContainerStatusResponse { status: ContainerStatus; info: Record<string, string> }
export interface ExecSyncResponse { stdout: Buffer; stderr: Buffer; exit_code: number }
export interface Image {
  id: string; repo_tags: string[]; repo_digests: string[]; size: number; uid: Int64Value | null;
  username: string; spec: ImageSpec | null; pinned: boolean;
}

/** A CRI call that failed: the RPC, gRPC status code and the server's message. */
export class CriError extends Error {
  constructor(readonly rpc: string, readonly code: grpc.status, readonly details: string) {
    super(`${rpc}: ${grpc.status[code] ?? code}: ${details}`);
    this.name = 'CriError';
  }
}

let definitions: { runtime: grpc.ServiceDefinition; image: grpc.ServiceDefinition } | undefined;

function serviceDefinitions(): { runtime: grpc.ServiceDefinition; image: grpc.ServiceDefinition } {
  if (!definitions) {
    const schema = parseProto(fs.readFileSync(CRI_PROTO, 'utf8'), CRI_PROTO);
    definitions = {
      runtime: grpcServiceDefinition(schema, 'runtime.v1.RuntimeService'),
      image: grpcServiceDefinition(schema, 'runtime.v1.ImageService'),
    };
  }
  return definitions;
}

type Unary = (req: object, md: grpc.Metadata, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: unknown) => void) => void;

export class CriClient {
  private readonly runtime: grpc.Client;
  private readonly images: grpc.Client;

  /** socket: containerd's gRPC socket path (the CRI plugin serves on it). */
  constructor(readonly socket: string, private readonly defaultTimeoutMs = 180000) {
    const defs = serviceDefinitions();
    const target = `unix://${socket}`;
    const creds = grpc.credentials.createInsecure();
    // One channel for both services, as a kubelet with one endpoint has.
    this.runtime = new (grpc.makeGenericClientConstructor(defs.runtime, 'RuntimeService'))(target, creds);
    this.images = new (grpc.makeGenericClientConstructor(defs.image, 'ImageService'))(target, creds, { channelOverride: this.runtime.getChannel() });
  }

  close(): void {
    this.images.close();
    this.runtime.close();
  }

  private call<R>(client: grpc.Client, rpc: string, req: object, timeoutMs = this.defaultTimeoutMs): Promise<R> {
    return new Promise((resolve, reject) => {
      const fn = (client as unknown as Record<string, Unary>)[rpc];
      if (!fn) return reject(new Error(`no CRI method ${rpc}`));
      fn.call(client, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err) reject(new CriError(rpc, err.code, err.details || err.message));
        else resolve(res as R);
      });
    });
  }

  // ─── RuntimeService ───

  version(): Promise<VersionResponse> {
    return this.call(this.runtime, 'Version', { version: 'v1' });
  }

  status(verbose = false): Promise<StatusResponse> {
    return this.call(this.runtime, 'Status', { verbose });
  }

  async runPodSandbox(config: PodSandboxConfig, runtimeHandler: string): Promise<string> {
    const r = await this.call<{ pod_sandbox_id: string }>(this.runtime, 'RunPodSandbox', { config, runtime_handler: runtimeHandler });
    return r.pod_sandbox_id;
  }

  async stopPodSandbox(podSandboxId: string): Promise<void> {
    await this.call(this.runtime, 'StopPodSandbox', { pod_sandbox_id: podSandboxId });
  }

  async removePodSandbox(podSandboxId: string): Promise<void> {
    await this.call(this.runtime, 'RemovePodSandbox', { pod_sandbox_id: podSandboxId });
  }

  podSandboxStatus(podSandboxId: string, verbose = false): Promise<PodSandboxStatusResponse> {
    return this.call(this.runtime, 'PodSandboxStatus', { pod_sandbox_id: podSandboxId, verbose });
  }

  async listPodSandbox(filter?: PodSandboxFilter): Promise<PodSandbox[]> {
    const r = await this.call<{ items: PodSandbox[] }>(this.runtime, 'ListPodSandbox', filter ? { filter } : {});
    return r.items;
  }

  async createContainer(podSandboxId: string, config: ContainerConfig, sandboxConfig: PodSandboxConfig): Promise<string> {
    const r = await this.call<{ container_id: string }>(this.runtime, 'CreateContainer', { pod_sandbox_id: podSandboxId, config, sandbox_config: sandboxConfig });
    return r.container_id;
  }

  async startContainer(containerId: string): Promise<void> {
    await this.call(this.runtime, 'StartContainer', { container_id: containerId });
  }

  /** timeoutSec: the grace period before SIGKILL, as the kubelet passes it. */
  async stopContainer(containerId: string, timeoutSec: number): Promise<void> {
    await this.call(this.runtime, 'StopContainer', { container_id: containerId, timeout: timeoutSec }, this.defaultTimeoutMs + timeoutSec * 1000);
  }

  async removeContainer(containerId: string): Promise<void> {
    await this.call(this.runtime, 'RemoveContainer', { container_id: containerId });
  }

  async listContainers(filter?: ContainerFilter): Promise<Container[]> {
    const r = await this.call<{ containers: Container[] }>(this.runtime, 'ListContainers', filter ? { filter } : {});
    return r.containers;
  }

  containerStatus(containerId: string, verbose = false): Promise<ContainerStatusResponse> {
    return this.call(this.runtime, 'ContainerStatus', { container_id: containerId, verbose });
  }

  /** timeoutSec 0 = no limit on the command (the call still has the client's deadline). */
  execSync(containerId: string, cmd: string[], timeoutSec = 0): Promise<ExecSyncResponse> {
    return this.call(this.runtime, 'ExecSync', { container_id: containerId, cmd, timeout: timeoutSec },
      timeoutSec ? timeoutSec * 1000 + 30000 : this.defaultTimeoutMs);
  }

  /** The streaming server's URL for `ports` of the pod (test/helpers/cri-port-forward.ts speaks to it). */
  async portForward(podSandboxId: string, ports: number[]): Promise<string> {
    const r = await this.call<{ url: string }>(this.runtime, 'PortForward', { pod_sandbox_id: podSandboxId, port: ports });
    return r.url;
  }

  // ─── ImageService ───

  async listImages(image?: string): Promise<Image[]> {
    const r = await this.call<{ images: Image[] }>(this.images, 'ListImages', image ? { filter: { image: { image } } } : {});
    return r.images;
  }

  /** null when the image is not there (CRI answers an empty image, not an error). */
  async imageStatus(image: string): Promise<Image | null> {
    const r = await this.call<{ image: Image | null }>(this.images, 'ImageStatus', { image: { image } });
    return r.image && r.image.id ? r.image : null;
  }

  async removeImage(image: string): Promise<void> {
    await this.call(this.images, 'RemoveImage', { image: { image } });
  }
}
