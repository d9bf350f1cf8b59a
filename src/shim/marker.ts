/**
 * The marker the shim writes into each bundle (<bundle>/kata-ts-shim.json)
 * so that `containerd-shim-kata-ts-v2 delete` can find the VM after a crash.
 * A module of its own: `delete` is a fresh process on the path of every
 * `ctr run --rm` (containerd runs it after the shim disconnects and waits for
 * it), and it must not load the task service and the runtime behind it.
 */
export const BUNDLE_MARKER = 'kata-ts-shim.json';

export interface BundleMarker {
  sandboxId: string;
  sandboxDir: string;
  runDir: string;
  shimPid: number;
}
