/**
 * `kata-ts run`'s exit status when kata-ts itself fails, whether the run
 * was in this process or in a VM cache entry it claimed (which reports the
 * status it computed, vm-cache-run-serve.ts).
 */
import { AgentCallError } from './agent-client';

/** kata-ts itself failed (as docker/podman). */
export const RUNTIME_FAILURE = 125;

/** An error whose exit status was decided elsewhere (a claimed VM cache entry reported it). */
export class ReportedRunError extends Error {
  constructor(message: string, readonly exitCode: number) {
    super(message);
  }
}

/** 127 when the command does not exist in the container (as shells and docker report), else 125. */
export function exitCodeFor(err: unknown): number {
  if (err instanceof ReportedRunError) return err.exitCode;
  if (err instanceof AgentCallError && err.kind === 'not-found' && /^executable file/.test(err.message)) return 127;
  return RUNTIME_FAILURE;
}
