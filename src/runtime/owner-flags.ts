/**
 * How the process that owns sandboxes (the shim's `serve`) is started:
 * its Node flags and environment (issue 13, README "Memory density").
 *
 * The owner idles between its devices' events, and every VM's owner pays
 * for its own V8 worker threads and malloc arenas:
 *   --v8-pool-size=1         one V8 worker instead of Node's 4 (background
 *                            compilation and GC helpers; the WebAssembly
 *                            hot path still tiers up, on that one thread);
 *   --max-semi-space-size=1  V8's young generation stays at 1 MiB per
 *                            semi-space instead of growing to 16 during
 *                            bursts (boot) and staying resident;
 *   MALLOC_ARENA_MAX=1       one glibc arena for all threads (libuv's pool
 *                            has up to UV_THREADPOOL_SIZE=32 in the shim),
 *                            which the periodic malloc_trim then trims whole
 *                            (src/resource/memory/process-trim.ts).
 * Measured at 10 idle lean sandboxes: runtime 18.0-18.8 -> 16.1-16.2 MiB
 * PSS per sandbox when they booted under heavy load, 19.2 -> 19.1 on a
 * quiet machine (what they cut is what a slow, contended boot leaves);
 * start time unchanged within this machine's noise. An environment that
 * sets MALLOC_ARENA_MAX keeps its value.
 * `kata-ts run` owns its sandbox in the CLI process itself, started by the
 * user's `node`: bin/kata-ts cannot pass these, so there they are not used.
 */

/** Node flags for an owner process, before its script. */
export const OWNER_NODE_FLAGS: readonly string[] = ['--v8-pool-size=1', '--max-semi-space-size=1'];

/** The environment of an owner process started from `env`. */
export function ownerEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { ...env, MALLOC_ARENA_MAX: env.MALLOC_ARENA_MAX ?? '1' };
}
