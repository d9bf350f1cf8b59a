/**
 * Base error for kata-ts modules.
 *
 * Every module defines one error class deriving from KataError with its own
 * string-literal `kind` union, so callers can branch on `kind` without parsing
 * messages, and the original failure travels along as `cause`. Conversion to
 * wire codes (gRPC/ttrpc status) happens only at RPC edges.
 */
export class KataError<K extends string = string> extends Error {
  readonly kind: K;
  constructor(kind: K, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
    this.name = new.target.name;
  }
}

/** Message of any thrown value, for one-line user-facing errors. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
