/**
 * `containerd-shim-kata-ts-v2`: the containerd runtime v2 shim entry point.
 * Tiny, like containerd's shims: parse containerd's flags, dispatch
 *   start  — start or reuse the pod's shim, print its ttrpc address;
 *   delete — clean up after a dead shim, print a DeleteResponse;
 *   serve  — (internal) the long-running ttrpc server `start` spawns;
 *   prestart — (internal) a pre-started VM cache entry, claimed by `start`;
 *   -v     — version.
 * Modules are loaded per action so `start` stays quick.
 */
import { errorMessage } from '../common/errors';

export async function main(argv: string[]): Promise<void> {
  try {
    const { parseFlags } = await import('../shim/flags');
    const flags = parseFlags(argv);
    switch (flags.action) {
      case 'start': {
        const { startShim } = await import('../shim/start');
        process.stdout.write(await startShim(flags, process.argv[1]!));
        return;
      }
      case 'delete': {
        const { deleteShim } = await import('../shim/delete');
        process.stdout.write(await deleteShim(flags));
        return;
      }
      case 'serve': {
        const { serve } = await import('../shim/serve');
        await serve(flags);
        return;
      }
      case 'prestart': {
        // (internal) one entry of the pre-started VM cache (src/shim/vm-cache-serve.ts).
        const { prestart } = await import('../shim/vm-cache-serve');
        await prestart(flags);
        return;
      }
      case 'version': {
        const { SHIM_VERSION } = await import('../shim/service');
        process.stdout.write(`containerd-shim-kata-ts-v2:\n  Version: ${SHIM_VERSION}\n`);
        return;
      }
      default:
        throw new Error(`unknown action "${flags.action}": expected start, delete or serve`);
    }
  } catch (err) {
    process.stderr.write(`containerd-shim-kata-ts-v2: ${errorMessage(err)}\n`);
    process.exitCode = 1;
  }
}
