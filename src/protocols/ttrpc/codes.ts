/**
 * gRPC status codes (google.golang.org/grpc/codes), which ttrpc carries in
 * its Status, and the errors the shim throws to pick one. containerd maps
 * them back to its errdefs (NotFound → ErrNotFound, AlreadyExists,
 * FailedPrecondition, Unimplemented → ErrNotImplemented, ...), so the code
 * matters more than the text.
 */
import { KataError } from '../../common/errors';

export const Code = {
  OK: 0, Canceled: 1, Unknown: 2, InvalidArgument: 3, DeadlineExceeded: 4, NotFound: 5, AlreadyExists: 6,
  PermissionDenied: 7, ResourceExhausted: 8, FailedPrecondition: 9, Aborted: 10, OutOfRange: 11,
  Unimplemented: 12, Internal: 13, Unavailable: 14, DataLoss: 15, Unauthenticated: 16,
} as const;
export type CodeName = keyof typeof Code;

/** An error that reaches the wire as a ttrpc status with `kind` as its code. */
export class TtrpcError extends KataError<CodeName> {
  get code(): number {
    return Code[this.kind];
  }
}

export function codeName(code: number): CodeName {
  return (Object.keys(Code) as CodeName[]).find((k) => Code[k] === code) ?? 'Unknown';
}
