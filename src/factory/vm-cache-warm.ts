/**
 * A cached VM's container-path warm-up, host side (vm-cache-vm.ts calls it
 * after Check, before the VM is ready; the guest side is
 * src/agent/warm-container.ts, the WarmContainerPath RPC). Under TCG the
 * first `crun run` in a fresh QEMU translates crun, ld.so and the kernel's
 * container paths; a cached VM is a live QEMU, so a throwaway container
 * run while it waits leaves them translated for the pod that claims it.
 *
 * Best effort: a warm-up that fails or times out is one warning, and the
 * VM is cached all the same (the agent holds CreateSandbox back until a
 * warm-up still running in the guest has cleaned up).
 */
import { errorMessage } from '../common/errors';
import type { Logger } from '../common/log';
import type { AgentClient } from '../runtime/agent-client';

/** The RPC's deadline: the guest's own limit for the container (60 s) plus its cleanup. */
export const WARM_CONTAINER_RPC_TIMEOUT_MS = 90_000;

/** Runs the warm-up; resolves with the guest's total ms, or undefined when it did not succeed (logged). */
export async function warmCachedVmContainerPath(agent: AgentClient, log: Logger): Promise<number | undefined> {
  try {
    const r = await agent.warmContainerPath(WARM_CONTAINER_RPC_TIMEOUT_MS);
    const phases = { totalMs: r.total_ms, mountMs: r.mount_ms, createMs: r.create_ms, startMs: r.start_ms, waitMs: r.wait_ms, removeMs: r.remove_ms, exitStatus: r.exit_status };
    if (r.errors.length) {
      log.warn('the cached VM\'s container-path warm-up went wrong', { ...phases, errors: r.errors.join('; ') });
      return undefined;
    }
    log.info('cached VM: container path warmed', phases);
    return r.total_ms;
  } catch (err) {
    log.warn('the cached VM\'s container-path warm-up failed', { err: errorMessage(err) });
    return undefined;
  }
}
