/**
 * The shim's error, and the one place errors become ttrpc status codes (the
 * RPC edge): ShimError kinds, agent call errors and spec/mount errors are
 * mapped onto the gRPC codes containerd turns back into its errdefs.
 */
import { ConfigError } from '../runtime/config';
import { KataError, errorMessage } from '../common/errors';
import { TtrpcError, type CodeName } from '../protocols/ttrpc/codes';
import { AgentCallError } from '../runtime/agent-client';
import { SpecError } from '../runtime/spec';
import { SandboxError } from '../runtime/sandbox';
import { MountError } from './rootfs';
import { StdioError } from './stdio';
import { VolumeError } from '../runtime/volumes';
import { HostPolicyError } from '../runtime/policy';

export class ShimError extends KataError<'not-found' | 'already-exists' | 'failed-precondition' | 'invalid' | 'unimplemented' | 'internal'> {}

const SHIM_CODES: Record<ShimError['kind'], CodeName> = {
  'not-found': 'NotFound', 'already-exists': 'AlreadyExists', 'failed-precondition': 'FailedPrecondition',
  invalid: 'InvalidArgument', unimplemented: 'Unimplemented', internal: 'Internal',
};

const AGENT_CODES: Record<AgentCallError['kind'], CodeName> = {
  'not-found': 'NotFound', 'already-exists': 'AlreadyExists', invalid: 'InvalidArgument', 'failed-precondition': 'FailedPrecondition',
  'permission-denied': 'PermissionDenied', unavailable: 'Unavailable', deadline: 'DeadlineExceeded', internal: 'Internal',
};

export function toTtrpcError(err: unknown, context: string): TtrpcError {
  if (err instanceof TtrpcError) return err;
  const msg = `${context}: ${errorMessage(err)}`;
  if (err instanceof ShimError) return new TtrpcError(SHIM_CODES[err.kind], msg, { cause: err });
  if (err instanceof AgentCallError) return new TtrpcError(AGENT_CODES[err.kind], msg, { cause: err });
  if (err instanceof SpecError) return new TtrpcError(err.kind === 'bundle' ? 'NotFound' : 'InvalidArgument', msg, { cause: err });
  if (err instanceof MountError) return new TtrpcError(err.kind === 'invalid' ? 'InvalidArgument' : 'Internal', msg, { cause: err });
  if (err instanceof VolumeError) return new TtrpcError(err.kind === 'mount' ? 'Internal' : err.kind === 'unsupported' ? 'FailedPrecondition' : 'InvalidArgument', msg, { cause: err });
  if (err instanceof HostPolicyError) return new TtrpcError('InvalidArgument', msg, { cause: err });
  if (err instanceof ConfigError) return new TtrpcError(err.kind === 'unreadable' ? 'Internal' : 'InvalidArgument', msg, { cause: err });
  if (err instanceof StdioError) return new TtrpcError(err.kind === 'unsupported' ? 'InvalidArgument' : 'Internal', msg, { cause: err });
  if (err instanceof SandboxError && err.kind === 'container' && /not found/.test(err.message)) return new TtrpcError('NotFound', msg, { cause: err });
  return new TtrpcError('Unknown', msg, { cause: err });
}
