/**
 * Decoded shapes of the containerd.task.v2 messages (proto/containerd/task/v2/
 * shim.proto) with the proto's field names, as protobufjs hands them over.
 */
import type { ContainerdMount } from './rootfs';

export interface Any { type_url: string; value: Buffer }
export interface Timestamp { seconds: number; nanos: number }

export interface CreateTaskRequest {
  id: string; bundle: string; rootfs: ContainerdMount[]; terminal: boolean;
  stdin: string; stdout: string; stderr: string; checkpoint: string; parent_checkpoint: string; options?: Any | null;
}
export interface IdRequest { id: string; exec_id: string }
export interface ExecProcessRequest { id: string; exec_id: string; terminal: boolean; stdin: string; stdout: string; stderr: string; spec?: Any | null }
export interface ResizePtyRequest { id: string; exec_id: string; width: number; height: number }
export interface KillRequest { id: string; exec_id: string; signal: number; all: boolean }
export interface CloseIORequest { id: string; exec_id: string; stdin: boolean }
export interface UpdateTaskRequest { id: string; resources?: Any | null; annotations: Record<string, string> }
export interface ShutdownRequest { id: string; now: boolean }

export type Status = 'UNKNOWN' | 'CREATED' | 'RUNNING' | 'STOPPED' | 'PAUSED' | 'PAUSING';
